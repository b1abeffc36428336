"""Restore engine for SQLite and PostgreSQL backups made by the backup engine (stdlib only).

One restore either ends with the chosen backup live and validated, or leaves the database as
it was. The steps (see docs/restore.md):

1. choose: the newest verified backup, or a name inside ``backup_dir`` (no path escapes it);
2. pre-flight: SHA-256 and size against the manifest, and a full decode (SQLite: while
   writing the candidate; PostgreSQL: while loading the candidate); a mismatch refuses the
   restore with the live database untouched;
3. restore into a candidate beside the live database (SQLite: a temp file in the same
   directory; PostgreSQL: a fresh database), then validate the candidate: integrity, per-table
   row counts and, when the manifest has one, the content digest;
4. swap: keep the current database as a safety copy (SQLite: a hard link; PostgreSQL: the old
   database renamed) and put the candidate in its place in one atomic step;
5. any failure after the swap rolls back from the safety copy. ``rollback()`` does the same on
   request, for a failure seen later (the service's health check).

Imports are relative: this file also runs on hosts as part of the plain ``tradingbot_ops``
package.
"""

import concurrent.futures
import contextlib
import os
import sqlite3
import subprocess
import tempfile
import time

from .db_common import (
    CREATED_BY,
    PG_DUMP_COMPLETE,
    SQLITE_HEADER,
    STAMP_FORMAT,
    BackupError,
    decode_file,
    dir_lock,
    fsync_dir,
    isoformat,
    list_backups,
    manifest_path,
    parse_backup_name,
    pg_binary,
    pg_connection_env,
    pg_content_digest,
    pg_redact,
    pg_table_counts,
    quote_ident,
    read_manifest,
    sha256_file,
    sqlite_content_digest,
    sqlite_table_counts,
    utcnow,
)

SQLITE_SAFETY_INFIX = ".pre-restore-"
PG_SAFETY_INFIX = "_pre_restore_"
PG_CANDIDATE_INFIX = "_restore_"
PG_FAILED_INFIX = "_failed_restore_"
PG_MAX_NAME = 63  # NAMEDATALEN - 1
# Files SQLite keeps beside a database; a stale -wal applied to another database corrupts it.
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")
CUSTOM_HEADER = b"PGDMP"


class RestoreError(BackupError):
    """A restore was refused or failed. ``result`` says what happened and where things are."""

    def __init__(self, message, result=None):
        super().__init__(message)
        self.result = result if result is not None else {}


def _quote_literal(value):
    return "'" + str(value).replace("'", "''") + "'"


# --- choosing a backup --------------------------------------------------------------------------


def describe_backup(path, manifest):
    """Summarise a backup for results and prompts (no secrets: manifests hold none)."""
    verification = manifest.get("verification") or {}
    return {
        "name": os.path.basename(path),
        "path": path,
        "engine": manifest.get("engine"),
        "format": manifest.get("format"),
        "compression": manifest.get("compression"),
        "size": manifest.get("size"),
        "uncompressed_size": manifest.get("uncompressed_size"),
        "sha256": manifest.get("sha256"),
        "created": manifest.get("finished_at") or manifest.get("started_at"),
        "verified": verification.get("ok") is True,
        "verification": verification,
        "tables": manifest.get("tables") or {},
        "has_content_digest": bool(manifest.get("content_digest")),
    }


def list_restorable(backup_dir, engine):
    """Return our backups for ``engine`` in ``backup_dir``, newest first, with manifest data."""
    return [describe_backup(entry["path"], entry["manifest"]) for entry in list_backups(backup_dir, engine)]


