"""Backup engine for SQLite and PostgreSQL (stdlib only).

The db_backup module and the host-side timer (``backup_cli``) both call ``run_backup`` with a
dict of the options in ``BACKUP_OPTIONS``. One run:

1. validates the input and resolves owner/group, before anything is touched;
2. takes the backup dir's flock (``db_common.dir_lock``), waiting up to ``lock_timeout``;
3. removes leftovers of killed runs (hidden temp files, manifests without a backup);
4. writes the backup under a hidden temp name, streaming through the compressor while a
   second thread checks the snapshot (SQLite) or counts rows in pg_dump's snapshot (PostgreSQL);
5. fsyncs it and decodes it completely: the decoded stream's SHA-256 and size must equal the
   source's, a plain dump must end with pg_dump's completion comment, a custom archive must
   pass ``pg_restore -f /dev/null``;
6. writes the manifest, renames the backup into place and fsyncs the directory;
7. only then applies retention (``select_retention``) to the files it created;
8. appends to the backup log and writes the Prometheus textfile metrics.

Check mode runs step 1 and plans steps 6 and 7 without touching anything.
"""

# This package also runs on hosts outside Ansible (the backup timer), where run_command,
# exit_json and module.log do not exist.
# pylint: disable=ansible-bad-function

import collections
import concurrent.futures
import contextlib
import datetime
import grp
import hashlib
import os
import platform
import pwd
import re
import sqlite3
import subprocess
import tempfile
import threading
import time
import zlib

from .circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitBreakerError
from .db_common import (
    CHUNK_SIZE,
    COMMON_OPTIONS,
    COMPRESSIONS,
    CREATED_BY,
    DEFAULT_LEVELS,
    LEVEL_RANGES,
    MANIFEST_FORMAT_VERSION,
    MANIFEST_SUFFIX,
    PG_DUMP_COMPLETE,
    PG_FORMATS,
    SQLITE_HEADER,
    BackupError,
    backup_name,
    decode_file,
    dir_lock,
    fsync_dir,
    isoformat,
    list_backups,
    manifest_path,
    parse_backup_name,
    pg_binary,
    pg_connection_env,
    pg_redact,
    pg_table_counts,
    psql_query,
    read_manifest,
    sqlite_content_digest,
    sqlite_table_counts,
    tool_error,
    utcnow,
    validate_options,
    write_json_atomic,
    zstd_binary,
    zstd_compressor,
)

# The db_backup module's argument_spec and the CLI's config schema: one definition.
BACKUP_OPTIONS = dict(
    COMMON_OPTIONS,
    format={"type": "str", "default": "plain", "choices": list(PG_FORMATS)},
    compression={"type": "str", "default": "gzip", "choices": list(COMPRESSIONS)},
    compression_level={"type": "int"},
    mode={"type": "str", "default": "0640"},
    owner={"type": "str"},
    group={"type": "str"},
    retention_days={"type": "int", "default": 7},
    retention_count={"type": "int", "default": 0},
    retention_daily={"type": "int", "default": 0},
    retention_weekly={"type": "int", "default": 0},
    retention_monthly={"type": "int", "default": 0},
    retention_keep_verified={"type": "int", "default": 1},
    lock_timeout={"type": "int", "default": 300},
    log_file={"type": "path"},
    metrics_dir={"type": "path"},
    content_digest={"type": "bool", "default": False},
    pg_retries={"type": "int", "default": 3},
    pg_retry_delay={"type": "float", "default": 2.0},
)

CHUNK = CHUNK_SIZE  # the chunk size of every stream, under the name tests and callers use
# Compressed gzip members in flight per worker: bounds memory whatever the database size.
_INFLIGHT_PER_WORKER = 2
# Hidden leftovers of a killed run: backup temp files, SQLite snapshots (and their journals),
# manifest temp files from write_json_atomic.
_LEFTOVER_RE = re.compile(
    r"^\.(?:sqlite|postgres)_backup_\d{8}_\d{6}\.[a-z.]+?"
    r"(?:\.tmp-\d+|\.snapshot-\d+(?:-journal|-wal|-shm)?|\.manifest\.json\.[^/]+\.tmp)$"
)
METRICS_FILE = "tradingbot_backup_{engine}.prom"


