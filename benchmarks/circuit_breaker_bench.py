"""Per-call overhead of the circuit breaker in the closed state, against its peers, alternating in one run.

    python3 benchmarks/circuit_breaker_bench.py                    # full size
    python3 benchmarks/circuit_breaker_bench.py --quick            # under 2 minutes
    python3 benchmarks/circuit_breaker_bench.py --tree /tmp/before # before and after in the same run

Sync rows: a bare call, ours (``call``, ``@breaker``, ``with``, and ``call`` on a time window),
pybreaker 1.4.1 and circuitbreaker (fabfuel) 2.1.3. Async rows: a bare ``await``, ours
(``acall``, ``@breaker`` on an ``async def``, ``async with``), aiobreaker 1.2.0 and purgatory
3.0.1. The peers are installed only into a bench venv under the tradingbot-ops cache (never the
toolchain venv); the script re-runs itself there. The bench venv is built from the python that
runs the script; to measure on another interpreter (the hosts' python3.11, say), give that run
its own --venv.

Every case is a side of benchmarks/harness.py: a warm-up round, then --pairs rounds that run
each side once in turn; a sample is the best of --repeat timings of --number calls, in ns per
call (async sides: a tenth of the timings, of ten times the calls). Ratios are the medians
of the per-round ratios, form for form. circuitbreaker's ``.call()`` never checks whether
the circuit is open, so it is shown but paired with nothing; our ``call`` is paired with its
decorator. ``--tree DIR`` adds the sync forms of another checkout's breaker
(``git archive main plugins/module_utils | tar -x -C DIR``; either module layout), so before
and after are compared within one run.
"""

import argparse
import asyncio
import importlib
import importlib.util
import os
import subprocess
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

REPO = harness.REPO
CACHE = Path(
    os.environ.get("TRADINGBOT_OPS_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tradingbot-ops"
)
VENV = CACHE / "bench-venv"
PINS = {"pybreaker": "1.4.1", "circuitbreaker": "2.1.3", "aiobreaker": "1.2.0", "purgatory": "3.0.1"}
TARGET_NS = 1000.0
# Two runs of the same code differ by a few percent here; "no slower than before" allows that.
SAME_CODE_NOISE = 1.05
# Many short timings: on a loaded machine the best of many 0.5 ms timings is one that no other
# process disturbed, while a long timing is always disturbed (the same code measured 1.64 times
# itself at 3000 calls x 30, within 3% at 500 x 60). Async timings each pay one
# run_until_complete, so they take ASYNC_SCALE times the calls and 1/ASYNC_SCALE the timings.
SIZES = {"full": {"number": 500, "repeat": 100, "pairs": 7}, "quick": {"number": 500, "repeat": 30, "pairs": 3}}
ASYNC_SCALE = 10

# (side, statement, form). A form groups the sides that do the same job; the first of a form
# is ours, and ratios pair it with the others. "info" and "unguarded" sides are not paired.
SYNC_CASES = [
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
ASYNC_CASES = [
    ("bare await", "await afn()", "abare"),
    ("ours: await breaker.acall(afn)", "await ours.acall(afn)", "acall"),
    ("ours: @breaker async def", "await ours_adecorated()", "adecorator"),
    ("ours: async with breaker", "async with ours:\n            await afn()", "awith"),
    ("aiobreaker: await breaker.call_async(afn)", "await aio.call_async(afn)", "acall"),
    ("aiobreaker: @breaker async def", "await aio_decorated()", "adecorator"),
    ("purgatory: @breaker async def", "await purg_decorated()", "adecorator"),
    ("purgatory: async with breaker", "async with purg:\n            await afn()", "awith"),
]
# Forms whose ours is checked against the 1 us target.
TARGET_FORMS = ("call", "decorator", "with")


def in_bench_venv(venv):
    return Path(sys.prefix).resolve() == venv.resolve()


def ensure_bench_venv(venv):
    """Create the bench venv and pin the peers in it if needed, then re-run inside it."""
    python = venv / "bin" / "python"
    if not python.exists():
        harness.log(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = "import importlib.metadata as m, sys; print(' '.join(m.version(n) for n in sys.argv[1:]))"
    found = subprocess.run([str(python), "-c", probe, *PINS], capture_output=True, text=True, check=False)
    if found.returncode != 0 or found.stdout.split() != list(PINS.values()):
        pins = [f"{name}=={version}" for name, version in PINS.items()]
        harness.log(f"installing {' '.join(pins)} into {venv}")
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *pins], check=True)
    # Re-run this very script under the bench venv's python; no shell is involved.
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])  # noqa: S606


