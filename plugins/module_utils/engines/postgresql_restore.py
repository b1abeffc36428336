"""Restoring a PostgreSQL database: load into a fresh candidate database (the scratch database
a legacy dump is trial-loaded into), validate it, swap it in by renaming in one transaction,
keep the old database as the safety copy, roll back from it on failure."""

import contextlib
import os
import subprocess
import tempfile

from ..errors import BackupError
from ..fsutil import utcnow
from ..verification import (
    PreflightError,
    check_stream,
    decode_backup,
    validate_counts_and_digest,
    validation_failure,
    verify_checksum,
)
from .pg_client import PgRunner, pg_redact, psql_script
from .sqlite_db import quote_ident

PG_SAFETY_INFIX = "_pre_restore_"
PG_CANDIDATE_INFIX = "_restore_"
PG_FAILED_INFIX = "_failed_restore_"
PG_MAX_NAME = 63  # NAMEDATALEN - 1
STAMP_FORMAT = "%Y%m%d_%H%M%S"


def _quote_literal(value):
    return "'" + str(value).replace("'", "''") + "'"


def _stamp():
    return utcnow().strftime(STAMP_FORMAT)


def plan_restore(params, stamp, target):
    """The plan of a restore over ``params['database']``: candidate and safety database names."""
    database = params["database"]
    candidate = _pg_name(database, PG_CANDIDATE_INFIX, stamp)
    _pg_name(database, PG_FAILED_INFIX, stamp)  # a rollback must be able to name it too
    live = pg_database_info(params, database, params["maintenance_db"])
    return {
        "over": target,
        "live_exists": live is not None,
        "candidate_database": candidate,
        "safety_copy": _pg_name(database, PG_SAFETY_INFIX, stamp) if live else None,
        "_live": live,
    }


def check_safety_copy(params, safety):
    """Refuse a name that is not an existing safety database of ``params['database']``."""
    if not safety.startswith(params["database"] + PG_SAFETY_INFIX):
        raise BackupError(f"{safety} is not a safety copy of database {params['database']}")
    if pg_database_info(params, safety, params["maintenance_db"]) is None:
        raise BackupError(f"safety database {safety} does not exist")


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


def _pg_load(adapter, params, path, manifest, database):
    """Stream the decoded backup into ``database`` with ON_ERROR_STOP in one transaction."""
    if manifest.get("format") == "custom":
        tool, args = "pg_restore", ["--exit-on-error", "--single-transaction", "-d", database]
    else:
        tool, args = "psql", ["--single-transaction", "-o", os.devnull, "-d", database]
    with tempfile.TemporaryFile() as errors:
        proc = PgRunner(params).popen(
            tool, args, database, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors
        )
        stats = None
        feed_error = None
        try:
            stats = decode_backup(path, manifest, proc.stdin.write)
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
        raise PreflightError(f"loading failed: {feed_error}")
    if code != 0:
        errs = [line for line in lines if "ERROR" in line or "error" in line] or lines
        raise BackupError(pg_redact(f"loading failed (exit {code}): {errs[0] if errs else 'no message'}", params))
    if stats is None:
        raise BackupError("loading failed: the loader stopped reading before the end of the backup")
    # The file is read again here: it must still be the one pre-flight checked.
    problems = check_stream(stats, manifest, adapter.format_problems)
    if problems:
        raise PreflightError("backup fails its check while loading: " + "; ".join(problems))
    return stats


def prepare_candidate(adapter, params, run, path, manifest, *, plan, log):
    """Check the backup's SHA-256, then create the candidate database, load the backup into it
    and validate it there; return the candidate's name."""
    database = params["database"]
    candidate, live, maintenance_db = plan["candidate_database"], plan["_live"], params["maintenance_db"]
    checks = run.result["validation"]["checks"]
    # Before any database is created: the file is the one the manifest describes, so it is
    # the file the backup engine decoded completely. The load below decodes it again and
    # checks the completion trailer; a failure there drops the candidate.
    checks["preflight"] = dict(verify_checksum(path, manifest), ok=True)
    run.step("backup matches its manifest (SHA-256, size)")
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
        stats = _pg_load(adapter, params, path, manifest, candidate)
        checks["preflight"].update(uncompressed_size=stats["decoded_size"], decoded=True)
        run.step(f"loaded {os.path.basename(path)} into {candidate} (ON_ERROR_STOP, one transaction)")
        if live:
            psql_script(params, _PG_COPY_DB_PROPERTIES, maintenance_db, {"src": database, "dst": candidate})
        checks["integrity"] = {"ok": True, "method": "load completed with ON_ERROR_STOP in one transaction"}
        ok = validate_counts_and_digest(
            checks,
            manifest,
            lambda: PgRunner(params).table_counts(candidate),
            lambda: PgRunner(params).content_digest(candidate),
            params["verify_content_digest"],
        )
        if not ok:
            raise BackupError(validation_failure(checks))
    except BackupError as exc:
        run.result["validation"]["ok"] = False
        with contextlib.suppress(BackupError):
            _pg_drop(params, candidate, maintenance_db)
        if isinstance(exc, PreflightError):
            raise
        log("ERROR", f"restore refused {path}: {exc}")
        raise run.fail(f"restore refused, live database untouched: {exc}") from exc
    run.result["validation"]["ok"] = True
    run.step("candidate database validated")
    return candidate


def swap_in(params, run, candidate, plan):
    """Rename the live database to the safety name and the candidate to the live name, atomically."""
    database = params["database"]
    safety, maintenance_db = plan["safety_copy"], params["maintenance_db"]
    terminate_connections = params["terminate_connections"]
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
