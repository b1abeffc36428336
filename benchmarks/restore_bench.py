"""Restore benchmark: db_restore's engine against the shell pipelines it replaces, alternating in one run.

    python3 benchmarks/restore_bench.py                       # 1 GiB, both engines
    python3 benchmarks/restore_bench.py --quick               # 32 MiB SQLite, 128 MiB PostgreSQL
    python3 benchmarks/restore_bench.py --engine sqlite --pairs 5
    python3 benchmarks/restore_bench.py --tree /tmp/before    # before and after in the same run

Restores a gzip backup of the backup benchmark's SQLite database and of its pgbench database
(benchmarks/fixtures.py), and times beside it the original's shell equivalents:

    sqlite:      gunzip -c BACKUP > DB
    postgresql:  gunzip -c BACKUP | psql -d NEWDB

Ours runs in a subprocess per restore (benchmarks/restore_driver.py, with the tree's
plugins/module_utils as ``tradingbot_ops``), from each --tree and from this checkout. Its time
includes everything the engine does: SHA-256 and full decode against the manifest, the restore
into a candidate, fsync, the integrity check and per-table row counts, the safety copy and the
swap. Untimed between runs: the safety copy is removed, the shell's target emptied, and
``sync`` (on PostgreSQL a ``CHECKPOINT`` first) writes back what the previous run left dirty,
so no side pays for another's writes.

The backup is made once by the first tree's host CLI (so an older tree's backup is what newer
code restores) and cached beside the data. Targets, checked on this checkout: time ratio
(ours / shell) at most 1.0 per engine (issue 16; issue 4's was 1.3); peak RSS at most 64 MiB.
"""

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import fixtures
import harness

DRIVER = Path(__file__).resolve().with_name("restore_driver.py")
QUICK_MB = {"sqlite": 32, "postgresql": 128}
TARGETS = ((1.0, "issue 16"), (1.3, "issue 4"))
RSS_LIMIT_MIB = 64


def cached_backup(tree, config, backup_dir):
    """The newest gzip backup with a manifest in ``backup_dir``, made by ``tree`` when there is none."""
    for _attempt in range(2):
        made = sorted(p for p in backup_dir.glob("*.gz") if Path(f"{p}.manifest.json").exists())
        if made:
            return made[-1]
        backup_dir.mkdir(parents=True, exist_ok=True)
        harness.log(f"backing up {config['database']} into {backup_dir} with {tree.label}'s engine")
        config = dict(config, backup_dir=str(backup_dir), compression="gzip", retention_days=0, lock_timeout=0)
        argv, env = tree.backup_command(config, backup_dir.parent / f"{backup_dir.name}.json")
        harness.run_command(argv, env=env)
    raise SystemExit(f"the backup CLI wrote no backup with a manifest into {backup_dir}")


def ours_side(tree, options, work, discard, settle=os.sync):
    """One restore by ``tree``'s engine; ``discard`` removes the safety copy it leaves and
    ``settle`` writes back what the run before left dirty (both untimed)."""
    options_path = Path(work) / f"restore-{tree.label}.json"
    options_path.write_text(json.dumps(options), encoding="utf-8")
    result_path = Path(work) / f"restore-{tree.label}.out"
    argv, env = ["python3", str(DRIVER), str(options_path)], tree.env()

    def run():
        with open(result_path, "w", encoding="utf-8") as out:
            sample = harness.run_command(argv, env=env, stdout=out)
        discard(json.loads(result_path.read_text(encoding="utf-8"))["safety_copy"])
        return sample

    return harness.Side(f"ours ({tree.label})", run, prepare=settle)


def judge(results, engine, baseline, trees, verdicts):
    print(results.table(reference=baseline))
    this = f"ours ({trees[-1].label})"
    for tree in trees[:-1]:
        other = f"ours ({tree.label})"
        time_ratio, cpu_ratio = results.ratio(this, other), results.ratio(this, other, "cpu_s")
        print(f"{engine}: {trees[-1].label} / {tree.label} time ratio {time_ratio:.2f}, CPU ratio {cpu_ratio:.2f}")
    for limit, source in TARGETS:
        verdicts.check(f"{engine} restore time ratio ({source})", results.ratio(this, baseline), limit)
    verdicts.check(f"{engine} restore peak RSS MiB", results.worst(this), RSS_LIMIT_MIB)


