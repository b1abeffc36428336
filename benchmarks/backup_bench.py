"""Benchmark db_backup's engine against the original shell pipelines, in the same run.

    python3 benchmarks/backup_bench.py                      # 1 GiB SQLite and 1 GiB PostgreSQL
    python3 benchmarks/backup_bench.py --size-mb 128        # a quick run
    python3 benchmarks/backup_bench.py --engine sqlite

Baselines (the original script's pipelines):
  SQLite:      sqlite3 DB ".backup X" && gzip X
  PostgreSQL:  pg_dump DB | gzip > X
Ours runs as the backup timer does (``python3 -m tradingbot_ops.backup_cli``), verification
(integrity check or pg_dump snapshot row counts, full decode, SHA-256) included, in gzip and
zstd modes. Printed per mode: wall time, output size, peak RSS (the largest process of the
tree, from wait4), and the ratios against the baseline.

Targets (issue 4): gzip time ratio <= 1.0; zstd time ratio <= 0.4 with a smaller output;
peak RSS <= 64 MiB.

Data is generated deterministically and cached under /root/.cache/tradingbot-ops/bench-data
(SQLite: a trades table with random order ids, ~100 bytes a row, compresses about 2x;
PostgreSQL: pgbench at a scale proportional to the size, in a cluster kept in the cache and
started for the run). Needs root (initdb runs via runuser -u postgres), sqlite3, gzip, zstd
and PostgreSQL 15 in /usr/lib/postgresql/15/bin.
"""

import argparse
import json
import os
import pwd
import random
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("TRADINGBOT_BENCH_CACHE", "/root/.cache/tradingbot-ops/bench-data")
PG_BIN = os.environ.get("TRADINGBOT_PG_BIN_DIR", "/usr/lib/postgresql/15/bin")
PG_PORT = 55439
# The cluster cannot live under /root: the postgres user cannot traverse it.
PG_CACHE = os.environ.get("TRADINGBOT_BENCH_PG_CACHE", "/var/tmp/tradingbot-ops/bench-data")  # noqa: S108
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "AVAXUSDT"]
# pgbench at scale 70 is 1054 MB (measured here).
PG_MB_PER_SCALE = 1054 / 70
MIB = 1024 * 1024


def log(message):
    print(message, file=sys.stderr, flush=True)


def run_measured(argv, env=None, stdout=None):
    """Run a command; return (seconds, peak RSS in MiB of the largest process in its tree).

    CPU seconds of the tree (user + system) go to stderr: on a shared machine they show the
    work done when wall times are disturbed by other load.
    """
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=stdout)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    # wait4's usage covers the child and the descendants it reaped: the whole pipeline.
    cpu = usage.ru_utime + usage.ru_stime
    log(f"  {elapsed:.2f} s wall, {cpu:.2f} s CPU")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"command failed (exit {proc.returncode}): {shlex.join(argv)}")
    return elapsed, usage.ru_maxrss / 1024


# --- data ------------------------------------------------------------------------------------


def sqlite_db(size_mb):
    path = os.path.join(CACHE, f"trades-{size_mb}mb.db")
    if os.path.exists(path):
        return path
    os.makedirs(CACHE, exist_ok=True)
    log(f"generating {path} (deterministic, seed 42)")
    rows = size_mb * 10_000
    rng = random.Random(42)
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    conn = sqlite3.connect(tmp)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute(
        "CREATE TABLE trades (id INTEGER PRIMARY KEY, order_id TEXT, symbol TEXT, side TEXT,"
        " price REAL, qty REAL, fee REAL, ts INTEGER, note TEXT)"
    )

    def generate():
        for i in range(rows):
            yield (
                i,
                f"{rng.getrandbits(64):016x}{rng.getrandbits(32):08x}",
                SYMBOLS[i % len(SYMBOLS)],
                "buy" if rng.random() < 0.5 else "sell",
                round(20000 + rng.random() * 50000, 2),
                round(rng.random() * 3, 6),
                round(rng.random(), 6),
                1_700_000_000_000 + i * 37,
                "strategy=momentum",
            )

    conn.executemany("INSERT INTO trades VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", generate())
    conn.commit()
    conn.execute("CREATE INDEX trades_ts ON trades (ts)")
    conn.commit()
    conn.close()
    os.rename(tmp, path)
    return path


