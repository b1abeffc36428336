"""Prometheus text-format metrics for circuit breakers, served by the app or written as a
node_exporter textfile.

    from tradingbot_ops.breaker_metrics import render_metrics, write_textfile

    body = render_metrics()  # every breaker in the process's registry
    write_textfile("/var/lib/node_exporter/textfile/tradingbot_breakers.prom")

The metric names are an interface: the collection's alert rules and dashboard query them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from .breaker_registry import get_registry
from .breaker_state import CircuitState

__all__ = ["CONTENT_TYPE", "METRIC_PREFIX", "render_metrics", "write_textfile"]

METRIC_PREFIX = "tradingbot_circuit_breaker"
# The Prometheus text exposition format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (name suffix, type, help, snapshot key) of the per-breaker series.
_COUNTERS = (
    ("calls_total", "Calls that ran through the breaker (successes, failures and ignored).", "calls"),
    ("failures_total", "Calls through the breaker that counted as failures, slow calls included.", "failures"),
    ("rejections_total", "Calls the breaker refused without running them.", "rejections"),
)


def _label(value):
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(lines, name, kind, help_text):
    lines.append(f"# HELP {METRIC_PREFIX}_{name} {help_text}")
    lines.append(f"# TYPE {METRIC_PREFIX}_{name} {kind}")


def render_metrics(breakers=None):
    """The metrics of ``breakers`` (default: every registered breaker) as exposition text."""
    breakers = get_registry().breakers() if breakers is None else list(breakers)
    rows = [(_label(b.name), b.snapshot()) for b in breakers]  # one consistent reading each
    lines = []
    _family(lines, "state", "gauge", "1 for the state the breaker is in, 0 for the others.")
    for name, snap in rows:
        for state in CircuitState:
            value = 1 if snap["state"] == state.value else 0
            lines.append(f'{METRIC_PREFIX}_state{{breaker="{name}",state="{state.value}"}} {value}')
    for suffix, help_text, key in _COUNTERS:
        _family(lines, suffix, "counter", help_text)
        lines.extend(f'{METRIC_PREFIX}_{suffix}{{breaker="{name}"}} {snap[key]}' for name, snap in rows)
    _family(
        lines,
        "last_transition_timestamp_seconds",
        "gauge",
        "Wall-clock time of the breaker's last state change (its creation if none), in epoch seconds.",
    )
    lines.extend(
        f'{METRIC_PREFIX}_last_transition_timestamp_seconds{{breaker="{name}"}} {snap["last_transition_time"]:.3f}'
        for name, snap in rows
    )
    return "\n".join(lines) + "\n"


def write_textfile(path, breakers=None):
    """Write the metrics to ``path`` atomically (temp file in the same directory, fsync,
    rename), mode 0644, so the textfile collector never reads a torn file."""
    path = os.fspath(path)
    text = render_metrics(breakers)
    directory = os.path.dirname(os.path.abspath(path))
    # The collector skips files that do not end in .prom, so the temp file is never read.
    fd, tmp = tempfile.mkstemp(prefix=".tradingbot_breakers.", suffix=".prom.tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), 0o644)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return text