def resolve_named_backup(backup_dir, name, engine):
    """Return ``(path, manifest)`` for a backup named inside ``backup_dir``.

    Accepts a bare file name, or an absolute path whose directory is the backup dir. Refuses
    anything else (``..``, subdirectories, other directories, symlinks), names that are not
    backups of this engine, and files without our manifest.
    """
    real_dir = os.path.realpath(backup_dir)
    refused = f"refusing backup_file {name!r}: it is not a file directly inside {real_dir}"
    if os.path.isabs(name):
        if os.path.realpath(os.path.dirname(os.path.normpath(name))) != real_dir:
            raise BackupError(refused)
        base = os.path.basename(os.path.normpath(name))
    elif "/" in name or name in ("", ".", ".."):
        raise BackupError(refused)
    else:
        base = name
    path = os.path.join(real_dir, base)
    if os.path.islink(path):
        raise BackupError(f"refusing backup_file {name!r}: it is a symlink")
    parsed = parse_backup_name(base)
    if parsed is None or parsed["engine"] != engine:
        raise BackupError(f"refusing backup_file {name!r}: not a {engine} backup name (e.g. {_example_name(engine)})")
    if not os.path.isfile(path):
        raise BackupError(f"backup {path} does not exist")
    manifest = read_manifest(manifest_path(path))
    if manifest.get("created_by") != CREATED_BY or manifest.get("file") != base:
        raise BackupError(f"refusing {path}: its manifest was not written by tradingbot.ops for this file")
    if manifest.get("engine") != engine:
        raise BackupError(f"refusing {path}: its manifest says engine {manifest.get('engine')!r}, not {engine!r}")
    return path, manifest


def _example_name(engine):
    return "sqlite_backup_20250101_020000.db.gz" if engine == "sqlite" else "postgres_backup_20250101_020000.sql.gz"


def choose_backup(backup_dir, engine, name=None):
    """Return ``(path, manifest)``: the named backup, or the newest one whose verification passed."""
    if name:
        return resolve_named_backup(backup_dir, name, engine)
    for entry in list_backups(backup_dir, engine):
        if entry["verified"]:
            return entry["path"], entry["manifest"]
    raise BackupError(f"no verified {engine} backup in {backup_dir}")


# --- checking a backup against its manifest -----------------------------------------------------


def _checksum_problems(sha256, size, manifest):
    problems = []
    if sha256 != manifest.get("sha256"):
        problems.append(f"SHA-256 {sha256} differs from the manifest's {manifest.get('sha256')}")
    if manifest.get("size") is not None and size != manifest["size"]:
        problems.append(f"size {size} differs from the manifest's {manifest['size']}")
    return problems


def check_stream(stats, manifest):
    """Compare what ``decode_file`` saw with the manifest; return the list of problems."""
    problems = _checksum_problems(stats["sha256"], stats["size"], manifest)
    expected = manifest.get("uncompressed_size")
    if expected is not None and stats["decoded_size"] != expected:
        problems.append(f"decoded size {stats['decoded_size']} differs from the manifest's {expected}")
    fmt = "sqlite" if manifest.get("engine") == "sqlite" else manifest.get("format")
    if fmt == "sqlite" and not stats["head"].startswith(SQLITE_HEADER):
        problems.append("decoded data is not an SQLite database")
    elif fmt == "plain" and PG_DUMP_COMPLETE not in stats["tail"]:
        problems.append("decoded dump lacks pg_dump's completion trailer (incomplete dump)")
    elif fmt == "custom" and not stats["head"].startswith(CUSTOM_HEADER):
        problems.append("decoded data is not a pg_dump custom-format archive")
    return problems


def _file_compression(path, manifest):
    parsed = parse_backup_name(os.path.basename(path)) or {}
    return parsed.get("file_compression") or manifest.get("compression") or "none"


def _decode(path, manifest, sink):
    # No hash of the decoded stream: the file's SHA-256 is checked against the manifest and
    # gzip/zstd check their own checksums, so it would cost a core and add no safety.
    return decode_file(path, _file_compression(path, manifest), sink, hash_decoded=False)


def preflight(path, manifest, sink=None):
    """Hash and decode a backup, checking it against its manifest; raise BackupError on any problem."""
    try:
        stats = _decode(path, manifest, sink)
    except BackupError as exc:
        raise BackupError(f"backup {os.path.basename(path)} is unreadable: {exc}") from exc
    problems = check_stream(stats, manifest)
    if problems:
        raise BackupError(f"backup {os.path.basename(path)} fails pre-flight: {'; '.join(problems)}")
    return {"sha256": stats["sha256"], "size": stats["size"], "uncompressed_size": stats["decoded_size"]}


