"""playbooks/restore.yml with restore_target_time on PostgreSQL, through `ansible-playbook`, against
a real PostgreSQL 15 cluster archiving with pgBackRest (the role's own templates) into a real
SeaweedFS over TLS: check mode names the base backup and the WAL range and changes nothing, a
target before the oldest backup is refused with the range and the cluster untouched, a restore to T
gives exactly the rows committed up to T, a second restore on the new timeline works, and a health
check that fails after the restore puts the previous data directory back.

The cipher passphrase, the S3 secret and the database password reach Ansible only through a vars
file, as from a vault; every process's argv is watched while the playbooks run, and a -vvv run's
output (module arguments and results) is searched for them.

The tests run in file order on one stack (test_pgbackrest's fixture, a fresh one for this file).
"""

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import postgres
import seaweedfs
import test_pgbackrest as pgbackrest
from test_restore_module import BIN, PYTHON, REPO, ansible_env

stack = pgbackrest.stack
# No such unit: the role skips stopping and starting the application.
SERVICE = "tradingbot-pg-pitr-restore-test-absent"
SECRETS = {
    "pitr_passphrase": pgbackrest.PASSPHRASE,
    "pitr_s3_secret": seaweedfs.HOST["secret_key"],
    "pitr_pg_password": postgres.PASSWORD,
}


@pytest.fixture(scope="module")
def live(stack):
    """The stack with its stanza, a full backup, and what the playbook runs saw."""
    stack.pgbackrest("stanza-create")
    stack.pgbackrest("check")
    stack.unit_command("tradingbot-pgbackrest-full.service")
    secrets = stack.root / "secrets.json"
    secrets.write_text(json.dumps(SECRETS))
    inventory = stack.root / "inventory.json"
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": PYTHON,
        "ansible_become": False,
        "tradingbot_service_name": SERVICE,
        "tradingbot_base_dir": str(stack.root / "app"),
        "tradingbot_database_type": "postgresql",
        "tradingbot_postgresql_port": stack.cluster.port,
        "tradingbot_postgresql_database": postgres.DATABASE,
        "tradingbot_postgresql_password": "{{ pitr_pg_password }}",
        # What a PostgreSQL host's inventory holds for a point-in-time restore.
        "tradingbot_offsite_enabled": True,
        "tradingbot_offsite_s3_endpoint": stack.store.https_endpoint,
        "tradingbot_offsite_s3_bucket": pgbackrest.BUCKET,
        "tradingbot_offsite_s3_access_key_id": seaweedfs.HOST["access_key"],
        "tradingbot_offsite_s3_secret_access_key": "{{ pitr_s3_secret }}",
        "tradingbot_pgbackrest_enabled": True,
        "tradingbot_pgbackrest_cipher_passphrase": "{{ pitr_passphrase }}",
        "tradingbot_pgbackrest_stanza": pgbackrest.STANZA,
        "tradingbot_pgbackrest_pg_data_dir": stack.cluster.data_dir,
        "tradingbot_pgbackrest_pg_socket_dir": stack.cluster.socket_dir,
        # Not run by systemd here: pg_pitr stops and starts it with pg_ctl.
        "tradingbot_pgbackrest_pg_service": "",
    }
    inventory.write_text(json.dumps({"all": {"hosts": {"localhost": host}}}))
    # The role's private paths, pointed at this stack (extra vars beat role vars).
    private = stack.root / "private.json"
    private.write_text(
        json.dumps(
            {
                "__tradingbot_pgbackrest_config_path": str(stack.config),
                "__tradingbot_pgbackrest_pg_bin_dir": stack.cluster.bin_dir,
            }
        )
    )
    return {"stack": stack, "inventory": inventory, "secrets": secrets, "private": private, "runs": []}


def run_restore(live, *extra):
    argv = [str(BIN / "ansible-playbook"), "-i", str(live["inventory"]), str(REPO / "playbooks" / "restore.yml")]
    argv += ["-e", f"@{live['secrets']}", "-e", f"@{live['private']}", *extra]
    with pgbackrest.CommandLines() as lines:
        proc = subprocess.run(argv, env=ansible_env(), capture_output=True, text=True, check=False, timeout=1800)
    live["runs"].append((proc.stdout + proc.stderr, lines.seen))
    return proc, " ".join((proc.stdout + proc.stderr).split())


