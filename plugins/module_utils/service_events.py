"""Count the service's stops by systemd's verdict, as Prometheus textfile metrics.

Meant for the service unit::

    ExecStartPre=/usr/bin/python3 -m tradingbot_ops.service_events --metrics-dir DIR --unit %n init
    ExecStopPost=/usr/bin/python3 -m tradingbot_ops.service_events --metrics-dir DIR --unit %n record

``record`` reads what systemd sets for ``ExecStopPost=`` (``$SERVICE_RESULT``, ``$EXIT_CODE``,
``$EXIT_STATUS``; systemd.exec(5)) and adds one to
``tradingbot_service_stops_total{unit,result}``. ``init`` writes the zero counters when the
file does not exist yet, so that the first stop is an increase Prometheus can see (a counter
that appears at 1 has no earlier sample to compare with). The file is rewritten atomically
under an flock, so two stops at once never lose a count. Exit status: 0 when written, 2 on
a usage error, 1 when the file cannot be written.

Stdlib only, no Ansible imports: it runs on hosts as part of the ``tradingbot_ops`` package.
"""

# Runs as a host-side program, where AnsibleModule (exit_json) does not exist.
# pylint: disable=ansible-bad-function

import argparse
import contextlib
import fcntl
import os
import re
import sys
import tempfile
import time

PREFIX = "tradingbot_service"
# systemd.exec(5), "$SERVICE_RESULT"; each is written from the start at 0 so increase() sees it.
KNOWN_RESULTS = (
    "success",
    "protocol",
    "timeout",
    "exit-code",
    "signal",
    "core-dump",
    "watchdog",
    "start-limit-hit",
    "resources",
    "oom-kill",
)
_RESULT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_STOPS_LINE = re.compile(rf'^{PREFIX}_stops_total\{{unit="(?:[^"\\]|\\.)*",result="([a-z0-9-]+)"\}} (\d+)$')


def metrics_path(metrics_dir, unit):
    """The unit's own textfile, so several units can share one metrics directory."""
    return os.path.join(metrics_dir, f"{PREFIX}_{re.sub(r'[^A-Za-z0-9_.@-]', '_', unit)}.prom")


def _label(value):
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def read_counts(path):
    """The stop counters already in ``path`` ({} when it does not exist)."""
    counts = {}
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as handle:
        for line in handle:
            match = _STOPS_LINE.match(line.rstrip("\n"))
            if match:
                counts[match.group(1)] = int(match.group(2))
    return counts


def render(unit, counts, last_stop=None):
    """The textfile: every known result (0 when never seen), then the last stop, if any."""
    unit_label = _label(unit)
    results = list(KNOWN_RESULTS) + sorted(set(counts) - set(KNOWN_RESULTS))
    lines = [
        f"# HELP {PREFIX}_stops_total Stops of the service unit, by systemd's $SERVICE_RESULT.",
        f"# TYPE {PREFIX}_stops_total counter",
    ]
    lines += [f'{PREFIX}_stops_total{{unit="{unit_label}",result="{r}"}} {counts.get(r, 0)}' for r in results]
    if last_stop is not None:
        lines += [
            f"# HELP {PREFIX}_last_stop_timestamp_seconds When the service unit last stopped.",
            f"# TYPE {PREFIX}_last_stop_timestamp_seconds gauge",
            f'{PREFIX}_last_stop_timestamp_seconds{{unit="{unit_label}"}} {last_stop["timestamp"]:.3f}',
            f"# HELP {PREFIX}_last_stop_info How the service unit last stopped (systemd's result, code and status).",
            f"# TYPE {PREFIX}_last_stop_info gauge",
            f'{PREFIX}_last_stop_info{{unit="{unit_label}",result="{last_stop["result"]}",'
            f'exit_code="{_label(last_stop["exit_code"])}",exit_status="{_label(last_stop["exit_status"])}"}} 1',
        ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _locked(metrics_dir):
    # The lock file is not *.prom, so the textfile collector ignores it.
    # Read-only: flock needs no write access, so a lock file left by another user still works.
    fd = os.open(os.path.join(metrics_dir, f".{PREFIX}.lock"), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomic(path, text):
    fd, tmp = tempfile.mkstemp(prefix=f".{PREFIX}.", suffix=".prom.tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def record(metrics_dir, unit, result, *, exit_code="", exit_status="", now=None):
    """Add one stop with systemd's ``result``; return the file's path."""
    if not _RESULT_NAME.match(result):
        raise ValueError(f"not a systemd service result: {result!r}")
    path = metrics_path(metrics_dir, unit)
    with _locked(metrics_dir):
        counts = read_counts(path)
        counts[result] = counts.get(result, 0) + 1
        last_stop = {
            "timestamp": time.time() if now is None else now,
            "result": result,
            "exit_code": exit_code,
            "exit_status": exit_status,
        }
        _write_atomic(path, render(unit, counts, last_stop))
    return path


def init(metrics_dir, unit):
    """Write the zero counters unless the file already holds counts; return the path."""
    path = metrics_path(metrics_dir, unit)
    with _locked(metrics_dir):
        if not read_counts(path):
            _write_atomic(path, render(unit, {}))
    return path


def main(argv=None, environ=None):
    """Run as ExecStartPre= (init) or ExecStopPost= (record); return the exit status."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="tradingbot_ops.service_events", description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-dir", required=True, help="the node exporter's textfile directory")
    parser.add_argument("--unit", required=True, help="the unit's name (%%n in the unit file)")
    parser.add_argument("action", choices=("init", "record"), help="init: zero counters; record: count this stop")
    args = parser.parse_args(argv)
    try:
        if args.action == "init":
            init(args.metrics_dir, args.unit)
            return 0
        result = environ.get("SERVICE_RESULT", "")
        if not result:
            print("error: $SERVICE_RESULT is not set; record runs from the unit's ExecStopPost=", file=sys.stderr)
            return 2
        record(
            args.metrics_dir,
            args.unit,
            result,
            exit_code=environ.get("EXIT_CODE", ""),
            exit_status=environ.get("EXIT_STATUS", ""),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write the metrics in {args.metrics_dir}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
