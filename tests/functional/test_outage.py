"""Retention and choice that survive an outage, and the original system's backups (real
SQLite, the sqlite3 and gzip tools, and a real PostgreSQL for the pg_dump | gzip case)."""

import datetime
import os
import shutil
import sqlite3
import subprocess

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils import catalog, restore
from ansible_collections.tradingbot.ops.plugins.module_utils.backup import run_backup
from ansible_collections.tradingbot.ops.plugins.module_utils.engines.pg_client import (
    pg_binary,
    pg_connection_env,
    pg_content_digest,
    psql_script,
)
from ansible_collections.tradingbot.ops.plugins.module_utils.engines.sqlite_db import (
    sqlite_content_digest,
    sqlite_table_counts,
)
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import BackupError, RestoreError
from damage import corrupt_flip, corrupt_truncate

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def write_rows(db, first, count):
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS trades (id INTEGER PRIMARY KEY, symbol TEXT, qty REAL)")
        conn.executemany(
            "INSERT INTO trades VALUES (?, ?, ?)", [(i, f"S{i % 5}", i / 4) for i in range(first, first + count)]
        )
    conn.close()


def age(path, days):
    """Rename a backup (and its manifest) as if it had been taken ``days`` days earlier; keep the original."""
    manifest = catalog.read_manifest(path)
    moment = catalog.parse_backup_name(os.path.basename(path))["timestamp"] - datetime.timedelta(days=days)
    name = catalog.backup_name(manifest["engine"], moment, manifest["format"], manifest["compression"])
    older = os.path.join(os.path.dirname(path), name)
    shutil.copyfile(path, older)
    manifest["file"] = name
    manifest.write(older)
    return older


def stamp(days_ago):
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days_ago)
    return moment.strftime(catalog.STAMP_FORMAT)


@pytest.fixture
def live(tmp_path):
    data, backups = tmp_path / "data", tmp_path / "backups"
    data.mkdir()
    backups.mkdir()
    db = str(data / "tradingbot.db")
    write_rows(db, 0, 300)
    return {"db": db, "backup_dir": str(backups), "log": str(tmp_path / "backup.log")}


def job(live, **extra):
    return {"engine": "sqlite", "database": live["db"], "backup_dir": live["backup_dir"], **extra}


def ours(backup_dir):
    return sorted(entry["name"] for entry in catalog.list_backups(backup_dir, "sqlite"))


def test_a_week_of_failed_runs_then_one_good_run_keeps_the_three_newest_verified(live):
    first = run_backup(job(live))["path"]
    history = {days: age(first, days) for days in range(8, 15)}  # daily backups, the last 8 days ago
    for suffix in ("", catalog.MANIFEST_SUFFIX):
        os.unlink(first + suffix)
    for _day in range(7):  # the database was unreachable for a week
        with pytest.raises(BackupError):
            run_backup(job(live, database=live["db"] + ".gone"))
    assert len(ours(live["backup_dir"])) == 7  # a failed run deletes nothing

    good = run_backup(job(live))  # the defaults: 7 days, and the 3 newest verified

    kept = {os.path.basename(good["path"]), os.path.basename(history[8]), os.path.basename(history[9])}
    assert set(ours(live["backup_dir"])) == kept
    assert sorted(good["deleted"]) == sorted(history[days] for days in range(10, 15))


@pytest.mark.parametrize(
    ("rules", "ages"),
    [({"retention_days": 30}, (5, 12, 20, 29)), ({"retention_days": 7, "retention_weekly": 4}, (8, 15, 22))],
    ids=["30-days", "weekly-4"],
)
def test_a_longer_job_keeps_its_backups(live, rules, ages):
    first = run_backup(job(live, **rules))["path"]
    older = [age(first, days) for days in ages]

    result = run_backup(job(live, **rules))

    assert result["deleted"] == []
    assert set(older) <= set(result["kept"])
    assert all(os.path.exists(path) for path in older)


