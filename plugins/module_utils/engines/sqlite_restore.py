"""Restoring a SQLite database: decode into a temp file beside it, validate, swap by rename,
keep the old file as a hard-linked safety copy, roll back from it on failure."""

import concurrent.futures
import contextlib
import os
import sqlite3
import tempfile

from ..errors import BackupError
from ..fsutil import fsync_dir, fsync_file
from ..verification import PreflightError, validate_counts_and_digest, validation_failure
from .sqlite_db import (
    SQLITE_SIDECARS,
    integrity_check,
    open_immutable,
    remove_sidecars,
    sqlite_content_digest,
    sqlite_table_counts,
)

SQLITE_SAFETY_INFIX = ".pre-restore-"


def plan_restore(db_path, stamp):
    """The plan of a restore over ``db_path``; raise BackupError when its directory is missing."""
    if not os.path.isdir(os.path.dirname(db_path)):
        raise BackupError(f"directory {os.path.dirname(db_path)} does not exist")
    live_exists = os.path.exists(db_path)
    return {
        "over": db_path,
        "live_exists": live_exists,
        "safety_copy": _unique_safety_name(db_path, stamp) if live_exists else None,
        "stale_sidecars": [db_path + s for s in SQLITE_SIDECARS if os.path.exists(db_path + s)],
    }


def sqlite_safety_copies(db_path):
    """Return the safety copies kept beside a SQLite database, newest first."""
    directory, base = os.path.split(os.path.abspath(db_path))
    prefix = base + SQLITE_SAFETY_INFIX
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(
        (os.path.join(directory, n) for n in names if n.startswith(prefix) and not n.endswith(SQLITE_SIDECARS)),
        reverse=True,
    )


def _sqlite_target_owner(db_path):
    """Owner, group and mode the restored file must have: the live file's, else the directory's."""
    try:
        st = os.stat(db_path)
        return st.st_uid, st.st_gid, st.st_mode & 0o7777
    except FileNotFoundError:
        st = os.stat(os.path.dirname(db_path))
        return st.st_uid, st.st_gid, 0o640


def _unique_safety_name(db_path, stamp):
    name = db_path + SQLITE_SAFETY_INFIX + stamp
    serial = 1
    while os.path.lexists(name):
        name = f"{db_path}{SQLITE_SAFETY_INFIX}{stamp}_{serial}"
        serial += 1
    return name


def _discard(path):
    remove_sidecars(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _sqlite_decode_and_validate(adapter, path, manifest, tmp, *, owner, full_integrity_check, verify_digest, checks):
    """Decode the backup into ``tmp`` and validate it there; raise BackupError when it fails."""
    uid, gid, mode = owner
    with open(tmp, "wb") as handle:
        checks["preflight"] = dict(adapter.preflight(path, manifest, handle.write), ok=True)
        handle.flush()
        current = os.fstat(handle.fileno())
        if (current.st_uid, current.st_gid) != (uid, gid):
            os.fchown(handle.fileno(), uid, gid)
        os.fchmod(handle.fileno(), mode)
    _sqlite_keep_journal_mode(tmp, (manifest.get("source") or {}).get("journal_mode"))
    # The checks only read the file, from the page cache while its pages are written back;
    # sqlite3 releases the GIL while a query runs, so they overlap on separate connections.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        durable = pool.submit(fsync_file, tmp)
        integrity = pool.submit(integrity_check, tmp, full_integrity_check)
        counts = pool.submit(sqlite_table_counts, tmp)
        digest = pool.submit(sqlite_content_digest, tmp) if verify_digest and manifest.get("content_digest") else None
        try:
            checks["integrity"] = integrity.result()
            ok = validate_counts_and_digest(checks, manifest, counts.result, digest and digest.result, verify_digest)
            durable.result()
        finally:
            for future in (counts, digest):
                if future is not None:
                    future.cancel()
    ok = ok and checks["integrity"]["ok"]
    remove_sidecars(tmp)  # a read-only check can leave an empty -shm behind
    if not ok:
        raise BackupError(validation_failure(checks))


def _sqlite_keep_journal_mode(path, mode):
    """Give the restored file the source's WAL mode: it is stored in the file, and snapshots drop it."""
    if mode != "wal":
        return
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot set WAL mode on the restored copy: {exc}") from exc
    finally:
        conn.close()


def prepare_candidate(adapter, run, path, manifest, db_path, *, full_integrity_check, verify_digest, log):
    """Decode and validate the backup in a temp file beside ``db_path``; return its path."""
    directory = os.path.dirname(db_path)
    checks = run.result["validation"]["checks"]
    tmp = None
    try:
        _remove_leftovers(run, db_path)  # first: they take space the check below counts
        needed = (manifest.get("uncompressed_size") or 0) + 16 * 1024 * 1024
        vfs = os.statvfs(directory)
        if vfs.f_bavail * vfs.f_frsize < needed:
            raise BackupError(f"{directory} has less than the {needed} bytes free the restore needs")
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(db_path)}.restore-", suffix=".tmp", dir=directory)
        os.close(fd)
        _sqlite_decode_and_validate(
            adapter,
            path,
            manifest,
            tmp,
            owner=_sqlite_target_owner(db_path),
            full_integrity_check=full_integrity_check,
            verify_digest=verify_digest,
            checks=checks,
        )
    except PreflightError:
        if tmp:
            _discard(tmp)
        raise
    except (BackupError, OSError) as exc:
        run.result["validation"]["ok"] = False
        checks.setdefault("preflight", {"ok": False, "detail": str(exc)})
        if tmp:
            _discard(tmp)
        log("ERROR", f"restore refused {path}: {exc}")
        raise run.fail(f"restore refused, live database untouched: {exc}") from exc
    except BaseException:
        if tmp:
            _discard(tmp)
        raise
    run.result["validation"]["ok"] = True
    run.step(f"decoded into {tmp} and validated it there")
    return tmp


