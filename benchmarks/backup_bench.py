"""Benchmark db_backup's engine against the original shell pipelines, alternating in one run.

    python3 benchmarks/backup_bench.py                      # 1 GiB SQLite and 1 GiB PostgreSQL
    python3 benchmarks/backup_bench.py --quick              # 32 MiB SQLite, 128 MiB PostgreSQL
    python3 benchmarks/backup_bench.py --engine sqlite --pairs 5
    python3 benchmarks/backup_bench.py --tree /tmp/before   # before and after in the same run

Baselines (the original script's pipelines):
  SQLite:      sqlite3 DB ".backup X" && gzip X
  PostgreSQL:  pg_dump DB | gzip > X
Ours runs as the backup timer does (``python3 -m tradingbot_ops.backup_cli``), verification
(integrity check or pg_dump snapshot row counts, full decode, SHA-256) included, in gzip and
zstd modes, from each --tree and from this checkout. The sides alternate (benchmarks/harness.py):
a warm-up round, then --pairs rounds; per side the median and min-max of wall time, CPU time,
peak RSS (the largest process of the tree, from wait4) and output size, and the median of the
per-round ratios against the baseline.

Targets (issues 4 and 16), checked on this checkout: gzip time ratio <= 1.0; zstd time ratio
<= 0.4 for SQLite and <= 0.75 for PostgreSQL, with a smaller output; peak RSS <= 64 MiB.
Data: benchmarks/fixtures.py. Needs root, sqlite3, gzip, zstd and PostgreSQL 15.
"""

import argparse
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import fixtures
import harness

# pgbench dumps fast for its size: at 32 MiB the fixed costs (interpreter start, psql) would
# be all a quick PostgreSQL run measures.
QUICK_MB = {"sqlite": 32, "postgresql": 128}
ZSTD_TARGET = {"sqlite": 0.4, "postgresql": 0.75}
RSS_LIMIT_MIB = 64


def with_output(sample, path):
    """Add the output's size to a sample, then remove the output."""
    sample["output_mib"] = path.stat().st_size / fixtures.MIB
    path.unlink()
    return sample


def baseline_side(name, script, out, *script_args):
    """A shell pipeline writing ``out``; ``script`` gets ``script_args`` as $1, $2 ..."""

    def run():
        return with_output(harness.run_command(["bash", "-c", "set -o pipefail; " + script, "sh", *script_args]), out)

    return harness.Side(name, run, prepare=lambda: out.unlink(missing_ok=True))


def ours_side(tree, config, mode, work):
    """One verified backup by ``tree``'s host CLI, into a directory emptied before each run."""
    backup_dir = Path(work) / f"ours-{tree.label}-{mode}"
    config = dict(config, compression=mode, backup_dir=str(backup_dir), retention_days=0, lock_timeout=0)
    argv, env = tree.backup_command(config, Path(work) / f"backup-{tree.label}-{mode}.json")

    def prepare():
        shutil.rmtree(backup_dir, ignore_errors=True)

    def run():
        sample = harness.run_command(argv, env=env)
        (output,) = [p for p in backup_dir.iterdir() if p.name.endswith((".gz", ".zst"))]
        return with_output(sample, output)

    return harness.Side(f"ours {mode} ({tree.label})", run, prepare=prepare)


def judge(results, engine, baseline, *, trees, modes, verdicts):
    """Print the table, the before/after ratios, and add this checkout's targets."""
    print(results.table(reference=baseline))
    this = trees[-1]
    for tree in trees[:-1]:
        for mode in modes:
            mine, theirs = f"ours {mode} ({this.label})", f"ours {mode} ({tree.label})"
            print(f"{engine} {mode}: {this.label} / {tree.label} time ratio {results.ratio(mine, theirs):.2f}")
    for mode in modes:
        side = f"ours {mode} ({this.label})"
        limit = 1.0 if mode == "gzip" else ZSTD_TARGET[engine]
        verdicts.check(f"{engine} {mode} time ratio", results.ratio(side, baseline), limit)
        if mode == "zstd":
            verdicts.check(f"{engine} zstd output ratio", results.ratio(side, baseline, "output_mib"), 1.0)
        verdicts.check(f"{engine} {mode} peak RSS MiB", results.worst(side), RSS_LIMIT_MIB)


def bench_sqlite(args, trees, work, verdicts):
    db = fixtures.sqlite_db(args.size_mb or QUICK_MB["sqlite"])
    fixtures.warm(db)
    print(f"\n== SQLite: source {db.stat().st_size / fixtures.MIB:.0f} MiB ({db})")
    out = Path(work) / "baseline.db"
    gz = out.with_name(out.name + ".gz")
    baseline = baseline_side("baseline: sqlite3 .backup + gzip", 'sqlite3 "$1" ".backup $2" && gzip "$2"', gz, db, out)
    config = {"engine": "sqlite", "database": str(db)}
    sides = [baseline] + [ours_side(tree, config, mode, work) for tree in trees for mode in args.modes]
    results = harness.alternate(sides, pairs=args.pairs, warmup=args.warmup)
    judge(results, "sqlite", baseline.name, trees=trees, modes=args.modes, verdicts=verdicts)


def bench_postgres(args, trees, work, verdicts):
    with fixtures.Cluster(args.size_mb or QUICK_MB["postgresql"]) as cluster:
        print(f"\n== PostgreSQL: source {cluster.size_mb():.0f} MiB (pgbench scale {cluster.scale})")
        out = Path(work) / "baseline.sql.gz"
        dump = shlex.join(cluster.client("pg_dump", "bench"))
        baseline = baseline_side("baseline: pg_dump | gzip", f'{dump} | gzip > "$1"', out, out)
        config = dict(cluster.params(), engine="postgresql")
        sides = [baseline] + [ours_side(tree, config, mode, work) for tree in trees for mode in args.modes]
        results = harness.alternate(sides, pairs=args.pairs, warmup=args.warmup)
        judge(results, "postgresql", baseline.name, trees=trees, modes=args.modes, verdicts=verdicts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    harness.add_arguments(parser, quick_help="32 MiB SQLite, 128 MiB PostgreSQL (unless --size-mb): under 2 minutes")
    fixtures.add_tree_arguments(parser)
    parser.add_argument("--size-mb", type=int, help="source size in MiB (default 1024)")
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--modes", default="gzip,zstd", help="comma-separated: gzip,zstd")
    args = parser.parse_args()
    if not args.quick:
        args.size_mb = args.size_mb or 1024
    args.modes = [m for m in args.modes.split(",") if m]
    verdicts = harness.Verdicts()
    fixtures.CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="backup-bench-", dir=fixtures.CACHE.parent) as work:
        trees = fixtures.trees(args, work)
        size = f"{args.size_mb} MiB" if args.size_mb else "quick sizes"
        print(f"backup benchmark, {size}, {args.pairs} pairs after {args.warmup} warm-up round(s)")
        fixtures.describe_trees(trees)
        if args.engine in ("sqlite", "both"):
            bench_sqlite(args, trees, work, verdicts)
        if args.engine in ("postgresql", "both"):
            bench_postgres(args, trees, work, verdicts)
    return harness.finish(verdicts, harness.reproduce(__file__))


if __name__ == "__main__":
    sys.exit(main())