def compression_workers():
    """Threads for gzip compression: the machine's cores, capped (zlib releases the GIL)."""
    return max(1, min(os.cpu_count() or 1, 4))


# --- retention ---------------------------------------------------------------------------------


def select_retention(entries, now, *, days=7, count=0, daily=0, weekly=0, monthly=0, keep_verified=1):
    """Decide which backups to keep; return ``(kept, deleted)``.

    ``entries`` are ``list_backups`` entries (newest first; only ``timestamp``, ``verified``
    and ``name`` are read). A backup is kept when any rule keeps it (as restic's ``forget``):

    - the newest ``keep_verified`` verified backups, whatever their age;
    - ``days`` > 0: those younger than ``days`` days;
    - ``count`` > 0: the newest ``count``;
    - ``daily``/``weekly``/``monthly`` > 0: the newest backup of each of the last N days /
      ISO weeks / months that have backups (GFS).

    ``kept`` is a list of ``(entry, [reasons])``; ``deleted`` a list of entries.
    """
    entries = sorted(entries, key=lambda e: (e["timestamp"], e["name"]), reverse=True)
    reasons = collections.OrderedDict((e["name"], []) for e in entries)
    for entry in [e for e in entries if e["verified"]][: max(keep_verified, 0)]:
        reasons[entry["name"]].append(f"newest {keep_verified} verified")
    if days > 0:
        limit = now - datetime.timedelta(days=days)
        for entry in entries:
            if entry["timestamp"] > limit:
                reasons[entry["name"]].append(f"within {days} days")
    for entry in entries[: max(count, 0)]:
        reasons[entry["name"]].append(f"newest {count}")
    buckets = (
        (daily, "daily", lambda ts: ts.date()),
        (weekly, "weekly", lambda ts: ts.isocalendar()[:2]),
        (monthly, "monthly", lambda ts: (ts.year, ts.month)),
    )
    for keep, label, key in buckets:
        seen = set()
        for entry in entries:
            if len(seen) >= keep:
                break
            bucket = key(entry["timestamp"])
            if bucket not in seen:
                seen.add(bucket)
                reasons[entry["name"]].append(label)
    kept = [(e, reasons[e["name"]]) for e in entries if reasons[e["name"]]]
    deleted = [e for e in entries if not reasons[e["name"]]]
    return kept, deleted


def _retention_args(opts):
    return {
        "days": opts["retention_days"],
        "count": opts["retention_count"],
        "daily": opts["retention_daily"],
        "weekly": opts["retention_weekly"],
        "monthly": opts["retention_monthly"],
        "keep_verified": opts["retention_keep_verified"],
    }


# --- streaming compression ---------------------------------------------------------------------


def _gzip_member(data, level):
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    return comp.compress(data) + comp.flush()


class _Sink:
    """Writes compressed bytes to the temp file and hashes them as they pass."""

    def __init__(self, handle):
        self.handle = handle
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.handle.write(data)
        self.sha.update(data)
        self.size += len(data)


def compress_stream(source, handle, compression, level, workers=None):
    """Stream ``source`` (a binary reader) through ``compression`` into ``handle``.

    Memory stays bounded: gzip runs as independent 1 MiB gzip members compressed by a pool of
    ``workers`` threads (a valid multi-member gzip file that gzip -d and Python read), zstd as
    a single-threaded child process fed by a thread. Returns ``{raw_sha256, raw_size, sha256, size}``.
    """
    sink = _Sink(handle)
    raw_sha = hashlib.sha256()
    raw_size = 0

    def raw_chunks():
        nonlocal raw_size
        for chunk in iter(lambda: source.read(CHUNK), b""):
            raw_sha.update(chunk)
            raw_size += len(chunk)
            yield chunk

    if compression == "none":
        for chunk in raw_chunks():
            sink.write(chunk)
    elif compression == "gzip":
        workers = workers or compression_workers()
        pending = collections.deque()
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            try:
                for chunk in raw_chunks():
                    pending.append(pool.submit(_gzip_member, chunk, level))
                    while len(pending) > workers * _INFLIGHT_PER_WORKER:
                        sink.write(pending.popleft().result())
                while pending:
                    sink.write(pending.popleft().result())
            finally:
                for future in pending:
                    future.cancel()
        if raw_size == 0:
            sink.write(_gzip_member(b"", level))
    elif compression == "zstd":
        # The feeder thread reads and hashes the source while this one writes zstd's output.
        with zstd_compressor(raw_chunks(), level) as compressed:
            for data in compressed:
                sink.write(data)
    else:
        raise BackupError(f"unknown compression {compression!r}")
    return {"raw_sha256": raw_sha.hexdigest(), "raw_size": raw_size, "sha256": sink.sha.hexdigest(), "size": sink.size}


