"""Host-side entry point of the replication metrics timer: Litestream's lag, as textfile metrics.

Usage::

    python3 -m tradingbot_ops.litestream_metrics --config LITESTREAM_YML --database DB \\
        --metrics-dir DIR [--litestream BIN] [--ca-bundle PEM]

It lists the replica with Litestream's own commands (the config is the service's credential, so
the unit hands it over with ``LoadCredential=``) and writes ``tradingbot_litestream.prom``:
the upload time of the newest replicated write, and the lag, which is Litestream's own measure
(``litestream generations``): the database's last local write (its file or -wal, whichever is
newer) minus the newest upload, 0 when the replica is current. A failed run sets
``last_run_success`` to 0 and carries the last known write over, so the lag alert still fires.
Exit status: 0 on success, 1 when listing failed.
"""

# pylint: disable=ansible-bad-function

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys

from . import litestream
from .reporting import read_metric, write_metrics_file

METRICS_FILE = "tradingbot_litestream.prom"
METRICS_PREFIX = "tradingbot_litestream"


def last_local_write(database):
    times = []
    for path in (database, database + "-wal"):
        with contextlib.suppress(FileNotFoundError):
            times.append(os.stat(path).st_mtime)
    return max(times) if times else None


def measure(binary, config, database, ca_bundle=None):
    """(newest upload time or None, lag in seconds or None, number of generations)."""
    generations = litestream.listing(binary, config, database, ca_bundle=ca_bundle)
    newest = max((gen["end"] for gen in generations.values()), default=None)
    local = last_local_write(database)
    if newest is None:
        return None, None, 0
    lag = max(0.0, local - newest.timestamp()) if local is not None else 0.0
    return newest.timestamp(), lag, len(generations)


def write_metrics(metrics_dir, now, ok, *, newest=None, lag=None, generations=None):
    if not ok:
        newest = read_metric(metrics_dir, METRICS_FILE, f"{METRICS_PREFIX}_last_replicated_write_timestamp_seconds")
    metrics = [
        ("last_run_timestamp_seconds", "Time of the last replication metrics run.", now),
        ("last_run_success", "1 when the replica could be listed, 0 when not.", 1 if ok else 0),
        ("last_replicated_write_timestamp_seconds", "Upload time of the newest object in the replica.", newest),
        ("replication_lag_seconds", "Last local write of the database minus the newest upload, at least 0.", lag),
        ("generations", "Litestream generations in the replica.", generations),
    ]
    return write_metrics_file(metrics_dir, METRICS_FILE, METRICS_PREFIX, metrics)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tradingbot_ops.litestream_metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the Litestream config (the service's credential)")
    parser.add_argument("--database", required=True, help="the replicated SQLite database")
    parser.add_argument("--metrics-dir", required=True, help="the textfile collector's directory")
    parser.add_argument("--litestream", default="litestream", help="the litestream binary")
    parser.add_argument("--ca-bundle", help="a PEM file of the store's CA")
    args = parser.parse_args(argv)
    now = datetime.datetime.now(datetime.UTC).timestamp()
    try:
        newest, lag, generations = measure(
            litestream.binary(args.litestream), args.config, args.database, args.ca_bundle
        )
    except litestream.LitestreamError as exc:
        write_metrics(args.metrics_dir, now, False)
        print(f"tradingbot litestream metrics: {exc}", file=sys.stderr)
        return 1
    write_metrics(args.metrics_dir, now, True, newest=newest, lag=lag, generations=generations)
    return 0


if __name__ == "__main__":
    sys.exit(main())
