"""SQLite backups against real databases, real processes and real filesystems."""

import datetime
import gzip
import hashlib
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils import catalog, fsutil
from ansible_collections.tradingbot.ops.plugins.module_utils import compression as codecs
from ansible_collections.tradingbot.ops.plugins.module_utils.backup import run_backup
from ansible_collections.tradingbot.ops.plugins.module_utils.engines import sqlite_db
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import BackupError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROWS_PER_BATCH = 40
HOST_PYTHON = "/usr/bin/python3"  # the hosts' Python (3.11 on Debian 12), reachable by any user

# Batch n writes ROWS_PER_BATCH ledger rows and one batches row in one transaction, so every
# committed state is "batches 1..n" and can be rebuilt exactly.
SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (batch INTEGER, i INTEGER, amount REAL, note TEXT, PRIMARY KEY (batch, i));
CREATE TABLE IF NOT EXISTS batches (batch INTEGER PRIMARY KEY, total REAL);
"""

WRITER = r"""
import sqlite3, sys
path, journal, rows, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
conn = sqlite3.connect(path, timeout=60, isolation_level=None)
conn.execute("PRAGMA journal_mode=" + journal)
n = conn.execute("SELECT coalesce(max(batch), 0) FROM batches").fetchone()[0]
print("ready", flush=True)
while n < limit:
    n += 1
    values = [(n, i, n * 1000 + i * 0.25, "note %d/%d %s" % (n, i, "x" * (i % 13))) for i in range(rows)]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?)", values)
    conn.execute("INSERT INTO batches VALUES (?, ?)", (n, sum(v[2] for v in values)))
    conn.execute("COMMIT")
