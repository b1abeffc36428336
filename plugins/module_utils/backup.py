"""Backup orchestration for every engine (stdlib only).

The db_backup module and the host-side timer (``backup_cli``) both call ``run_backup`` with a
dict of the options in ``options.BACKUP_OPTIONS``. One run:

1. validates the input and resolves owner/group, before anything is touched;
2. takes the backup dir's flock (``catalog.dir_lock``), waiting up to ``lock_timeout``;
3. removes leftovers of killed runs (hidden temp files, manifests without a backup);
4. has the engine's adapter write the backup under a hidden temp name, streaming through the
   compressor while a second thread checks the snapshot (SQLite) or counts rows in pg_dump's
   snapshot (PostgreSQL);
5. fsyncs it and has the adapter decode it completely: the decoded stream's SHA-256 and size
   must equal the source's (plus the engine's own checks);
6. writes the manifest, puts the backup into storage under its final name;
7. only then applies retention (``retention.apply_retention``) to the files it created;
8. appends to the event log and writes the Prometheus textfile metrics.

Check mode runs step 1 and plans steps 6 and 7 without touching anything.
"""

import contextlib
import datetime
import os
import platform
import re
import sqlite3
import subprocess
import time
import zlib

from .catalog import (
    CREATED_BY,
    MANIFEST_FORMAT_VERSION,
    MANIFEST_SUFFIX,
    Manifest,
    backup_name,
    dir_lock,
    manifest_path,
    parse_backup_name,
)
from .compression import DEFAULT_LEVELS, LEVEL_RANGES, zstd_binary
from .engines.pg_client import pg_redact
from .engines.registry import adapter
from .errors import BackupError, StorageError
from .fsutil import isoformat, oserror, utcnow
from .options import BACKUP_OPTIONS, check_counts, parse_mode, resolve_owner, validate_options
from .reporting import EventLog, read_metric, write_metrics_file
from .retention import apply_retention, plan_retention
from .storage.local import LocalStorage
from .streams import tool_version

# Hidden leftovers of a killed run: backup temp files, SQLite snapshots (and their journals),
# manifest temp files from write_json_atomic.
_LEFTOVER_RE = re.compile(
    r"^\.(?:sqlite|postgres)_backup_\d{8}_\d{6}\.[a-z.]+?"
    r"(?:\.tmp-\d+|\.snapshot-\d+(?:-journal|-wal|-shm)?|\.manifest\.json\.[^/]+\.tmp)$"
)
METRICS_FILE = "tradingbot_backup_{engine}.prom"
METRICS_PREFIX = "tradingbot_backup"


class _Plan:
    """Validated input of one run."""

    def __init__(self, opts):
        self.opts = opts
        self.engine = opts["engine"]
        self.adapter = adapter(self.engine)
        self.backup_dir = os.path.abspath(opts["backup_dir"])
        self.storage = LocalStorage(self.backup_dir)
        self.compression = opts["compression"]
        self.format = opts["format"]
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
        check_counts(opts)
        self.database = self.adapter.check_backup(opts, self.format)
        self.dir_exists = os.path.isdir(self.backup_dir)
        _check_backup_dir(self.backup_dir)
        for key in ("log_file", "metrics_dir"):
            directory = opts[key] if key == "metrics_dir" else os.path.dirname(opts[key] or "") or "."
            if opts[key] and not os.path.isdir(directory):
                raise BackupError(f"{key} {opts[key]}: directory does not exist")

    def source(self):
        return self.adapter.source(self.opts, self.database)


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
            if Manifest.read(path).get("created_by") == CREATED_BY:
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


def write_metrics(metrics_dir, engine, database, ok, *, result=None, now=None):
    """Write the Prometheus textfile-collector file for one engine atomically.

    On failure the previous last-success timestamp is carried over, so alerting on
    ``time() - tradingbot_backup_last_success_timestamp_seconds`` keeps working.
    """
    file_name = METRICS_FILE.format(engine=engine)
    now = now or utcnow()
    last_success = read_metric(metrics_dir, file_name, f"{METRICS_PREFIX}_last_success_timestamp_seconds")
    result = result or {}
    if ok:
        last_success = now.timestamp()
    metrics = [
        ("last_run_timestamp_seconds", "Time of the last backup run.", now.timestamp()),
        ("last_result", "1 when the last backup run succeeded, 0 when it failed.", 1 if ok else 0),
        ("last_success_timestamp_seconds", "Time of the last successful backup.", last_success),
        ("duration_seconds", "Duration of the last successful backup.", result.get("duration_seconds")),
        ("size_bytes", "Size of the last successful backup file.", result.get("size")),
        ("compression_ratio", "Uncompressed size over file size of the last backup.", result.get("compression_ratio")),
        ("deleted_files", "Backups deleted by retention in the last run.", len(result.get("deleted", []))),
    ]
    labels = {"engine": engine, "database": database}
    return write_metrics_file(metrics_dir, file_name, METRICS_PREFIX, metrics, labels)


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
            EventLog(log_file, str(options.get("engine")))("ERROR", f"backup refused: {exc}")
        raise
    log = EventLog(opts["log_file"], opts["engine"])
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
        doomed = plan_retention(plan.storage, plan.engine, opts, started, new_entry)[1]
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
        parts = plan.adapter.backup(plan, tmp_path, snapshot_path, log)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(snapshot_path)
        stream = parts["stream"]
        verification = plan.adapter.verify_written(plan, tmp_path, stream)
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
            tool_versions["zstd"] = tool_version([zstd_binary(), "--version"])
        manifest = Manifest(
            {
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
        )
        # Manifest first, then the rename: a backup under its final name always has one.
        try:
            manifest.write(final, plan.mode, plan.uid, plan.gid)
            plan.storage.put(name, tmp_path)
        except (OSError, StorageError) as exc:
            with contextlib.suppress(OSError):
                os.unlink(manifest_path(final))
            if isinstance(exc, StorageError):
                raise BackupError(f"finalising {final} failed: {exc}; older backups are untouched") from exc
            raise oserror("finalising", final, exc) from exc
    except BaseException:
        for path in (tmp_path, snapshot_path, snapshot_path + "-journal"):
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    log(
        "INFO",
        f"backup written {final} size={stream['size']} sha256={stream['sha256']} verified=yes duration={duration}s",
    )
    deleted, kept = apply_retention(plan.storage, plan.engine, plan.opts, finished, log)
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
