"""Run one restore with the engine of the tree on PYTHONPATH, as db_restore would.

    PYTHONPATH=LIB python3 benchmarks/restore_driver.py OPTIONS_JSON

LIB holds ``tradingbot_ops``, a symlink to a tree's plugins/module_utils (benchmarks/fixtures.py
makes it). OPTIONS_JSON holds db_restore's options (engine, database, backup_dir and the pg_*
connection); the ones left out take db_restore's defaults. Prints ``{"ok": ..., "safety_copy":
...}`` on stdout, and exits 1 when the restore failed or did not validate.

Two layouts are supported, so that one run measures the code before and after issue 11:
the orchestration module ``restore.run_restore(options)`` when the tree has one, else the
engine functions of ``restore_engine``.
"""

import importlib
import json
import sys

# db_restore's defaults (plugins/modules/db_restore.py and db_common.COMMON_OPTIONS), for a
# restore of the newest backup in the benchmark's own directory, never waiting on a lock.
DEFAULTS = {
    "operation": "restore",
    "backup_file": None,
    "safety_copy": None,
    "integrity_check": "quick",
    "verify_content_digest": True,
    "maintenance_db": "postgres",
    "terminate_connections": True,
    "lock_timeout": 0,
    "log_file": None,
    "pg_host": None,
    "pg_port": 5432,
    "pg_user": None,
    "pg_password": None,
    "pg_passfile": None,
    "pg_bin_dir": None,
    "pg_connect_timeout": 10,
}


def optional_module(name):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # the module exists but something it imports does not
            raise
        return None


def restore(options):
    orchestration = optional_module("tradingbot_ops.restore")
    if orchestration is not None:
        return orchestration.run_restore(options)
    engine = importlib.import_module("tradingbot_ops.restore_engine")
    common = {"lock_timeout": options["lock_timeout"], "verify_content_digest": options["verify_content_digest"]}
    if options["engine"] == "sqlite":
        full = options["integrity_check"] == "full"
        return engine.restore_sqlite(options["database"], options["backup_dir"], full_integrity_check=full, **common)
    return engine.restore_postgresql(options, options["backup_dir"], **common)


def main(argv):
    with open(argv[1], encoding="utf-8") as handle:
        options = dict(DEFAULTS, **json.load(handle))
    result = restore(options)
    ok = bool(result.get("validation", {}).get("ok"))
    print(json.dumps({"ok": ok, "safety_copy": result.get("safety_copy")}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