"""


def apply_batches(path, first, last):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(SCHEMA)
    conn.execute("BEGIN")
    for n in range(first, last + 1):
        values = [(n, i, n * 1000 + i * 0.25, f"note {n}/{i} {'x' * (i % 13)}") for i in range(ROWS_PER_BATCH)]
        conn.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?)", values)
        conn.execute("INSERT INTO batches VALUES (?, ?)", (n, sum(v[2] for v in values)))
    conn.execute("COMMIT")
    conn.close()


@pytest.fixture
def app_db(tmp_path):
    path = str(tmp_path / "data" / "tradingbot.db")
    os.makedirs(os.path.dirname(path))
    apply_batches(path, 1, 50)
    return path


def opts(db, backup_dir, **extra):
    return {"engine": "sqlite", "database": db, "backup_dir": str(backup_dir), **extra}


def restore_to(backup_path, target):
    """Decompress with the standard tools (not our code) into ``target``."""
    kind = codecs.compression_of(backup_path)
    with open(target, "wb") as out:
        if kind == "none":
            with open(backup_path, "rb") as src:
                shutil.copyfileobj(src, out)
        else:
            tool = ["gzip", "-dc", backup_path] if kind == "gzip" else ["zstd", "-dcq", backup_path]
            subprocess.run(tool, stdout=out, check=True)
    conn = sqlite3.connect(target)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    return target


def dir_state(path):
    """Names, sizes, mtimes and hashes of everything in a directory but the lock file."""
    state = {}
    for name in sorted(os.listdir(path)):
        if name.endswith("_backup.lock"):
            continue
        full = os.path.join(path, name)
        stat = os.stat(full)
        with open(full, "rb") as handle:
            state[name] = (stat.st_size, stat.st_mtime_ns, stat.st_mode, hashlib.sha256(handle.read()).hexdigest())
    return state


def age_backup(path, days, keep=False):
    """Rename (or with ``keep``, copy) a backup and its manifest as if taken ``days`` ago."""
    parsed = catalog.parse_backup_name(os.path.basename(path))
    moment = parsed["timestamp"] - datetime.timedelta(days=days)
    name = catalog.backup_name(parsed["engine"], moment, parsed["format"], codecs.compression_of(path))
    new = os.path.join(os.path.dirname(path), name)
    manifest = catalog.read_manifest(path)
    manifest["file"] = name
    fsutil.write_json_atomic(catalog.manifest_path(new), manifest)
    if keep:
        shutil.copy2(path, new)
    else:
        os.unlink(catalog.manifest_path(path))
        os.rename(path, new)
    return new


def aged_backups(db, backup_dir, ages):
    """One real backup, cloned under older names: ``ages`` in days, returned in that order."""
    first = run_backup(opts(db, backup_dir))["path"]
    paths = [age_backup(first, days, keep=True) for days in ages]
    os.unlink(catalog.manifest_path(first))
    os.unlink(first)
    return paths


def run_cli(config, tmp_path, env=None, python=sys.executable):
    """Run the host-side CLI as the timer does: python3 -m tradingbot_ops.backup_cli."""
    lib = tmp_path / "lib"
    if not lib.exists():
        lib.mkdir()
        os.symlink(os.path.join(REPO, "plugins", "module_utils"), lib / "tradingbot_ops")
    config_path = tmp_path / "backup.json"
    config_path.write_text(json.dumps(config))
    return subprocess.Popen(
        [python, "-m", "tradingbot_ops.backup_cli", "--config", str(config_path)],
        env={**os.environ, **(env or {}), "PYTHONPATH": str(lib)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_snapshot_is_a_committed_state_under_a_concurrent_writer(tmp_path, app_db, journal):
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, app_db, journal, str(ROWS_PER_BATCH), "3000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        results = [
            run_backup(opts(app_db, tmp_path / "bk", compression="none", content_digest=True)) for _run in range(3)
        ]
    finally:
        writer.kill()
        writer.wait()
    seen = set()
    for result in results:
        restored = restore_to(result["path"], str(tmp_path / "restored.db"))
        conn = sqlite3.connect(restored)
        last = conn.execute("SELECT max(batch) FROM batches").fetchone()[0]
        conn.close()
        seen.add(last)
        reference = str(tmp_path / "reference.db")
        apply_batches(reference, 1, last)
        assert sqlite_db.sqlite_table_counts(restored) == sqlite_db.sqlite_table_counts(reference)
        assert sqlite_db.sqlite_content_digest(restored) == sqlite_db.sqlite_content_digest(reference)
        manifest = catalog.read_manifest(result["path"])
        assert manifest["tables"] == {"batches": last, "ledger": last * ROWS_PER_BATCH}
        assert manifest["content_digest"] == sqlite_db.sqlite_content_digest(reference)
        os.unlink(restored)
        os.unlink(reference)
    # The writer really ran between the backups.
    assert max(seen) > 50


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_backup_restores_and_its_manifest_is_right(tmp_path, app_db, compression):
    backup_dir = tmp_path / "bk"
    result = run_backup(opts(app_db, backup_dir, compression=compression, content_digest=True))
    path = result["path"]
    suffix = {"gzip": ".db.gz", "zstd": ".db.zst", "none": ".db"}[compression]
    assert os.path.basename(path).startswith("sqlite_backup_")
    assert path.endswith(suffix)
    assert result["changed"] is True
    restored = restore_to(path, str(tmp_path / "restored.db"))
    assert sqlite_db.sqlite_content_digest(restored) == sqlite_db.sqlite_content_digest(app_db)

    manifest = catalog.read_manifest(path)
    assert set(catalog.MANIFEST_KEYS) <= set(manifest)
    with open(path, "rb") as handle:
        assert manifest["sha256"] == hashlib.sha256(handle.read()).hexdigest() == result["sha256"]
    assert manifest["size"] == os.path.getsize(path) == result["size"]
    assert manifest["uncompressed_size"] == os.path.getsize(restored)
    assert manifest["file"] == os.path.basename(path)
    assert manifest["created_by"] == "tradingbot.ops"
    assert manifest["engine"] == "sqlite"
    assert manifest["compression"] == compression
    assert manifest["tables"] == {"batches": 50, "ledger": 50 * ROWS_PER_BATCH}
    assert manifest["content_digest"] == sqlite_db.sqlite_content_digest(app_db)
    assert manifest["verification"]["ok"] is True
    assert "integrity_check ok" in manifest["verification"]["detail"]
    assert manifest["source"]["path"] == app_db
    assert manifest["tool_versions"]["sqlite"] == sqlite3.sqlite_version
    started = datetime.datetime.strptime(manifest["started_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert os.path.basename(path).startswith("sqlite_backup_" + started.strftime("%Y%m%d_%H%M%S"))
    # Only the backup, its manifest and the lock file: no temp files or snapshots left.
    assert sorted(os.listdir(backup_dir)) == sorted(
        [os.path.basename(path), os.path.basename(path) + ".manifest.json", ".sqlite_backup.lock"]
    )
    assert catalog.list_backups(str(backup_dir), "sqlite")[0]["path"] == path


def test_file_modes_and_owner(tmp_path, app_db):
    nobody = pwd.getpwnam("nobody")
    result = run_backup(opts(app_db, tmp_path / "bk", owner="nobody", group=str(nobody.pw_gid)))
    for path in (result["path"], result["manifest"]):
        stat = os.stat(path)
        assert stat.st_mode & 0o7777 == 0o640
        assert (stat.st_uid, stat.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert os.stat(catalog.lock_path(str(tmp_path / "bk"), "sqlite")).st_mode & 0o777 == 0o600
    result = run_backup(opts(app_db, tmp_path / "bk2", mode="0600"))
    assert os.stat(result["path"]).st_mode & 0o7777 == 0o600


def test_retention_keeps_the_newest_verified_and_never_touches_foreign_files(tmp_path, app_db):
    backup_dir = tmp_path / "bk"
    old = aged_backups(app_db, backup_dir, (30, 20, 10))
    foreign = [
        backup_dir / "sqlite_backup_20200101_000000.db.gz",  # our name, no manifest
        backup_dir / "notes.txt",
    ]
    for path in foreign:
        path.write_bytes(b"not ours")
    # Our name and a manifest, but written by someone else.
    other = backup_dir / "sqlite_backup_20200102_000000.db.gz"
    other.write_bytes(b"x")
    fsutil.write_json_atomic(
        catalog.manifest_path(str(other)), {"created_by": "someone", "file": other.name, "verification": {"ok": True}}
    )

    # Every managed backup is older than the age limit, and the keep-verified rule protects 2.
    result = run_backup(opts(app_db, backup_dir, retention_days=7, retention_keep_verified=2))
    assert sorted(result["deleted"]) == sorted(old[:2])
    assert sorted(result["kept"]) == sorted([result["path"], old[2]])
    for path in [*foreign, other, old[2], result["path"]]:
        assert os.path.exists(path)
    for path in old[:2]:
        assert not os.path.exists(path)
        assert not os.path.exists(catalog.manifest_path(path))


def test_a_failed_backup_leaves_old_backups_and_skips_retention(tmp_path, app_db):
    backup_dir = tmp_path / "bk"
    expired, expired2 = aged_backups(app_db, backup_dir, (30, 29))
    before = dir_state(backup_dir)
    # Corrupt a table page while keeping the header: the snapshot fails integrity_check.
    with open(app_db, "r+b") as handle:
        handle.seek(4096 * (os.path.getsize(app_db) // 4096 // 2))
        handle.write(os.urandom(4096))
    with pytest.raises(BackupError, match="integrity_check"):
        run_backup(opts(app_db, backup_dir, retention_days=1, log_file=str(tmp_path / "backup.log")))
    assert dir_state(backup_dir) == before
    assert os.path.exists(expired)
    assert os.path.exists(expired2)
    assert "ERROR" in (tmp_path / "backup.log").read_text()


def test_lock_contention_fails_with_a_clear_message_or_waits(tmp_path, app_db):
    backup_dir = tmp_path / "bk"
    backup_dir.mkdir()
    config = opts(app_db, backup_dir, lock_timeout=0, log_file=str(tmp_path / "backup.log"))
    with catalog.dir_lock(str(backup_dir), "sqlite", 0):
        proc = run_cli(config, tmp_path)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1
        assert err.count("\n") == 1
        assert "another sqlite backup or restore is running" in err
        assert f"held by pid {os.getpid()}" in err

        # A waiting run blocks until the lock is released, then succeeds.
        waiting = run_cli(dict(config, lock_timeout=60), tmp_path)
        time.sleep(0.5)
        assert waiting.poll() is None
        assert catalog.list_backups(str(backup_dir)) == []
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert json.loads(out)["path"].startswith(str(backup_dir))
    assert len(catalog.list_backups(str(backup_dir))) == 1
    assert "another sqlite backup or restore is running" in (tmp_path / "backup.log").read_text()


@pytest.fixture
def big_db(tmp_path):
    """50 MiB of incompressible rows: a gzip -9 backup of it takes long enough to interrupt."""
    db = str(tmp_path / "big.db")
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
    conn.executemany("INSERT INTO blobs (data) VALUES (randomblob(65536))", [()] * 800)
    conn.commit()
    conn.close()
    return db


def interrupt_mid_backup(proc, backup_dir, signum):
    """Send ``signum`` once the backup's temp file has data; fail if the backup ended first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if [n for n in os.listdir(backup_dir) if ".tmp-" in n and os.path.getsize(backup_dir / n) > 0]:
            proc.send_signal(signum)
            return proc.communicate(timeout=60)
        time.sleep(0.005)
    raise AssertionError("the backup finished before it could be interrupted")


