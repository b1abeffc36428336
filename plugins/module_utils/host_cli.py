"""What the host-side job commands share: read a JSON config, run one job, report one line.

Exit status: 0 on success, 1 when the job failed, 2 when the configuration cannot be read. A
failure prints one line on stderr (the journal line); a success prints one JSON line of the
result's ``summary_keys`` on stdout.
"""

# This package also runs on hosts outside Ansible (the timers), where run_command, exit_json and
# module.log do not exist.
# pylint: disable=ansible-bad-function

import argparse
import json
import signal
import sys


def _terminate(signum, _frame):
    # Unwind through the job's cleanup (temp files, locks, child processes) instead of dying mid-write.
    raise SystemExit(128 + signum)


def run_job(job, *, prog, description, config_help, check_help, failure, name, failure_line, summary_keys, argv=None):
    """Parse ``--config FILE [--check]``, run ``job(config, check_mode=...)``; return the exit status.

    ``failure`` is the job's error class; ``failure_line`` formats its message for stderr.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--check", action="store_true", help=check_help)
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as exc:
        print(f"{name}: cannot read config {args.config}: {exc}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        result = job(config, check_mode=args.check)
    except failure as exc:
        print(failure_line.format(exc), file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps({key: result[key] for key in summary_keys if key in result}, sort_keys=True))
    return 0