class UnhealthyApp:
    """A health endpoint that answers 500, after writing to the restored cluster as an app would
    and switching its WAL, so the restore's timeline has an archived segment when it is rolled back."""

    def __init__(self, stack):
        self.stack = stack
        self.writes = 0
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                app.stack.cluster.psql("INSERT INTO marks (note) VALUES ('on-the-restore') ")
                app.stack.cluster.psql("SELECT pg_switch_wal()")
                app.stack.pgbackrest("check")  # waits until that segment is archived
                app.writes += 1
                self.send_response(500)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/health"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def target_time(value):
    """-e with the value quoted inside the argument: a bare `key=a b` would end at the space."""
    return f'restore_target_time="{value}"'


def data_dir_state(stack):
    data_dir = Path(stack.cluster.data_dir)
    return os.stat(data_dir).st_ino, sorted(path.name for path in data_dir.parent.glob(data_dir.name + ".*-pitr-*"))


def safety_copies(stack, kind="pre"):
    data_dir = Path(stack.cluster.data_dir)
    return sorted(data_dir.parent.glob(f"{data_dir.name}.{kind}-pitr-*"))


def timeline(stack):
    return int(stack.cluster.psql("SELECT timeline_id FROM pg_control_checkpoint()").strip())


def test_check_mode_names_the_base_backup_and_the_wal_range_and_changes_nothing(live):
    stack = live["stack"]
    stack.mark("check-before")
    target = stack.server_time()
    stack.mark("check-after")
    before, state = stack.notes(), data_dir_state(stack)
    label = pgbackrest.pgbackrest_plan.stanza_info(json.loads(stack.pgbackrest("--output=json", "info")), "tradingbot")[
        "backup"
    ][-1]["label"]
    proc, out = run_restore(live, "--check", "-e", target_time(target))
    assert proc.returncode == 0, out
    assert f"Would restore {target[:19]}" in out
    assert f"base backup {label} (full" in out
    assert "WAL 0000000100000000000000" in out and "on timeline 1" in out
    assert "Not predicted by check mode" in out
    assert stack.notes() == before
    assert data_dir_state(stack) == state


def test_without_a_yes_the_restore_is_cancelled_and_nothing_changes(live):
    # No terminal: the prompt gets no answer, which is not "yes".
    stack = live["stack"]
    before, state = stack.notes(), data_dir_state(stack)
    proc, out = run_restore(live, "-e", target_time("latest"))
    assert proc.returncode != 0
    assert "Will restore latest" in out and "Not waiting for response to prompt" in out
    assert "Restore cancelled; nothing was changed." in out
    assert stack.notes() == before
    assert data_dir_state(stack) == state


def test_a_target_before_the_oldest_backup_is_refused_with_the_range_and_the_cluster_untouched(live):
    stack = live["stack"]
    before, state = stack.notes(), data_dir_state(stack)
    proc, out = run_restore(live, "-e", "restore_confirm=true", "-e", target_time("2020-01-01 00:00:00+00"))
    assert proc.returncode != 0
    assert "is outside the reachable range" in out
    info = pgbackrest.pgbackrest_plan.stanza_info(json.loads(stack.pgbackrest("--output=json", "info")), "tradingbot")
    oldest = pgbackrest.pgbackrest_plan.format_time(pgbackrest.pgbackrest_plan.stop_time(info["backup"][0]))
    assert oldest in out, "the error names the reachable range"
    assert "Will restore" not in out, "refused before the confirmation"
    assert stack.notes() == before
    assert data_dir_state(stack) == state