def verify_checksum(path, manifest):
    """Check a backup's SHA-256 and size against its manifest without decoding it."""
    size = os.path.getsize(path)
    digest = sha256_file(path)
    problems = _checksum_problems(digest, size, manifest)
    if problems:
        raise BackupError(f"backup {os.path.basename(path)} fails pre-flight: {'; '.join(problems)}")
    return {"sha256": digest, "size": size}


# --- validation ---------------------------------------------------------------------------------


def compare_counts(expected, actual):
    """Return ``{table: {"expected": n, "actual": m}}`` for every table whose rows differ."""
    return {
        table: {"expected": expected.get(table), "actual": actual.get(table)}
        for table in sorted(set(expected) | set(actual))
        if expected.get(table) != actual.get(table)
    }


def _validate_counts_and_digest(checks, manifest, count, digest, verify_digest):
    expected = manifest.get("tables")
    if expected is None:
        checks["row_counts"] = {"ok": True, "skipped": "the manifest records no row counts"}
    else:
        mismatches = compare_counts(expected, count())
        checks["row_counts"] = {"ok": not mismatches, "tables": len(expected), "mismatches": mismatches}
    if not manifest.get("content_digest"):
        checks["content_digest"] = {"ok": True, "skipped": "the manifest records no content digest"}
    elif not verify_digest:
        checks["content_digest"] = {"ok": True, "skipped": "verify_content_digest is off"}
    else:
        actual = digest()
        checks["content_digest"] = {"ok": actual == manifest["content_digest"], "actual": actual}
    return all(check["ok"] for check in checks.values())


def _validation_failure(checks):
    failed = [name for name, check in checks.items() if not check["ok"]]
    detail = checks.get("row_counts", {}).get("mismatches")
    text = f"validation failed: {', '.join(failed)}"
    if detail:
        text += "; rows differ from the manifest: " + ", ".join(
            f"{table} {counts['actual']} != {counts['expected']}" for table, counts in list(detail.items())[:5]
        )
    return text


# --- shared bookkeeping ---------------------------------------------------------------------------


class _Run:
    """Result under construction; every step is recorded so a failure says what happened."""

    def __init__(self, engine, target):
        self.started = time.monotonic()
        self.result = {
            "changed": False,
            "engine": engine,
            "target": target,
            "backup": None,
            "safety_copy": None,
            "validation": {"ok": None, "checks": {}},
            "rolled_back": False,
            "live_untouched": True,
            "steps": [],
        }

    def step(self, text):
        self.result["steps"].append(text)

    def finish(self):
        self.result["duration_seconds"] = round(time.monotonic() - self.started, 3)
        return self.result

    def fail(self, message):
        self.result["msg"] = message
        self.step(message)
        return RestoreError(message, self.finish())


def _stamp():
    return utcnow().strftime(STAMP_FORMAT)


@contextlib.contextmanager
def _guarded(run, backup_dir, engine, *, lock_timeout, check_mode, log_file):
    """Serialise with backups of the same dir, and turn an early BackupError into a refusal.

    Inside, a plain BackupError means nothing was changed yet; later failures raise
    RestoreError themselves, saying what was changed and what was rolled back.
    """
    try:
        if check_mode:
            yield
        else:
            with dir_lock(backup_dir, engine, lock_timeout):
                yield
    except RestoreError:
        raise
    except (BackupError, OSError) as exc:
        if not run.result["live_untouched"]:  # a safety net: later steps raise RestoreError themselves
            _log(log_file, f"failed after changing the live database: {exc}")
            raise run.fail(
                f"restore failed after the live database was changed and was not rolled back: {exc}; "
                f"the previous database is kept as {run.result['safety_copy']}"
            ) from exc
        run.result["validation"]["ok"] = False
        run.result["validation"]["checks"].setdefault("preflight", {"ok": False, "detail": str(exc)})
        verb = "would be refused" if check_mode else "refused, nothing changed"
        if not check_mode:
            _log(log_file, f"{verb}: {exc}")
        raise run.fail(f"restore {verb}: {exc}") from exc


def _log(log_file, text):
    if not log_file:
        return
    with contextlib.suppress(OSError), open(log_file, "a", encoding="utf-8") as handle:
        handle.write(f"{isoformat(utcnow())} restore: {text}\n")


