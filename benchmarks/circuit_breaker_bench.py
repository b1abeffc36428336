"""Per-call overhead of plugins/module_utils/circuit_breaker.py in the closed state.

Measured in one run against a bare call and against the peers pybreaker 1.4.1 and
circuitbreaker (fabfuel) 2.1.3. The peers are installed only into a bench venv under the
tradingbot-ops cache (never the toolchain venv); the script re-runs itself there.

Usage: python3 benchmarks/circuit_breaker_bench.py [--number N] [--repeat R] [--rounds K] [--venv DIR]

The bench venv is built from the python that runs the script; to measure on another
interpreter (the hosts' python3.11, say), give that run its own --venv.
"""

import argparse
import importlib.util
import os
import shlex
import subprocess
import sys
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODULE = REPO / "plugins" / "module_utils" / "circuit_breaker.py"
CACHE = Path(
    os.environ.get("TRADINGBOT_OPS_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tradingbot-ops"
)
VENV = CACHE / "bench-venv"
PINS = {"pybreaker": "1.4.1", "circuitbreaker": "2.1.3"}
TARGET_NS = 1000.0

# (label, statement, form). A form groups cases that do the same job, so ratios compare
# like with like; circuitbreaker's call() skips the open check, so it is shown unpaired,
# and so is our time-window variant (no peer has one).
CASES = [
    ("bare call", "fn()", "bare"),
    ("ours: breaker.call(fn)", "ours.call(fn)", "call"),
    ("ours: @breaker", "ours_decorated()", "decorator"),
    ("ours: with breaker", "with ours:\n    fn()", "with"),
    ("ours: breaker.call(fn), time window", "ours_timed.call(fn)", "info"),
    ("pybreaker: breaker.call(fn)", "pyb.call(fn)", "call"),
    ("pybreaker: @breaker", "pyb_decorated()", "decorator"),
    ("circuitbreaker: @circuit", "fab_decorated()", "decorator"),
    ("circuitbreaker: .call(fn) [no open check]", "fab.call(fn)", "unguarded"),
]


def in_bench_venv(venv):
    return Path(sys.prefix).resolve() == venv.resolve()


def ensure_bench_venv(venv):
    """Create the bench venv and pin the peers in it if needed, then re-run inside it."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = "import importlib.metadata as m, sys; print(' '.join(m.version(n) for n in sys.argv[1:]))"
    found = subprocess.run([str(python), "-c", probe, *PINS], capture_output=True, text=True, check=False)
    if found.returncode != 0 or found.stdout.split() != list(PINS.values()):
        pins = [f"{name}=={version}" for name, version in PINS.items()]
        print(f"installing {' '.join(pins)} into {venv}", file=sys.stderr)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *pins], check=True)
    os.environ["CIRCUIT_BREAKER_BENCH_LAUNCHER"] = sys.executable
    # Re-run this very script under the bench venv's python; no shell is involved.
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])  # noqa: S606


def load_ours():
    spec = importlib.util.spec_from_file_location("tradingbot_ops_circuit_breaker", MODULE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through it
    spec.loader.exec_module(module)
    return module


def build_namespace():
    import circuitbreaker  # noqa: PLC0415 - only in the bench venv
    import pybreaker  # noqa: PLC0415 - only in the bench venv

    ours_module = load_ours()

    def fn():
        return 1

    ours = ours_module.CircuitBreaker("bench")  # default config: slow-call timing on
    # A time-based window records each call's time, so it takes the locked path.
    ours_timed = ours_module.CircuitBreaker("bench-timed", ours_module.CircuitBreakerConfig(window_duration=60.0))
    pyb = pybreaker.CircuitBreaker()
    fab = circuitbreaker.CircuitBreaker(name="bench")
    return {
        "fn": fn,
        "ours": ours,
        "ours_decorated": ours(fn),
        "ours_timed": ours_timed,
        "pyb": pyb,
        "pyb_decorated": pyb(fn),
        "fab": fab,
        "fab_decorated": fab(fn),
    }


def measure(namespace, number, repeat, rounds):
    """Best ns/call per case; rounds interleave the cases so drift hits them all alike."""
    best = {case[0]: float("inf") for case in CASES}
    for _round in range(rounds):
        for label, stmt, _form in CASES:
            timer = timeit.Timer(stmt, globals=namespace)
            seconds = min(timer.repeat(repeat=repeat, number=number))
            best[label] = min(best[label], seconds / number * 1e9)
    return best


def check_still_closed(namespace):
    """Every figure must come from the closed state, or the comparison means nothing."""
    snap = namespace["ours"].snapshot()
    states = {
        "ours": snap["state"] if snap["failures"] == 0 else "failed",
        "pybreaker": namespace["pyb"].current_state,
        "circuitbreaker": namespace["fab"].state,
    }
    if set(states.values()) != {"closed"}:
        sys.exit(f"a breaker left the closed state during the run: {states}")


def report(best, args):
    bare = best["bare call"]
    print(f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.repeat} repeats x {args.number} calls")
    print(f"{'case':<46} {'ns/call':>8} {'overhead':>9}")
    for label, _stmt, _form in CASES:
        print(f"{label:<46} {best[label]:8.0f} {best[label] - bare:9.0f}")
    print()
    print("ratios, ours / peer for the same job (below 1.00 means ours is cheaper):")
    forms = {}
    for label, _stmt, form in CASES:
        forms.setdefault(form, []).append(label)
    verdicts = []
    pairs = [(form, forms[form][0], peer) for form in ("call", "decorator") for peer in forms[form][1:]]
    # circuitbreaker guards calls only through its decorator: pair our call() with it too.
    pairs.append(("call", forms["call"][0], forms["decorator"][-1]))
    for _form, mine, peer in pairs:
        total = best[mine] / best[peer]
        overhead = (best[mine] - bare) / (best[peer] - bare)
        verdicts.append(total < 1)
        print(f"  {mine} / {peer}: {total:.2f} per call, {overhead:.2f} on overhead")
    print()
    worst = max(best[label] for label in forms["call"][:1] + forms["decorator"][:1] + forms["with"])
    verdict = "met" if worst <= TARGET_NS else "MISSED"
    print(f"target: at most {TARGET_NS:.0f} ns per call: {verdict} (worst form {worst:.0f} ns)")
    print(f"target: lower than every peer, form for form: {'met' if all(verdicts) else 'MISSED'}")
    launcher = os.environ.get("CIRCUIT_BREAKER_BENCH_LAUNCHER", sys.executable)
    argv = ["--number", str(args.number), "--repeat", str(args.repeat), "--rounds", str(args.rounds)]
    if args.venv != VENV:
        argv += ["--venv", str(args.venv)]
    command = shlex.join([launcher, "benchmarks/circuit_breaker_bench.py", *argv])
    print(f"reproduce: cd {shlex.quote(str(REPO))} && {command}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=30_000, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=3, help="timings per case per round (best counts)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds over all cases")
    parser.add_argument("--venv", type=Path, default=VENV, help=f"venv for the peers (default {VENV})")
    args = parser.parse_args()
    if not in_bench_venv(args.venv):
        ensure_bench_venv(args.venv)
    namespace = build_namespace()
    best = measure(namespace, args.number, args.repeat, args.rounds)
    check_still_closed(namespace)
    report(best, args)


if __name__ == "__main__":
    main()
