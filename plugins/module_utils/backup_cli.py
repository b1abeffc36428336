"""Host-side entry point of the backup timer and cron.

Usage::

    python3 -m tradingbot_ops.backup_cli --config /etc/tradingbot/backup.json [--check]

The JSON file is an object whose keys are exactly the db_backup module's option names
(``options.BACKUP_OPTIONS``; documented once, in the module). It may hold
``pg_password``, so keep it mode 0600 (or use ``pg_passfile``). Exit status: 0 on success,
1 when the backup failed, 2 when the configuration cannot be read; failures print one line on
stderr and go to the backup log. On success one JSON line summarises the result on stdout.
"""

# This package also runs on hosts outside Ansible (the timers), where exit_json does not exist.
# pylint: disable=ansible-bad-function

import sys

from .backup import run_backup
from .errors import BackupError
from .host_cli import run_job


def main(argv=None):
    """Run one backup from a JSON config; return the process exit status."""
    return run_job(
        run_backup,
        prog="tradingbot_ops.backup_cli",
        description="Back up the tradingbot database.",
        config_help="JSON file of db_backup options",
        check_help="plan only: report what would be written and deleted",
        failure=BackupError,
        name="tradingbot backup",
        failure_line="tradingbot backup failed: {}",
        summary_keys=("path", "size", "sha256", "duration_seconds", "compression_ratio", "deleted", "msg"),
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
