"""The PostgreSQL adapter: pg_dump in an exported snapshot, its rows counted as the dump streams
past (a custom archive's in the same snapshot); restores into a fresh database swapped in by
rename."""

import contextlib
import os
import re
import subprocess
import tempfile
import threading
import time

from ..circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitBreakerError
from ..compression import compress_stream, decode_file
from ..errors import BackupError
from ..fsutil import finish_file, open_exclusive, oserror
from ..streams import tool_version, widen_pipe
from ..verification import check_written, compare_written, preflight
from . import postgresql_restore
from .base import EngineAdapter
from .pg_client import PSQL_TABULAR, USER_TABLES_SQL, PgRunner, parse_counts, pg_binary, table_counts_sql, tool_error
from .pg_dump_stream import CopyRowCounter

PG_DUMP_COMPLETE = b"-- PostgreSQL database dump complete"
CUSTOM_HEADER = b"PGDMP"
# One breaker per target and process: a process that runs several backups (the app's own
# scheduler, a test) stops knocking on a server that failed a whole round of attempts.
_BREAKERS = {}
BREAKER_OPEN_SECONDS = 60.0
# Every user table, and whether an extension owns it (constant SQL, nothing from outside).
_TABLES_AND_OWNERS = (
    "SELECT t.name, EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = "  # noqa: S608
    "'pg_catalog.pg_class'::regclass AND d.objid = t.name::regclass AND d.deptype = 'e') "
    "FROM (" + USER_TABLES_SQL + ") AS t(name)"
)


