"""Restore orchestration for every engine (stdlib only).

One restore either ends with the chosen backup live and validated, or leaves the database as
it was. The steps (see docs/restore.md):

1. choose: a name inside ``backup_dir`` (no path escapes it; a legacy file only with
   ``allow_legacy``), or "latest": the newest verified backup that passes pre-flight, skipping
   (and naming) each newer one that does not;
2. pre-flight: SHA-256 and size against the manifest, and a full decode (SQLite: while
   writing the candidate; PostgreSQL: while loading the candidate); a mismatch refuses the
   backup with the live database untouched;
3. restore into a candidate beside the live database (SQLite: a temp file in the same
   directory; PostgreSQL: a fresh database), then validate the candidate: integrity, per-table
   row counts and, when the manifest has one, the content digest;
4. swap: keep the current database as a safety copy and put the candidate in its place in one
   atomic step;
5. any failure after the swap rolls back from the safety copy. ``operation: rollback`` does the
   same on request, for a failure seen later (the service's health check).
"""

import contextlib
import time

from .catalog import dir_lock, list_backups, list_restorable, resolve_named_backup
from .engines.registry import adapter as engine_adapter
from .errors import BackupError, RestoreError
from .fsutil import utcnow
from .options import COMMON_OPTIONS, RESTORE_OPTIONS, validate_options
from .reporting import EventLog
from .verification import PreflightError

STAMP_FORMAT = "%Y%m%d_%H%M%S"
# What a check-mode run cannot know: these checks run only on the restored candidate.
NOT_PREDICTED = (
    "the integrity check, row counts and content digest of the restored copy (they run after the load)",
    "the load itself (a PostgreSQL dump can fail on roles or extensions the server lacks)",
    "the swap and the post-swap check",
)


