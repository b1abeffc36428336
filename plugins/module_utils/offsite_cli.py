"""Host-side entry point of the off-site copy timer.

Usage::

    python3 -m tradingbot_ops.offsite_cli --config /etc/tradingbot/offsite.json [--check]

The JSON file is an object of ``offsite_config.OFFSITE_OPTIONS`` (documented in docs/offsite.md). It
holds no secret: the S3 key pair is read from ``s3_credentials_file`` (mode 0600) or from
systemd's ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``), and the host has only the age
recipient. Exit status: 0 on success, 1 when the copy failed, 2 when the configuration cannot
be read; a failure prints one line on stderr (the journal line). On success one JSON line
summarises the run on stdout.
"""

# This package also runs on hosts outside Ansible (the timers), where exit_json does not exist.
# pylint: disable=ansible-bad-function

import sys

from .host_cli import run_job
from .offsite import run_copy
from .offsite_config import OffsiteError


def main(argv=None):
    """Run one copy job from a JSON config; return the process exit status."""
    return run_job(
        run_copy,
        prog="tradingbot_ops.offsite_cli",
        description="Copy backups off-site.",
        config_help="JSON file of off-site copy options",
        check_help="plan only: report what would be copied and deleted",
        failure=OffsiteError,
        name="tradingbot offsite",
        failure_line="tradingbot {}",
        summary_keys=("copied", "deleted", "locked", "pending", "would_delete", "store", "duration_seconds", "msg"),
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
