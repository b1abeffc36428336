"""db_restore's engine against a real PostgreSQL 15 cluster and real pg_dump backups."""

import itertools
import os
import subprocess

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils import restore
from ansible_collections.tradingbot.ops.plugins.module_utils.backup import run_backup
from ansible_collections.tradingbot.ops.plugins.module_utils.catalog import manifest_path, read_manifest
from ansible_collections.tradingbot.ops.plugins.module_utils.engines.pg_client import (
    pg_binary,
    pg_connection_env,
    pg_content_digest,
    psql_script,
)
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import RestoreError
from ansible_collections.tradingbot.ops.plugins.module_utils.fsutil import sha256_file, write_json_atomic
from damage import corrupt_flip, corrupt_manifest_checksum, corrupt_truncate

_names = itertools.count()

SCHEMA = """
CREATE TABLE trades (id bigint PRIMARY KEY, symbol text NOT NULL, qty numeric);
CREATE TABLE positions (symbol text PRIMARY KEY, qty numeric);
CREATE INDEX trades_symbol ON trades (symbol);
"""


def add_rows(params, first, count):
    psql_script(
        params,
        "INSERT INTO trades SELECT g, 'SYM' || (g % 7), g * 0.5 FROM generate_series(:first, :last) g;"
        "INSERT INTO positions SELECT 'SYM' || (g % 7), sum(g) FROM generate_series(1, 100) g GROUP BY 1"
        " ON CONFLICT (symbol) DO UPDATE SET qty = positions.qty + 1;",
        params["database"],
        {"first": first, "last": first + count - 1},
    )


def databases(cluster, prefix):
    rows = cluster.psql("SELECT datname FROM pg_database ORDER BY 1", database="postgres").split()
    return [name for name in rows if name.startswith(prefix)]


@pytest.fixture
def pg_site(postgres_cluster, tmp_path):
    """A live database with a verified backup, changed after the backup; short names leave
    room for the safety suffix within PostgreSQL's 63-byte limit."""
    name = f"rt{next(_names)}"
    postgres_cluster.create_database(name)
    params = postgres_cluster.params(database=name)
    psql_script(params, SCHEMA, name)
    add_rows(params, 0, 2000)
    backed_up = pg_content_digest(params)
    backup = run_backup(dict(params, engine="postgresql", database=name, backup_dir=str(tmp_path)))
    add_rows(params, 5000, 100)
    yield {
        "params": params,
        "name": name,
        "backup_dir": str(tmp_path),
        "backup": backup["path"],
        "backed_up": backed_up,
        "current": pg_content_digest(params),
    }
    for db in databases(postgres_cluster, name):
        postgres_cluster.drop_database(db)


def test_round_trip_swaps_in_the_backup_and_keeps_the_old_database(pg_site, postgres_cluster):
    params, name = pg_site["params"], pg_site["name"]
    assert pg_site["current"] != pg_site["backed_up"]
    # Database-level settings and grants are not in pg_dump's output; the swap must carry them.
    postgres_cluster.psql(f"ALTER DATABASE {name} SET work_mem = '7MB'", database="postgres")
    postgres_cluster.psql(f"REVOKE CONNECT, TEMPORARY ON DATABASE {name} FROM PUBLIC", database="postgres")

    result = restore.restore_postgresql(params, pg_site["backup_dir"])

    assert result["changed"] is True
    assert result["validation"]["ok"] is True
    assert result["validation"]["checks"]["row_counts"]["mismatches"] == {}
    assert pg_content_digest(params) == pg_site["backed_up"]
    safety = result["safety_copy"]
    assert safety.startswith(f"{name}_pre_restore_")
    assert pg_content_digest(params, safety) == pg_site["current"]
    assert databases(postgres_cluster, name) == sorted([name, safety])
    assert psql_script(params, "SHOW work_mem", name).strip() == "7MB"
    acl = psql_script(params, "SELECT datacl::text FROM pg_database WHERE datname = :'name'", name, {"name": name})
    assert "=Tc/" not in acl  # PUBLIC did not get CONNECT/TEMPORARY back
    assert "tradingbot=CTc/tradingbot" in acl


def test_rollback_swaps_the_previous_database_back(pg_site, postgres_cluster):
    params, name = pg_site["params"], pg_site["name"]
    result = restore.restore_postgresql(params, pg_site["backup_dir"])

    rollback = dict(params, engine="postgresql", operation="rollback", safety_copy=result["safety_copy"])
    back = restore.run_restore(dict(rollback, backup_dir=pg_site["backup_dir"]))

    assert back["rolled_back"] is True
    assert pg_content_digest(params) == pg_site["current"]
    assert databases(postgres_cluster, name) == [name]


