"""PostgreSQL backups against a real PostgreSQL 15 cluster started by the tests."""

import hashlib
import json
import os
import subprocess
import sys
import threading

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils import catalog, fsutil
from ansible_collections.tradingbot.ops.plugins.module_utils import compression as codecs
from ansible_collections.tradingbot.ops.plugins.module_utils.backup import run_backup
from ansible_collections.tradingbot.ops.plugins.module_utils.engines import pg_client, postgresql
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import BackupError

sys.path.insert(0, os.path.dirname(__file__))

import postgres

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROWS_PER_BATCH = 20
SCHEMA = (
    "CREATE TABLE ledger (batch int, i int, amount numeric, note text, PRIMARY KEY (batch, i));"
    "CREATE TABLE batches (batch int PRIMARY KEY, total numeric);"
)


def batch_sql(n):
    # n is an int: nothing to inject.
    return (
        f"BEGIN; INSERT INTO ledger SELECT {n}, g, {n} * 1000 + g * 0.25, 'note ' || g FROM generate_series(0, "  # noqa: S608
        f"{ROWS_PER_BATCH - 1}) g; INSERT INTO batches SELECT {n}, sum(amount) FROM ledger WHERE batch = {n}; COMMIT;\n"
    )


def psql_as_role(params, sql=None, stdin=None, database=None):
    env = pg_client.pg_connection_env(dict(params, database=database or params["database"]))
    argv = [os.path.join(params["pg_bin_dir"], "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    argv += ["-c", sql] if sql else []
    return subprocess.run(argv, env=env, input=stdin, capture_output=True, check=True).stdout


@pytest.fixture
def source(pg_database):
    psql_as_role(pg_database, SCHEMA + "".join(batch_sql(n) for n in range(1, 31)))
    return pg_database


def bopts(params, backup_dir, **extra):
    return {**params, "engine": "postgresql", "backup_dir": str(backup_dir), **extra}


def restore_into(postgres_cluster, backup_path, manifest, name):
    """Restore with the standard tools (not our code) into a fresh database; return its params."""
    postgres_cluster.drop_database(name)
    postgres_cluster.create_database(name)
    params = postgres_cluster.params(database=name)
    kind = codecs.compression_of(backup_path)
    decompress = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dcq"], "none": ["cat"]}[kind]
    env = pg_client.pg_connection_env(params)
    if manifest["format"] == "custom":
        tool = [os.path.join(postgres.BIN_DIR, "pg_restore"), "--exit-on-error", "-d", name]
    else:
        tool = [os.path.join(postgres.BIN_DIR, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    with subprocess.Popen([*decompress, backup_path], stdout=subprocess.PIPE) as producer:
        subprocess.run(tool, stdin=producer.stdout, env=env, check=True, capture_output=True)
    assert producer.returncode == 0
    return params


@pytest.mark.parametrize(
    ("fmt", "compression"),
    [(fmt, comp) for fmt in ("plain", "custom") for comp in ("gzip", "zstd", "none")],
)
def test_every_format_restores_to_the_same_content(postgres_cluster, source, tmp_path, fmt, compression):
    result = run_backup(bopts(source, tmp_path / "bk", format=fmt, compression=compression))
    manifest = catalog.read_manifest(result["path"])
    assert set(catalog.MANIFEST_KEYS) <= set(manifest)
    assert manifest["sha256"] == fsutil.sha256_file(result["path"])
    assert manifest["size"] == os.path.getsize(result["path"])
    assert manifest["tables"] == {"public.batches": 30, "public.ledger": 30 * ROWS_PER_BATCH}
    assert manifest["source"] == {
        "host": "127.0.0.1",
        "port": source["pg_port"],
        "database": source["database"],
        "user": postgres.ROLE,
        "server_version": manifest["tool_versions"]["postgresql_server"],
        "snapshot": "pg_export_snapshot shared by pg_dump",
    }
    assert manifest["tool_versions"]["pg_dump"].startswith("pg_dump (PostgreSQL) 15")
    method = manifest["verification"]["method"]
    assert ("pg_restore -f /dev/null" in method) == (fmt == "custom")
    assert ("completion comment" in method) == (fmt == "plain")
    assert os.stat(result["path"]).st_mode & 0o777 == 0o640
    restored = restore_into(postgres_cluster, result["path"], manifest, f"r_{fmt}_{compression}")
    assert pg_client.pg_table_counts(restored) == manifest["tables"]
    assert pg_client.pg_content_digest(restored) == pg_client.pg_content_digest(source)
    postgres_cluster.drop_database(restored["database"])


def test_dump_and_row_counts_share_one_snapshot_under_concurrent_writes(postgres_cluster, source, tmp_path):
    script = "".join(batch_sql(n) for n in range(31, 2031))
    env = pg_client.pg_connection_env(source)
    writer = subprocess.Popen(
        [os.path.join(postgres.BIN_DIR, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    feeder = threading.Thread(target=lambda: (writer.stdin.write(script.encode()), writer.stdin.close()))
    feeder.start()
    try:
        results = [run_backup(bopts(source, tmp_path / "bk", compression="zstd")) for _run in range(2)]
    finally:
        feeder.join()
        writer.wait()
    assert writer.returncode == 0
    seen = set()
    for index, result in enumerate(results):
        manifest = catalog.read_manifest(result["path"])
        restored = restore_into(postgres_cluster, result["path"], manifest, f"snap_{index}")
        batches = int(psql_as_role(restored, "SELECT count(*) FROM batches"))
        top = int(psql_as_role(restored, "SELECT max(batch) FROM batches"))
        # A committed state: batches 1..top, each complete.
        assert batches == top
        assert pg_client.pg_table_counts(restored) == {"public.batches": top, "public.ledger": top * ROWS_PER_BATCH}
        # The manifest's counts come from pg_dump's own snapshot.
        assert manifest["tables"] == pg_client.pg_table_counts(restored)
        seen.add(top)
        postgres_cluster.drop_database(restored["database"])
    assert max(seen) > 30


def _scan_argv(secret, stop, found):
    needle = secret.encode()
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if needle in handle.read():
                        found.append(pid)
            except OSError:
                continue


def test_password_appears_in_no_argv_result_log_or_manifest(source, tmp_path):
    log = tmp_path / "backup.log"
    stop = threading.Event()
    found = []
    scanner = threading.Thread(target=_scan_argv, args=(postgres.PASSWORD, stop, found))
    scanner.start()
    try:
        result = run_backup(bopts(source, tmp_path / "bk", format="custom", log_file=str(log)))
    finally:
        stop.set()
        scanner.join()
    assert found == []
    assert postgres.PASSWORD not in json.dumps(result)
    assert postgres.PASSWORD not in log.read_text()
    with open(result["manifest"], encoding="utf-8") as handle:
        assert postgres.PASSWORD not in handle.read()
    assert "backup written" in log.read_text()


def test_wrong_password_fails_clearly_with_bounded_retries_then_the_breaker_opens(source, tmp_path):
    log = tmp_path / "backup.log"
    wrong = "not-the-" + postgres.PASSWORD
    options = bopts(source, tmp_path / "bk", pg_password=wrong, pg_retries=2, pg_retry_delay=0.01, log_file=str(log))
    expected = r"cannot connect to PostgreSQL after 3 attempts.*password authentication"
    with pytest.raises(BackupError, match=expected) as err:
        run_backup(options)
    assert wrong not in str(err.value)
    assert log.read_text().count("connection attempt") == 3
    # The same process does not knock again while the breaker is open.
    with pytest.raises(BackupError, match=r"circuit breaker .* is open"):
        run_backup(options)
    assert log.read_text().count("connection attempt") == 3
    assert wrong not in log.read_text()
    assert not [n for n in os.listdir(tmp_path / "bk") if catalog.parse_backup_name(n)]


def test_check_mode_does_not_connect_or_write(source, tmp_path):
    backup_dir = tmp_path / "bk"
    backup_dir.mkdir()
    planned = run_backup(bopts(source, backup_dir, pg_port=1), check_mode=True)
    assert planned["path"].endswith(".sql.gz")
    assert os.listdir(backup_dir) == []


def test_incomplete_plain_dump_is_refused(source, tmp_path):
    result = run_backup(bopts(source, tmp_path / "bk", compression="none"))
    with open(result["path"], "rb") as handle:
        full = handle.read()
    cut = full[: full.rindex(b"-- PostgreSQL database dump complete")]
    broken = tmp_path / "cut.sql"
    broken.write_bytes(cut)
    digest = hashlib.sha256(cut).hexdigest()
    expected = {"sha256": digest, "size": len(cut), "raw_sha256": digest, "raw_size": len(cut)}
    with pytest.raises(BackupError, match="completion comment"):
        postgresql.verify_backup(str(broken), "plain", "none", expected, source)


def test_corrupt_custom_archive_is_caught_by_a_full_decode(source, tmp_path):
    psql_as_role(source, "INSERT INTO ledger SELECT 0, g, g, repeat('z', 200) FROM generate_series(1, 20000) g")
    # pg_dump's own compression gives pg_restore something to check; raw COPY text it cannot.
    result = run_backup(bopts(source, tmp_path / "bk", format="custom", compression="gzip"))
    blob = bytearray(open(result["path"], "rb").read())  # noqa: SIM115
    middle = len(blob) // 2
    blob[middle : middle + 8] = b"\xff" * 8
    broken = tmp_path / "broken.dump"
    broken.write_bytes(bytes(blob))
    digest = hashlib.sha256(blob).hexdigest()
    expected = {"sha256": digest, "size": len(blob), "raw_sha256": digest, "raw_size": len(blob)}
    with pytest.raises(BackupError, match="pg_restore cannot read"):
        postgresql.verify_backup(str(broken), "custom", "none", expected, source)


def _ansible(args, check=False):
    venv_bin = os.path.dirname(sys.executable)
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": os.path.join(REPO, ".pytest_cache", "collections"),
        "PATH": venv_bin + os.pathsep + os.environ["PATH"],
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.minimal",
        "ANSIBLE_LOCALHOST_WARNING": "false",
    }
    argv = ["ansible", "localhost", "-m", "tradingbot.ops.db_backup", "-a", json.dumps(args), "-vvv"]
    argv += ["-e", f"ansible_python_interpreter={sys.executable}"] + (["--check"] if check else [])
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)


@pytest.mark.skipif(not os.path.exists(os.path.join(os.path.dirname(sys.executable), "ansible")), reason="no ansible")
def test_module_hides_the_password_and_check_mode_writes_nothing(source, tmp_path):
    args = bopts(source, tmp_path / "bk", compression="zstd")
    planned = _ansible(args, check=True)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert not (tmp_path / "bk").exists()
    proc = _ansible(args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert postgres.PASSWORD not in proc.stdout + proc.stderr
    assert "CHANGED" in proc.stdout
    backups = catalog.list_backups(str(tmp_path / "bk"), "postgresql")
    assert len(backups) == 1
    assert backups[0]["path"] in proc.stdout


def test_a_failing_pg_dump_leaves_nothing_behind(postgres_cluster, source, tmp_path):
    backup_dir = tmp_path / "bk"
    kept = run_backup(bopts(source, backup_dir))
    # A table the backup role may not read: pg_dump (and the row count) fail mid-run.
    postgres_cluster.psql("CREATE TABLE secret (x int); INSERT INTO secret VALUES (1)", database=source["database"])
    with pytest.raises(BackupError, match="permission denied for table secret"):
        run_backup(bopts(source, backup_dir, retention_days=0, retention_count=1))
    names = sorted(os.listdir(backup_dir))
    assert names == sorted(
        [os.path.basename(kept["path"]), os.path.basename(kept["manifest"]), ".postgres_backup.lock"]
    )
    assert fsutil.sha256_file(kept["path"]) == kept["sha256"]


AWKWARD_TABLES = r"""
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Mixed Case (x)" (v text, b bytea);
INSERT INTO "Odd Schema"."Mixed Case (x)" VALUES
  ('\.', '\x5c2e'), (E'two\nlines', NULL), (E'tab\there', '\x0a'), (E'back\\slash', ''), ('', NULL), (NULL, NULL),
  (E'COPY public.ledger (batch) FROM stdin;', NULL), (E'\\.', NULL);
CREATE TABLE empty_one (x int);
CREATE TABLE "select" (x int);
INSERT INTO "select" SELECT generate_series(1, 3);
CREATE TABLE no_columns ();
INSERT INTO no_columns DEFAULT VALUES;
INSERT INTO no_columns DEFAULT VALUES;
CREATE TABLE parted (k int) PARTITION BY RANGE (k);
CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100);
CREATE TABLE parted_high PARTITION OF parted FOR VALUES FROM (100) TO (1000);
INSERT INTO parted SELECT generate_series(0, 299);
CREATE UNLOGGED TABLE scratch (x text);
INSERT INTO scratch SELECT repeat('y', 5000) FROM generate_series(1, 400);
"""


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_rows_counted_in_the_dump_stream_equal_select_count(postgres_cluster, source, tmp_path, compression):
    psql_as_role(source, AWKWARD_TABLES)
    result = run_backup(bopts(source, tmp_path / "bk", compression=compression))
    manifest = catalog.read_manifest(result["path"])
    assert "rows counted in the dump stream" in manifest["verification"]["detail"]
    # SELECT count(*) of every table, run by psql on the live database.
    assert manifest["tables"] == pg_client.pg_table_counts(source)
    assert manifest["tables"]['"Odd Schema"."Mixed Case (x)"'] == 8
    assert manifest["tables"]["public.no_columns"] == 2
    assert manifest["tables"]["public.empty_one"] == 0
    assert "public.parted" not in manifest["tables"]  # its rows are in its partitions
    restored = restore_into(postgres_cluster, result["path"], manifest, f"r_stream_{compression}")
    assert pg_client.pg_table_counts(restored) == manifest["tables"]
    postgres_cluster.drop_database(restored["database"])


def _doctored_pg_dump(tmp_path, awk_program):
    """A pg_bin_dir whose pg_dump passes the real one's output through ``awk_program`` and exits 0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("psql", "pg_restore"):
        os.symlink(os.path.join(postgres.BIN_DIR, tool), bin_dir / tool)
    script = bin_dir / "pg_dump"
    script.write_text(f"#!/bin/sh\n'{postgres.BIN_DIR}/pg_dump' \"$@\" | awk '{awk_program}'\nexit 0\n")
    script.chmod(0o755)
    return str(bin_dir)


# pg_dump's trailer, so the completion check alone cannot tell the dump is incomplete.
_TRAILER = 'END { print "--"; print "-- PostgreSQL database dump complete"; print "--" }'


def test_a_dump_cut_inside_a_table_is_refused_though_pg_dump_exits_0_with_its_trailer(source, tmp_path):
    # The dump stops after 5 of ledger's 600 rows. pg_dump's exit status and the trailer check
    # pass; the count(*) in the snapshot would have recorded 600 and called the backup verified,
    # leaving the restore to find out. Counting the stream refuses it at once.
    cut = "cut { next } /^COPY public\\.ledger / { copy = 1 } copy && ++n > 6 { cut = 1; next } { print } " + _TRAILER
    backup_dir = tmp_path / "bk"
    with pytest.raises(BackupError, match=r"ends inside the data of table public\.ledger"):
        run_backup(bopts(source, backup_dir, pg_bin_dir=_doctored_pg_dump(tmp_path, cut)))
    assert [n for n in os.listdir(backup_dir) if not n.endswith(".lock")] == []


def test_a_dump_missing_a_data_terminator_is_refused(source, tmp_path):
    # Without the \. after batches' rows, ledger's COPY line and rows read as batches' data.
    drop = "/^\\\\\\.$/ && !seen++ { next } { print }"
    with pytest.raises(BackupError, match=r"no data for public\.ledger"):
        run_backup(bopts(source, tmp_path / "bk", pg_bin_dir=_doctored_pg_dump(tmp_path, drop)))


def test_a_table_an_extension_owns_is_counted_in_the_snapshot(postgres_cluster, source, tmp_path):
    # pg_dump writes no data for an extension's tables (CREATE EXTENSION makes them on restore).
    postgres_cluster.psql(
        "CREATE TABLE ext_owned (x int); INSERT INTO ext_owned SELECT generate_series(1, 4);"
        f"GRANT SELECT ON ext_owned TO {postgres.ROLE}; ALTER EXTENSION plpgsql ADD TABLE ext_owned",
        database=source["database"],
    )
    result = run_backup(bopts(source, tmp_path / "bk"))
    with codecs.open_decompressed(result["path"]) as dump:
        assert b"ext_owned" not in dump.read()
    assert result["tables"] == pg_client.pg_table_counts(source)
    assert result["tables"]["public.ext_owned"] == 4
