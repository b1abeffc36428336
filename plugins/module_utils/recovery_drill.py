"""The recovery drill: proof, on a host, that its backups can be made and restored.

It replaces the original ``scripts/test_recovery.sh`` and keeps its summary (Total tests,
Passed, Failed, Pass rate). Everything it writes goes to a scratch directory (and, for
PostgreSQL, a scratch database) that it removes again; the live database and the live
backups are only read. ``playbooks/verify.yml`` and the monthly recovery-drill timer both
run it on the host as ``python3 -m tradingbot_ops.recovery_drill``.

With off-site copies (docs/offsite.md) two more checks: ``--offsite-config`` downloads the
newest copy of the engine and checks its ciphertext's SHA-256 and size against its off-site
manifest, and that it is encrypted to this host's recipient (the host holds no identity, so this
is as far as the monthly timer can go); ``--offsite-restore-dir`` restores a copy that
``playbooks/verify.yml`` fetched and decrypted there (with an identity from the controller) into
scratch, with the restore engine's validation.

Stdlib only, no Ansible imports: it runs on hosts as part of the ``tradingbot_ops`` package
(the off-site check needs boto3, which storage.s3_client imports only when it is there).
"""

# Runs as a host-side program too, where AnsibleModule (run_command, exit_json) does not exist.
# pylint: disable=ansible-bad-function

import argparse
import datetime
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

from . import circuit_breaker
from .backup import run_backup
from .catalog import ENGINES, Manifest, backup_name, list_backups, list_restorable, manifest_path, parse_backup_name
from .encryption import recipient_fingerprint
from .engines.pg_client import pg_table_counts, psql_script
from .engines.registry import adapter
from .engines.sqlite_db import sqlite_content_digest, sqlite_table_counts
from .errors import TradingbotError
from .offsite_config import open_storage, read_config
from .offsite_fetch import check_ciphertext, choose_copy
from .options import BACKUP_OPTIONS, COMMON_OPTIONS
from .reporting import EventLog, write_metrics_file
from .restore import restore_postgresql, restore_sqlite

SCRATCH_ROWS = 500
METRICS_PREFIX = "tradingbot_recovery_drill"
UNIT_DIR = "/etc/systemd/system"


class CheckFailed(Exception):
    """A check's own failure, with the detail an operator needs."""


def _run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise CheckFailed(f"{' '.join(argv[:2])} exited {proc.returncode}: {lines[-1] if lines else 'no output'}")
    return proc.stdout