def test_a_damaged_newest_backup_makes_latest_restore_the_one_before(live):
    before = run_backup(job(live))["path"]
    expected = sqlite_content_digest(live["db"])
    write_rows(live["db"], 1000, 50)
    second = run_backup(job(live))["path"]
    newest = age(second, -1)  # a later name than any other backup here
    for suffix in ("", catalog.MANIFEST_SUFFIX):
        os.unlink(second + suffix)
    corrupt_flip(newest)
    write_rows(live["db"], 5000, 5)

    result = restore.restore_sqlite(live["db"], live["backup_dir"], log_file=live["log"])

    assert result["backup"]["path"] == before
    assert [skip["name"] for skip in result["passed_over"]] == [os.path.basename(newest)]
    reason = result["passed_over"][0]["reason"]
    assert "fails pre-flight" in reason or "unreadable" in reason
    assert sqlite_content_digest(live["db"]) == expected
    with open(live["log"], encoding="utf-8") as handle:
        log = handle.read()
    assert f"WARNING [sqlite] restore skipped {newest}" in log


def test_check_mode_names_what_it_cannot_predict(live):
    run_backup(job(live))
    result = restore.restore_sqlite(live["db"], live["backup_dir"], check_mode=True)
    assert result["validation"]["checks"]["preflight"]["ok"] is True
    assert result["validation"]["ok"] is None  # validation runs only after the load
    assert any("row counts" in item for item in result["not_predicted"])
    assert "Not predicted" in result["steps"][-1]


def legacy_sqlite_backup(live, days_ago=3):
    """What the original script did: sqlite3 DB ".backup X" && gzip X."""
    path = os.path.join(live["backup_dir"], f"sqlite_backup_{stamp(days_ago)}.db")
    subprocess.run(["sqlite3", live["db"], f".backup {path}"], check=True)
    subprocess.run(["gzip", path], check=True)
    return path + ".gz"


def test_a_legacy_sqlite_backup_is_listed_refused_and_restored_with_allow_legacy(live):
    expected = (sqlite_table_counts(live["db"]), sqlite_content_digest(live["db"]))
    legacy = legacy_sqlite_backup(live)
    write_rows(live["db"], 9000, 10)

    listed = catalog.list_restorable(live["backup_dir"], "sqlite")
    assert [(entry["path"], entry["status"], entry["verified"]) for entry in listed] == [
        (legacy, "legacy, unverified", False)
    ]
    with pytest.raises(RestoreError, match="allow_legacy") as refused:
        restore.restore_sqlite(live["db"], live["backup_dir"], backup_file=os.path.basename(legacy))
    assert refused.value.result["live_untouched"] is True
    with pytest.raises(RestoreError, match="no verified sqlite backup"):
        restore.restore_sqlite(live["db"], live["backup_dir"])  # "latest" never picks a legacy file

    result = restore.restore_sqlite(
        live["db"], live["backup_dir"], backup_file=os.path.basename(legacy), allow_legacy=True
    )

    assert result["backup"]["legacy"] is True
    assert result["validation"]["checks"]["integrity"]["method"] == "integrity_check"
    assert (sqlite_table_counts(live["db"]), sqlite_content_digest(live["db"])) == expected
    assert os.path.exists(result["safety_copy"])


def test_a_damaged_legacy_sqlite_backup_is_refused_even_with_allow_legacy(live):
    legacy = legacy_sqlite_backup(live)
    corrupt_truncate(legacy)
    before = sqlite_content_digest(live["db"])
    with pytest.raises(RestoreError) as info:
        restore.restore_sqlite(live["db"], live["backup_dir"], backup_file=os.path.basename(legacy), allow_legacy=True)
    assert info.value.result["live_untouched"] is True
    assert sqlite_content_digest(live["db"]) == before