def test_kill_9_mid_backup_leaves_nothing_that_looks_valid(tmp_path, big_db):
    backup_dir = tmp_path / "bk"
    backup_dir.mkdir()
    proc = run_cli(opts(big_db, backup_dir, compression_level=9), tmp_path)
    interrupt_mid_backup(proc, backup_dir, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    leftovers = os.listdir(backup_dir)
    assert [n for n in leftovers if ".tmp-" in n]  # the kill really hit mid-write
    assert not [n for n in leftovers if catalog.BACKUP_NAME_RE.match(n)]
    assert catalog.list_backups(str(backup_dir)) == []

    result = run_backup(opts(big_db, backup_dir, compression="zstd"))
    assert [b["path"] for b in catalog.list_backups(str(backup_dir))] == [result["path"]]
    names = os.listdir(backup_dir)
    assert not [n for n in names if ".tmp-" in n or ".snapshot-" in n]


def test_sigterm_mid_backup_cleans_up_and_fails_clearly(tmp_path, big_db):
    backup_dir = tmp_path / "bk"
    backup_dir.mkdir()
    proc = run_cli(opts(big_db, backup_dir, compression_level=9), tmp_path)
    interrupt_mid_backup(proc, backup_dir, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM
    assert sorted(os.listdir(backup_dir)) == [".sqlite_backup.lock"]
    # The lock went with the process.
    with catalog.dir_lock(str(backup_dir), "sqlite", 0):
        pass


def test_leftovers_of_this_engine_only_are_cleaned(tmp_path, app_db):
    backup_dir = tmp_path / "bk"
    backup_dir.mkdir()
    own_temp = backup_dir / ".sqlite_backup_20250101_000000.db.gz.tmp-99999"
    own_snapshot = backup_dir / ".sqlite_backup_20250101_000000.db.gz.snapshot-99999"
    other_temp = backup_dir / ".postgres_backup_20250101_000000.sql.gz.tmp-99999"
    foreign = backup_dir / ".sqlite_backup_notes"
    for path in (own_temp, own_snapshot, other_temp, foreign):
        path.write_bytes(b"partial")
    orphan = backup_dir / "sqlite_backup_20250101_000000.db.gz.manifest.json"
    fsutil.write_json_atomic(str(orphan), {"created_by": "tradingbot.ops", "file": orphan.name[:-14]})
    other_orphan = backup_dir / "postgres_backup_20250101_000000.sql.gz.manifest.json"
    fsutil.write_json_atomic(str(other_orphan), {"created_by": "tradingbot.ops", "file": other_orphan.name[:-14]})
    log = tmp_path / "backup.log"
    run_backup(opts(app_db, backup_dir, log_file=str(log)))
    for path in (own_temp, own_snapshot, orphan):
        assert not path.exists()
        assert f"removed leftover of an interrupted run: {path}" in log.read_text()
    for path in (other_temp, foreign, other_orphan):
        assert path.exists()


@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.parametrize("blob_mib", [4, 8], ids=["output-does-not-fit", "snapshot-does-not-fit"])
def test_full_disk_fails_clearly_and_keeps_older_backups(tmp_path, small_fs, blob_mib):
    db = str(tmp_path / "grow.db")
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
    conn.execute("INSERT INTO blobs (data) VALUES (randomblob(1000))")
    conn.commit()
    first = run_backup(opts(db, small_fs))
    before = dir_state(small_fs)
    conn.executemany("INSERT INTO blobs (data) VALUES (randomblob(65536))", [()] * (16 * blob_mib))
    conn.commit()
    conn.close()
    with pytest.raises(BackupError, match="no space left on device; older backups are untouched"):
        run_backup(opts(db, small_fs, retention_days=0, retention_count=1))
    assert dir_state(small_fs) == before
    assert fsutil.sha256_file(first["path"]) == catalog.read_manifest(first["path"])["sha256"]


def test_check_mode_changes_nothing_and_predicts_retention(tmp_path, app_db):
    backup_dir = tmp_path / "bk"
    old = aged_backups(app_db, backup_dir, (30, 20))
    before = dir_state(backup_dir)
    db_before = dir_state(os.path.dirname(app_db))
    # Pinned to the newest verified backup only, so the old ones are due (the default keeps 3).
    config = opts(app_db, backup_dir, log_file=str(tmp_path / "log"), metrics_dir=str(tmp_path))
    planned = run_backup(dict(config, retention_keep_verified=1), True)
    assert dir_state(backup_dir) == before
    assert dir_state(os.path.dirname(app_db)) == db_before
    assert not (tmp_path / "log").exists()
    assert not (tmp_path / "tradingbot_backup_sqlite.prom").exists()
    assert planned["changed"] is True
    assert os.path.dirname(planned["path"]) == str(backup_dir)
    assert sorted(planned["deleted"]) == sorted(old)
    real = run_backup(opts(app_db, backup_dir, retention_keep_verified=1))
    assert real["deleted"] == planned["deleted"]
    # A backup dir that does not exist yet is not created in check mode.
    run_backup(opts(app_db, tmp_path / "new"), check_mode=True)
    assert not (tmp_path / "new").exists()


def _readonly_dir(tmp_path):
    path = tmp_path / "ro"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("not-sqlite", "is not a SQLite database"),
        ("directory", "is not a regular file"),
        ("backup-dir-is-file", "is not a directory"),
        ("backup-dir-read-only", "is not writable"),
        ("wrong-type", "must be an integer"),
        ("unknown-compression", "compression must be one of"),
        ("zstd-absent", "zstd binary is not installed"),
        ("level", "compression_level for gzip must be 1..9"),
        ("custom-sqlite", "format custom applies only to engine postgresql"),
        ("owner", "owner 'no-such-user' does not exist"),
    ],
)
def test_bad_input_fails_clearly_and_keeps_backups(tmp_path, app_db, monkeypatch, case, message):  # noqa: PLR0912
    backup_dir = tmp_path / "bk"
    kept = run_backup(opts(app_db, backup_dir))
    before = dir_state(backup_dir)
    options = opts(app_db, backup_dir)
    if case == "missing":
        options["database"] = str(tmp_path / "nope.db")
    elif case == "not-sqlite":
        (tmp_path / "text.db").write_text("hello")
        options["database"] = str(tmp_path / "text.db")
    elif case == "directory":
        options["database"] = str(tmp_path)
    elif case == "backup-dir-is-file":
        (tmp_path / "file").write_text("")
        options["backup_dir"] = str(tmp_path / "file" / "sub")
    elif case == "backup-dir-read-only":
        if os.geteuid() != 0:
            pytest.skip("needs root to mount")
        options["backup_dir"] = str(_readonly_dir(tmp_path))
    elif case == "wrong-type":
        options["retention_days"] = "seven"
    elif case == "unknown-compression":
        options["compression"] = "lz4"
    elif case == "zstd-absent":
        monkeypatch.setenv("PATH", "/nonexistent")
        options["compression"] = "zstd"
    elif case == "level":
        options["compression_level"] = 12
    elif case == "custom-sqlite":
        options["format"] = "custom"
    elif case == "owner":
        options["owner"] = "no-such-user"
    try:
        with pytest.raises(BackupError, match=message):
            run_backup(options)
    finally:
        if case == "backup-dir-read-only":
            subprocess.run(["umount", "-l", options["backup_dir"]], check=True)
    assert dir_state(backup_dir) == before
    assert fsutil.sha256_file(kept["path"]) == kept["sha256"]


