"""The SQLite adapter: an online snapshot, checked while it is compressed; restores by rename."""

import os
import sqlite3
import threading

from ..compression import compress_stream
from ..errors import BackupError
from ..fsutil import finish_file, open_exclusive, oserror
from ..verification import check_written, preflight
from . import sqlite_restore
from .base import EngineAdapter
from .sqlite_db import SQLITE_HEADER, check_sqlite_source, sqlite_content_digest, sqlite_table_counts


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
    handle = open_exclusive(tmp_path)
    try:
        with open(snapshot_path, "rb") as source:
            stream = compress_stream(source, handle, plan.file_compression, plan.level)
        finish_file(handle, tmp_path)
    except OSError as exc:
        raise oserror("writing", tmp_path, exc) from exc
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


class SqliteAdapter(EngineAdapter):
    name = "sqlite"

    def check_backup(self, opts, fmt):
        if fmt != "plain":
            raise BackupError("format custom applies only to engine postgresql")
        database = os.path.abspath(opts["database"])
        check_sqlite_source(database)
        return database

    def source(self, opts, database):
        return {"path": database}

    def backup(self, plan, tmp_path, snapshot_path, log):
        return _sqlite_backup(plan, tmp_path, snapshot_path, log)

    def verify_written(self, plan, path, stream):
        return check_written(path, stream)

    def format_problems(self, stats, manifest):
        if not stats["head"].startswith(SQLITE_HEADER):
            return ["decoded data is not an SQLite database"]
        return []

    def preflight(self, path, manifest, sink=None):
        return preflight(path, manifest, self.format_problems, sink)

    def target(self, opts):
        return os.path.abspath(opts["database"])

    def plan_restore(self, opts, stamp):
        return sqlite_restore.plan_restore(self.target(opts), stamp)

    def prepare(self, opts, run, path, manifest, *, plan, log):
        # A legacy file has no row counts to compare: the full integrity check stands in.
        return sqlite_restore.prepare_candidate(
            self,
            run,
            path,
            manifest,
            plan["over"],
            full_integrity_check=opts["integrity_check"] == "full" or manifest.get("legacy") is True,
            verify_digest=opts["verify_content_digest"],
            log=log,
        )

    def swap_in(self, opts, run, prepared, plan, log):
        sqlite_restore.swap_in(run, prepared, plan["over"], plan["safety_copy"], log)

    def rollback(self, opts, safety_copy, check_mode):
        target = self.target(opts)
        expected = os.path.basename(target) + sqlite_restore.SQLITE_SAFETY_INFIX
        if not os.path.basename(safety_copy).startswith(expected) or not os.path.isfile(safety_copy):
            raise BackupError(f"{safety_copy} is not an existing safety copy of {target}")
        if not check_mode:
            sqlite_restore.rollback_sqlite(target, safety_copy)

    def safety_copies(self, opts):
        return sqlite_restore.sqlite_safety_copies(opts["database"]), []