class _PgSnapshot:
    """A psql session holding a REPEATABLE READ transaction whose snapshot is exported, so that
    pg_dump and the queries run here (the table list, row counts) see the same data."""

    _END = "end-of-rows"  # a line no query here returns: every table name has a dot

    def __init__(self, runner):
        self.runner = runner
        self.proc = runner.popen(
            "psql", list(PSQL_TABULAR), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.proc.stdin.write(b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_export_snapshot();\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().decode().strip()
        if not re.fullmatch(r"[0-9A-Fa-f-]+", line):
            err = self.close()
            raise BackupError(runner.redact(f"cannot open a snapshot on PostgreSQL: {err or 'no snapshot id'}"))
        self.snapshot_id = line

    def rows(self, sql):
        """Run ``sql`` in the snapshot's transaction; return its non-empty output lines."""
        try:
            self.proc.stdin.write(f"{sql};\nSELECT '{self._END}';\n".encode())
            self.proc.stdin.flush()
        except OSError:
            pass  # psql is gone; the read below says why
        lines = []
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8").rstrip("\n")
            if line == self._END:
                return lines
            if line:
                lines.append(line)
        raise BackupError(self.runner.redact(f"the snapshot session failed: {self.close() or 'no message'}"))

    def tables(self):
        """Every user table in the snapshot: ``{quoted schema.table: whether an extension owns it}``."""
        rows = self.rows(_TABLES_AND_OWNERS)
        return {name: flag == "t" for name, flag in (line.rsplit("\t", 1) for line in rows)}

    def count(self, tables):
        """Exact row counts of ``tables`` in the snapshot."""
        names = " UNION ALL ".join("SELECT " + _quote_literal(name) for name in tables)
        return parse_counts("\n".join(self.rows(table_counts_sql(names))))

    def close(self):
        with contextlib.suppress(OSError):
            self.proc.stdin.write(b"COMMIT;\n")
            self.proc.stdin.close()
        self.proc.stdout.read()
        err = self.proc.stderr.read()
        self.proc.wait()
        return err.decode("utf-8", "replace").strip()


def _quote_literal(value):
    return "'" + str(value).replace("'", "''") + "'"


def _pg_connect(plan, log):
    """Probe the server through the circuit breaker with bounded, backed-off retries."""
    opts = plan.opts
    attempts = opts["pg_retries"] + 1
    target = f"postgresql://{opts['pg_host'] or 'local'}:{opts['pg_port']}/{opts['database']}"
    breaker = _BREAKERS.get(target)
    if breaker is None:
        config = CircuitBreakerConfig(
            failure_threshold=attempts, timeout=BREAKER_OPEN_SECONDS, slow_call_threshold=None
        )
        breaker = _BREAKERS[target] = CircuitBreaker(target, config)
    last = None
    for attempt in range(attempts):
        try:
            return breaker.call(PgRunner(opts).query, "SELECT current_setting('server_version')").strip()
        except CircuitBreakerError as exc:
            raise BackupError(
                f"circuit breaker for {target} is open after repeated connection failures; retry after "
                f"{BREAKER_OPEN_SECONDS:.0f}s{': ' + str(last) if last else ''}"
            ) from exc
        except BackupError as exc:
            last = exc
            log("WARNING", f"connection attempt {attempt + 1}/{attempts} failed: {exc}")
            if attempt + 1 < attempts:
                time.sleep(min(opts["pg_retry_delay"] * (2**attempt), 30.0))
    raise BackupError(f"cannot connect to PostgreSQL after {attempts} attempts: {last}")


def _dump(runner, plan, snapshot_id, tmp_path, observe=None):
    """Run pg_dump in ``snapshot_id`` through the compressor into ``tmp_path``; return the stream."""
    args = [f"--snapshot={snapshot_id}"]
    if plan.format == "custom":
        args += ["--format=custom", f"--compress={plan.pg_internal_level}"]
    else:
        args += ["--format=plain"]
    with tempfile.TemporaryFile() as err:
        dump = runner.popen("pg_dump", args, stdout=subprocess.PIPE, stderr=err)
        widen_pipe(dump.stdout)
        handle = open_exclusive(tmp_path)
        try:
            stream = compress_stream(dump.stdout, handle, plan.file_compression, plan.level, observe=observe)
            finish_file(handle, tmp_path)
        except BaseException as exc:
            dump.kill()
            if isinstance(exc, OSError):
                raise oserror("writing", tmp_path, exc) from exc
            raise
        finally:
            handle.close()
            dump.stdout.close()
            code = dump.wait()
        if code != 0:
            err.seek(0)
            detail = tool_error(err.read()) or "no message"
            raise BackupError(runner.redact(f"pg_dump failed (exit {code}): {detail}"))
    return stream


def _stream_counts(streamed, tables, snap):
    """The rows per table: the dump's own, checked against the snapshot's list of tables."""
    unknown = sorted(set(streamed) - set(tables))
    if unknown:
        raise BackupError(f"the dump holds data for {', '.join(unknown[:5])}, which the snapshot does not list")
    missing = sorted(name for name, extension in tables.items() if not extension and name not in streamed)
    if missing:
        raise BackupError(f"the dump holds no data for {', '.join(missing[:5])}: it is incomplete")
    counts = {name: rows for name, rows in streamed.items() if not tables[name]}
    owned = [name for name, extension in tables.items() if extension]
    if owned:
        # CREATE EXTENSION fills these on restore and pg_dump writes only some rows, if any:
        # the restored table holds what the source does, so they are counted in the snapshot.
        counts.update(snap.count(owned))
    return dict(sorted(counts.items()))


def _pg_backup(plan, tmp_path, log):
    opts = plan.opts
    server_version = _pg_connect(plan, log)
    runner = PgRunner(opts)
    snap = _PgSnapshot(runner)
    try:
        if plan.format == "custom":
            # pg_dump compresses inside the archive: the rows are counted in its snapshot.
            checks = {}

            def count():
                try:
                    checks["tables"] = runner.table_counts(snapshot=snap.snapshot_id)
                except Exception as exc:
                    checks["error"] = exc

            counter = threading.Thread(target=count, daemon=True)
            counter.start()
            try:
                stream = _dump(runner, plan, snap.snapshot_id, tmp_path)
            finally:
                counter.join()
            if "error" in checks:
                raise BackupError(f"counting rows failed: {checks['error']}")
            tables, counted = checks["tables"], "rows counted in pg_dump's snapshot"
        else:
            listed = snap.tables()
            rows = CopyRowCounter()
            stream = _dump(runner, plan, snap.snapshot_id, tmp_path, observe=rows.feed)
            tables, counted = _stream_counts(rows.finish(), listed, snap), "rows counted in the dump stream"
    finally:
        snap.close()
    return {
        "stream": stream,
        "tables": tables,
        "content_digest": None,
        "source_extra": {"server_version": server_version, "snapshot": "pg_export_snapshot shared by pg_dump"},
        "tool_versions": {
            "pg_dump": tool_version([pg_binary(opts, "pg_dump"), "--version"]),
            "postgresql_server": server_version,
        },
        "checks": f"pg_dump exit 0; {counted}",
    }


def _decode_into_pg_restore(path, file_compression, params):
    """Decode a custom-format archive into ``pg_restore -f /dev/null``, which reads every block.

    Returns ``(decoded digests or None if pg_restore stopped reading, exit code, stderr)``.
    """
    with tempfile.TemporaryFile() as err:
        restore = PgRunner(params or {}).popen(
            "pg_restore",
            ["--file=/dev/null"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        decoded = None
        try:
            decoded = decode_file(path, file_compression, restore.stdin.write)
        except BrokenPipeError:
            pass  # pg_restore gave up; its exit code and message say why
        finally:
            with contextlib.suppress(OSError):
                restore.stdin.close()
            code = restore.wait()
        err.seek(0)
        return decoded, code, err.read().decode("utf-8", "replace").strip()


def verify_backup(path, plan_format, file_compression, expected, params):
    """Decode a written dump completely and compare it with what was written.

    ``expected`` holds ``raw_sha256``/``raw_size`` (the source stream) and ``sha256``/``size``
    (the file). A custom archive is decoded into ``pg_restore -f /dev/null``, which reads every
    block; a plain dump must end with pg_dump's completion comment. Returns the manifest's
    ``verification`` dict; raises BackupError on a mismatch.
    """
    name = os.path.basename(path)
    if plan_format == "custom":
        decoded, restore_code, restore_err = _decode_into_pg_restore(path, file_compression, params)
        if restore_code != 0:
            raise BackupError(f"pg_restore cannot read {name}: {tool_error(restore_err) or 'no message'}")
        if decoded is None:
            raise BackupError(f"pg_restore stopped reading {name} before its end")
    else:
        decoded = decode_file(path, file_compression)
    verification = compare_written(path, decoded, expected)
    method = f"full decode ({file_compression}); sha256 of decoded stream equals source"
    if plan_format == "custom":
        method += "; pg_restore -f /dev/null"
    else:
        if PG_DUMP_COMPLETE not in decoded["tail"]:
            raise BackupError(f"{name} lacks pg_dump's completion comment: the dump is incomplete")
        method += "; pg_dump completion comment present"
    return dict(verification, method=method)


def target(params):
    """The ``postgresql://host:port/name`` a restore goes over."""
    host = params.get("pg_host") or "local socket"
    port = params.get("pg_port") or 5432
    return f"postgresql://{host}:{port}/{params['database']}"


class PostgresqlAdapter(EngineAdapter):
    name = "postgresql"
    drill_restores_live = True

    def check_backup(self, opts, fmt):
        if opts["pg_retries"] < 0:
            raise BackupError("pg_retries must be >= 0")
        return opts["database"]

    def source(self, opts, database):
        return {
            "host": opts["pg_host"] or "(libpq default)",
            "port": opts["pg_port"],
            "database": opts["database"],
            "user": opts["pg_user"],
        }

    def backup(self, plan, tmp_path, snapshot_path, log):
        return _pg_backup(plan, tmp_path, log)

    def verify_written(self, plan, path, stream):
        if plan.format == "custom":
            return verify_backup(path, plan.format, plan.file_compression, stream, plan.opts)
        verification = check_written(path, stream)
        if PG_DUMP_COMPLETE not in stream["tail"]:
            raise BackupError(f"{os.path.basename(path)} lacks pg_dump's completion comment: the dump is incomplete")
        return dict(verification, method=verification["method"] + "; pg_dump completion comment present")

    def format_problems(self, stats, manifest):
        if manifest.get("format") == "custom":
            if not stats["head"].startswith(CUSTOM_HEADER):
                return ["decoded data is not a pg_dump custom-format archive"]
        elif PG_DUMP_COMPLETE not in stats["tail"]:
            return ["decoded dump lacks pg_dump's completion trailer (incomplete dump)"]
        return []

    def preflight(self, path, manifest, sink=None):
        return preflight(path, manifest, self.format_problems, sink)

    def target(self, opts):
        return target(opts)

    def plan_restore(self, opts, stamp):
        return postgresql_restore.plan_restore(opts, stamp, target(opts))

    def prepare(self, opts, run, path, manifest, *, plan, log):
        return postgresql_restore.prepare_candidate(self, opts, run, path, manifest, plan=plan, log=log)

    def swap_in(self, opts, run, prepared, plan, log):
        postgresql_restore.swap_in(opts, run, prepared, plan)

    def rollback(self, opts, safety_copy, check_mode):
        postgresql_restore.check_safety_copy(opts, safety_copy)
        if not check_mode:
            postgresql_restore.rollback_postgresql(opts, safety_copy, opts["maintenance_db"])

    def safety_copies(self, opts):
        # Listing backups must work even when the server is down, as it may be in an incident.
        try:
            return postgresql_restore.pg_safety_copies(opts, opts["maintenance_db"]), []
        except BackupError as exc:
            return [], [f"cannot list safety databases: {exc}"]
