"""The benchmarks' shared method (issue 16): alternate the sides, report medians, one verdict per target.

A run is a warm-up round followed by ``--pairs`` rounds; a round runs every side once, in the
order given (A B A B ... for two sides, A B C A B C ... for three). Alternating spreads the
machine's drift over all sides alike, and a ratio is taken within each round, where the sides
ran moments apart; the median of those pairwise ratios is the figure a target is checked on.

    import harness
    parser = argparse.ArgumentParser()
    harness.add_arguments(parser)             # --quick, --pairs N, --warmup N
    args = parser.parse_args()
    sides = [harness.Side("baseline", lambda: harness.run_command(["gzip", "-k", "f"]))]
    results = harness.alternate(sides, pairs=args.pairs, warmup=args.warmup)
    print(results.table())
    verdicts = harness.Verdicts()
    verdicts.check("time ratio", results.ratio("ours", "baseline"), limit=1.0)
    sys.exit(harness.finish(verdicts, harness.reproduce(__file__)))

A side's ``run`` returns one sample: a dict of metric name to value. ``run_command`` gives
``seconds``, ``cpu_s`` and ``rss_mib`` (the peak RSS of the largest process in the child's tree,
from wait4); an in-process side returns whatever metric it measures (``ns_per_call``, say).
Stdlib only.
"""

import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# GNU time (Debian package "time") reports a child's peak RSS free of this process's own size.
GNU_TIME = shutil.which("time", path="/usr/bin:/bin")
DEFAULT_PAIRS = 3
# Labels and formats of the metrics the harness knows; any other metric prints as "%.3g".
METRICS = {
    "seconds": ("time s", "{:.2f}"),
    "cpu_s": ("CPU s", "{:.2f}"),
    "rss_mib": ("peak RSS MiB", "{:.1f}"),
    "output_mib": ("output MiB", "{:.1f}"),
    "ns_per_call": ("ns/call", "{:.0f}"),
    "ratio": ("ratio", "{:.2f}"),
}


def log(message):
    print(f"--> {message}", file=sys.stderr, flush=True)


def loadavg():
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text(encoding="ascii").split()[:3])
    except OSError:
        return "unknown"


