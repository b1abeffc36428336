"""What backup, restore and the recovery drill report: one event-log line format, and one
writer of Prometheus textfile-collector files."""

import contextlib
import os

from .fsutil import isoformat, utcnow, write_atomic


class EventLog:
    """Appends one line per event to the shared log (the original's logs/backup.log)::

        2025-01-01T02:00:00Z INFO [sqlite] backup written /var/backups/... size=...

    ``lines`` keeps what was logged, for results. A full or read-only log disk never turns a
    good run into a failed one, so write errors are ignored.
    """

    def __init__(self, path, engine):
        self.path = path
        self.engine = engine
        self.lines = []

    def __call__(self, level, message):
        line = f"{isoformat(utcnow())} {level} [{self.engine}] {message}"
        self.lines.append(line)
        if not self.path:
            return
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")


def _escape(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(prefix, metrics, labels=None):
    """Render ``(name, help, value)`` gauges as exposition text; ``None`` values are left out."""
    label_text = ""
    if labels:
        label_text = "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"
    lines = []
    for name, help_text, value in metrics:
        if value is None:
            continue
        lines += [f"# HELP {prefix}_{name} {help_text}", f"# TYPE {prefix}_{name} gauge"]
        lines.append(f"{prefix}_{name}{label_text} {value}")
    return "\n".join(lines) + "\n"


def write_metrics_file(metrics_dir, file_name, prefix, metrics, labels=None):
    """Write a textfile-collector file atomically, mode 0644 (node_exporter reads it); return its path."""
    path = os.path.join(metrics_dir, file_name)
    # node_exporter skips dot-files, so the temp name never shows up half-written.
    write_atomic(path, render_metrics(prefix, metrics, labels), mode=0o644, fsync=False)
    return path


def read_metric(metrics_dir, file_name, metric):
    """The value of ``metric`` in a textfile written earlier, or None."""
    with contextlib.suppress(OSError, ValueError), open(os.path.join(metrics_dir, file_name), encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(metric):
                return float(line.rsplit(" ", 1)[1])
    return None