def test_open_sessions_on_the_live_database_are_ended_for_the_swap(pg_site):
    params = pg_site["params"]
    # A client that holds a session open on the live database, as a forgotten psql would.
    idle = subprocess.Popen(
        [pg_binary(params, "psql"), "-X", "-q", "-c", "SELECT pg_sleep(600)"],
        env=pg_connection_env(params),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _attempt in range(500):
            sessions = psql_script(
                params,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :'d' AND query LIKE '%pg_sleep(600)%'"
                " AND pid <> pg_backend_pid()",
                "postgres",
                {"d": pg_site["name"]},
            )
            if sessions.strip() == "1":
                break
        else:
            pytest.fail("the idle session never showed up")
        result = restore.restore_postgresql(params, pg_site["backup_dir"])
        assert idle.wait(timeout=60) != 0
    finally:
        idle.kill()
        idle.wait()
    assert result["changed"] is True
    assert pg_content_digest(params) == pg_site["backed_up"]


@pytest.mark.parametrize("corrupt", [corrupt_flip, corrupt_truncate, corrupt_manifest_checksum])
def test_corrupt_backup_is_refused_and_live_database_untouched(pg_site, postgres_cluster, corrupt):
    params, name = pg_site["params"], pg_site["name"]
    corrupt(pg_site["backup"])

    with pytest.raises(RestoreError) as info:
        restore.restore_postgresql(params, pg_site["backup_dir"], backup_file=os.path.basename(pg_site["backup"]))

    assert "refused, nothing changed" in str(info.value)
    assert info.value.result["live_untouched"] is True
    assert info.value.result["changed"] is False
    assert databases(postgres_cluster, name) == [name]
    assert pg_content_digest(params) == pg_site["current"]


def test_restore_failing_validation_leaves_exactly_the_previous_content(pg_site, postgres_cluster):
    params, name = pg_site["params"], pg_site["name"]
    manifest = read_manifest(pg_site["backup"])
    manifest["tables"]["public.trades"] -= 1
    write_json_atomic(manifest_path(pg_site["backup"]), manifest)

    with pytest.raises(RestoreError) as info:
        restore.restore_postgresql(params, pg_site["backup_dir"])

    result = info.value.result
    assert result["validation"]["checks"]["row_counts"]["mismatches"] == {
        "public.trades": {"expected": 1999, "actual": 2000}
    }
    assert result["live_untouched"] is True
    assert result["steps"][-1].startswith("restore refused, live database untouched")
    assert databases(postgres_cluster, name) == [name]  # the candidate database was dropped
    assert pg_content_digest(params) == pg_site["current"]


def test_path_traversal_is_refused(pg_site):
    for bad in ("../" + os.path.basename(pg_site["backup"]), "/etc/passwd", "sqlite_backup_20250101_000000.db.gz"):
        with pytest.raises(RestoreError, match="refusing"):
            restore.restore_postgresql(pg_site["params"], pg_site["backup_dir"], backup_file=bad)
    assert pg_content_digest(pg_site["params"]) == pg_site["current"]


def test_check_mode_changes_nothing(pg_site, postgres_cluster):
    params, name = pg_site["params"], pg_site["name"]
    before = sorted(os.listdir(pg_site["backup_dir"]))

    result = restore.restore_postgresql(params, pg_site["backup_dir"], check_mode=True)

    assert result["changed"] is True
    assert result["plan"]["live_exists"] is True
    assert result["plan"]["safety_copy"].startswith(f"{name}_pre_restore_")
    assert databases(postgres_cluster, name) == [name]
    assert pg_content_digest(params) == pg_site["current"]
    assert sorted(os.listdir(pg_site["backup_dir"])) == before


def test_custom_format_zstd_round_trip(pg_site, postgres_cluster, tmp_path):
    params, name = pg_site["params"], pg_site["name"]
    backup_dir = tmp_path / "custom"
    backup_dir.mkdir()
    run_backup(dict(params, engine="postgresql", backup_dir=str(backup_dir), format="custom", compression="zstd"))
    psql_script(params, "DELETE FROM trades WHERE id < 100", name)

    result = restore.restore_postgresql(params, str(backup_dir))

    assert result["backup"]["name"].endswith(".dump.zst")
    assert pg_content_digest(params) == pg_site["current"]


def test_a_dump_that_fails_to_load_is_refused_and_rolled_back_whole(pg_site, postgres_cluster, tmp_path):
    params, name = pg_site["params"], pg_site["name"]
    # A table owned by the superuser: the dump says ALTER TABLE ... OWNER TO postgres, which the
    # restoring role may not do. ON_ERROR_STOP stops there; nothing of the load may remain.
    postgres_cluster.psql("CREATE TABLE audit (id int); GRANT SELECT ON audit TO tradingbot", database=name)
    backup_dir = tmp_path / "owned"
    backup_dir.mkdir()
    run_backup(dict(params, engine="postgresql", backup_dir=str(backup_dir)))
    current = pg_content_digest(params)

    with pytest.raises(RestoreError) as info:
        restore.restore_postgresql(params, str(backup_dir))

    assert "loading failed" in str(info.value)
    assert "must be" in str(info.value)  # psql's own error line is reported
    assert info.value.result["live_untouched"] is True
    assert databases(postgres_cluster, name) == [name]
    assert pg_content_digest(params) == current


def test_damage_behind_a_matching_checksum_is_caught_while_loading(pg_site, postgres_cluster):
    # The archive and its manifest's SHA-256 were rewritten together: only decoding finds the
    # damage, part-way through the load. The candidate goes; the live database stays.
    params, name = pg_site["params"], pg_site["name"]
    corrupt_truncate(pg_site["backup"])
    manifest = read_manifest(pg_site["backup"])
    manifest["sha256"] = sha256_file(pg_site["backup"])
    manifest["size"] = os.path.getsize(pg_site["backup"])
    write_json_atomic(manifest_path(pg_site["backup"]), manifest)

    with pytest.raises(RestoreError) as info:
        restore.restore_postgresql(params, pg_site["backup_dir"])

    assert "live database untouched" in str(info.value)
    assert info.value.result["live_untouched"] is True
    assert databases(postgres_cluster, name) == [name]
    assert pg_content_digest(params) == pg_site["current"]

    # Check mode decodes the whole file up front, so it names the problem before anything runs.
    with pytest.raises(RestoreError, match="would be refused"):
        restore.restore_postgresql(params, pg_site["backup_dir"], check_mode=True)
