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

# This package also runs on hosts outside Ansible (the off-site copy timer).
# pylint: disable=ansible-bad-function

import argparse
import json
import signal
import sys

from .offsite import run_copy
from .offsite_config import OffsiteError

_SUMMARY_KEYS = ("copied", "deleted", "locked", "pending", "would_delete", "store", "duration_seconds", "msg")


def _terminate(signum, _frame):
    # Unwind through the cleanup (the age child, a multipart upload) instead of dying mid-call.
    raise SystemExit(128 + signum)


def main(argv=None):
    """Run one copy job from a JSON config; return the process exit status."""
    parser = argparse.ArgumentParser(prog="tradingbot_ops.offsite_cli", description="Copy backups off-site.")
    parser.add_argument("--config", required=True, help="JSON file of off-site copy options")
    parser.add_argument("--check", action="store_true", help="plan only: report what would be copied and deleted")
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as exc:
        print(f"tradingbot offsite: cannot read config {args.config}: {exc}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        result = run_copy(config, check_mode=args.check)
    except OffsiteError as exc:
        print(f"tradingbot {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps({key: result[key] for key in _SUMMARY_KEYS if key in result}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