def test_cli_exit_codes_log_and_metrics(tmp_path, app_db):
    backup_dir = tmp_path / "bk"
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    log = tmp_path / "backup.log"
    config = opts(app_db, backup_dir, log_file=str(log), metrics_dir=str(metrics))
    # The hosts' own Python when there is one: the timer runs there, stdlib only.
    proc = run_cli(config, tmp_path, python=HOST_PYTHON if os.path.exists(HOST_PYTHON) else sys.executable)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["sha256"] == catalog.read_manifest(summary["path"])["sha256"]
    prom = (metrics / "tradingbot_backup_sqlite.prom").read_text()
    assert "tradingbot_backup_last_result{" in prom
    success_line = next(line for line in prom.splitlines() if line.startswith("tradingbot_backup_last_success"))
    assert 'engine="sqlite"' in success_line

    proc = run_cli(dict(config, database=str(tmp_path / "gone.db")), tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert out == ""
    assert err.strip().splitlines() == [f"tradingbot backup failed: SQLite database {tmp_path}/gone.db does not exist"]
    assert "does not exist" in log.read_text().splitlines()[-1]
    prom = (metrics / "tradingbot_backup_sqlite.prom").read_text()
    assert "tradingbot_backup_last_result{" in prom
    assert next(line for line in prom.splitlines() if line.startswith("tradingbot_backup_last_result")).endswith(" 0")
    # The last success survives a failure, so staleness alerts keep working.
    carried = next(line for line in prom.splitlines() if line.startswith("tradingbot_backup_last_success"))
    assert carried.split()[-1] == success_line.split()[-1]

    (tmp_path / "backup.json").write_text("{not json")
    proc = subprocess.run(
        [sys.executable, "-m", "tradingbot_ops.backup_cli", "--config", str(tmp_path / "backup.json")],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "lib")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "cannot read config" in proc.stderr


def test_cli_main_in_process(tmp_path, app_db, capsys):
    from ansible_collections.tradingbot.ops.plugins.module_utils import backup_cli  # noqa: PLC0415

    config = tmp_path / "backup.json"
    config.write_text(json.dumps(opts(app_db, tmp_path / "bk", compression="zstd")))
    assert backup_cli.main(["--config", str(config), "--check"]) == 0
    assert not (tmp_path / "bk").exists()
    assert json.loads(capsys.readouterr().out)["path"].endswith(".db.zst")
    assert backup_cli.main(["--config", str(config)]) == 0
    assert len(catalog.list_backups(str(tmp_path / "bk"), "sqlite")) == 1
    config.write_text(json.dumps(opts(app_db, tmp_path / "bk", compression="lz4")))
    assert backup_cli.main(["--config", str(config)]) == 1
    assert capsys.readouterr().err.startswith("tradingbot backup failed: option compression must be one of")
    assert backup_cli.main(["--config", str(tmp_path / "missing.json")]) == 2


def test_gzip_output_is_standard(tmp_path, app_db):
    result = run_backup(opts(app_db, tmp_path / "bk", compression_level=1))
    subprocess.run(["gzip", "-t", result["path"]], check=True)
    with gzip.open(result["path"]) as handle:
        assert handle.read(16) == b"SQLite format 3\x00"


def test_two_runs_in_one_second_get_distinct_names(tmp_path, app_db):
    backup_dir = tmp_path / "bk"
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(run_backup(opts(app_db, backup_dir)))) for _run in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r["path"] for r in results}) == 2
    assert len(catalog.list_backups(str(backup_dir))) == 2