class Cluster:
    """A PostgreSQL 15 cluster kept in the cache; local connections are trusted (benchmark only)."""

    def __init__(self, scale):
        self.root = os.path.join(PG_CACHE, f"pg-scale{scale}")
        self.data = os.path.join(self.root, "data")
        self.sock = os.path.join(self.root, "sock")
        self.scale = scale

    def _pg(self, argv, **kwargs):
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, **kwargs)

    def start(self):
        entry = pwd.getpwnam("postgres")
        fresh = not os.path.exists(os.path.join(self.data, "PG_VERSION"))
        if fresh:
            shutil.rmtree(self.root, ignore_errors=True)
            os.makedirs(PG_CACHE, exist_ok=True)
            for path in (self.root, self.data, self.sock):
                os.makedirs(path, 0o700, exist_ok=True)
                os.chown(path, entry.pw_uid, entry.pw_gid)
            os.chmod(self.root, 0o755)  # noqa: S103 - the postgres user must traverse it
            os.chmod(os.path.dirname(self.root), 0o755)  # noqa: S103 - same
            initdb = [f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync"]
            self._pg(initdb, stdout=subprocess.DEVNULL)
            with open(os.path.join(self.data, "postgresql.auto.conf"), "a", encoding="utf-8") as conf:
                conf.write(f"listen_addresses = ''\nport = {PG_PORT}\nunix_socket_directories = '{self.sock}'\n")
        log_file = os.path.join(self.root, "server.log")
        self._pg([f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", log_file, "-w", "start"], stdout=subprocess.DEVNULL)
        if fresh or not os.path.exists(os.path.join(self.root, "loaded")):
            log(f"loading pgbench scale {self.scale} (deterministic)")
            self._pg([f"{PG_BIN}/createdb", "-h", self.sock, "-p", str(PG_PORT), "bench"])
            self._pg(
                [f"{PG_BIN}/pgbench", "-i", "-q", "-s", str(self.scale), "-h", self.sock, "-p", str(PG_PORT), "bench"]
            )
            open(os.path.join(self.root, "loaded"), "w").close()
        return self

    def stop(self):
        self._pg([f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "fast", "stop"], stdout=subprocess.DEVNULL)

    def size_mb(self):
        out = self._pg(
            [
                f"{PG_BIN}/psql",
                "-h",
                self.sock,
                "-p",
                str(PG_PORT),
                "-At",
                "-c",
                "SELECT pg_database_size('bench')",
                "bench",
            ],
            capture_output=True,
        ).stdout
        return int(out) / MIB


# --- runs ------------------------------------------------------------------------------------


def ours(config, work):
    lib = os.path.join(work, "lib")
    if not os.path.exists(lib):
        os.makedirs(lib)
        os.symlink(os.path.join(REPO, "plugins", "module_utils"), os.path.join(lib, "tradingbot_ops"))
    backup_dir = os.path.join(work, "ours")
    shutil.rmtree(backup_dir, ignore_errors=True)
    config = dict(config, backup_dir=backup_dir, retention_days=0, lock_timeout=0)
    config_path = os.path.join(work, "backup.json")
    with open(config_path, "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    env = dict(os.environ, PYTHONPATH=lib)
    argv = ["python3", "-m", "tradingbot_ops.backup_cli", "--config", config_path]
    seconds, rss = run_measured(argv, env=env, stdout=subprocess.DEVNULL)
    (name,) = [n for n in os.listdir(backup_dir) if n.endswith((".gz", ".zst"))]
    size = os.path.getsize(os.path.join(backup_dir, name))
    shutil.rmtree(backup_dir)
    return seconds, size, rss


def report(title, source_mb, baseline, results, reproduce):
    base_time, base_size, base_rss = baseline
    print(f"\n== {title}: source {source_mb:.0f} MiB")
    print(f"{'run':<34}{'time s':>9}{'output MiB':>12}{'peak RSS MiB':>14}{'time ratio':>12}{'size ratio':>12}")
    base_row = f"{base_time:>9.2f}{base_size / MIB:>12.1f}{base_rss:>14.1f}{'1.00':>12}{'1.00':>12}"
    print(f"{'baseline (shell pipeline)':<34}{base_row}")
    verdicts = []
    for mode, (seconds, size, rss) in results.items():
        time_ratio, size_ratio = seconds / base_time, size / base_size
        print(
            f"{'ours ' + mode + ' (verified)':<34}{seconds:>9.2f}{size / MIB:>12.1f}{rss:>14.1f}"
            f"{time_ratio:>12.2f}{size_ratio:>12.2f}"
        )
        if mode == "gzip":
            verdicts.append(("gzip time ratio <= 1.0", time_ratio <= 1.0))
        else:
            verdicts.append(("zstd time ratio <= 0.4", time_ratio <= 0.4))
            verdicts.append(("zstd output smaller", size_ratio < 1.0))
        verdicts.append((f"{mode} peak RSS <= 64 MiB", rss <= 64))
    for label, ok in verdicts:
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    print(f"reproduce: {reproduce}")
    return all(ok for _label, ok in verdicts)


def bench_sqlite(size_mb, work, modes, reproduce):
    db = sqlite_db(size_mb)
    source_mb = os.path.getsize(db) / MIB
    subprocess.run(["cat", db], stdout=subprocess.DEVNULL, check=True)  # same warm cache for every run
    out = os.path.join(work, "baseline.db")
    for leftover in (out, out + ".gz"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    log("sqlite baseline: sqlite3 .backup && gzip")
    seconds, rss = run_measured(["sh", "-c", 'sqlite3 "$1" ".backup $2" && gzip "$2"', "sh", db, out])
    baseline = (seconds, os.path.getsize(out + ".gz"), rss)
    os.unlink(out + ".gz")
    results = {}
    for mode in modes:
        log(f"sqlite ours: {mode}")
        results[mode] = ours({"engine": "sqlite", "database": db, "compression": mode}, work)
    return report("SQLite", source_mb, baseline, results, reproduce)


def bench_postgres(size_mb, work, modes, reproduce):
    scale = max(1, round(size_mb / PG_MB_PER_SCALE))
    cluster = Cluster(scale).start()
    try:
        source_mb = cluster.size_mb()
        conn = ["-h", cluster.sock, "-p", str(PG_PORT), "-U", "postgres"]
        out = os.path.join(work, "baseline.sql.gz")
        log("postgres baseline: pg_dump | gzip")
        pipeline = f"{shlex.join([f'{PG_BIN}/pg_dump', *conn, 'bench'])} | gzip > {shlex.quote(out)}"
        seconds, rss = run_measured(["bash", "-c", "set -o pipefail; " + pipeline])
        baseline = (seconds, os.path.getsize(out), rss)
        os.unlink(out)
        results = {}
        for mode in modes:
            log(f"postgres ours: {mode}")
            config = {
                "engine": "postgresql",
                "database": "bench",
                "compression": mode,
                "pg_host": cluster.sock,
                "pg_port": PG_PORT,
                "pg_user": "postgres",
                "pg_bin_dir": PG_BIN,
            }
            results[mode] = ours(config, work)
        return report("PostgreSQL", source_mb, baseline, results, reproduce)
    finally:
        cluster.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="source size in MiB (default 1024)")
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--modes", default="gzip,zstd", help="comma-separated: gzip,zstd")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    reproduce = "python3 benchmarks/backup_bench.py " + shlex.join(sys.argv[1:])
    ok = True
    with tempfile.TemporaryDirectory(prefix="backup-bench-", dir=os.path.dirname(CACHE)) as work:
        if args.engine in ("sqlite", "both"):
            ok &= bench_sqlite(args.size_mb, work, modes, reproduce)
        if args.engine in ("postgresql", "both"):
            ok &= bench_postgres(args.size_mb, work, modes, reproduce)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
