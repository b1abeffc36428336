"""Restore benchmark: db_restore's engine against the shell pipelines it replaces.

Restores a gzip backup of a generated SQLite database and of a pgbench PostgreSQL database,
and times in the same run the original's shell equivalents:

    sqlite:      gunzip -c BACKUP > DB
    postgresql:  gunzip -c BACKUP | psql -d NEWDB

Our time includes everything the engine does: SHA-256 and full decode against the manifest,
the restore into a candidate, fsync, the integrity check and per-table row counts, the safety
copy and the swap. Target: ratio (ours / shell) at most 1.3.

Data is cached under --data-dir (default: the backup benchmark's cache,
~/.cache/tradingbot-ops/bench-data). The backup benchmark's SQLite database
(trades-<size>mb.db) is used when present, else one is generated; backups are made once and
reused. PostgreSQL runs in a throwaway cluster; pgbench fills it only when no backup is cached.

    python benchmarks/restore_bench.py                       # 1 GiB, both engines
    python benchmarks/restore_bench.py --size-mb 64 --engine sqlite
"""

import argparse
import importlib.util
import os
import random
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# tests/conftest.py puts the checkout on the ansible_collections import path; the functional
# tests' PostgreSQL cluster helper starts the throwaway server.
_spec = importlib.util.spec_from_file_location("_collection_path", REPO / "tests" / "conftest.py")
_spec.loader.exec_module(importlib.util.module_from_spec(_spec))
sys.path.insert(0, str(REPO / "tests" / "functional"))
import postgres  # noqa: E402
from ansible_collections.tradingbot.ops.plugins.module_utils.backup_engine import run_backup  # noqa: E402
from ansible_collections.tradingbot.ops.plugins.module_utils.db_common import list_backups  # noqa: E402
from ansible_collections.tradingbot.ops.plugins.module_utils.restore_engine import (  # noqa: E402
    restore_postgresql,
    restore_sqlite,
)

DEFAULT_DATA = Path(os.environ.get("TRADINGBOT_BENCH_DATA", Path.home() / ".cache/tradingbot-ops/bench-data"))
PGBENCH_SCALE_PER_MB = 70 / 1054  # pgbench scale 70 is 1054 MB


def log(text):
    print(f"--> {text}", file=sys.stderr, flush=True)


def timed(func):
    started = time.perf_counter()
    value = func()
    return time.perf_counter() - started, value


def sqlite_source(data_dir, size_mb):
    """The backup benchmark's trades database of this size when it is cached, else our own."""
    for path in (data_dir / f"trades-{size_mb}mb.db", data_dir / f"sqlite-{size_mb}mb.db"):
        if path.exists():
            return path
    path = data_dir / f"sqlite-{size_mb}mb.db"
    log(f"generating {path}: trades with random order ids until it reaches {size_mb} MiB")
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute(
        "CREATE TABLE trades (id INTEGER PRIMARY KEY, order_id TEXT NOT NULL, symbol TEXT NOT NULL,"
        " side TEXT NOT NULL, qty REAL NOT NULL, price REAL NOT NULL, ts INTEGER NOT NULL)"
    )
    rng = random.Random(42)
    batch, start = 100_000, 0
    while tmp.stat().st_size < size_mb * 1024 * 1024:
        conn.executemany(
            "INSERT INTO trades VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    i,
                    f"{rng.getrandbits(128):032x}",
                    f"SYM{i % 97}",
                    "buy" if i % 2 else "sell",
                    rng.random() * 10,
                    rng.random() * 1000,
                    1_700_000_000 + i,
                )
                for i in range(start, start + batch)
            ),
        )
        conn.commit()
        start += batch
    conn.close()
    tmp.rename(path)
    return path


def cached_backup(backup_dir, options):
    entries = [entry for entry in list_backups(backup_dir, options["engine"]) if entry["verified"]]
    if entries:
        return entries[0]["path"]
    backup_dir.mkdir(parents=True, exist_ok=True)
    log(f"backing up {options['database']} into {backup_dir}")
    return run_backup(dict(options, backup_dir=str(backup_dir), compression="gzip"))["path"]


def compare(backup, shell_run, ours_run, repeat):
    """Best time of each side over ``repeat`` rounds, alternating which goes first. Each run
    returns its own timed part (set-up and clean-up are not timed). The backup file is read
    once beforehand so that both find it in the page cache."""
    with open(backup, "rb") as handle:
        while handle.read(1 << 24):
            pass
    best = {"shell": float("inf"), "ours": float("inf")}
    for round_ in range(repeat):
        order = [("shell", shell_run), ("ours", ours_run)]
        for side, run in order if round_ % 2 == 0 else reversed(order):
            subprocess.run(["sync"], check=True)
            log(f"round {round_ + 1}: {side}")
            best[side] = min(best[side], run())
    return best


