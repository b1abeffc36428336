"""Wall time of playbooks/site.yml (with the demo app) on fresh podman systemd hosts, alternating.

    benchmarks/site_bench.sh                    # 1, 3 and 5 hosts; builds the toolchain and image first
    benchmarks/site_bench.sh --quick            # 1 host, one pair, no warm-up: about a minute
    benchmarks/site_bench.sh --hosts 1,5 --pairs 5

Run it through site_bench.sh, which puts the toolchain on PATH and builds the test-host image
(tools/test-hosts.sh bookworm). A round (benchmarks/harness.py) is, per host count N: N fresh
containers (untimed), the first converge, then the idempotent re-run on the same hosts. The
re-run share is the re-run / first converge ratio within each round; its median is checked.

Targets: the re-run at most 40% of the first converge (1 host; issue 16); N hosts at once
(forks >= N) at most 2x one host, first converge and re-run alike. After the run, the last
re-run's recap per host (tasks ok, changed, skipped) is printed: what a re-run still does.
Not run by CI.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import harness

IMAGE = "localhost/tradingbot-test-debian-bookworm"
PREFIX = "tradingbot-bench"
SHARE_TARGET = 0.40
SCALE_TARGET = 2.0
# The molecule platforms' options (.config/molecule/config.yml).
PODMAN_RUN = [
    "podman",
    "run",
    "-d",
    "--systemd=always",
    "--cap-add",
    "SYS_ADMIN",
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=32768:32768",
    "-v",
    "/sys/fs/cgroup/memory:/sys/fs/cgroup/memory:rw",
]
RECAP = re.compile(r"^(\S+)\s+:\s+(.*)$")


def names(count):
    return [f"{PREFIX}-{i}" for i in range(1, count + 1)]


def remove_hosts(count):
    subprocess.run(["podman", "rm", "-f", *names(count)], capture_output=True, check=False)


def start_hosts(count, inventory, most):
    """Remove every bench host (``most`` of them at most), boot ``count`` fresh ones, write their inventory."""
    remove_hosts(most)
    for name in names(count):
        # --replace: a host left behind by an interrupted run (or one rm -f did not yet free) is replaced.
        argv = [*PODMAN_RUN, "--replace", "--name", name, "--hostname", name, IMAGE]
        subprocess.run(argv, check=True, capture_output=True)
    for name in names(count):
        # "degraded" still lets the play run; the play itself fails on what matters.
        wait = ["podman", "exec", name, "systemctl", "is-system-running", "--wait"]
        subprocess.run(wait, capture_output=True, check=False)
    hosts = {
        "all": {
            "vars": {
                "ansible_connection": "containers.podman.podman",
                "ansible_python_interpreter": "/usr/bin/python3",
                "tradingbot_venv_demo": True,
            },
            "hosts": {name: {} for name in names(count)},
        }
    }
    inventory.write_text(json.dumps(hosts, indent=2), encoding="utf-8")  # JSON is YAML


def site_side(name, count, inventory, log, *, fresh_of=None):
    """One site.yml run on ``count`` hosts; with ``fresh_of``, on fresh hosts (``fresh_of`` = the most hosts up)."""
    env = dict(os.environ, ANSIBLE_PIPELINING="1", ANSIBLE_FORKS=str(max(count, 5)))
    argv = ["ansible-playbook", "-i", str(inventory), str(harness.REPO / "playbooks" / "site.yml")]

    def run():
        with open(log, "w", encoding="utf-8") as out:
            try:
                return harness.run_command(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
            except SystemExit:
                sys.stderr.write("".join(log.read_text(encoding="utf-8").splitlines(keepends=True)[-30:]))
                raise

    return harness.Side(name, run, prepare=(lambda: start_hosts(count, inventory, fresh_of)) if fresh_of else None)


def recap(log):
    """{host: {"ok": n, "changed": n, ...}} from a run's PLAY RECAP."""
    _before, _marker, tail = log.read_text(encoding="utf-8").partition("PLAY RECAP")
    hosts = {}
    for line in tail.splitlines()[1:]:
        match = RECAP.match(line.strip())
        if match:
            hosts[match[1]] = {k: int(v) for k, v in (field.split("=") for field in match[2].split())}
    return hosts


def measure(counts, work, *, pairs, warmup):
    """Alternate first converge and re-run per host count; return the results and each last re-run's recap."""
    sides = []
    for count in counts:
        inventory = work / f"inventory-{count}.yml"
        first_log, rerun_log = work / f"first-{count}.log", work / f"rerun-{count}.log"
        sides.append(site_side(f"{count} host(s), first converge", count, inventory, first_log, fresh_of=max(counts)))
        sides.append(site_side(f"{count} host(s), re-run", count, inventory, rerun_log))
    try:
        results = harness.alternate(sides, pairs=pairs, warmup=warmup)
        return results, {count: recap(work / f"rerun-{count}.log") for count in counts}
    finally:
        remove_hosts(max(counts))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    harness.add_arguments(parser, quick_help="1 host, one pair, no warm-up (unless given): about a minute")
    parser.set_defaults(pairs=None, warmup=None)
    parser.add_argument("--hosts", help="comma-separated host counts (default 1,3,5; --quick: 1)")
    args = parser.parse_args()
    counts = [int(n) for n in (args.hosts or ("1" if args.quick else "1,3,5")).split(",")]
    if 1 not in counts:
        raise SystemExit("--hosts must include 1: every target is relative to one host")
    pairs = args.pairs if args.pairs is not None else (1 if args.quick else harness.DEFAULT_PAIRS)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    with tempfile.TemporaryDirectory(prefix="site-bench-") as work:
        results, last_rerun = measure(counts, Path(work), pairs=pairs, warmup=warmup)
    print(f"site.yml benchmark, hosts {','.join(map(str, counts))}, {pairs} pair(s) after {warmup} warm-up round(s)")
    print(results.table())
    verdicts = harness.Verdicts()
    for count in counts:
        first, rerun = f"{count} host(s), first converge", f"{count} host(s), re-run"
        share = results.ratio(rerun, first)
        if count == 1:
            verdicts.check("re-run / first converge, 1 host", share, SHARE_TARGET)
        else:
            print(f"re-run / first converge, {count} hosts: {share:.2f}")
            for side, one in ((first, "1 host(s), first converge"), (rerun, "1 host(s), re-run")):
                verdicts.check(f"{side} / {one}", results.ratio(side, one), SCALE_TARGET)
        for side in (first, rerun):
            cpu = results.median(side, "cpu_s")
            print(f"controller CPU per host, {side}: {cpu / count:.1f} s (median {cpu:.1f} s for {count})")
    for count, hosts in last_rerun.items():
        for host, counts_of in hosts.items():
            print(f"last re-run, {count} host(s), {host}: " + " ".join(f"{k}={v}" for k, v in counts_of.items()))
        verdicts.check(f"tasks changed on the {count}-host re-run", sum(h["changed"] for h in hosts.values()), 0)
    command = shlex.join(["benchmarks/site_bench.sh", *sys.argv[1:]])
    return harness.finish(verdicts, f"cd {shlex.quote(str(harness.REPO))} && {command}")


if __name__ == "__main__":
    sys.exit(main())