def make_scratch_sqlite(path, rows=SCRATCH_ROWS):
    """Write a small SQLite database in WAL mode, as the service keeps its own."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, symbol TEXT NOT NULL, qty REAL NOT NULL)")
        conn.execute("CREATE TABLE fills (id INTEGER PRIMARY KEY, trade_id INTEGER REFERENCES trades(id))")
        conn.executemany(
            "INSERT INTO trades (symbol, qty) VALUES (?, ?)", [(f"SYM{i % 17}", i * 0.25) for i in range(rows)]
        )
        conn.executemany("INSERT INTO fills (trade_id) VALUES (?)", [(i + 1,) for i in range(0, rows, 3)])
    conn.close()


def _backup_options(config, **overrides):
    """The live backup configuration, pointed at scratch places; metrics and logs stay off."""
    options = {key: value for key, value in config.items() if key in BACKUP_OPTIONS}
    options.update(log_file=None, metrics_dir=None, owner=None, group=None, lock_timeout=30)
    options.update(overrides)
    return options


def _age_backup(path, days):
    """Rename a backup (and its manifest) as if it had been taken ``days`` days earlier."""
    manifest = Manifest.read(path)
    parsed = parse_backup_name(os.path.basename(path))
    older = parsed["timestamp"] - datetime.timedelta(days=days)
    name = backup_name(manifest["engine"], older, manifest["format"], manifest["compression"])
    new_path = os.path.join(os.path.dirname(path), name)
    manifest["file"] = name
    manifest.write(new_path)
    os.rename(path, new_path)
    os.unlink(manifest_path(path))
    return new_path


class RecoveryDrill:
    """Runs the checks in order and collects their results; one failure does not stop the rest."""

    def __init__(
        self,
        config,
        service=None,
        logrotate_config=None,
        scratch_root=None,
        *,
        offsite_config=None,
        offsite_restore_dir=None,
    ):
        self.config = config
        self.logrotate_config = logrotate_config
        self.offsite_config = offsite_config
        self.offsite_restore_dir = offsite_restore_dir
        self.service = service
        self.scratch_root = scratch_root
        self.checks = []
        self.scratch = None

    def check(self, name, func):
        started = time.monotonic()
        try:
            detail = func() or "ok"
            ok = True
        except (CheckFailed, TradingbotError, OSError, sqlite3.Error, ValueError, KeyError) as exc:
            detail = str(exc) or type(exc).__name__
            ok = False
        self.checks.append({"name": name, "ok": ok, "detail": detail, "seconds": round(time.monotonic() - started, 3)})

    # --- the checks -------------------------------------------------------------------------

    def check_backup_engine(self):
        # The live settings and source, aimed at scratch: the drill may not write to the live dir.
        scratch = os.path.join(self.scratch, "plan")
        os.mkdir(scratch)
        plan = run_backup(_backup_options(self.config, backup_dir=scratch), check_mode=True)
        return f"the live configuration plans {os.path.basename(plan['path'])}"

    def check_restore_engine(self):
        engine = self.config["engine"]
        entries = list_restorable(self.config["backup_dir"], engine)
        ours = list_backups(self.config["backup_dir"], engine)
        if not ours:
            return f"no {engine} backups in {self.config['backup_dir']} yet: nothing to pre-flight"
        latest = ours[0]
        adapter(engine).preflight(latest["path"], latest["manifest"])
        return f"{len(entries)} backup(s) listed; the latest, {latest['name']}, matches its checksum and decodes"

    def check_sqlite_backup(self):
        source = os.path.join(self.scratch, "source.db")
        make_scratch_sqlite(source)
        result = run_backup(
            _backup_options(
                {},
                engine="sqlite",
                database=source,
                backup_dir=os.path.join(self.scratch, "backups"),
                content_digest=True,
            )
        )
        if not result["verification"].get("ok"):
            raise CheckFailed(f"backup {result.get('path')} was written but not verified")
        return f"{os.path.basename(result['path'])}: {result.get('size')} bytes, verified"

    def check_sqlite_restore(self):
        source = os.path.join(self.scratch, "source.db")
        target = os.path.join(self.scratch, "restored.db")
        restore_sqlite(target, os.path.join(self.scratch, "backups"))
        expected = (sqlite_table_counts(source), sqlite_content_digest(source))
        actual = (sqlite_table_counts(target), sqlite_content_digest(target))
        if actual != expected:
            raise CheckFailed(f"restored content differs: counts {actual[0]} vs {expected[0]}")
        return f"row counts {actual[0]} and content digest match the source"

    def check_retention(self):
        backups = os.path.join(self.scratch, "retention")
        source = os.path.join(self.scratch, "source.db")
        # Only the age rule may keep a backup here: no newest-N-verified floor beyond the new one.
        rules = {"retention_days": 7, "retention_keep_verified": 1}
        first = run_backup(_backup_options({}, engine="sqlite", database=source, backup_dir=backups, **rules))
        aged = _age_backup(first["path"], days=8)
        foreign = os.path.join(backups, "sqlite_backup_20000101_000000.db.gz")
        with open(foreign, "wb") as handle:
            handle.write(b"not made by tradingbot.ops")
        second = run_backup(_backup_options({}, engine="sqlite", database=source, backup_dir=backups, **rules))
        left = sorted(os.listdir(backups))
        problems = []
        if os.path.exists(aged):
            problems.append(f"the 8-day-old backup {os.path.basename(aged)} survived a 7-day rule")
        if not os.path.exists(second["path"]):
            problems.append("the new backup is gone")
        if not os.path.exists(foreign):
            problems.append("a file the collection did not create was deleted")
        if problems:
            raise CheckFailed("; ".join(problems) + f" (left: {left})")
        return "an 8-day-old backup was deleted, the new one and a foreign file were kept"

    def check_systemd_units(self):
        paths = [path for path in self.unit_files() if os.path.exists(path)]
        if self.service and not paths:
            raise CheckFailed(f"no unit files for {self.service} in {UNIT_DIR}")
        if paths:
            _run(["systemd-analyze", "verify", "--man=no", *paths])
        if self.service:
            for query, wanted in (("is-active", "active"), ("is-enabled", "enabled")):
                proc = subprocess.run(["systemctl", query, self.service], capture_output=True, text=True, check=False)
                if proc.stdout.strip() != wanted:
                    raise CheckFailed(f"{self.service} is {proc.stdout.strip() or 'unknown'}, not {wanted}")
        names = ", ".join(os.path.basename(path) for path in paths)
        return f"verified {names or 'no units'}; {self.service or 'no service'} active and enabled"

    def unit_files(self):
        """The service's unit and its siblings (NAME-backup.timer, ...) in the admin unit dir."""
        if not self.service:
            return []
        stem = self.service.rsplit(".", 1)[0]
        try:
            names = sorted(os.listdir(UNIT_DIR))
        except OSError:
            return []
        return [
            os.path.join(UNIT_DIR, name)
            for name in names
            if name == self.service or (name.startswith(stem + "-") and name.endswith((".service", ".timer")))
        ]

    def check_logrotate(self):
        if not self.logrotate_config:
            return "no logrotate configuration given"
        # logrotate exits 0 after some errors (an unknown directive is "ignored"): read its words too.
        proc = subprocess.run(
            ["logrotate", "--debug", "--state", os.path.join(self.scratch, "logrotate.status"), self.logrotate_config],
            capture_output=True,
            text=True,
            check=False,
        )
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
        if proc.returncode != 0 or errors:
            raise CheckFailed(f"logrotate --debug exited {proc.returncode}: {errors[0] if errors else 'no message'}")
        return f"logrotate --debug {self.logrotate_config} passed"

    def check_circuit_breaker(self):
        report = circuit_breaker.self_test()
        failed = [check["name"] for check in report["checks"] if not check["ok"]]
        if not report["ok"]:
            raise CheckFailed(f"failed: {', '.join(failed)}")
        return f"{len(report['checks'])} state-machine checks passed"

    def _pg_params(self, database=None):
        params = {key: self.config.get(key) for key in COMMON_OPTIONS if key.startswith("pg_")}
        params["database"] = database or self.config["database"]
        return params

    def check_postgresql_backup(self):
        backups = os.path.join(self.scratch, "pg-backups")
        result = run_backup(_backup_options(self.config, backup_dir=backups, retention_days=0, content_digest=True))
        return f"{os.path.basename(result['path'])}: {result.get('size')} bytes, verified"

    def check_postgresql_restore(self):
        def compare(params):
            live = pg_table_counts(self._pg_params())
            restored = pg_table_counts(params)
            if live != restored:
                raise CheckFailed(f"restored row counts {restored} differ from the source's {live}")
            return f"{len(restored)} table(s) match"

        return self._scratch_pg_restore(os.path.join(self.scratch, "pg-backups"), compare)

    def _scratch_pg_restore(self, backup_dir, compare):
        """Restore the newest backup in ``backup_dir`` into the scratch database, then drop it."""
        scratch_db = f"{self.config['database']}_recovery_drill"
        params = self._pg_params(scratch_db)
        maintenance_db = self.config.get("maintenance_db", "postgres")
        drop = 'DROP DATABASE IF EXISTS :"name"'
        psql_script(params, drop, maintenance_db, {"name": scratch_db})
        result = {}
        try:
            result = restore_postgresql(params, backup_dir, maintenance_db=maintenance_db)
            return f"restored into scratch database {scratch_db}: {compare(params)}"
        finally:
            for name in filter(None, (scratch_db, result.get("safety_copy"))):
                psql_script(params, drop, maintenance_db, {"name": name})

    def check_offsite_copy(self):
        opts = read_config(self.offsite_config)
        storage = open_storage(opts, lock=False)
        name, _manifest, _incomplete = choose_copy(storage, engine=self.config.get("engine"))
        offsite = check_ciphertext(storage, name)["offsite"]
        if offsite.get("recipient_fingerprint") != recipient_fingerprint(opts["recipient"]):
            raise CheckFailed(
                f"{name} is encrypted to {offsite.get('recipient_fingerprint')}, not to this host's recipient"
            )
        return (
            f"newest copy {name} (uploaded {offsite.get('uploaded_at')}) in {storage.describe()}: "
            f"ciphertext SHA-256 and size ({offsite.get('ciphertext_size')} bytes) match its off-site manifest; "
            "encrypted to this host's recipient (decryption needs the identity: verify.yml)"
        )

    def check_offsite_restore(self):
        engine = self.config["engine"]
        fetched = list_backups(self.offsite_restore_dir, engine)
        if not fetched:
            raise CheckFailed(f"no fetched {engine} copy in {self.offsite_restore_dir}")
        name, tables = fetched[0]["name"], fetched[0]["manifest"].get("tables") or {}
        # The restore engine validates the scratch copy (integrity, row counts, content digest)
        # against the manifest, and raises when it does not match.
        if adapter(engine).drill_restores_live:
            self._scratch_pg_restore(self.offsite_restore_dir, lambda _params: "valid")
        else:
            restore_sqlite(os.path.join(self.scratch, "offsite.db"), self.offsite_restore_dir)
        return (
            f"the off-site copy {name}, decrypted, restores into scratch with the row counts of its manifest {tables}"
        )

    # --- running ----------------------------------------------------------------------------

    def run(self):
        self.scratch = tempfile.mkdtemp(prefix="tradingbot-recovery-drill-", dir=self.scratch_root)
        try:
            self.check("backup engine runs", self.check_backup_engine)
            self.check("restore engine usable", self.check_restore_engine)
            self.check("sqlite backup", self.check_sqlite_backup)
            self.check("sqlite restore", self.check_sqlite_restore)
            self.check("retention policy", self.check_retention)
            self.check("systemd configuration", self.check_systemd_units)
            self.check("logrotate configuration", self.check_logrotate)
            self.check("circuit breaker", self.check_circuit_breaker)
            if self.config.get("engine") in ENGINES and adapter(self.config["engine"]).drill_restores_live:
                self.check("postgresql backup", self.check_postgresql_backup)
                self.check("postgresql restore", self.check_postgresql_restore)
            if self.offsite_config:
                self.check("off-site copy", self.check_offsite_copy)
            if self.offsite_restore_dir:
                self.check("off-site restore", self.check_offsite_restore)
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return self.report()

    def report(self):
        passed = sum(1 for check in self.checks if check["ok"])
        total = len(self.checks)
        return {
            "ok": passed == total,
            "total": total,
            "passed": passed,
            "failed": total - passed,
            "pass_rate": round(100.0 * passed / total) if total else 0,
            "checks": self.checks,
            "failed_checks": [check["name"] for check in self.checks if not check["ok"]],
        }