# --- SQLite ---------------------------------------------------------------------------------------


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


def _sqlite_open_immutable(path):
    # immutable: no locks and no -wal/-shm files created; only this process uses the file now.
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)


def _sqlite_check(path, full):
    pragma = "integrity_check" if full else "quick_check"
    conn = _sqlite_open_immutable(path)
    try:
        rows = [row[0] for row in conn.execute(f"PRAGMA {pragma}").fetchall()]
    except sqlite3.Error as exc:
        rows = [str(exc)]
    finally:
        conn.close()
    return {"ok": rows == ["ok"], "method": pragma, "detail": rows[:5]}


def _remove_sidecars(path):
    for suffix in SQLITE_SIDECARS:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)


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
    _remove_sidecars(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _sqlite_decode_and_validate(path, manifest, tmp, *, owner, full_integrity_check, verify_digest, checks):
    """Decode the backup into ``tmp`` and validate it there; raise BackupError when it fails."""
    uid, gid, mode = owner
    with open(tmp, "wb") as handle:
        checks["preflight"] = dict(preflight(path, manifest, handle.write), ok=True)
        handle.flush()
        current = os.fstat(handle.fileno())
        if (current.st_uid, current.st_gid) != (uid, gid):
            os.fchown(handle.fileno(), uid, gid)
        os.fchmod(handle.fileno(), mode)
        os.fsync(handle.fileno())
    _sqlite_keep_journal_mode(tmp, (manifest.get("source") or {}).get("journal_mode"))
    # The checks only read the file; sqlite3 releases the GIL while a query runs, so they
    # overlap on separate connections.
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        integrity = pool.submit(_sqlite_check, tmp, full_integrity_check)
        counts = pool.submit(sqlite_table_counts, tmp)
        digest = pool.submit(sqlite_content_digest, tmp) if verify_digest and manifest.get("content_digest") else None
        try:
            checks["integrity"] = integrity.result()
            ok = _validate_counts_and_digest(checks, manifest, counts.result, digest and digest.result, verify_digest)
        finally:
            for future in (counts, digest):
                if future is not None:
                    future.cancel()
    ok = ok and checks["integrity"]["ok"]
    _remove_sidecars(tmp)  # a read-only check can leave an empty -shm behind
    if not ok:
        raise BackupError(_validation_failure(checks))


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


def restore_sqlite(
    db_path,
    backup_dir,
    *,
    backup_file=None,
    check_mode=False,
    full_integrity_check=False,
    verify_content_digest=True,
    lock_timeout=0,
    log_file=None,
):
    """Restore a SQLite backup over ``db_path``; return the result dict or raise RestoreError."""
    db_path = os.path.abspath(db_path)
    run = _Run("sqlite", db_path)
    with _guarded(run, backup_dir, "sqlite", lock_timeout=lock_timeout, check_mode=check_mode, log_file=log_file):
        path, manifest = choose_backup(backup_dir, "sqlite", backup_file)
        run.result["backup"] = describe_backup(path, manifest)
        run.step(f"chose {path}")
        if not os.path.isdir(os.path.dirname(db_path)):
            raise BackupError(f"directory {os.path.dirname(db_path)} does not exist")
        live_exists = os.path.exists(db_path)
        safety = _unique_safety_name(db_path, _stamp()) if live_exists else None
        run.result["plan"] = {
            "restore": path,
            "over": db_path,
            "live_exists": live_exists,
            "safety_copy": safety,
            "stale_sidecars": [db_path + s for s in SQLITE_SIDECARS if os.path.exists(db_path + s)],
        }
        if check_mode:
            return _check_only(run, path, manifest, safety)
        _log(log_file, f"restoring {path} over {db_path}")
        tmp = _sqlite_candidate(
            run,
            path,
            manifest,
            db_path,
            full_integrity_check=full_integrity_check,
            verify_digest=verify_content_digest,
            log_file=log_file,
        )
        _sqlite_swap_in(run, tmp, db_path, safety, log_file)
        _log(log_file, f"restored {path} over {db_path}; safety copy {safety}")
    return run.finish()


def _check_only(run, path, manifest, safety):
    """Check mode: run the read-only pre-flight and report the plan."""
    run.result["validation"]["checks"]["preflight"] = dict(preflight(path, manifest), ok=True)
    run.result["validation"]["ok"] = True
    run.result["safety_copy"] = safety
    run.result["changed"] = True
    run.step("check mode: the backup passes pre-flight; nothing changed")
    return run.finish()


def _sqlite_candidate(run, path, manifest, db_path, *, full_integrity_check, verify_digest, log_file):
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
            path,
            manifest,
            tmp,
            owner=_sqlite_target_owner(db_path),
            full_integrity_check=full_integrity_check,
            verify_digest=verify_digest,
            checks=checks,
        )
    except (BackupError, OSError) as exc:
        run.result["validation"]["ok"] = False
        checks.setdefault("preflight", {"ok": False, "detail": str(exc)})
        if tmp:
            _discard(tmp)
        _log(log_file, f"refused {path}: {exc}")
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