class _Run:
    """Result under construction; every step is recorded so a failure says what happened."""

    def __init__(self, engine, target):
        self.started = time.monotonic()
        self.result = {
            "changed": False,
            "engine": engine,
            "target": target,
            "backup": None,
            "passed_over": [],
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


@contextlib.contextmanager
def _guarded(run, opts, *, check_mode, log):
    """Serialise with backups of the same dir, and turn an early BackupError into a refusal.

    Inside, a plain BackupError means nothing was changed yet; later failures raise
    RestoreError themselves, saying what was changed and what was rolled back.
    """
    try:
        if check_mode:
            yield
        else:
            with dir_lock(opts["backup_dir"], opts["engine"], opts["lock_timeout"]):
                yield
    except RestoreError:
        raise
    except (BackupError, OSError) as exc:
        if not run.result["live_untouched"]:  # a safety net: later steps raise RestoreError themselves
            log("ERROR", f"restore failed after changing the live database: {exc}")
            raise run.fail(
                f"restore failed after the live database was changed and was not rolled back: {exc}; "
                f"the previous database is kept as {run.result['safety_copy']}"
            ) from exc
        run.result["validation"]["ok"] = False
        run.result["validation"]["checks"].setdefault("preflight", {"ok": False, "detail": str(exc)})
        verb = "would be refused" if check_mode else "refused, nothing changed"
        if not check_mode:
            log("ERROR", f"restore {verb}: {exc}")
        raise run.fail(f"restore {verb}: {exc}") from exc


def _candidates(opts):
    """``[(path, manifest)]`` to try in order: the named backup, or every verified one, newest first."""
    engine, backup_dir = opts["engine"], opts["backup_dir"]
    if opts["backup_file"]:
        return [resolve_named_backup(backup_dir, opts["backup_file"], engine, opts["allow_legacy"])]
    found = [(entry["path"], entry["manifest"]) for entry in list_backups(backup_dir, engine) if entry["verified"]]
    if not found:
        raise BackupError(f"no verified {engine} backup in {backup_dir}")
    return found


def _try_candidates(run, opts, candidates, attempt, *, log, check_mode=False):
    """Run ``attempt(path, manifest)`` on each candidate until one passes pre-flight; return its value.

    A named backup that fails is refused. With "latest", each backup that fails is skipped,
    named in ``result["passed_over"]`` and in the log, and the next older one is tried.
    """
    for path, manifest in candidates:
        run.result["backup"] = manifest.describe(path)
        run.result["plan"]["restore"] = path
        run.step(f"chose {path}")
        try:
            return attempt(path, manifest)
        except PreflightError as exc:
            if opts["backup_file"]:
                raise
            run.result["passed_over"].append({"name": run.result["backup"]["name"], "reason": str(exc)})
            run.result["validation"] = {"ok": None, "checks": {}}
            run.step(f"skipped {path}: {exc}")
            log("WARNING", f"restore skipped {path}: {exc}")
    reasons = "; ".join(f"{skip['name']}: {skip['reason']}" for skip in run.result["passed_over"])
    problem = f"no {opts['engine']} backup in {opts['backup_dir']} passes pre-flight ({reasons})"
    if check_mode:
        raise BackupError(problem)  # reported as "would be refused"
    run.result["validation"] = {"ok": False, "checks": {"preflight": {"ok": False, "detail": problem}}}
    log("ERROR", f"restore refused: {problem}")
    raise run.fail(f"restore refused, live database untouched: {problem}")


def _restore(adapter, opts, check_mode, log):
    run = _Run(adapter.name, adapter.target(opts))
    with _guarded(run, opts, check_mode=check_mode, log=log):
        candidates = _candidates(opts)
        plan = adapter.plan_restore(opts, utcnow().strftime(STAMP_FORMAT))
        run.result["plan"] = {"restore": None, **{key: value for key, value in plan.items() if key[0] != "_"}}
        if check_mode:
            checks = run.result["validation"]["checks"]
            _try_candidates(
                run,
                opts,
                candidates,
                lambda p, m: checks.update(preflight=dict(adapter.preflight(p, m), ok=True)),
                log=log,
                check_mode=True,
            )
            run.result.update(changed=True, safety_copy=plan["safety_copy"], not_predicted=list(NOT_PREDICTED))
            run.result["validation"]["ok"] = None
            run.step(
                "check mode: the backup passes pre-flight (SHA-256 and a full decode); nothing changed. "
                "Not predicted: " + "; ".join(NOT_PREDICTED)
            )
            return run.finish()
        log("INFO", f"restoring over {run.result['target']}")
        prepared = _try_candidates(
            run, opts, candidates, lambda p, m: adapter.prepare(opts, run, p, m, plan=plan, log=log), log=log
        )
        adapter.swap_in(opts, run, prepared, plan, log)
        path = run.result["plan"]["restore"]
        log("INFO", f"restored {path} over {run.result['target']}; safety copy {plan['safety_copy']}")
    return run.finish()


def _rollback(adapter, opts, check_mode, log):
    target = adapter.target(opts)
    run = _Run(adapter.name, target)
    run.result["safety_copy"] = opts["safety_copy"]
    if not opts["safety_copy"]:
        raise run.fail("rollback failed: operation rollback needs safety_copy")
    try:
        adapter.rollback(opts, opts["safety_copy"], check_mode)
    except (BackupError, OSError) as exc:
        raise run.fail(f"rollback failed: {exc}") from exc
    run.result.update(changed=True, rolled_back=not check_mode, live_untouched=check_mode)
    run.step(f"{'would put' if check_mode else 'put'} {opts['safety_copy']} back as {target}")
    if not check_mode:
        log("WARNING", f"rolled back {target} from {opts['safety_copy']}")
    return run.finish()


def _list(adapter, opts):
    copies, warnings = adapter.safety_copies(opts)
    result = {"changed": False, "backups": list_restorable(opts["backup_dir"], opts["engine"])}
    result["safety_copies"] = copies
    if warnings:
        result["warnings"] = warnings
    return result


def run_restore(options, check_mode=False):
    """Restore, list or roll back with ``options`` (``RESTORE_OPTIONS`` names); return the result.

    Raises RestoreError (with ``result``) when a restore or rollback is refused or fails, and
    BackupError for options that do not validate.
    """
    opts = validate_options(RESTORE_OPTIONS, options)
    adapter = engine_adapter(opts["engine"])
    log = EventLog(opts["log_file"], opts["engine"])
    if opts["operation"] == "list":
        return _list(adapter, opts)
    if opts["operation"] == "rollback":
        return _rollback(adapter, opts, check_mode, log)
    return _restore(adapter, opts, check_mode, log)


# --- keyword entry points for host-side callers (the recovery drill, tests) --------------------


def restore_sqlite(db_path, backup_dir, *, check_mode=False, full_integrity_check=False, lock_timeout=0, **options):
    """``run_restore`` over the SQLite file ``db_path``; ``options`` are other RESTORE_OPTIONS."""
    integrity = "full" if full_integrity_check else "quick"
    request = dict(options, engine="sqlite", database=db_path, backup_dir=backup_dir, lock_timeout=lock_timeout)
    return run_restore(dict(request, integrity_check=integrity), check_mode)


def restore_postgresql(params, backup_dir, *, check_mode=False, lock_timeout=0, **options):
    """``run_restore`` over ``params['database']``; ``params`` holds the connection options."""
    connection = {key: value for key, value in params.items() if key in COMMON_OPTIONS}
    request = dict(connection, **options, engine="postgresql", backup_dir=backup_dir, lock_timeout=lock_timeout)
    return run_restore(request, check_mode)