def _remove_leftovers(run, db_path):
    """Remove temp files of a restore that was killed; the backup dir's lock is held."""
    directory, base = os.path.split(db_path)
    prefix = f".{base}.restore-"
    for name in os.listdir(directory):
        if name.startswith(prefix) and name.endswith((".tmp", *(".tmp" + s for s in SQLITE_SIDECARS))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
            run.step(f"removed {name}, left by an interrupted restore")


def swap_in(run, tmp, db_path, safety, log):
    """Keep the live database as ``safety``, rename ``tmp`` over it; roll back on any failure."""
    result = run.result
    checks = result["validation"]["checks"]
    try:
        _sqlite_keep_safety_copy(db_path, safety)
    except OSError as exc:
        _discard(tmp)
        raise run.fail(f"restore refused, live database untouched: cannot make the safety copy: {exc}") from exc
    if safety:
        run.step(f"safety copy {safety} (hard link: same inode, owner and mode)")
    result["safety_copy"] = safety
    result["live_untouched"] = False
    try:
        inode = os.stat(tmp).st_ino
        # The old -wal/-shm/-journal belong to the old database (kept under the safety
        # name); left in place, SQLite would replay them into the restored file.
        remove_sidecars(db_path)
        os.rename(tmp, db_path)
        fsync_dir(os.path.dirname(db_path))
        result["changed"] = True
        checks["post_swap"] = _sqlite_post_swap(db_path, inode)
        if not checks["post_swap"]["ok"]:
            raise BackupError(f"the live database is not the validated copy after the swap: {checks['post_swap']}")
    except (BackupError, OSError) as exc:
        _discard(tmp)
        log("ERROR", f"restore failed after the swap: {exc}; rolling back")
        if not safety:
            raise run.fail(f"restore failed after the swap and there was no database to keep: {exc}") from exc
        try:
            rollback_sqlite(db_path, safety)
        except (BackupError, OSError) as again:
            raise run.fail(
                f"restore failed ({exc}) and so did the rollback ({again}); the previous database is kept as {safety}"
            ) from exc
        result.update(rolled_back=True, safety_copy=None, changed=True)
        log("WARNING", f"rolled back {db_path} from {safety}")
        raise run.fail(f"restore failed and was rolled back from {safety}: {exc}") from exc
    run.step("live database replaced")


def _sqlite_keep_safety_copy(db_path, safety):
    """Hard-link the live database (and its -wal/-journal) under the safety name; undo on failure."""
    if not safety:
        return
    made = []
    try:
        os.link(db_path, safety)
        made.append(safety)
        for suffix in ("-wal", "-journal"):
            if os.path.exists(db_path + suffix):
                os.link(db_path + suffix, safety + suffix)
                made.append(safety + suffix)
        fsync_dir(os.path.dirname(db_path))
    except OSError:
        for name in made:
            with contextlib.suppress(OSError):
                os.unlink(name)
        raise


def _sqlite_post_swap(db_path, inode):
    st = os.stat(db_path)
    if st.st_ino != inode:
        return {"ok": False, "detail": "another file took the live name"}
    conn = open_immutable(db_path)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        return {"ok": False, "detail": str(exc)}
    finally:
        conn.close()
    return {"ok": True, "method": "same inode as the validated copy; opens"}


def rollback_sqlite(db_path, safety):
    """Put a safety copy back as the live database; the safety name is consumed."""
    db_path = os.path.abspath(db_path)
    directory = os.path.dirname(db_path)
    expected = os.path.basename(db_path) + SQLITE_SAFETY_INFIX
    if os.path.dirname(os.path.abspath(safety)) != directory or not os.path.basename(safety).startswith(expected):
        raise BackupError(f"{safety} is not a safety copy of {db_path}")
    if not os.path.isfile(safety) or os.path.islink(safety):
        raise BackupError(f"safety copy {safety} does not exist")
    remove_sidecars(db_path)
    os.rename(safety, db_path)
    for suffix in ("-wal", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(safety + suffix, db_path + suffix)
    fsync_dir(directory)
    # sqlite_post_swap's read-only open may have left an -shm for the restored file.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(db_path + "-shm")