def _sqlite_swap_in(run, tmp, db_path, safety, log_file):
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
        _remove_sidecars(db_path)
        os.rename(tmp, db_path)
        fsync_dir(os.path.dirname(db_path))
        result["changed"] = True
        checks["post_swap"] = _sqlite_post_swap(db_path, inode)
        if not checks["post_swap"]["ok"]:
            raise BackupError(f"the live database is not the validated copy after the swap: {checks['post_swap']}")
    except (BackupError, OSError) as exc:
        _discard(tmp)
        _log(log_file, f"failed after the swap: {exc}; rolling back")
        if not safety:
            raise run.fail(f"restore failed after the swap and there was no database to keep: {exc}") from exc
        try:
            rollback_sqlite(db_path, safety)
        except (BackupError, OSError) as again:
            raise run.fail(
                f"restore failed ({exc}) and so did the rollback ({again}); the previous database is kept as {safety}"
            ) from exc
        result.update(rolled_back=True, safety_copy=None, changed=True)
        _log(log_file, f"rolled back {db_path} from {safety}")
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
    conn = _sqlite_open_immutable(db_path)
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
    _remove_sidecars(db_path)
    os.rename(safety, db_path)
    for suffix in ("-wal", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(safety + suffix, db_path + suffix)
    fsync_dir(directory)
    # sqlite_post_swap's read-only open may have left an -shm for the restored file.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(db_path + "-shm")


# --- PostgreSQL -----------------------------------------------------------------------------------


def _pg_target(params):
    host = params.get("pg_host") or "local socket"
    port = params.get("pg_port") or 5432
    return f"postgresql://{host}:{port}/{params['database']}"


def psql_script(params, script, database, variables=None):
    """Run a psql script (stdin) with ON_ERROR_STOP and ``:'var'``/``:"var"`` variables."""
    argv = [pg_binary(params, "psql"), "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", database]
    for key, value in (variables or {}).items():
        argv += ["-v", f"{key}={value}"]
    env = pg_connection_env(dict(params, database=database))
    # pylint: disable-next=ansible-bad-function  # runs on hosts too, where run_command does not exist
    proc = subprocess.run(argv, input=script.encode(), env=env, capture_output=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise BackupError(pg_redact(f"psql failed: {lines[-1] if lines else 'exit ' + str(proc.returncode)}", params))
    return proc.stdout.decode("utf-8")


def pg_database_info(params, name, maintenance_db):
    """Return the owner, encoding and locale of database ``name``, or None when it does not exist."""
    out = psql_script(
        params,
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype "
        "FROM pg_database WHERE datname = :'name'",
        maintenance_db,
        {"name": name},
    ).strip()
    if not out:
        return None
    owner, encoding, collate, ctype = out.split("\t")
    return {"owner": owner, "encoding": encoding, "collate": collate, "ctype": ctype}


def pg_safety_copies(params, maintenance_db="postgres"):
    """Return the safety databases kept for ``params['database']``, newest first."""
    out = psql_script(
        params,
        "SELECT datname FROM pg_database WHERE starts_with(datname, :'prefix') ORDER BY datname DESC",
        maintenance_db,
        {"prefix": params["database"] + PG_SAFETY_INFIX},
    )
    return [line for line in out.splitlines() if line]


def _pg_name(database, infix, stamp):
    name = database + infix + stamp
    if len(name.encode()) > PG_MAX_NAME:
        raise BackupError(f"database name {database!r} is too long to derive {name!r} (limit {PG_MAX_NAME} bytes)")
    return name


# Carries database-level grants and settings over: pg_dump without --create does not dump them.
_PG_COPY_DB_PROPERTIES = r"""
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'dst') FROM pg_database
 WHERE datname = :'src' AND datacl IS NOT NULL
\gexec
SELECT format('GRANT %s ON DATABASE %I TO %s%s', a.privilege_type, :'dst',
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
       CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
  FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = :'src'
\gexec
SELECT CASE WHEN s.setrole = 0
            THEN format('ALTER DATABASE %I SET %s = %s', :'dst', split_part(c, '=', 1), v)
            ELSE format('ALTER ROLE %I IN DATABASE %I SET %s = %s', pg_get_userbyid(s.setrole), :'dst',
                        split_part(c, '=', 1), v) END
  FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase,
       unnest(s.setconfig) AS c,
       LATERAL (SELECT CASE WHEN position(',' IN substr(c, strpos(c, '=') + 1)) > 0
                            THEN substr(c, strpos(c, '=') + 1)
                            ELSE quote_literal(substr(c, strpos(c, '=') + 1)) END) AS val(v)
 WHERE d.datname = :'src'
\gexec
"""

_PG_TERMINATE = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
 WHERE datname = :'name' AND pid <> pg_backend_pid();
"""

_PG_RENAME = 'ALTER DATABASE :"old" RENAME TO :"new"'

_PG_SWAP = """
BEGIN;
ALTER DATABASE :"live" RENAME TO :"keep";
ALTER DATABASE :"new" RENAME TO :"live";
COMMIT;
"""


def _pg_drop(params, name, maintenance_db):
    psql_script(params, 'DROP DATABASE IF EXISTS :"name" WITH (FORCE)', maintenance_db, {"name": name})


def _pg_load(params, path, manifest, database):
    """Stream the decoded backup into ``database`` with ON_ERROR_STOP in one transaction."""
    if manifest.get("format") == "custom":
        argv = [pg_binary(params, "pg_restore"), "--exit-on-error", "--single-transaction", "-d", database]
    else:
        argv = [pg_binary(params, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"]
        argv += ["-o", os.devnull, "-d", database]
    env = pg_connection_env(dict(params, database=database))
    with tempfile.TemporaryFile() as errors:
        # pylint: disable-next=ansible-bad-function  # runs on hosts too, where run_command does not exist
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors, env=env)
        stats = None
        feed_error = None
        try:
            stats = _decode(path, manifest, proc.stdin.write)
        except BrokenPipeError:
            pass  # the loader stopped on an error: its exit code and stderr say which
        except BackupError as exc:
            feed_error = str(exc)
        finally:
            if stats is None and proc.poll() is None:
                proc.kill()  # at end of input psql would commit a partial load
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            code = proc.wait()
        errors.seek(0)
        lines = [line for line in errors.read().decode("utf-8", "replace").splitlines() if line.strip()]
    if feed_error:
        raise BackupError(f"loading failed: {feed_error}")
    if code != 0:
        errs = [line for line in lines if "ERROR" in line or "error" in line] or lines
        raise BackupError(pg_redact(f"loading failed (exit {code}): {errs[0] if errs else 'no message'}", params))
    if stats is None:
        raise BackupError("loading failed: the loader stopped reading before the end of the backup")
    # The file is read again here: it must still be the one pre-flight checked.
    problems = check_stream(stats, manifest)
    if problems:
        raise BackupError("backup fails its check while loading: " + "; ".join(problems))
    return stats


def restore_postgresql(
    params,
    backup_dir,
    *,
    backup_file=None,
    check_mode=False,
    verify_content_digest=True,
    maintenance_db="postgres",
    terminate_connections=True,
    lock_timeout=0,
    log_file=None,
):
    """Restore a PostgreSQL backup into ``params['database']``; return the result or raise RestoreError.

    The backup is loaded into a fresh database; after validation one transaction renames the
    live database to the safety name and the fresh one to the live name.
    """
    database = params["database"]
    run = _Run("postgresql", _pg_target(params))
    with _guarded(run, backup_dir, "postgresql", lock_timeout=lock_timeout, check_mode=check_mode, log_file=log_file):
        path, manifest = choose_backup(backup_dir, "postgresql", backup_file)
        run.result["backup"] = describe_backup(path, manifest)
        run.step(f"chose {path}")
        stamp = _stamp()
        candidate = _pg_name(database, PG_CANDIDATE_INFIX, stamp)
        _pg_name(database, PG_FAILED_INFIX, stamp)  # a rollback must be able to name it too
        live = pg_database_info(params, database, maintenance_db)
        safety = _pg_name(database, PG_SAFETY_INFIX, stamp) if live else None
        run.result["plan"] = {
            "restore": path,
            "over": run.result["target"],
            "live_exists": live is not None,
            "candidate_database": candidate,
            "safety_copy": safety,
        }
        if check_mode:
            return _check_only(run, path, manifest, safety)
        # Before any database is created: the file is the one the manifest describes, so it is
        # the file the backup engine decoded completely. The load below decodes it again and
        # checks the completion trailer; a failure there drops the candidate.
        run.result["validation"]["checks"]["preflight"] = dict(verify_checksum(path, manifest), ok=True)
        run.step("backup matches its manifest (SHA-256, size)")
        _log(log_file, f"restoring {path} over {run.result['target']}")
        _pg_candidate(
            run,
            params,
            path,
            manifest,
            candidate=candidate,
            live=live,
            maintenance_db=maintenance_db,
            verify_digest=verify_content_digest,
            log_file=log_file,
        )
        _pg_swap_in(
            run, params, candidate, safety, maintenance_db=maintenance_db, terminate_connections=terminate_connections
        )
        _log(log_file, f"restored {path} over {run.result['target']}; safety copy {safety}")
    return run.finish()


def _pg_candidate(run, params, path, manifest, *, candidate, live, maintenance_db, verify_digest, log_file):
    """Create the candidate database, load the backup into it and validate it there."""
    database = params["database"]
    checks = run.result["validation"]["checks"]
    create = f"CREATE DATABASE {quote_ident(candidate)} TEMPLATE template0"
    if live:
        create += (
            f" OWNER {quote_ident(live['owner'])} ENCODING {_quote_literal(live['encoding'])}"
            f" LC_COLLATE {_quote_literal(live['collate'])} LC_CTYPE {_quote_literal(live['ctype'])}"
        )
    try:
        psql_script(params, create, maintenance_db)
    except BackupError as exc:
        raise BackupError(f"cannot create candidate database {candidate}: {exc}") from exc
    run.step(f"created candidate database {candidate}")
    try:
        stats = _pg_load(params, path, manifest, candidate)
        checks["preflight"].update(uncompressed_size=stats["decoded_size"], decoded=True)
        run.step(f"loaded {os.path.basename(path)} into {candidate} (ON_ERROR_STOP, one transaction)")
        if live:
            psql_script(params, _PG_COPY_DB_PROPERTIES, maintenance_db, {"src": database, "dst": candidate})
        checks["integrity"] = {"ok": True, "method": "load completed with ON_ERROR_STOP in one transaction"}
        ok = _validate_counts_and_digest(
            checks,
            manifest,
            lambda: pg_table_counts(params, candidate),
            lambda: pg_content_digest(params, candidate),
            verify_digest,
        )
        if not ok:
            raise BackupError(_validation_failure(checks))
    except BackupError as exc:
        run.result["validation"]["ok"] = False
        with contextlib.suppress(BackupError):
            _pg_drop(params, candidate, maintenance_db)
        _log(log_file, f"refused {path}: {exc}")
        raise run.fail(f"restore refused, live database untouched: {exc}") from exc
    run.result["validation"]["ok"] = True
    run.step("candidate database validated")


def _pg_swap_in(run, params, candidate, safety, *, maintenance_db, terminate_connections):
    """Rename the live database to ``safety`` and the candidate to the live name, atomically."""
    database = params["database"]
    result = run.result
    try:
        if safety:
            if terminate_connections:
                psql_script(params, _PG_TERMINATE, maintenance_db, {"name": database})
            psql_script(params, _PG_SWAP, maintenance_db, {"live": database, "keep": safety, "new": candidate})
            run.step(f"swapped in one transaction: {database} -> {safety}, {candidate} -> {database}")
        else:
            psql_script(params, _PG_RENAME, maintenance_db, {"old": candidate, "new": database})
            run.step(f"renamed {candidate} -> {database} (there was no live database)")
    except BackupError as exc:
        with contextlib.suppress(BackupError):
            _pg_drop(params, candidate, maintenance_db)
        raise run.fail(f"restore refused, live database untouched: the swap failed: {exc}") from exc
    result.update(changed=True, live_untouched=False, safety_copy=safety)
    try:
        psql_script(params, "SELECT 1", database)
        result["validation"]["checks"]["post_swap"] = {"ok": True, "method": "connect to the live name"}
    except BackupError as exc:
        result["validation"]["checks"]["post_swap"] = {"ok": False, "detail": str(exc)}
        if not safety:
            raise run.fail(f"restore failed after the swap and there was no database to keep: {exc}") from exc
        try:
            rollback_postgresql(params, safety, maintenance_db, terminate_connections)
        except BackupError as again:
            raise run.fail(
                f"restore failed ({exc}) and so did the rollback ({again}); the previous database is kept as {safety}"
            ) from exc
        result.update(rolled_back=True, safety_copy=None)
        raise run.fail(f"restore failed and was rolled back from {safety}: {exc}") from exc


def rollback_postgresql(params, safety, maintenance_db="postgres", terminate_connections=True):
    """Swap the safety database back under the live name and drop the failed restore."""
    database = params["database"]
    if not safety.startswith(database + PG_SAFETY_INFIX):
        raise BackupError(f"{safety} is not a safety copy of database {database}")
    if pg_database_info(params, safety, maintenance_db) is None:
        raise BackupError(f"safety database {safety} does not exist")
    failed = _pg_name(database, PG_FAILED_INFIX, _stamp())
    if terminate_connections:
        psql_script(params, _PG_TERMINATE, maintenance_db, {"name": database})
    if pg_database_info(params, database, maintenance_db) is None:
        psql_script(params, _PG_RENAME, maintenance_db, {"old": safety, "new": database})
        return None
    psql_script(params, _PG_SWAP, maintenance_db, {"live": database, "keep": failed, "new": safety})
    _pg_drop(params, failed, maintenance_db)
    return failed


# --- entry points used by the module ------------------------------------------------------------


def rollback(
    engine, safety_copy, *, db_path=None, params=None, check_mode=False, maintenance_db="postgres", log_file=None
):
    """Put ``safety_copy`` back as the live database (after a failed health check, say)."""
    target = os.path.abspath(db_path) if engine == "sqlite" else _pg_target(params)
    run = _Run(engine, target)
    result = run.result
    result["safety_copy"] = safety_copy
    try:
        if engine == "sqlite":
            expected = os.path.basename(target) + SQLITE_SAFETY_INFIX
            if not os.path.basename(safety_copy).startswith(expected) or not os.path.isfile(safety_copy):
                raise BackupError(f"{safety_copy} is not an existing safety copy of {target}")
            if not check_mode:
                rollback_sqlite(target, safety_copy)
        else:
            if not safety_copy.startswith(params["database"] + PG_SAFETY_INFIX):
                raise BackupError(f"{safety_copy} is not a safety copy of database {params['database']}")
            if pg_database_info(params, safety_copy, maintenance_db) is None:
                raise BackupError(f"safety database {safety_copy} does not exist")
            if not check_mode:
                rollback_postgresql(params, safety_copy, maintenance_db)
    except (BackupError, OSError) as exc:
        raise run.fail(f"rollback failed: {exc}") from exc
    result["changed"] = True
    result["rolled_back"] = not check_mode
    result["live_untouched"] = check_mode
    run.step(f"{'would put' if check_mode else 'put'} {safety_copy} back as {target}")
    if not check_mode:
        _log(log_file, f"rolled back {target} from {safety_copy}")
    return run.finish()
