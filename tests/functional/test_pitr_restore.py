"""playbooks/restore.yml with restore_target_time on SQLite, through `ansible-playbook`, against a
real Litestream 0.3.13 replica in a real SeaweedFS: check mode names the plan, a target the
replica cannot reach is refused with the range and the live database untouched, and a restore to
T puts back exactly the rows committed up to T, with a safety copy of what was live.

The identity and the S3 secret reach Ansible only through a vars file, as from a vault; every
process's argv is watched while the playbook runs.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import seaweedfs
import test_litestream as replication
from test_restore_module import BIN, PYTHON, REPO, ansible_env

tools = replication.tools
server = replication.server
keys = replication.keys
CmdlineWatcher = replication.CmdlineWatcher


@pytest.fixture(scope="module")
def live(tools, server, keys, tmp_path_factory):
    """Batch A, a quiet moment T, batch B, all replicated; then replication stops (as the role
    stops it for a restore) and the database is what a host would have: A and B."""
    bucket = "pitr-playbook-" + str(os.getpid())
    replication.s3_client(server, seaweedfs.ADMIN).create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    root = tmp_path_factory.mktemp("pitr-playbook")
    repl = replication.Replication(root, server, bucket, keys)
    repl.start()
    try:
        first = repl.write(4)
        repl.wait_replicated(first)
        target = time.time()
        time.sleep(1.5)  # batch B's uploads are stamped, in whole seconds, after T
        second = repl.write(4)
        repl.wait_replicated(second)
    finally:
        repl.stop()
        repl.conn.close()
    (root / "backups").mkdir()
    secrets = root / "secrets.json"
    secrets.write_text(
        json.dumps({"restore_offsite_identity": repl.identity, "pitr_secret": repl.replica["s3_secret_access_key"]})
    )
    return {"repl": repl, "root": root, "first": first, "second": second, "target": target, "secrets": secrets}


def run_restore(live, *extra):
    repl, root = live["repl"], live["root"]
    inventory = root / "inventory.yml"
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": PYTHON,
        "ansible_become": False,
        "tradingbot_base_dir": str(root),
        "tradingbot_config_dir": str(root / "etc"),
        "tradingbot_offsite_enabled": True,
        "tradingbot_offsite_recipient": repl.replica["recipients"][0],
        "tradingbot_offsite_s3_endpoint": repl.replica["s3_endpoint"],
        "tradingbot_offsite_s3_bucket": repl.replica["s3_bucket"],
        "tradingbot_offsite_s3_access_key_id": repl.replica["s3_access_key_id"],
        "tradingbot_offsite_s3_secret_access_key": "{{ pitr_secret }}",
        "tradingbot_litestream_s3_path": repl.replica["s3_path"],
        "tradingbot_litestream_binary": replication.LITESTREAM,
        # No such units here: the playbook skips stopping and starting them.
        "tradingbot_service_name": "tradingbot-pitr-restore-test-absent",
    }
    inventory.write_text(json.dumps({"all": {"hosts": {"localhost": host}}}))
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(REPO / "playbooks" / "restore.yml")]
    argv += ["-e", f"@{live['secrets']}", *extra]
    with CmdlineWatcher() as watcher:
        proc = subprocess.run(argv, env=ansible_env(), capture_output=True, text=True, check=False)
    return proc, " ".join((proc.stdout + proc.stderr).split()), watcher


def staging_dirs(live):
    return [name for name in os.listdir(live["root"] / "backups") if name.startswith(".pitr-restore-")]


def assert_no_secret(live, proc, watcher):
    secrets = (live["repl"].identity, live["repl"].replica["s3_secret_access_key"])
    for secret in secrets:
        assert secret not in proc.stdout + proc.stderr
        assert all(secret.encode() not in argv for argv in watcher.seen)


def test_check_mode_names_the_replica_range_and_changes_nothing(live):
    before = replication.marker_ids(live["repl"].db)
    # As the shell passes -e restore_target_time="DATE TIME": one argument, split by ansible-core.
    as_typed = replication.iso(live["target"]).replace("T", " ")
    proc, out, watcher = run_restore(live, "--check", "-e", f"restore_target_time={as_typed}")
    assert proc.returncode == 0, out
    assert "Would restore" in out
    assert "from generation" in out
    assert "WAL segment(s)" in out
    assert replication.marker_ids(live["repl"].db) == before
    assert staging_dirs(live) == []
    assert_no_secret(live, proc, watcher)


def test_a_target_before_the_replica_is_refused_with_the_range_and_the_database_untouched(live):
    before = sorted(os.listdir(live["root"] / "data"))
    too_early = replication.iso(live["target"] - 3600)
    proc, out, watcher = run_restore(live, "-e", "restore_confirm=true", "-e", f"restore_target_time={too_early}")
    assert proc.returncode != 0
    assert "is outside the reachable range" in out
    assert sorted(os.listdir(live["root"] / "data")) == before
    assert replication.marker_ids(live["repl"].db) == live["first"] + live["second"]
    assert staging_dirs(live) == [], "the staging dir outlived the refusal"
    assert_no_secret(live, proc, watcher)


def test_a_restore_to_t_puts_back_exactly_the_rows_up_to_t_and_keeps_a_safety_copy(live):
    target = replication.iso(live["target"])
    proc, out, watcher = run_restore(live, "-vvv", "-e", "restore_confirm=true", "-e", f"restore_target_time={target}")
    assert proc.returncode == 0, out
    assert replication.marker_ids(live["repl"].db) == live["first"]
    # The safety copy, beside the WAL it had (moved aside with it).
    safety = [name for name in os.listdir(live["root"] / "data") if re.search(r"\.pre-restore-\d{8}_\d{6}$", name)]
    assert len(safety) == 1
    assert replication.marker_ids(live["root"] / "data" / safety[0]) == live["first"] + live["second"]
    assert staging_dirs(live) == [], "the staging dir outlived the restore"
    assert any(b"restore.yml" in argv for argv in watcher.seen), "the watcher saw the run"
    assert_no_secret(live, proc, watcher)