def bench_sqlite(data_dir, size_mb, work, repeat):
    source = sqlite_source(data_dir, size_mb)
    backup_dir = data_dir / f"restore-{source.stem}-backups"
    backup = cached_backup(backup_dir, {"engine": "sqlite", "database": str(source)})
    live = work / "live.db"
    shell_out = work / "shell.db"
    shell_cmd = f"gunzip -c {shlex.quote(backup)} > {shlex.quote(str(shell_out))}"
    shutil.copyfile(source, live)  # the database restored over; not timed

    def shell_run():
        elapsed = timed(lambda: subprocess.run(["sh", "-c", shell_cmd], check=True))[0]
        shell_out.unlink()
        return elapsed

    def ours_run():
        elapsed, result = timed(lambda: restore_sqlite(str(live), str(backup_dir)))
        if not result["validation"]["ok"]:
            raise SystemExit(f"restore did not validate: {result}")
        os.unlink(result["safety_copy"])
        return elapsed

    log(f"shell: {shell_cmd}")
    times = compare(backup, shell_run, ours_run, repeat)
    return {"engine": "sqlite", "backup": backup, "shell_cmd": shell_cmd, **times}


def bench_postgresql(data_dir, size_mb, work, repeat):
    del work  # everything lives in the throwaway cluster
    reason = postgres.available()
    if reason:
        raise SystemExit(f"cannot start PostgreSQL: {reason}")
    cluster = postgres.PostgresCluster()
    cluster.start()
    try:
        params = cluster.params(database="bench")
        backup_dir = data_dir / f"restore-postgres-{size_mb}mb-backups"
        cluster.create_database("bench")
        env = dict(
            os.environ, PGHOST="127.0.0.1", PGPORT=str(cluster.port), PGUSER=postgres.ROLE, PGPASSWORD=postgres.PASSWORD
        )
        if not [entry for entry in list_backups(backup_dir, "postgresql") if entry["verified"]]:
            scale = max(1, round(size_mb * PGBENCH_SCALE_PER_MB))
            log(f"pgbench -i -s {scale} (about {size_mb} MB)")
            pgbench = os.path.join(postgres.BIN_DIR, "pgbench")
            subprocess.run([pgbench, "-i", "-q", "-s", str(scale), "bench"], env=env, check=True, capture_output=True)
        backup = cached_backup(backup_dir, dict(params, engine="postgresql"))
        # Both sides load the same dump into PostgreSQL: the shell into an empty database, ours
        # over the live one, which it keeps as the safety copy (dropped after each round).
        psql = os.path.join(postgres.BIN_DIR, "psql")
        shell_cmd = f"gunzip -c {shlex.quote(backup)} | {psql} -X -q -o /dev/null -d shell"

        def shell_run():
            cluster.create_database("shell")
            try:
                return timed(lambda: subprocess.run(["sh", "-c", shell_cmd], check=True, env=env))[0]
            finally:
                cluster.drop_database("shell")

        def ours_run():
            elapsed, result = timed(lambda: restore_postgresql(params, str(backup_dir)))
            if not result["validation"]["ok"]:
                raise SystemExit(f"restore did not validate: {result}")
            cluster.drop_database(result["safety_copy"])
            return elapsed

        log(f"shell: {shell_cmd}")
        times = compare(backup, shell_run, ours_run, repeat)
        return {"engine": "postgresql", "backup": backup, "shell_cmd": shell_cmd, **times}
    finally:
        cluster.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="database size in MiB (default 1024)")
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="cache of generated data and backups")
    parser.add_argument("--repeat", type=int, default=2, help="rounds per side, alternating order; best time counts")
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    engines = ["sqlite", "postgresql"] if args.engine == "both" else [args.engine]
    rows = []
    with tempfile.TemporaryDirectory(prefix="restore-bench-", dir=args.data_dir) as work:
        for engine in engines:
            bench = bench_sqlite if engine == "sqlite" else bench_postgresql
            rows.append(bench(args.data_dir, args.size_mb, Path(work), args.repeat))
    print(f"\nrestore benchmark, {args.size_mb} MiB, best of {args.repeat} per side, target ratio <= 1.3")
    print(f"{'engine':<11} {'backup MB':>9} {'shell s':>8} {'ours s':>8} {'ratio':>6}")
    for row in rows:
        size = os.path.getsize(row["backup"]) / 1e6
        ratio = row["ours"] / row["shell"]
        print(f"{row['engine']:<11} {size:>9.1f} {row['shell']:>8.2f} {row['ours']:>8.2f} {ratio:>6.2f}")
    for row in rows:
        print(f"baseline ({row['engine']}): {row['shell_cmd']}")
    command = " ".join(shlex.quote(a) for a in [sys.executable, "benchmarks/restore_bench.py", *sys.argv[1:]])
    print(f"reproduce: cd {shlex.quote(str(REPO))} && {command}")


if __name__ == "__main__":
    main()
