"""Host-side entry point of the backup timer and cron.

Usage::

    python3 -m tradingbot_ops.backup_cli --config /etc/tradingbot/backup.json [--check]

The JSON file is an object whose keys are exactly the db_backup module's option names
(``options.BACKUP_OPTIONS``; documented once, in the module). It may hold
``pg_password``, so keep it mode 0600 (or use ``pg_passfile``). Exit status: 0 on success,
1 when the backup failed, 2 when the configuration cannot be read; failures print one line on
stderr and go to the backup log. On success one JSON line summarises the result on stdout.
"""

# This package also runs on hosts outside Ansible (the backup timer), where run_command,
# exit_json and module.log do not exist.
# pylint: disable=ansible-bad-function

import argparse
import json
import signal
import sys

from .backup import run_backup
from .errors import BackupError

_SUMMARY_KEYS = ("path", "size", "sha256", "duration_seconds", "compression_ratio", "deleted", "msg")


def _terminate(signum, _frame):
    # Unwind through the engine's cleanup (temp files, lock) instead of dying mid-write.
    raise SystemExit(128 + signum)


def main(argv=None):
    """Run one backup from a JSON config; return the process exit status."""
    parser = argparse.ArgumentParser(prog="tradingbot_ops.backup_cli", description="Back up the tradingbot database.")
    parser.add_argument("--config", required=True, help="JSON file of db_backup options")
    parser.add_argument("--check", action="store_true", help="plan only: report what would be written and deleted")
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as exc:
        print(f"tradingbot backup: cannot read config {args.config}: {exc}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        result = run_backup(config, check_mode=args.check)
    except BackupError as exc:
        print(f"tradingbot backup failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps({key: result[key] for key in _SUMMARY_KEYS if key in result}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
