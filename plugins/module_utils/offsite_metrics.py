"""The copy job's textfile-collector metrics, written with the engine's ``reporting`` writer."""

from __future__ import annotations

import contextlib

from .reporting import read_metric, write_metrics_file

METRICS_FILE = "tradingbot_offsite.prom"
METRICS_PREFIX = "tradingbot_offsite"


def _previous(metrics_dir, name):
    return read_metric(metrics_dir, METRICS_FILE, f"{METRICS_PREFIX}_{name}")


def write_metrics(metrics_dir, ok, now, *, pending, newest_copy=None, copied=None):
    """Write the metrics file atomically; a failed run carries the last success over."""
    last_success = now.timestamp() if ok else _previous(metrics_dir, "last_success_timestamp_seconds")
    newest = newest_copy.timestamp() if newest_copy else _previous(metrics_dir, "newest_copy_timestamp_seconds")
    metrics = [
        ("last_run_timestamp_seconds", "Time of the last off-site copy run.", now.timestamp()),
        ("last_run_success", "1 when the last off-site copy run succeeded, 0 when it failed.", 1 if ok else 0),
        ("last_success_timestamp_seconds", "Time of the last successful off-site copy run.", last_success),
        ("pending_backups", "Verified local backups not yet in the off-site store.", pending),
        ("newest_copy_timestamp_seconds", "Backup time of the newest copy in the off-site store.", newest),
        ("copied_backups", "Backups copied by the last successful run.", copied),
    ]
    return write_metrics_file(metrics_dir, METRICS_FILE, METRICS_PREFIX, metrics)


def write_metrics_quietly(opts, ok, now, **values):
    if opts["metrics_dir"]:
        # Metrics are for the alerts; a full disk must not mask the run's own outcome.
        with contextlib.suppress(OSError):
            write_metrics(opts["metrics_dir"], ok, now, **values)


def pending_after_failure(opts, local):
    """When the store cannot be listed: the verified local backups newer than the newest copy
    the last successful run saw (all of them when none is known)."""
    if not opts["metrics_dir"]:
        return [entry["name"] for entry in local]
    newest = _previous(opts["metrics_dir"], "newest_copy_timestamp_seconds")
    return [entry["name"] for entry in local if newest is None or entry["timestamp"].timestamp() > newest]
