"""db_restore's engine against real SQLite files and real backups from the backup engine."""

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils import catalog, restore
from ansible_collections.tradingbot.ops.plugins.module_utils.backup import run_backup
from ansible_collections.tradingbot.ops.plugins.module_utils.catalog import manifest_path, read_manifest
from ansible_collections.tradingbot.ops.plugins.module_utils.engines.sqlite_db import sqlite_content_digest
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import RestoreError
from ansible_collections.tradingbot.ops.plugins.module_utils.fsutil import write_json_atomic
from damage import corrupt_flip, corrupt_manifest_checksum, corrupt_truncate


def write_rows(db, first, count, wal=True):
    conn = sqlite3.connect(db)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS trades (id INTEGER PRIMARY KEY, symbol TEXT, qty REAL)")
    conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, note TEXT)")
    conn.executemany(
        "INSERT INTO trades VALUES (?, ?, ?)", [(i, f"SYM{i % 7}", i * 0.5) for i in range(first, first + count)]
    )
    conn.executemany("INSERT INTO orders VALUES (?, ?)", [(i, "n" * (i % 50)) for i in range(first, first + count)])
    conn.commit()
    conn.close()


def content_of(db):
    """Content digest of a database (with its -wal), read from a copy: reading a WAL-mode file
    in place would leave -wal/-shm files behind and blur what the restore itself left."""
    with tempfile.TemporaryDirectory() as probe:
        for suffix in ("", "-wal"):
            if os.path.exists(db + suffix):
                shutil.copyfile(db + suffix, os.path.join(probe, "p.db" + suffix))
        return sqlite_content_digest(os.path.join(probe, "p.db"))


def tree_state(directory):
    """Name -> sha256 of every file in a directory: proves nothing changed, sidecars included."""
    state = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as handle:
            state[name] = hashlib.sha256(handle.read()).hexdigest()
    return state


@pytest.fixture
def site(tmp_path):
    """A live WAL-mode database with one verified backup, then changed after the backup."""
    data, backups = tmp_path / "data", tmp_path / "backups"
    data.mkdir()
    backups.mkdir()
    db = str(data / "tradingbot.db")
    write_rows(db, 0, 500)
    os.chown(db, 65534, 65534)
    os.chmod(db, 0o600)
    backed_up = content_of(db)
    backup = run_backup({"engine": "sqlite", "database": db, "backup_dir": str(backups), "content_digest": True})
    write_rows(db, 1000, 50)
    return {
        "db": db,
        "data": str(data),
        "backup_dir": str(backups),
        "backup": backup["path"],
        "backed_up": backed_up,
        "current": content_of(db),
    }


def test_round_trip_restores_the_backup_and_keeps_the_old_database(site):
    assert site["current"] != site["backed_up"]
    inode_before = os.stat(site["db"]).st_ino

    result = restore.restore_sqlite(site["db"], site["backup_dir"])

    assert result["changed"] is True
    assert result["rolled_back"] is False
    assert result["validation"]["ok"] is True
    assert result["validation"]["checks"]["content_digest"]["ok"] is True
    assert result["backup"]["path"] == site["backup"]
    assert content_of(site["db"]) == site["backed_up"]
    assert content_of(site["db"]) == read_manifest(site["backup"])["content_digest"]
    st = os.stat(site["db"])
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (65534, 65534, 0o600)
    safety = result["safety_copy"]
    assert sorted(os.listdir(site["data"])) == sorted(["tradingbot.db", os.path.basename(safety)])
    assert os.stat(safety).st_ino == inode_before
    assert content_of(safety) == site["current"]
    with open(site["db"], "rb") as handle:
        header = handle.read(20)
    assert header[18:20] == b"\x02\x02"  # WAL mode, as the source was: it lives in the file


def test_rollback_puts_exactly_the_previous_database_back(site):
    inode_before = os.stat(site["db"]).st_ino
    result = restore.restore_sqlite(site["db"], site["backup_dir"])

    back = restore.run_restore(
        {
            "engine": "sqlite",
            "database": site["db"],
            "backup_dir": site["backup_dir"],
            "operation": "rollback",
            "safety_copy": result["safety_copy"],
        }
    )

    assert back["rolled_back"] is True
    assert os.listdir(site["data"]) == ["tradingbot.db"]
    assert os.stat(site["db"]).st_ino == inode_before
    assert content_of(site["db"]) == site["current"]