@pytest.mark.parametrize("delete_legacy", [False, True])
def test_retention_leaves_legacy_files_alone_unless_told(live, delete_legacy):
    old_legacy = legacy_sqlite_backup(live, days_ago=40)
    young_legacy = legacy_sqlite_backup(live, days_ago=1)

    result = run_backup(job(live, retention_delete_legacy=delete_legacy))

    assert os.path.exists(young_legacy)  # within 7 days: kept by age either way
    assert os.path.exists(old_legacy) is not delete_legacy
    assert result["deleted"] == ([old_legacy] if delete_legacy else [])


def test_a_backup_in_the_format_of_version_1_stays_restorable(live):
    fixture = os.path.join(FIXTURES, "format-v1")
    for name in os.listdir(fixture):
        shutil.copyfile(os.path.join(fixture, name), os.path.join(live["backup_dir"], name))

    result = restore.restore_sqlite(live["db"], live["backup_dir"])

    assert result["validation"]["checks"]["content_digest"]["ok"] is True
    assert sqlite_table_counts(live["db"]) == {"fills": 14, "trades": 40}


def test_a_legacy_pg_dump_gzip_file_is_refused_then_restored_with_allow_legacy(postgres_cluster, tmp_path):
    # A short name: the safety and candidate names add 24 bytes within PostgreSQL's 63.
    postgres_cluster.drop_database("legacy_pg")
    postgres_cluster.create_database("legacy_pg")
    params = postgres_cluster.params(database="legacy_pg")
    psql_script(params, "CREATE TABLE fills (id int PRIMARY KEY, px numeric)", params["database"])
    psql_script(params, "INSERT INTO fills SELECT g, g / 3.0 FROM generate_series(1, 500) g", params["database"])
    expected = pg_content_digest(params)
    legacy = tmp_path / f"postgres_backup_{stamp(2)}.sql.gz"
    with open(legacy, "wb") as out:  # what the original script did: pg_dump | gzip
        dump = subprocess.Popen([pg_binary(params, "pg_dump")], stdout=subprocess.PIPE, env=pg_connection_env(params))
        subprocess.run(["gzip"], stdin=dump.stdout, stdout=out, check=True)
        assert dump.wait() == 0
    psql_script(params, "DELETE FROM fills WHERE id > 10", params["database"])
    options = {"backup_dir": str(tmp_path), "backup_file": legacy.name, "maintenance_db": "postgres"}

    with pytest.raises(RestoreError, match="allow_legacy"):
        restore.restore_postgresql(params, **options)
    result = restore.restore_postgresql(params, allow_legacy=True, **options)

    assert result["backup"]["status"] == "legacy, unverified"
    assert pg_content_digest(params) == expected
    postgres_cluster.drop_database(result["safety_copy"])
    postgres_cluster.drop_database("legacy_pg")


def test_a_damaged_newest_pg_dump_makes_latest_restore_the_one_before(postgres_cluster, tmp_path):
    postgres_cluster.drop_database("fallback_pg")
    postgres_cluster.create_database("fallback_pg")
    params = postgres_cluster.params(database="fallback_pg")
    psql_script(params, "CREATE TABLE fills (id int PRIMARY KEY)", params["database"])
    psql_script(params, "INSERT INTO fills SELECT generate_series(1, 300)", params["database"])
    job_options = dict(params, engine="postgresql", backup_dir=str(tmp_path))
    before = run_backup(job_options)["path"]
    expected = pg_content_digest(params)
    psql_script(params, "INSERT INTO fills SELECT generate_series(301, 400)", params["database"])
    second = run_backup(job_options)["path"]
    newest = age(second, -1)
    for suffix in ("", catalog.MANIFEST_SUFFIX):
        os.unlink(second + suffix)
    corrupt_flip(newest)

    result = restore.restore_postgresql(params, str(tmp_path))

    assert result["backup"]["path"] == before
    assert [skip["name"] for skip in result["passed_over"]] == [os.path.basename(newest)]
    assert pg_content_digest(params) == expected
    postgres_cluster.drop_database(result["safety_copy"])
    postgres_cluster.drop_database("fallback_pg")