def bench_sqlite(args, trees, work, verdicts):
    source = fixtures.sqlite_db(args.size_mb or QUICK_MB["sqlite"])
    backup_dir = fixtures.CACHE / f"restore-{source.stem}-backups"
    backup = cached_backup(trees[0], {"engine": "sqlite", "database": str(source)}, backup_dir)
    fixtures.warm(backup)
    print(f"\n== SQLite: {source.name}, backup {backup.stat().st_size / fixtures.MIB:.0f} MiB ({backup})")
    live = Path(work) / "live.db"
    shutil.copyfile(source, live)  # the database restored over
    shell_out = Path(work) / "shell.db"
    shell_cmd = f"gunzip -c {shlex.quote(str(backup))} > {shlex.quote(str(shell_out))}"

    def empty_shell_target():
        shell_out.unlink(missing_ok=True)
        os.sync()

    baseline = harness.Side(
        "baseline: gunzip -c > DB", lambda: harness.run_command(["sh", "-c", shell_cmd]), prepare=empty_shell_target
    )
    options = {"engine": "sqlite", "database": str(live), "backup_dir": str(backup_dir)}
    sides = [baseline] + [ours_side(tree, options, work, lambda path: Path(path).unlink()) for tree in trees]
    print(f"baseline: {shell_cmd}")
    results = harness.alternate(sides, pairs=args.pairs, warmup=args.warmup)
    judge(results, "sqlite", baseline.name, trees, verdicts)


def bench_postgres(args, trees, work, verdicts):
    with fixtures.Cluster(args.size_mb or QUICK_MB["postgresql"]) as cluster:
        backup_dir = fixtures.CACHE / f"restore-postgres-scale{cluster.scale}-backups"
        backup = cached_backup(trees[0], dict(cluster.params(), engine="postgresql"), backup_dir)
        fixtures.warm(backup)
        print(f"\n== PostgreSQL: pgbench scale {cluster.scale}, backup {backup.stat().st_size / fixtures.MIB:.1f} MiB")
        # Both sides load the same dump: the shell into an empty database, ours over the live
        # one, which it keeps as the safety copy (dropped after each run).
        psql = shlex.join(cluster.client("psql", "-X", "-q", "-o", "/dev/null", "-d", "shell"))
        shell_cmd = f"gunzip -c {shlex.quote(str(backup))} | {psql}"

        def fresh_shell_database():
            cluster.drop("shell")
            cluster.as_postgres(cluster.client("createdb", "shell"))
            cluster.settle()

        baseline = harness.Side(
            "baseline: gunzip -c | psql",
            lambda: harness.run_command(["bash", "-c", "set -o pipefail; " + shell_cmd]),
            prepare=fresh_shell_database,
        )
        options = dict(cluster.params(), engine="postgresql", backup_dir=str(backup_dir))
        sides = [baseline] + [ours_side(tree, options, work, cluster.drop, cluster.settle) for tree in trees]
        print(f"baseline: {shell_cmd}")
        try:
            results = harness.alternate(sides, pairs=args.pairs, warmup=args.warmup)
        finally:
            cluster.drop("shell")
        judge(results, "postgresql", baseline.name, trees, verdicts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    harness.add_arguments(parser, quick_help="32 MiB SQLite, 128 MiB PostgreSQL (unless --size-mb): under 2 minutes")
    fixtures.add_tree_arguments(parser)
    parser.add_argument("--size-mb", type=int, help="database size in MiB (default 1024)")
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    if not args.quick:
        args.size_mb = args.size_mb or 1024
    verdicts = harness.Verdicts()
    fixtures.CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="restore-bench-", dir=fixtures.CACHE) as work:
        trees = fixtures.trees(args, work)
        size = f"{args.size_mb} MiB" if args.size_mb else "quick sizes"
        print(f"restore benchmark, {size}, {args.pairs} pairs after {args.warmup} warm-up round(s)")
        fixtures.describe_trees(trees)
        if args.engine in ("sqlite", "both"):
            bench_sqlite(args, trees, work, verdicts)
        if args.engine in ("postgresql", "both"):
            bench_postgres(args, trees, work, verdicts)
    return harness.finish(verdicts, harness.reproduce(__file__))


if __name__ == "__main__":
    sys.exit(main())