def test_compression_workers_bound():
    assert 1 <= codecs.compression_workers() <= 4


@pytest.mark.skipif(
    not os.path.exists(os.path.join(os.path.dirname(sys.executable), "ansible-playbook")), reason="no ansible"
)
def test_backup_playbook_plans_then_writes(tmp_path):
    base = tmp_path / "opt"
    for sub in ("data", "logs"):
        (base / sub).mkdir(parents=True)
    apply_batches(str(base / "data" / "tradingbot.db"), 1, 3)
    venv_bin = os.path.dirname(sys.executable)
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": os.path.join(REPO, ".pytest_cache", "collections"),
        "PATH": venv_bin + os.pathsep + os.environ["PATH"],
    }
    argv = [
        os.path.join(venv_bin, "ansible-playbook"),
        "-i",
        "localhost,",
        "-c",
        "local",
        os.path.join(REPO, "playbooks", "backup.yml"),
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-e",
        f"tradingbot_base_dir={base}",
        # This machine has no service user: root stands in (the run entry point becomes it).
        "-e",
        "tradingbot_user=root",
        "-e",
        "tradingbot_group=root",
    ]
    planned = subprocess.run([*argv, "--check"], env=env, capture_output=True, text=True, check=False)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "Would write" in planned.stdout
    assert not (base / "backups").exists()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    (backup,) = catalog.list_backups(str(base / "backups"), "sqlite")
    assert backup["manifest"]["tables"] == {"batches": 3, "ledger": 3 * ROWS_PER_BATCH}
    assert "backup written" in (base / "logs" / "backup.log").read_text()


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(HOST_PYTHON), reason="needs root and /usr/bin/python3")
def test_unreadable_database_fails_clearly(app_db):
    # tmp_path is private to root; the unprivileged run needs a directory it can traverse.
    root = tempfile.mkdtemp(prefix="tradingbot-unreadable-")
    try:
        os.chmod(root, 0o755)  # noqa: S103 - the unprivileged user must traverse it
        nobody = pwd.getpwnam("nobody")
        db = os.path.join(root, "tradingbot.db")
        shutil.copy(app_db, db)
        os.chmod(db, 0o600)
        backup_dir = os.path.join(root, "bk")
        kept = run_backup(opts(db, backup_dir))
        os.chown(backup_dir, nobody.pw_uid, nobody.pw_gid)
        lib = os.path.join(root, "lib")
        os.mkdir(lib)
        os.symlink(os.path.join(REPO, "plugins", "module_utils"), os.path.join(lib, "tradingbot_ops"))
        config = os.path.join(root, "backup.json")
        with open(config, "w", encoding="utf-8") as handle:
            json.dump(opts(db, backup_dir), handle)
        os.chmod(config, 0o644)
        proc = subprocess.run(
            ["runuser", "-u", "nobody", "--", HOST_PYTHON, "-m", "tradingbot_ops.backup_cli", "--config", config],
            env={**os.environ, "PYTHONPATH": lib},
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr == f"tradingbot backup failed: cannot read SQLite database {db}: Permission denied\n"
        assert [b["path"] for b in catalog.list_backups(backup_dir)] == [kept["path"]]
        assert fsutil.sha256_file(kept["path"]) == kept["sha256"]
    finally:
        shutil.rmtree(root)