def run_command(argv, *, env=None, cwd=None, stdout=subprocess.DEVNULL, stderr=None, stdin=None):
    """Run ``argv`` to completion; return its sample: wall seconds, CPU seconds and peak RSS.

    wait4's usage covers the child and every descendant it reaped, so a shell pipeline counts
    whole. Peak RSS is the largest single process of that tree, not their sum. It is taken by
    GNU time: a child forked from this Python process inherits its RSS high-water mark, so
    wait4's own ru_maxrss can never read below this process's size.
    """
    with tempfile.NamedTemporaryFile(mode="r", prefix="bench-rss-") as rss_file:
        wrapped = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *map(str, argv)] if GNU_TIME else list(argv)
        started = time.monotonic()
        proc = subprocess.Popen(wrapped, env=env, cwd=cwd, stdout=stdout, stderr=stderr, stdin=stdin)
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - started
        peak_kib = int(rss_file.read().split()[-1]) if GNU_TIME else usage.ru_maxrss
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"command failed (exit {proc.returncode}): {shlex.join(map(str, argv))}")
    return {"seconds": elapsed, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mib": peak_kib / 1024}


@dataclass
class Side:
    """One contender: ``run`` takes one sample; ``prepare`` (untimed) runs before each sample."""

    name: str
    run: Callable[[], dict]
    prepare: Callable[[], None] | None = None


@dataclass
class Results:
    """Samples per side, one per round, in the order the rounds ran."""

    sides: list
    samples: dict = field(default_factory=dict)

    def values(self, side, metric="seconds"):
        return [sample[metric] for sample in self.samples[side] if metric in sample]

    def median(self, side, metric="seconds"):
        return statistics.median(self.values(side, metric))

    def worst(self, side, metric="rss_mib"):
        return max(self.values(side, metric))

    def ratios(self, side, reference, metric="seconds"):
        """``side / reference`` within each round."""
        return [a[metric] / b[metric] for a, b in zip(self.samples[side], self.samples[reference], strict=True)]

    def ratio(self, side, reference, metric="seconds"):
        """The median of the pairwise ratios: the figure targets are checked on."""
        return statistics.median(self.ratios(side, reference, metric))

    def metrics(self):
        seen = []
        for side in self.sides:
            for sample in self.samples[side]:
                seen += [metric for metric in sample if metric not in seen]
        return seen

    def table(self, reference=None, metric="seconds"):
        """Median [min-max] per side and metric; with ``reference``, the pairwise ratios' too."""
        metrics = self.metrics()
        header = [f"{'side':<30}"] + [f"{label(m):>24}" for m in metrics]
        if reference:
            header.append(f"{'ratio':>24}")
        lines = ["".join(header) + "    (median [min-max])"]
        for side in self.sides:
            cells = [f"{side:<30}"] + [f"{spread(self.values(side, m), m):>24}" for m in metrics]
            if reference:
                cells.append(f"{spread(self.ratios(side, reference, metric), 'ratio'):>24}")
            lines.append("".join(cells))
        return "\n".join(lines)


def label(metric):
    return METRICS.get(metric, (metric, ""))[0]


def formatted(value, metric):
    return METRICS.get(metric, (metric, "{:.3g}"))[1].format(value)


def spread(values, metric):
    """``median [min-max]`` of ``values``, or ``-`` when there are none."""
    if not values:
        return "-"
    low, mid, high = (formatted(v, metric) for v in (min(values), statistics.median(values), max(values)))
    return f"{mid} [{low}-{high}]"


def alternate(sides, *, pairs=DEFAULT_PAIRS, warmup=1):
    """Run ``warmup`` unrecorded rounds, then ``pairs`` recorded ones; every round runs each side once."""
    if pairs < 3:
        log(f"--pairs {pairs}: fewer than 3 pairs tells a gain from noise poorly")
    names = [side.name for side in sides]
    if len(set(names)) != len(names):
        raise ValueError(f"side names must be unique: {names}")
    results = Results(names, {name: [] for name in names})
    if not GNU_TIME:
        log("no /usr/bin/time (Debian package time): peak RSS includes this process's own size")
    log(f"load average {loadavg()}; {warmup} warm-up round(s), {pairs} pairs of {', '.join(names)}")
    for round_ in range(-warmup, pairs):
        round_name = "warm-up" if round_ < 0 else f"pair {round_ + 1}/{pairs}"
        for side in sides:
            if side.prepare:
                side.prepare()
            sample = side.run()
            shown = ", ".join(f"{label(k)} {formatted(v, k)}" for k, v in sample.items())
            log(f"{round_name} {side.name}: {shown}")
            if round_ >= 0:
                results.samples[side.name].append(sample)
    return results


class Verdicts:
    """One PASS/FAIL line per target, printed at the end of a run."""

    def __init__(self):
        self.lines = []

    def check(self, label, value, limit, *, at_most=True):
        ok = value <= limit if at_most else value >= limit
        relation = "<=" if at_most else ">="
        self.lines.append((ok, f"{label} {relation} {limit:g}: {value:.2f}"))
        return ok

    def ok(self):
        return all(ok for ok, _line in self.lines)

    def print(self):
        for ok, line in self.lines:
            print(f"{'PASS' if ok else 'FAIL'}  {line}")


def add_arguments(parser, *, quick_help="a small size that finishes in under 2 minutes"):
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--pairs", type=int, default=DEFAULT_PAIRS, help=f"recorded rounds of all sides (default {DEFAULT_PAIRS})"
    )
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded rounds before them (default 1)")


def reproduce(script, argv=None):
    """The command that repeats this run, from the checkout's root."""
    argv = sys.argv[1:] if argv is None else argv
    relative = Path(script).resolve().relative_to(REPO)
    return f"cd {shlex.quote(str(REPO))} && {shlex.join(['python3', str(relative), *argv])}"


def finish(verdicts, command):
    """Print the verdicts, the load average and the command; return the exit code (1 on a FAIL)."""
    print()
    verdicts.print()
    print(f"load average at the end: {loadavg()}")
    print(f"reproduce: {command}")
    return 0 if verdicts.ok() else 1