def test_uncheckpointed_wal_goes_with_the_safety_copy_and_is_not_replayed(site):
    # A writer that dies without closing leaves committed transactions only in the -wal file.
    code = (
        "import os, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1])\n"
        "conn.execute('PRAGMA wal_autocheckpoint=0')\n"
        "conn.executemany('INSERT INTO trades VALUES (?, ?, ?)', [(i, 'WAL', 1.0) for i in range(5000, 5300)])\n"
        "conn.commit()\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, site["db"]], check=True)
    assert os.path.getsize(site["db"] + "-wal") > 0
    with_wal = content_of(site["db"])
    assert with_wal != site["current"]

    result = restore.restore_sqlite(site["db"], site["backup_dir"])

    assert sorted(os.listdir(site["data"])) == sorted(
        ["tradingbot.db", os.path.basename(result["safety_copy"]), os.path.basename(result["safety_copy"]) + "-wal"]
    )
    assert content_of(site["db"]) == site["backed_up"]
    assert content_of(result["safety_copy"]) == with_wal


@pytest.mark.parametrize("corrupt", [corrupt_flip, corrupt_truncate, corrupt_manifest_checksum])
def test_corrupt_backup_is_refused_and_live_database_untouched(site, corrupt):
    corrupt(site["backup"])
    before = tree_state(site["data"])

    with pytest.raises(RestoreError) as info:
        restore.restore_sqlite(site["db"], site["backup_dir"], backup_file=os.path.basename(site["backup"]))

    result = info.value.result
    assert "refused" in str(info.value)
    assert result["changed"] is False
    assert result["live_untouched"] is True
    assert result["safety_copy"] is None
    assert result["validation"]["checks"]["preflight"]["ok"] is False
    assert tree_state(site["data"]) == before


@pytest.mark.parametrize("field", ["tables", "content_digest"])
def test_restore_failing_validation_leaves_exactly_the_previous_content(site, field):
    # The archive is intact (its SHA-256 still matches), but the restored data disagrees
    # with what the manifest says it must contain.
    manifest = read_manifest(site["backup"])
    if field == "tables":
        manifest["tables"]["trades"] += 1
    else:
        manifest["content_digest"] = hashlib.sha256(b"other data").hexdigest()
    write_json_atomic(manifest_path(site["backup"]), manifest)
    before = tree_state(site["data"])

    with pytest.raises(RestoreError) as info:
        restore.restore_sqlite(site["db"], site["backup_dir"])

    result = info.value.result
    check = "row_counts" if field == "tables" else "content_digest"
    assert result["validation"]["checks"][check]["ok"] is False
    assert result["validation"]["ok"] is False
    assert result["live_untouched"] is True
    assert tree_state(site["data"]) == before
    assert content_of(site["db"]) == site["current"]
    if field == "tables":
        assert result["validation"]["checks"]["row_counts"]["mismatches"] == {
            "trades": {"expected": 501, "actual": 500}
        }


def test_names_escaping_the_backup_dir_are_refused(site, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = run_backup({"engine": "sqlite", "database": site["db"], "backup_dir": str(elsewhere)})["path"]
    name = os.path.basename(other)
    link = os.path.join(site["backup_dir"], "sqlite_backup_20000101_000000.db.gz")
    os.symlink(other, link)
    before = tree_state(site["data"])

    for bad in (f"../elsewhere/{name}", other, f"./{name}", "..", "/etc/passwd", link, os.path.basename(link)):
        with pytest.raises(RestoreError) as info:
            restore.restore_sqlite(site["db"], site["backup_dir"], backup_file=bad)
        assert "refusing" in str(info.value), bad
        assert info.value.result["live_untouched"] is True

    assert tree_state(site["data"]) == before
    # An absolute path directly inside the backup dir is the same as its name.
    result = restore.restore_sqlite(site["db"], site["backup_dir"], backup_file=site["backup"])
    assert result["backup"]["path"] == site["backup"]


def test_check_mode_plans_and_changes_nothing(site):
    before_data, before_backups = tree_state(site["data"]), tree_state(site["backup_dir"])

    result = restore.restore_sqlite(site["db"], site["backup_dir"], check_mode=True)

    assert result["changed"] is True
    assert result["plan"]["over"] == site["db"]
    assert result["plan"]["safety_copy"].startswith(site["db"] + ".pre-restore-")
    assert result["validation"]["checks"]["preflight"]["ok"] is True
    assert tree_state(site["data"]) == before_data
    assert tree_state(site["backup_dir"]) == before_backups


def test_check_mode_reports_a_corrupt_backup(site):
    corrupt_flip(site["backup"])
    with pytest.raises(RestoreError) as info:
        restore.restore_sqlite(site["db"], site["backup_dir"], check_mode=True)
    assert "would be refused" in str(info.value)


def test_latest_verified_backup_is_chosen_and_list_shows_manifests(site):
    newer = run_backup({"engine": "sqlite", "database": site["db"], "backup_dir": site["backup_dir"]})["path"]
    if os.path.basename(newer) == os.path.basename(site["backup"]):
        pytest.fail("two backups in the same second share a name")
    manifest = read_manifest(newer)
    manifest["verification"]["ok"] = False
    write_json_atomic(manifest_path(newer), manifest)

    listed = catalog.list_restorable(site["backup_dir"], "sqlite")
    assert [entry["path"] for entry in listed] == [newer, site["backup"]]
    assert [entry["verified"] for entry in listed] == [False, True]
    assert listed[1]["tables"] == {"orders": 500, "trades": 500}

    result = restore.restore_sqlite(site["db"], site["backup_dir"])
    assert result["backup"]["path"] == site["backup"]


def test_no_verified_backup_is_a_refusal(tmp_path):
    db = str(tmp_path / "t.db")
    write_rows(db, 0, 3)
    (tmp_path / "b").mkdir()
    with pytest.raises(RestoreError) as info:
        restore.restore_sqlite(db, str(tmp_path / "b"))
    assert "no verified sqlite backup" in str(info.value)
    assert json.dumps(info.value.result)  # the result is plain data for the module


def test_restore_onto_a_missing_database_creates_it(site):
    os.unlink(site["db"])
    result = restore.restore_sqlite(site["db"], site["backup_dir"])
    assert result["safety_copy"] is None
    assert content_of(site["db"]) == site["backed_up"]


def test_zstd_backup_round_trip_and_corruption(site, tmp_path):
    zstd_dir = tmp_path / "zstd"
    zstd_dir.mkdir()
    good = run_backup({"engine": "sqlite", "database": site["db"], "backup_dir": str(zstd_dir), "compression": "zstd"})
    expected = content_of(site["db"])
    write_rows(site["db"], 9000, 10)
    bad_dir = tmp_path / "zstd-bad"
    bad_dir.mkdir()
    for name in (os.path.basename(good["path"]), os.path.basename(manifest_path(good["path"]))):
        shutil.copyfile(zstd_dir / name, bad_dir / name)
    corrupt_flip(str(bad_dir / os.path.basename(good["path"])))
    manifest = read_manifest(str(bad_dir / os.path.basename(good["path"])))
    manifest["sha256"] = hashlib.sha256((bad_dir / os.path.basename(good["path"])).read_bytes()).hexdigest()
    write_json_atomic(manifest_path(str(bad_dir / os.path.basename(good["path"]))), manifest)
    before = tree_state(site["data"])

    # Even with a manifest that matches the damaged file, zstd's own checksum refuses it.
    with pytest.raises(RestoreError, match="refused"):
        restore.restore_sqlite(site["db"], str(bad_dir))
    assert tree_state(site["data"]) == before

    result = restore.restore_sqlite(site["db"], str(zstd_dir))
    assert result["backup"]["compression"] == "zstd"
    assert content_of(site["db"]) == expected


def test_gzip_damage_behind_a_matching_checksum_is_caught_by_the_decode(site):
    # An archive rewritten together with its manifest's SHA-256 (say, by a faulty copy tool):
    # the checksum passes, so only the full decode can refuse it.
    corrupt_flip(site["backup"])
    manifest = read_manifest(site["backup"])
    with open(site["backup"], "rb") as handle:
        manifest["sha256"] = hashlib.sha256(handle.read()).hexdigest()
    write_json_atomic(manifest_path(site["backup"]), manifest)
    before = tree_state(site["data"])

    with pytest.raises(RestoreError) as info:
        restore.restore_sqlite(site["db"], site["backup_dir"])

    assert "unreadable" in str(info.value) or "decoded" in str(info.value)
    assert tree_state(site["data"]) == before


def test_leftovers_of_an_interrupted_restore_are_removed_by_the_next_one(site):
    # What kill -9 during the decode leaves: a hidden, partial temp file (and maybe its -shm).
    leftover = os.path.join(site["data"], ".tradingbot.db.restore-abc123.tmp")
    with open(leftover, "wb") as handle:
        handle.write(b"SQLite format 3\x00" + b"\x00" * 4000)
    with open(leftover + "-shm", "wb") as handle:
        handle.write(b"\x00" * 100)
    unrelated = os.path.join(site["data"], ".other.db.restore-abc123.tmp")
    with open(unrelated, "wb") as handle:
        handle.write(b"not ours")

    result = restore.restore_sqlite(site["db"], site["backup_dir"])

    assert any("interrupted restore" in step for step in result["steps"])
    assert sorted(os.listdir(site["data"])) == sorted(
        ["tradingbot.db", os.path.basename(result["safety_copy"]), os.path.basename(unrelated)]
    )
    assert content_of(site["db"]) == site["backed_up"]


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs: a data directory that cannot hold the restored copy."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)], check=False)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_data_dir_without_room_for_the_copy_is_refused_untouched(small_disk, tmp_path):
    big = str(tmp_path / "big.db")
    conn = sqlite3.connect(big)
    conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
    conn.executemany("INSERT INTO blobs VALUES (?, randomblob(65536))", [(i,) for i in range(300)])
    conn.commit()
    conn.close()
    (tmp_path / "b").mkdir()
    run_backup({"engine": "sqlite", "database": big, "backup_dir": str(tmp_path / "b")})
    live = str(small_disk / "tradingbot.db")
    write_rows(live, 0, 10, wal=False)
    before = tree_state(str(small_disk))

    with pytest.raises(RestoreError, match="bytes free") as info:
        restore.restore_sqlite(live, str(tmp_path / "b"))

    assert info.value.result["live_untouched"] is True
    assert tree_state(str(small_disk)) == before