# --- helpers -----------------------------------------------------------------------------------


def parse_mode(value):
    """Parse an octal file mode given as ``'0640'``, ``'640'`` or an int."""
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    elif isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value.strip()):
        mode = int(value.strip(), 8)
    else:
        raise BackupError(f"mode must be an octal string such as '0640', got {value!r}")
    if not 0 <= mode <= 0o7777:
        raise BackupError(f"mode {value!r} is out of range")
    return mode


def resolve_owner(owner, group):
    """Return ``(uid, gid)`` for user/group names or numeric ids; -1 leaves one unchanged."""
    uid = gid = -1
    if owner:
        try:
            uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
        except KeyError as exc:
            raise BackupError(f"owner {owner!r} does not exist") from exc
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError as exc:
            raise BackupError(f"group {group!r} does not exist") from exc
    return uid, gid


def _oserror(action, path, exc):
    reason = exc.strerror or str(exc)
    if getattr(exc, "errno", None) == 28:  # ENOSPC
        reason = "no space left on device"
    return BackupError(f"{action} {path} failed: {reason}; older backups are untouched")


class BackupLog:
    """Appends one line per event to the backup log (the original's logs/backup.log)."""

    def __init__(self, path, engine):
        self.path = path
        self.engine = engine
        self.lines = []

    def __call__(self, level, message):
        line = f"{isoformat(utcnow())} {level} [{self.engine}] {message}"
        self.lines.append(line)
        if not self.path:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except OSError:
            # A full or read-only log disk must not turn a good backup into a failed one.
            pass