def load_breaker(tree, package):
    """``tree``'s circuit_breaker module, imported as ``package.circuit_breaker``.

    module_utils is mounted as a package of its own, so a single-file breaker and one that
    imports its parts relatively both load, and two trees never share a module.
    """
    spec = importlib.util.spec_from_loader(package, loader=None, is_package=True)
    module = importlib.util.module_from_spec(spec)
    module.__path__ = [str(Path(tree) / "plugins" / "module_utils")]
    sys.modules[package] = module
    return importlib.import_module(f"{package}.circuit_breaker")


def tree_cases(label):
    """The sync forms of a --tree's breaker, as sides of their own (unpaired with peers)."""
    prefix = f"{label}_"
    return [
        (f"{label}: breaker.call(fn)", f"{prefix}ours.call(fn)", f"{label}:call"),
        (f"{label}: @breaker", f"{prefix}ours_decorated()", f"{label}:decorator"),
        (f"{label}: with breaker", f"with {prefix}ours:\n    fn()", f"{label}:with"),
    ]


def build_namespace(trees):
    import aiobreaker  # noqa: PLC0415 - only in the bench venv
    import circuitbreaker  # noqa: PLC0415 - only in the bench venv
    import purgatory  # noqa: PLC0415 - only in the bench venv
    import pybreaker  # noqa: PLC0415 - only in the bench venv

    ours_module = load_breaker(REPO, "bench_ours")

    def fn():
        return 1

    async def afn():
        return 1

    ours = ours_module.CircuitBreaker("bench")  # default config: slow-call timing on
    purgatory_factory = purgatory.AsyncCircuitBreakerFactory()
    namespace = {
        "fn": fn,
        "afn": afn,
        "ours": ours,
        "ours_decorated": ours(fn),
        "ours_adecorated": ours(afn),
        # A time-based window records each call's time, so it takes the locked path.
        "ours_timed": ours_module.CircuitBreaker("bench-timed", ours_module.CircuitBreakerConfig(window_duration=60.0)),
        "pyb": pybreaker.CircuitBreaker(),
        "fab": circuitbreaker.CircuitBreaker(name="bench"),
        "aio": aiobreaker.CircuitBreaker(),
        "purg_decorated": purgatory_factory("bench")(afn),
    }
    namespace["pyb_decorated"] = namespace["pyb"](fn)
    namespace["fab_decorated"] = namespace["fab"](fn)
    namespace["aio_decorated"] = namespace["aio"](afn)
    loop = asyncio.new_event_loop()
    # purgatory hands out its breakers through a coroutine; fetch it once, as ours is.
    namespace["purg"] = loop.run_until_complete(purgatory_factory.get_breaker("bench-with"))
    for label, tree in trees.items():
        module = load_breaker(tree, f"bench_{label}")
        namespace[f"{label}_ours"] = module.CircuitBreaker(f"bench-{label}")
        namespace[f"{label}_ours_decorated"] = namespace[f"{label}_ours"](fn)
    return namespace, loop


def sync_side(name, stmt, namespace, number, repeat):
    timer = timeit.Timer(stmt, globals=namespace)
    return harness.Side(name, lambda: {"ns_per_call": min(timer.repeat(repeat=repeat, number=number)) / number * 1e9})


def async_side(name, stmt, namespace, loop, *, number, repeat):
    """``stmt`` awaited ``number`` times in one coroutine on one event loop."""
    source = f"async def _bench(_n):\n    for _i in range(_n):\n        {stmt}\n"
    scope = dict(namespace)
    exec(compile(source, f"<{name}>", "exec"), scope)  # noqa: S102 - our own statements, as timeit does
    bench = scope["_bench"]

    def run():
        best = float("inf")
        for _timing in range(repeat):
            started = time.perf_counter()
            loop.run_until_complete(bench(number))
            best = min(best, time.perf_counter() - started)
        return {"ns_per_call": best / number * 1e9}

    return harness.Side(name, run)