def test_a_restore_to_t_gives_exactly_the_rows_committed_up_to_t(live):
    stack = live["stack"]
    stack.mark("first-before")
    target = stack.server_time()
    stack.mark("first-after")
    before = stack.notes()
    proc, out = run_restore(live, "-vvv", "-e", "restore_confirm=true", "-e", target_time(target))
    assert proc.returncode == 0, out[-4000:]
    assert stack.notes() == [*before[: before.index("first-before") + 1]]
    assert "first-after" not in stack.notes()
    assert timeline(stack) == 2
    assert "on timeline 2 and archives into stanza tradingbot" in out
    copies = safety_copies(stack)
    assert len(copies) == 1
    assert (copies[0] / "PG_VERSION").is_file(), "the safety copy is the previous data directory"


def test_a_second_restore_after_the_first_works_on_the_new_timeline(live):
    stack = live["stack"]
    stack.mark("second-before")
    target = stack.server_time()
    stack.mark("second-after")
    before = stack.notes()
    proc, out = run_restore(live, "-e", "restore_confirm=true", "-e", target_time(target))
    assert proc.returncode == 0, out[-4000:]
    assert stack.notes() == before[: before.index("second-before") + 1]
    assert "first-after" not in stack.notes() and "second-after" not in stack.notes()
    assert timeline(stack) == 3
    assert len(safety_copies(stack)) == 2


def test_a_failed_health_check_after_the_restore_puts_the_previous_cluster_back(live):
    stack = live["stack"]
    stack.mark("rollback-before")
    target = stack.server_time()
    stack.mark("rollback-after")
    before = stack.notes()
    with UnhealthyApp(stack) as app:
        proc, out = run_restore(
            live,
            "-e",
            "restore_confirm=true",
            "-e",
            target_time(target),
            "-e",
            "restore_health_check=always",
            "-e",
            f"tradingbot_health_url={app.url}",
            "-e",
            "tradingbot_service_health_retries=1",
            "-e",
            "tradingbot_service_health_delay=0",
        )
    assert app.writes, "the health check reached the app"
    assert proc.returncode != 0
    assert "failed at 'Check the service's health'" in out or "failed at 'Wait for the health endpoint'" in out, out[
        -3000:
    ]
    assert "The previous data directory was put back from the safety copy" in out
    assert stack.notes() == before, "the rows after T are back: the previous cluster is live"
    assert timeline(stack) == 3
    assert len(safety_copies(stack, "failed")) == 1
    # The abandoned restore archived WAL on its timeline 4: the archive's newest segment is there.
    info = pgbackrest.pgbackrest_plan.stanza_info(json.loads(stack.pgbackrest("--output=json", "info")), "tradingbot")
    assert pgbackrest.pgbackrest_plan.segment_timeline(info["archive"][-1]["max"]) == 4, info["archive"]


def test_a_restore_after_the_rollback_follows_the_live_timeline(live):
    # The rolled-back restore was promoted to timeline 4 and archived it; timeline 3 is live again
    # and archives on. A restore to a time after the rollback must follow 3, not the abandoned 4.
    stack = live["stack"]
    stack.mark("after-rollback")
    target = stack.server_time()
    stack.mark("after-rollback-late")
    before = stack.notes()
    proc, out = run_restore(live, "-e", "restore_confirm=true", "-e", target_time(target))
    assert proc.returncode == 0, out[-4000:]
    assert "on timeline 3" in out, "the plan follows the live timeline"
    assert stack.notes() == before[: before.index("after-rollback") + 1]
    assert timeline(stack) == 5, "PostgreSQL skips the abandoned timeline 4"


def test_no_secret_in_argv_or_in_the_verbose_output(live):
    assert len(live["runs"]) >= 4
    seen = set().union(*(lines for _output, lines in live["runs"]))
    assert any("restore.yml" in line for line in seen), "the watcher saw the runs"
    assert any("pgbackrest" in line and " restore" in line for line in seen), "the watcher saw pgBackRest restore"
    verbose = [output for output, _lines in live["runs"] if "<localhost> EXEC" in output or "ESTABLISH LOCAL" in output]
    assert verbose, "one run was -vvv"
    assert any('"restore_arguments"' in output for output in verbose), "the -vvv output holds the module results"
    for secret in SECRETS.values():
        assert not [line for line in seen if secret in line]
        assert not [output for output, _lines in live["runs"] if secret in output]