def summary_text(report):
    """The original script's summary, preceded by one line per check."""
    rule = "=" * 42
    lines = [f"[{'PASS' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail']}" for c in report["checks"]]
    lines += [
        rule,
        "Recovery Test Summary",
        rule,
        f"Total tests: {report['total']}",
        f"Passed: {report['passed']}",
        f"Failed: {report['failed']}",
        f"Pass rate: {report['pass_rate']}%",
        rule,
    ]
    return "\n".join(lines)


def write_metrics(metrics_dir, report, now=None):
    """Prometheus textfile-collector metrics for the drill, written atomically."""
    now = time.time() if now is None else now
    metrics = [
        ("success", "1 when every recovery drill check passed.", 1 if report["ok"] else 0),
        ("checks_failed", "Number of failed checks in the last drill.", report["failed"]),
        ("last_run_timestamp_seconds", "When the last drill finished.", f"{now:.0f}"),
    ]
    write_metrics_file(metrics_dir, f"{METRICS_PREFIX}.prom", METRICS_PREFIX, metrics)


def log_report(log_file, engine, report):
    """One event-log line for the drill, in the format backup and restore use."""
    failed = ", ".join(report["failed_checks"]) or "none"
    level = "INFO" if report["ok"] else "ERROR"
    EventLog(log_file, engine)(
        level, f"recovery drill {report['passed']}/{report['total']} checks passed; failed: {failed}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tradingbot_ops.recovery_drill", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the backup job's JSON configuration")
    parser.add_argument(
        "--service",
        help="the service unit that must be active and enabled; it and its NAME-* units are verified",
    )
    parser.add_argument("--logrotate-config", help="the logrotate file to check")
    parser.add_argument("--metrics-dir", help="write a Prometheus textfile-collector file here")
    parser.add_argument(
        "--offsite-config",
        help="the off-site copy job's JSON configuration: check the newest copy's ciphertext against its manifest",
    )
    parser.add_argument(
        "--offsite-restore-dir",
        help="a directory holding an off-site copy fetched and decrypted by offsite_fetch: restore it into scratch",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {args.config}: {exc}", file=sys.stderr)
        return 2
    report = RecoveryDrill(
        config,
        args.service,
        args.logrotate_config,
        offsite_config=args.offsite_config,
        offsite_restore_dir=args.offsite_restore_dir,
    ).run()
    if args.metrics_dir:
        write_metrics(args.metrics_dir, report)
    if config.get("log_file"):
        log_report(config["log_file"], config.get("engine"), report)
    report["summary"] = summary_text(report)
    print(json.dumps(report) if args.json else report["summary"])
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