def check_still_closed(namespace, trees):
    """Every figure must come from the closed state, or the comparison means nothing."""
    ours = [namespace["ours"], namespace["ours_timed"]] + [namespace[f"{label}_ours"] for label in trees]
    states = {b.name: b.snapshot()["state"] if b.snapshot()["failures"] == 0 else "failed" for b in ours}
    states.update(
        pybreaker=namespace["pyb"].current_state,
        circuitbreaker=namespace["fab"].state,
        aiobreaker=namespace["aio"].current_state.name.lower(),
        purgatory=namespace["purg"].context.state,
    )
    if set(states.values()) != {"closed"}:
        sys.exit(f"a breaker left the closed state during the run: {states}")


def judge(results, cases, trees):
    """Print the pairings and return the verdicts."""
    metric = "ns_per_call"
    forms = {}
    for name, _stmt, form in cases:
        forms.setdefault(form, []).append(name)
    pairs = [
        (forms[form][0], peer)
        for form in ("call", "decorator", "acall", "adecorator", "awith")
        for peer in forms[form][1:]
    ]
    # circuitbreaker guards calls only through its decorator: pair our call() with it too.
    pairs.append((forms["call"][0], forms["decorator"][-1]))
    verdicts = harness.Verdicts()
    print("\nratios, ours / peer for the same job (median of the per-round ratios; below 1 means ours is cheaper):")
    for mine, peer in pairs:
        print(f"  {mine} / {peer}: {results.ratio(mine, peer, metric):.2f}")
        verdicts.check(f"{mine} / {peer}", results.ratio(mine, peer, metric), 1.0)
    for label in trees:
        print(f"\nthis checkout / {label}, and {label}'s own ratios against the peers, in this run:")
        for form in TARGET_FORMS:
            mine, theirs = forms[form][0], forms[f"{label}:{form}"][0]
            verdicts.check(f"{mine} / {theirs}", results.ratio(mine, theirs, metric), SAME_CODE_NOISE)
            print(f"  {mine} / {theirs}: {results.ratio(mine, theirs, metric):.2f}")
        for mine, peer in pairs[:3] + pairs[-1:]:
            theirs = forms[f"{label}:{next(f for f in TARGET_FORMS if mine in forms[f])}"][0]
            print(f"  {theirs} / {peer}: {results.ratio(theirs, peer, metric):.2f}")
    for form in TARGET_FORMS:
        verdicts.check(f"{forms[form][0]} ns per call", results.median(forms[form][0], metric), TARGET_NS)
    return verdicts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_arguments(parser)
    parser.add_argument("--number", type=int, help="calls per sync timing (500; async: 10 times that)")
    parser.add_argument(
        "--repeat",
        type=int,
        help="timings per sync sample, the best counts (full 100, quick 30; async: a tenth, at least 3)",
    )
    parser.add_argument("--tree", type=Path, action="append", default=[], help="another checkout to compare")
    parser.add_argument("--venv", type=Path, default=VENV, help=f"venv for the peers (default {VENV})")
    parser.set_defaults(pairs=None)  # the size decides (full 7, quick 3) unless --pairs is given
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "full"]
    number, repeat = args.number or size["number"], args.repeat or size["repeat"]
    pairs = args.pairs or size["pairs"]
    if not in_bench_venv(args.venv):
        ensure_bench_venv(args.venv)
    trees = {f"tree{index}": tree.resolve() for index, tree in enumerate(args.tree, 1)}
    for label, tree in trees.items():
        harness.log(f"{label} = {tree}")
    namespace, loop = build_namespace(trees)
    sync_cases = SYNC_CASES + [case for label in trees for case in tree_cases(label)]
    sides = [sync_side(name, stmt, namespace, number, repeat) for name, stmt, _form in sync_cases]
    async_size = {"number": number * ASYNC_SCALE, "repeat": max(3, repeat // ASYNC_SCALE)}
    sides += [async_side(name, stmt, namespace, loop, **async_size) for name, stmt, _form in ASYNC_CASES]
    print(
        f"python {sys.version.split()[0]}, {pairs} pairs after {args.warmup} warm-up;"
        f" a sample is the best of {repeat} x {number} calls (async: {async_size['repeat']} x {async_size['number']})"
    )
    results = harness.alternate(sides, pairs=pairs, warmup=args.warmup)
    check_still_closed(namespace, trees)
    print(results.table())
    verdicts = judge(results, sync_cases + ASYNC_CASES, trees)
    sys.exit(harness.finish(verdicts, harness.reproduce(__file__)))


if __name__ == "__main__":
    main()