def write_metrics(metrics_dir, engine, database, ok, *, result=None, now=None):
    """Write the Prometheus textfile-collector file for one engine atomically.

    On failure the previous last-success timestamp is carried over, so alerting on
    ``time() - tradingbot_backup_last_success_timestamp_seconds`` keeps working.
    """
    path = os.path.join(metrics_dir, METRICS_FILE.format(engine=engine))
    now = now or utcnow()
    last_success = None
    with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("tradingbot_backup_last_success_timestamp_seconds"):
                last_success = float(line.rsplit(" ", 1)[1])
    result = result or {}
    if ok:
        last_success = now.timestamp()
    escaped = database.replace("\\", "\\\\").replace('"', '\\"')
    labels = f'{{engine="{engine}",database="{escaped}"}}'
    metrics = [
        ("last_run_timestamp_seconds", "Time of the last backup run.", now.timestamp()),
        ("last_result", "1 when the last backup run succeeded, 0 when it failed.", 1 if ok else 0),
        ("last_success_timestamp_seconds", "Time of the last successful backup.", last_success),
        ("duration_seconds", "Duration of the last successful backup.", result.get("duration_seconds")),
        ("size_bytes", "Size of the last successful backup file.", result.get("size")),
        ("compression_ratio", "Uncompressed size over file size of the last backup.", result.get("compression_ratio")),
        ("deleted_files", "Backups deleted by retention in the last run.", len(result.get("deleted", []))),
    ]
    lines = []
    for name, help_text, value in metrics:
        if value is None:
            continue
        lines += [f"# HELP tradingbot_backup_{name} {help_text}", f"# TYPE tradingbot_backup_{name} gauge"]
        lines.append(f"tradingbot_backup_{name}{labels} {value}")
    fd, tmp = tempfile.mkstemp(prefix=".tradingbot_backup.", suffix=".prom.tmp", dir=metrics_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _tool_version(argv):
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(argv, capture_output=True, check=False, timeout=30).stdout
        return out.decode("utf-8", "replace").strip().splitlines()[0]
    return None


# --- the run -----------------------------------------------------------------------------------


class _Plan:
    """Validated input of one run."""

    def __init__(self, opts):
        self.opts = opts
        self.engine = opts["engine"]
        self.backup_dir = os.path.abspath(opts["backup_dir"])
        self.compression = opts["compression"]
        self.format = opts["format"]
        if self.engine == "sqlite" and self.format != "plain":
            raise BackupError("format custom applies only to engine postgresql")
        low, high = LEVEL_RANGES[self.compression]
        level = opts["compression_level"]
        self.level = DEFAULT_LEVELS[self.compression] if level is None else level
        if self.compression != "none" and not low <= self.level <= high:
            raise BackupError(f"compression_level for {self.compression} must be {low}..{high}, got {self.level}")
        if self.compression == "zstd":
            zstd_binary()
        # Custom format with gzip: pg_dump compresses inside the archive, the file is not wrapped.
        self.pg_internal_level = 0
        self.file_compression = self.compression
        if self.format == "custom" and self.compression == "gzip":
            self.pg_internal_level = self.level
            self.file_compression = "none"
        self.mode = parse_mode(opts["mode"])
        self.uid, self.gid = resolve_owner(opts["owner"], opts["group"])
        _check_counts(opts)
        if self.engine == "sqlite":
            self.database = os.path.abspath(opts["database"])
            _check_sqlite_source(self.database)
        else:
            self.database = opts["database"]
            if opts["pg_retries"] < 0:
                raise BackupError("pg_retries must be >= 0")
        self.dir_exists = os.path.isdir(self.backup_dir)
        _check_backup_dir(self.backup_dir)
        for key in ("log_file", "metrics_dir"):
            directory = opts[key] if key == "metrics_dir" else os.path.dirname(opts[key] or "") or "."
            if opts[key] and not os.path.isdir(directory):
                raise BackupError(f"{key} {opts[key]}: directory does not exist")

    def source(self):
        if self.engine == "sqlite":
            return {"path": self.database}
        opts = self.opts
        return {
            "host": opts["pg_host"] or "(libpq default)",
            "port": opts["pg_port"],
            "database": opts["database"],
            "user": opts["pg_user"],
        }


def _check_counts(opts):
    for key in ("retention_days", "retention_count", "retention_daily", "retention_weekly", "retention_monthly"):
        if opts[key] < 0:
            raise BackupError(f"{key} must be >= 0, got {opts[key]}")
    if opts["retention_keep_verified"] < 1:
        raise BackupError("retention_keep_verified must be >= 1: the newest verified backup is never deleted")
    if opts["lock_timeout"] < 0:
        raise BackupError("lock_timeout must be >= 0")


def _check_sqlite_source(path):
    if not os.path.exists(path):
        raise BackupError(f"SQLite database {path} does not exist")
    if not os.path.isfile(path):
        raise BackupError(f"SQLite database {path} is not a regular file")
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise BackupError(f"cannot read SQLite database {path}: {exc.strerror}") from exc
    if header != SQLITE_HEADER:
        raise BackupError(f"{path} is not a SQLite database (no SQLite header)")


def _check_backup_dir(path):
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise BackupError(f"backup_dir {path} is not a directory ({probe} is a file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BackupError(f"backup_dir {path} is not writable")


def _clean_leftovers(backup_dir, engine, log):
    """Remove what killed runs of ``engine`` left behind.

    Runs under that engine's lock, so none of its runs is in progress; the other engine's
    files are left alone, since its runs hold another lock.
    """
    removed = []
    own_prefix = "." + backup_name(engine, utcnow()).split("_", 1)[0] + "_backup_"
    for name in sorted(os.listdir(backup_dir)):
        path = os.path.join(backup_dir, name)
        if _LEFTOVER_RE.match(name) and name.startswith(own_prefix):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            removed.append(path)
            continue
        parsed = parse_backup_name(name[: -len(MANIFEST_SUFFIX)]) if name.endswith(MANIFEST_SUFFIX) else None
        if parsed is None or parsed["engine"] != engine or os.path.exists(path[: -len(MANIFEST_SUFFIX)]):
            continue
        # A manifest whose backup never got renamed into place (the run died in between).
        with contextlib.suppress(BackupError):
            if read_manifest(path).get("created_by") == CREATED_BY:
                os.unlink(path)
                removed.append(path)
    for path in removed:
        log("WARNING", f"removed leftover of an interrupted run: {path}")
    return removed


def _final_name(plan, now):
    """Name for a backup started at ``now``; waits for the next second on a collision."""
    while True:
        name = backup_name(plan.engine, now, plan.format, plan.compression)
        path = os.path.join(plan.backup_dir, name)
        if not os.path.exists(path) and not os.path.exists(manifest_path(path)):
            return name, now
        time.sleep(1.0 - now.microsecond / 1e6 + 0.01)
        now = utcnow()


def _open_temp(path, plan):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _oserror("creating", path, exc) from exc
    return os.fdopen(fd, "wb")


def _finish_file(handle, path):
    try:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
    except OSError as exc:
        raise _oserror("writing", path, exc) from exc


def _sqlite_snapshot(plan, snapshot_path):
    """Copy the live database into ``snapshot_path`` in one step; return its journal mode."""
    try:
        src = sqlite3.connect(f"file:{plan.database}?mode=rw", uri=True, timeout=60)
        try:
            journal_mode = src.execute("PRAGMA journal_mode").fetchone()[0]
            dst = sqlite3.connect(snapshot_path)
            try:
                # One step: a stepwise copy restarts from scratch whenever a writer commits.
                src.backup(dst, pages=-1)
                # A self-contained single file: no -wal needed to open the snapshot.
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        if "full" in str(exc):
            raise BackupError(
                f"snapshot of {plan.database} into {plan.backup_dir} failed: no space left on device; "
                "older backups are untouched"
            ) from exc
        raise BackupError(f"snapshot of {plan.database} failed: {exc}") from exc
    return journal_mode


def _sqlite_backup(plan, tmp_path, snapshot_path, log):
    """Snapshot, check and compress a SQLite database; return the pieces of the manifest."""
    journal_mode = _sqlite_snapshot(plan, snapshot_path)
    log("INFO", f"snapshot of {plan.database} taken ({os.path.getsize(snapshot_path)} bytes, {journal_mode} mode)")

    checks = {}

    def check():
        try:
            conn = sqlite3.connect(f"file:{snapshot_path}?mode=ro", uri=True)
            try:
                checks["integrity"] = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            except sqlite3.DatabaseError as exc:
                checks["integrity"] = [str(exc)]
            finally:
                conn.close()
            if checks["integrity"] != ["ok"]:
                return
            checks["tables"] = sqlite_table_counts(snapshot_path)
            if plan.opts["content_digest"]:
                checks["content_digest"] = sqlite_content_digest(snapshot_path)
        except Exception as exc:
            checks["error"] = exc

    # The integrity check reads the snapshot while the main thread compresses it: two cores.
    checker = threading.Thread(target=check, daemon=True)
    checker.start()
    handle = _open_temp(tmp_path, plan)
    try:
        with open(snapshot_path, "rb") as source:
            stream = compress_stream(source, handle, plan.file_compression, plan.level)
        _finish_file(handle, tmp_path)
    except OSError as exc:
        raise _oserror("writing", tmp_path, exc) from exc
    finally:
        handle.close()
        checker.join()
    if checks.get("integrity", ["ok"]) != ["ok"]:
        problems = "; ".join(checks["integrity"][:3])
        raise BackupError(f"the snapshot of {plan.database} fails integrity_check: {problems}")
    if "error" in checks:
        raise BackupError(f"checking the snapshot failed: {checks['error']}")
    return {
        "stream": stream,
        "tables": checks["tables"],
        "content_digest": checks.get("content_digest"),
        "source_extra": {"journal_mode": journal_mode, "size": os.path.getsize(plan.database)},
        "tool_versions": {"sqlite": sqlite3.sqlite_version},
        "checks": "integrity_check ok",
    }


class _PgSnapshot:
    """A psql session holding a REPEATABLE READ transaction whose snapshot is exported, so that
    pg_dump and the row counts see the same data."""

    def __init__(self, params):
        self.proc = subprocess.Popen(
            [pg_binary(params, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
            env=pg_connection_env(params),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.proc.stdin.write(b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_export_snapshot();\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().decode().strip()
        if not re.fullmatch(r"[0-9A-Fa-f-]+", line):
            err = self.close()
            raise BackupError(pg_redact(f"cannot open a snapshot on PostgreSQL: {err or 'no snapshot id'}", params))
        self.snapshot_id = line

    def close(self):
        with contextlib.suppress(OSError):
            self.proc.stdin.write(b"COMMIT;\n")
            self.proc.stdin.close()
        self.proc.stdout.read()
        err = self.proc.stderr.read()
        self.proc.wait()
        return err.decode("utf-8", "replace").strip()


# One breaker per target and process: a process that runs several backups (the app's own
# scheduler, a test) stops knocking on a server that failed a whole round of attempts.
_BREAKERS = {}
BREAKER_OPEN_SECONDS = 60.0


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
            return breaker.call(psql_query, opts, "SELECT current_setting('server_version')").strip()
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


def _pg_backup(plan, tmp_path, log):
    opts = plan.opts
    server_version = _pg_connect(plan, log)
    snap = _PgSnapshot(opts)
    checks = {}
    try:
        argv = [pg_binary(opts, "pg_dump"), "--no-password", f"--snapshot={snap.snapshot_id}"]
        if plan.format == "custom":
            argv += ["--format=custom", f"--compress={plan.pg_internal_level}"]
        else:
            argv += ["--format=plain"]

        def count():
            try:
                checks["tables"] = pg_table_counts(opts, snapshot=snap.snapshot_id)
            except Exception as exc:
                checks["error"] = exc

        counter = threading.Thread(target=count, daemon=True)
        counter.start()
        with tempfile.TemporaryFile() as err:
            dump = subprocess.Popen(argv, env=pg_connection_env(opts), stdout=subprocess.PIPE, stderr=err)
            handle = _open_temp(tmp_path, plan)
            try:
                stream = compress_stream(dump.stdout, handle, plan.file_compression, plan.level)
                _finish_file(handle, tmp_path)
            except BaseException as exc:
                dump.kill()
                if isinstance(exc, OSError):
                    raise _oserror("writing", tmp_path, exc) from exc
                raise
            finally:
                handle.close()
                dump.stdout.close()
                code = dump.wait()
                counter.join()
            if code != 0:
                err.seek(0)
                detail = tool_error(err.read()) or "no message"
                raise BackupError(pg_redact(f"pg_dump failed (exit {code}): {detail}", opts))
    finally:
        snap.close()
    if "error" in checks:
        raise BackupError(f"counting rows failed: {checks['error']}")
    return {
        "stream": stream,
        "tables": checks["tables"],
        "content_digest": None,
        "source_extra": {"server_version": server_version, "snapshot": "pg_export_snapshot shared by pg_dump"},
        "tool_versions": {
            "pg_dump": _tool_version([pg_binary(opts, "pg_dump"), "--version"]),
            "postgresql_server": server_version,
        },
        "checks": "pg_dump exit 0",
    }


def _decode_into_pg_restore(path, file_compression, params):
    """Decode a custom-format archive into ``pg_restore -f /dev/null``, which reads every block.

    Returns ``(decoded digests or None if pg_restore stopped reading, exit code, stderr)``.
    """
    with tempfile.TemporaryFile() as err:
        restore = subprocess.Popen(
            [pg_binary(params or {}, "pg_restore"), "--file=/dev/null"],
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


def verify_backup(path, plan_format, file_compression, expected, params=None):
    """Decode a written backup completely and compare it with what was written.

    ``expected`` holds ``raw_sha256``/``raw_size`` (the source stream) and ``sha256``/``size``
    (the file). Returns the manifest's ``verification`` dict; raises BackupError on a mismatch.
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
    name = os.path.basename(path)
    if decoded["sha256"] != expected["sha256"] or decoded["size"] != expected["size"]:
        raise BackupError(f"{name} on disk differs from what was written (sha256 or size mismatch)")
    if decoded["decoded_sha256"] != expected["raw_sha256"] or decoded["decoded_size"] != expected["raw_size"]:
        raise BackupError(f"{name} does not decode to the source stream (sha256 or size mismatch)")
    method = f"full decode ({file_compression}); sha256 of decoded stream equals source"
    if plan_format == "custom":
        method += "; pg_restore -f /dev/null"
    elif params is not None:
        if PG_DUMP_COMPLETE not in decoded["tail"]:
            raise BackupError(f"{name} lacks pg_dump's completion comment: the dump is incomplete")
        method += "; pg_dump completion comment present"
    return {"ok": True, "method": method, "detail": f"{decoded['decoded_size']} bytes decoded"}


def _plan_retention(plan, new_entry, now):
    entries = list_backups(plan.backup_dir, plan.engine)
    if new_entry is not None:
        entries.append(new_entry)
    return select_retention(entries, now, **_retention_args(plan.opts))


def _apply_retention(plan, now, log):
    kept, doomed = _plan_retention(plan, None, now)
    deleted = []
    for entry in doomed:
        for path in (entry["path"], manifest_path(entry["path"])):
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log("WARNING", f"retention could not delete {path}: {exc.strerror}")
                continue
        deleted.append(entry["path"])
        log("INFO", f"retention deleted {entry['path']}")
    if deleted:
        fsync_dir(plan.backup_dir)
    return deleted, [entry["path"] for entry, _reasons in kept]


def run_backup(options, check_mode=False):
    """Run one backup with ``options`` (``BACKUP_OPTIONS`` names); return the result dict.

    Raises BackupError with a one-line message on any failure; existing backups are never
    touched by a failed run. In check mode nothing is written, locked or deleted: the result
    says what would be written (``path``) and what retention would delete (``deleted``).
    """
    try:
        opts = validate_options(BACKUP_OPTIONS, options)
    except BackupError as exc:
        log_file = options.get("log_file") if isinstance(options, dict) else None
        if not check_mode and isinstance(log_file, str):
            BackupLog(log_file, str(options.get("engine")))("ERROR", f"backup refused: {exc}")
        raise
    log = BackupLog(opts["log_file"], opts["engine"])
    try:
        plan = _Plan(opts)
    except BackupError as exc:
        if not check_mode:
            log("ERROR", f"backup refused: {exc}")
            _write_metrics_quietly(opts, opts["database"], False, None)
        raise
    started = utcnow()
    if check_mode:
        name = backup_name(plan.engine, started, plan.format, plan.compression)
        path = os.path.join(plan.backup_dir, name)
        while os.path.exists(path):  # a real run would wait for the next second
            started += datetime.timedelta(seconds=1)
            name = backup_name(plan.engine, started, plan.format, plan.compression)
            path = os.path.join(plan.backup_dir, name)
        new_entry = {"name": name, "path": path, "timestamp": started, "verified": True}
        doomed = _plan_retention(plan, new_entry, started)[1]
        return {
            "changed": True,
            "path": path,
            "manifest": manifest_path(path),
            "deleted": [entry["path"] for entry in doomed],
            "msg": f"would write {path} and delete {len(doomed)} old backup(s)",
        }
    metrics_ok = False
    result = None
    try:
        if not plan.dir_exists:
            try:
                os.makedirs(plan.backup_dir, 0o750, exist_ok=True)
            except OSError as exc:
                raise BackupError(f"cannot create backup_dir {plan.backup_dir}: {exc.strerror}") from exc
        with dir_lock(plan.backup_dir, plan.engine, opts["lock_timeout"]):
            _clean_leftovers(plan.backup_dir, plan.engine, log)
            result = _backup_locked(plan, log)
        metrics_ok = True
        return result
    except BackupError as exc:
        log("ERROR", f"backup failed: {exc}")
        raise
    except (OSError, sqlite3.Error, subprocess.SubprocessError) as exc:
        # Still one clear line for the operator, and the existing backups are untouched.
        message = f"backup failed: {type(exc).__name__}: {pg_redact(str(exc), opts)}"
        log("ERROR", message)
        raise BackupError(message) from exc
    finally:
        _write_metrics_quietly(opts, plan.database, metrics_ok, result)


def _write_metrics_quietly(opts, database, ok, result):
    # Metrics report on the backup; failing to write them must not change its outcome.
    if opts["metrics_dir"]:
        with contextlib.suppress(OSError):
            write_metrics(opts["metrics_dir"], opts["engine"], str(database), ok, result=result)


def _backup_locked(plan, log):
    started_mono = time.monotonic()
    name, started = _final_name(plan, utcnow())
    final = os.path.join(plan.backup_dir, name)
    tmp_path = os.path.join(plan.backup_dir, f".{name}.tmp-{os.getpid()}")
    snapshot_path = os.path.join(plan.backup_dir, f".{name}.snapshot-{os.getpid()}")
    log("INFO", f"backup of {plan.database} started -> {final}")
    try:
        if plan.engine == "sqlite":
            parts = _sqlite_backup(plan, tmp_path, snapshot_path, log)
        else:
            parts = _pg_backup(plan, tmp_path, log)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(snapshot_path)
        stream = parts["stream"]
        verification = verify_backup(
            tmp_path, plan.format, plan.file_compression, stream, plan.opts if plan.engine == "postgresql" else None
        )
        verification["detail"] = f"{parts['checks']}; {verification['detail']}"
        try:
            os.chmod(tmp_path, plan.mode)
            if plan.uid != -1 or plan.gid != -1:
                os.chown(tmp_path, plan.uid, plan.gid)
        except OSError as exc:
            raise BackupError(f"cannot set mode/owner on {tmp_path}: {exc.strerror}") from exc
        finished = utcnow()
        duration = round(time.monotonic() - started_mono, 3)
        tool_versions = {
            "python": platform.python_version(),
            "zlib": zlib.ZLIB_RUNTIME_VERSION,
            **parts["tool_versions"],
        }
        if plan.compression == "zstd":
            tool_versions["zstd"] = _tool_version([zstd_binary(), "--version"])
        manifest = {
            "format_version": MANIFEST_FORMAT_VERSION,
            "created_by": CREATED_BY,
            "file": name,
            "engine": plan.engine,
            "format": plan.format,
            "compression": plan.compression,
            "compression_level": plan.level,
            "sha256": stream["sha256"],
            "size": stream["size"],
            "uncompressed_size": stream["raw_size"],
            "uncompressed_sha256": stream["raw_sha256"],
            "source": {**plan.source(), **parts["source_extra"]},
            "started_at": isoformat(started),
            "finished_at": isoformat(finished),
            "duration_seconds": duration,
            "tool_versions": tool_versions,
            "tables": parts["tables"],
            "content_digest": parts["content_digest"],
            "verification": verification,
        }
        # Manifest first, then the rename: a backup under its final name always has one.
        try:
            write_json_atomic(manifest_path(final), manifest, plan.mode, plan.uid, plan.gid)
            os.replace(tmp_path, final)
            fsync_dir(plan.backup_dir)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(manifest_path(final))
            raise _oserror("finalising", final, exc) from exc
    except BaseException:
        for path in (tmp_path, snapshot_path, snapshot_path + "-journal"):
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    log(
        "INFO",
        f"backup written {final} size={stream['size']} sha256={stream['sha256']} verified=yes duration={duration}s",
    )
    deleted, kept = _apply_retention(plan, finished, log)
    size = stream["size"]
    return {
        "changed": True,
        "path": final,
        "manifest": manifest_path(final),
        "size": size,
        "sha256": stream["sha256"],
        "uncompressed_size": stream["raw_size"],
        "duration_seconds": duration,
        "compression_ratio": round(stream["raw_size"] / size, 3) if size else None,
        "tables": parts["tables"],
        "verification": verification,
        "deleted": deleted,
        "kept": kept,
        "msg": f"backup written to {final}, {len(deleted)} old backup(s) deleted",
    }
