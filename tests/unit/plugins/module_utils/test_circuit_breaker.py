"""Circuit breaker: state machine, thresholds, windows, statistics, registry, call forms.

States are timed with a fake clock, never with sleeps. Threads are real.
"""

import json
import os
import pickle
import runpy
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils import circuit_breaker as cbmod
from ansible_collections.tradingbot.ops.plugins.module_utils.circuit_breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerConfigError,
    CircuitBreakerError,
    CircuitBreakerRegistry,
    CircuitState,
    get_circuit_breaker,
    get_registry,
    list_circuit_breakers,
    reset_all_circuit_breakers,
    self_test,
    snapshot_all_circuit_breakers,
)

MODULE_DIR = Path(cbmod.__file__).parent
REPO = MODULE_DIR.parents[1]


def copy_breaker_modules(package):
    """Copy the breaker's modules into a deployed-style ``tradingbot_ops`` package."""
    for path in [MODULE_DIR / "circuit_breaker.py", *MODULE_DIR.glob("breaker_*.py")]:
        shutil.copy(path, package / path.name)


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class Boom(Exception):
    pass


def boom():
    raise Boom("down")


def ok():
    return "ok"


def run_call(breaker, fn, *args, **kwargs):
    return breaker.call(fn, *args, **kwargs)


def run_decorated(breaker, fn, *args, **kwargs):
    return breaker(fn)(*args, **kwargs)


def run_context(breaker, fn, *args, **kwargs):
    with breaker:
        return fn(*args, **kwargs)


FORMS = pytest.mark.parametrize("invoke", [run_call, run_decorated, run_context], ids=["call", "decorator", "with"])


def make(clock=None, **config):
    return CircuitBreaker("test", CircuitBreakerConfig(**config), clock=clock or FakeClock())


def fail_times(breaker, invoke, count, exc_type=Boom):
    for _attempt in range(count):
        with pytest.raises(exc_type):
            invoke(breaker, boom)


# -- config --------------------------------------------------------------------------


def test_config_defaults_are_the_originals():
    cfg = CircuitBreakerConfig()
    assert (cfg.failure_threshold, cfg.success_threshold, cfg.timeout) == (5, 2, 60.0)
    assert (cfg.failure_rate_threshold, cfg.minimum_calls, cfg.slow_call_threshold) == (0.5, 10, 5.0)
    assert (cfg.window_size, cfg.window_duration, cfg.half_open_max_calls) == (100, None, 1)
    assert cfg.failure_exceptions == (Exception,)
    assert cfg.ignored_exceptions == ()


def test_config_original_example_works_as_written():
    cfg = CircuitBreakerConfig(
        failure_threshold=5,
        success_threshold=2,
        timeout=60.0,
        failure_rate_threshold=0.5,
        slow_call_threshold=5.0,
        minimum_calls=10,
    )
    assert cfg == CircuitBreakerConfig()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", 0),
        ("failure_threshold", 2.0),
        ("failure_threshold", True),
        ("success_threshold", 0),
        ("success_threshold", "2"),
        ("timeout", 0),
        ("timeout", -1.0),
        ("timeout", float("inf")),
        ("timeout", float("nan")),
        ("timeout", None),
        ("timeout", False),
        ("failure_rate_threshold", 0),
        ("failure_rate_threshold", 1.01),
        ("failure_rate_threshold", "0.5"),
        ("failure_rate_threshold", True),
        ("minimum_calls", 0),
        ("slow_call_threshold", 0),
        ("slow_call_threshold", "5"),
        ("window_size", 0),
        ("window_size", 10.5),
        ("window_duration", -5),
        ("half_open_max_calls", 0),
        ("failure_exceptions", "ValueError"),
        ("failure_exceptions", [ValueError, 3]),
        ("failure_exceptions", 42),
        ("ignored_exceptions", [int]),
    ],
)
def test_config_rejects_invalid_values(field, value):
    with pytest.raises(CircuitBreakerConfigError, match=field):
        CircuitBreakerConfig(**{field: value})


def test_config_error_names_the_bad_exception_item():
    with pytest.raises(CircuitBreakerConfigError, match="only exception classes, got 'ValueError'"):
        CircuitBreakerConfig(failure_exceptions="ValueError")


def test_config_rejects_inconsistent_values():
    with pytest.raises(CircuitBreakerConfigError, match="cannot both be None"):
        CircuitBreakerConfig(window_size=None, window_duration=None)
    with pytest.raises(CircuitBreakerConfigError, match=r"minimum_calls \(11\) cannot exceed window_size \(10\)"):
        CircuitBreakerConfig(window_size=10, minimum_calls=11)
    assert issubclass(CircuitBreakerConfigError, ValueError)


def test_config_normalises_exception_lists_and_serialises():
    cfg = CircuitBreakerConfig(
        failure_exceptions=[OSError, Boom], ignored_exceptions=KeyError, slow_call_threshold=None
    )
    assert cfg.failure_exceptions == (OSError, Boom)
    assert cfg.ignored_exceptions == (KeyError,)
    assert cfg == CircuitBreakerConfig(
        failure_exceptions=(OSError, Boom), ignored_exceptions=(KeyError,), slow_call_threshold=None
    )
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["failure_exceptions"] == ["OSError", f"{__name__}.Boom"]
    assert data["ignored_exceptions"] == ["KeyError"]
    assert data["slow_call_threshold"] is None


def test_breaker_rejects_bad_name_and_config():
    with pytest.raises(ValueError, match="name"):
        CircuitBreaker("")
    with pytest.raises(TypeError, match="CircuitBreakerConfig"):
        CircuitBreaker("x", {"failure_threshold": 3})
    breaker = CircuitBreaker("x")
    assert breaker.config == CircuitBreakerConfig()
    assert repr(breaker) == "<CircuitBreaker 'x' closed>"


# -- transitions and thresholds ---------------------------------------------------------


@FORMS
def test_consecutive_failures_open_exactly_at_threshold(invoke):
    breaker = make(failure_threshold=3)
    fail_times(breaker, invoke, 2)
    assert breaker.state is CLOSED
    fail_times(breaker, invoke, 1)
    assert breaker.state is OPEN
    assert breaker.snapshot()["transitions"] == {"closed->open": 1}


@FORMS
def test_success_ends_the_failure_streak(invoke):
    breaker = make(failure_threshold=3)
    fail_times(breaker, invoke, 2)
    assert invoke(breaker, ok) == "ok"
    fail_times(breaker, invoke, 2)
    assert breaker.state is CLOSED
    assert breaker.snapshot()["consecutive_failures"] == 2


@FORMS
def test_open_rejects_without_calling_and_says_when(invoke):
    clock = FakeClock(500.0)
    breaker = make(clock, failure_threshold=1, timeout=30.0)
    fail_times(breaker, invoke, 1)
    clock.advance(10.0)
    called = []
    with pytest.raises(CircuitBreakerError) as info:
        invoke(breaker, called.append, 1)
    assert called == []
    err = info.value
    assert (err.name, err.state, err.retry_at, err.retry_after) == ("test", OPEN, 530.0, 20.0)
    assert str(err) == "circuit breaker 'test' is open: retry in 20.000 s"
    snap = breaker.snapshot()
    assert snap["rejections"] == 1
    assert snap["calls"] == 1
    assert snap["retry_after"] == 20.0


@FORMS
def test_open_turns_half_open_exactly_at_timeout(invoke):
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, timeout=60.0)
    fail_times(breaker, invoke, 1)
    clock.advance(59.999)
    assert breaker.state is OPEN
    with pytest.raises(CircuitBreakerError):
        invoke(breaker, ok)
    clock.advance(0.001)
    assert invoke(breaker, ok) == "ok"
    snap = breaker.snapshot()
    assert snap["state"] == "half_open"
    assert snap["half_open_successes"] == 1
    assert snap["transitions"] == {"closed->open": 1, "open->half_open": 1}


@FORMS
def test_half_open_closes_after_success_threshold(invoke):
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, success_threshold=3, timeout=5.0)
    fail_times(breaker, invoke, 1)
    clock.advance(5.0)
    for _attempt in range(2):
        invoke(breaker, ok)
        assert breaker.state is HALF_OPEN
    invoke(breaker, ok)
    assert breaker.state is CLOSED
    snap = breaker.snapshot()
    assert snap["consecutive_failures"] == 0
    assert snap["window_calls"] == 0  # the window starts over on closing
    assert [t["to"] for t in snap["transition_log"]] == ["open", "half_open", "closed"]
    assert snap["transition_log"][-1]["reason"] == "3 trial calls succeeded"


@FORMS
def test_half_open_failure_reopens_with_a_fresh_timeout(invoke):
    clock = FakeClock(0.0)
    breaker = make(clock, failure_threshold=1, success_threshold=2, timeout=10.0)
    fail_times(breaker, invoke, 1)
    clock.advance(10.0)
    invoke(breaker, ok)
    clock.advance(1.0)
    fail_times(breaker, invoke, 1)
    assert breaker.state is OPEN
    with pytest.raises(CircuitBreakerError) as info:
        invoke(breaker, ok)
    assert info.value.retry_at == 21.0
    assert breaker.snapshot()["transitions"] == {"closed->open": 1, "open->half_open": 1, "half_open->open": 1}


@FORMS
def test_half_open_admits_only_max_calls_at_once(invoke):
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, success_threshold=5, timeout=1.0, half_open_max_calls=2)
    fail_times(breaker, invoke, 1)
    clock.advance(1.0)

    # Nested calls are in flight at once without threads: trial inside trial inside trial.
    def third_call():
        assert breaker.snapshot()["half_open_in_flight"] == 2
        with pytest.raises(CircuitBreakerError) as info:
            invoke(breaker, ok)
        return info.value

    def second_call():
        return invoke(breaker, third_call)

    third = invoke(breaker, second_call)
    assert (third.state, third.retry_at, third.retry_after) == (HALF_OPEN, None, None)
    assert "all half-open trial calls are in flight" in str(third)
    # The slots are free again once the trials finish.
    assert breaker.snapshot()["half_open_in_flight"] == 0
    assert invoke(breaker, ok) == "ok"


# -- rolling window, slow calls, exception classes ---------------------------------------


@FORMS
def test_failure_rate_counts_only_from_minimum_calls(invoke):
    breaker = make(failure_threshold=100, minimum_calls=10, window_size=10, failure_rate_threshold=0.5)
    for _attempt in range(4):
        invoke(breaker, ok)
        fail_times(breaker, invoke, 1)
    invoke(breaker, ok)
    assert breaker.snapshot()["failure_rate"] == pytest.approx(4 / 9)
    fail_times(breaker, invoke, 1)  # 10 calls, 5 failures
    snap = breaker.snapshot()
    assert snap["state"] == "open"
    assert snap["transition_log"][0]["reason"] == "failure rate 5/10 calls"


def test_failure_rate_below_minimum_calls_never_opens():
    breaker = make(failure_threshold=100, minimum_calls=5, window_size=10, failure_rate_threshold=0.5)
    fail_times(breaker, run_call, 4)
    assert breaker.state is CLOSED
    assert breaker.snapshot()["failure_rate"] == 1.0


def test_count_window_rolls_old_calls_out():
    breaker = make(failure_threshold=100, minimum_calls=4, window_size=4, failure_rate_threshold=0.75)
    for outcome in "FFSSSFF":
        if outcome == "F":
            fail_times(breaker, run_call, 1)
        else:
            breaker.call(ok)
        assert breaker.state is CLOSED, outcome
    snap = breaker.snapshot()
    assert (snap["window_calls"], snap["window_failures"]) == (4, 2)  # S S F F
    fail_times(breaker, run_call, 1)  # S F F F
    assert breaker.state is OPEN


@FORMS
def test_time_window_drops_calls_older_than_duration(invoke):
    clock = FakeClock()
    breaker = make(
        clock,
        failure_threshold=100,
        window_size=None,
        window_duration=10.0,
        minimum_calls=3,
        failure_rate_threshold=0.6,
    )
    fail_times(breaker, invoke, 2)
    invoke(breaker, ok)
    clock.advance(10.0)  # all three calls are now out of the window
    invoke(breaker, ok)
    invoke(breaker, ok)
    fail_times(breaker, invoke, 1)
    snap = breaker.snapshot()
    assert (snap["state"], snap["window_calls"], snap["window_failures"]) == ("closed", 3, 1)
    fail_times(breaker, invoke, 2)  # 5 calls, 3 failures
    assert breaker.state is OPEN


def test_time_window_of_successes_stays_bounded():
    clock = FakeClock()
    breaker = make(clock, window_size=None, window_duration=5.0, minimum_calls=1)
    for _attempt in range(100):
        breaker.call(ok)
        clock.advance(1.0)
    assert len(breaker._window) == 5  # internal: the memory bound is the point here
    assert breaker.snapshot()["window_calls"] == 4  # the oldest expires at the snapshot's time


def test_time_window_with_count_cap():
    clock = FakeClock()
    breaker = make(
        clock, failure_threshold=100, window_size=3, window_duration=60.0, minimum_calls=3, failure_rate_threshold=1.0
    )
    fail_times(breaker, run_call, 2)
    breaker.call(ok)
    fail_times(breaker, run_call, 2)  # window F S F... then S F F
    assert breaker.state is CLOSED
    assert breaker.snapshot()["window_failures"] == 2
    fail_times(breaker, run_call, 1)  # F F F
    assert breaker.state is OPEN


@FORMS
def test_slow_success_counts_as_failure(invoke):
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2, slow_call_threshold=5.0)

    def slow():
        clock.advance(5.0)
        return "late"

    def quick():
        clock.advance(4.999)
        return "in time"

    assert invoke(breaker, quick) == "in time"
    assert invoke(breaker, slow) == "late"
    assert breaker.state is CLOSED
    assert invoke(breaker, slow) == "late"
    snap = breaker.snapshot()
    assert (snap["state"], snap["slow_calls"], snap["failures"], snap["successes"]) == ("open", 2, 2, 1)


@FORMS
def test_slow_failure_counts_once(invoke):
    clock = FakeClock()
    breaker = make(clock, slow_call_threshold=1.0)

    def slow_boom():
        clock.advance(2.0)
        raise Boom

    with pytest.raises(Boom):
        invoke(breaker, slow_boom)
    snap = breaker.snapshot()
    assert (snap["slow_calls"], snap["failures"], snap["calls"]) == (1, 1, 1)


def test_slow_call_threshold_none_never_slow():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, slow_call_threshold=None)

    def very_slow():
        clock.advance(1e9)

    breaker.call(very_slow)
    assert breaker.state is CLOSED
    assert breaker.snapshot()["slow_calls"] == 0


@FORMS
def test_ignored_exceptions_count_neither_way(invoke):
    breaker = make(failure_threshold=3, ignored_exceptions=(KeyError,))

    def lookup():
        raise KeyError("missing")

    fail_times(breaker, invoke, 2)
    with pytest.raises(KeyError):
        invoke(breaker, lookup)
    snap = breaker.snapshot()
    assert (snap["ignored"], snap["consecutive_failures"], snap["window_calls"]) == (1, 2, 2)
    fail_times(breaker, invoke, 1)
    assert breaker.state is OPEN


@FORMS
def test_ignored_exception_frees_the_half_open_slot(invoke):
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, timeout=1.0, ignored_exceptions=KeyError)
    fail_times(breaker, invoke, 1)
    clock.advance(1.0)
    with pytest.raises(KeyError):
        invoke(breaker, {}.__getitem__, "x")
    snap = breaker.snapshot()
    assert (snap["state"], snap["half_open_in_flight"], snap["half_open_successes"]) == ("half_open", 0, 0)


@FORMS
def test_exceptions_outside_failure_exceptions_count_as_success(invoke):
    breaker = make(failure_threshold=2, failure_exceptions=(ConnectionError,))

    def refused():
        raise ConnectionRefusedError

    def bad_input():
        raise ValueError("bad symbol")

    with pytest.raises(ConnectionRefusedError):
        invoke(breaker, refused)
    with pytest.raises(ValueError):
        invoke(breaker, bad_input)
    with pytest.raises(ConnectionRefusedError):
        invoke(breaker, refused)
    snap = breaker.snapshot()
    assert (snap["state"], snap["successes"], snap["failures"]) == ("closed", 1, 2)


@FORMS
def test_base_exceptions_are_not_recorded(invoke):
    breaker = make(failure_threshold=1)

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        invoke(breaker, interrupted)
    snap = breaker.snapshot()
    assert (snap["state"], snap["ignored"], snap["failures"]) == ("closed", 1, 0)


# -- calls that outlive their state ------------------------------------------------------


@FORMS
def test_call_finishing_after_a_transition_only_updates_statistics(invoke):
    breaker = make(failure_threshold=2)

    def fail_after_forced_open():
        breaker.force_open()
        raise Boom

    fail_times(breaker, invoke, 1)
    with pytest.raises(Boom):
        invoke(breaker, fail_after_forced_open)
    breaker.force_closed()
    snap = breaker.snapshot()
    assert (snap["failures"], snap["consecutive_failures"]) == (2, 0)
    assert snap["transitions"] == {"closed->open": 1, "open->closed": 1}


@FORMS
def test_success_finishing_after_a_transition_leaves_the_new_state_alone(invoke):
    breaker = make(failure_threshold=2)

    def succeed_after_forced_open():
        breaker.force_open()
        return "late"

    assert invoke(breaker, succeed_after_forced_open) == "late"
    snap = breaker.snapshot()
    assert (snap["state"], snap["successes"], snap["window_calls"]) == ("open", 1, 0)


@FORMS
def test_trial_finishing_after_forced_close_leaves_closed_state_alone(invoke):
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, timeout=1.0)
    fail_times(breaker, invoke, 1)
    clock.advance(1.0)

    def trial():
        breaker.force_closed()
        raise Boom

    with pytest.raises(Boom):
        invoke(breaker, trial)
    snap = breaker.snapshot()
    assert (snap["state"], snap["consecutive_failures"], snap["failures"]) == ("closed", 0, 2)


# -- statistics, callbacks, manual control ---------------------------------------------


def test_snapshot_is_plain_json():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, timeout=2.0)
    breaker.call(ok)
    fail_times(breaker, run_call, 1)
    snap = breaker.snapshot()
    assert json.loads(json.dumps(snap)) == snap
    assert snap["state"] == "open"
    assert (snap["calls"], snap["successes"], snap["failures"], snap["rejections"]) == (2, 1, 1, 0)
    assert snap["failure_rate"] == 0.5
    entry = snap["transition_log"][0]
    assert (entry["from"], entry["to"], entry["clock"]) == ("closed", "open", 1000.0)
    assert entry["reason"] == "1 consecutive failures"
    assert isinstance(entry["time"], float)
    assert snap["shared"] is False
    assert snap["config"]["timeout"] == 2.0


def test_callbacks_see_every_transition_in_order():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, success_threshold=1, timeout=1.0)
    seen = []
    breaker.add_listener(lambda b, old, new: seen.append((b.name, old, new)))
    fail_times(breaker, run_call, 1)
    clock.advance(1.0)
    breaker.call(ok)
    assert seen == [("test", CLOSED, OPEN), ("test", OPEN, HALF_OPEN), ("test", HALF_OPEN, CLOSED)]


def test_raising_callback_never_breaks_the_call(caplog):
    breaker = make(failure_threshold=1)
    seen = []

    def broken(b, old, new):
        raise RuntimeError("listener bug")

    def reads_breaker(b, old, new):
        # Listeners run outside the lock, so they may use the breaker.
        seen.append(b.snapshot()["state"])

    breaker.add_listener(broken)
    breaker.add_listener(reads_breaker)
    fail_times(breaker, run_call, 1)
    assert seen == ["open"]
    assert breaker.snapshot()["callback_errors"] == 1
    assert "state-change callback" in caplog.text
    breaker.remove_listener(broken)
    breaker.force_closed()
    assert breaker.snapshot()["callback_errors"] == 1
    assert seen == ["open", "closed"]


def test_listeners_given_to_constructor():
    seen = []
    breaker = CircuitBreaker(
        "x", CircuitBreakerConfig(failure_threshold=1), clock=FakeClock(), listeners=[lambda *a: seen.append(a[1:])]
    )
    breaker.force_open()
    assert seen == [(CLOSED, OPEN)]


def test_force_open_holds_until_released():
    clock = FakeClock()
    breaker = make(clock, timeout=1.0)
    breaker.force_open()
    breaker.force_open()
    clock.advance(1e6)
    with pytest.raises(CircuitBreakerError) as info:
        breaker.call(ok)
    assert (info.value.retry_at, info.value.retry_after) == (None, None)
    assert str(info.value) == "circuit breaker 'test' is open: forced open"
    assert breaker.snapshot()["retry_after"] is None
    assert breaker.snapshot()["transitions"] == {"closed->open": 1}
    breaker.force_closed()
    assert breaker.call(ok) == "ok"


def test_force_open_turns_a_timed_open_into_a_held_one():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, timeout=1.0)
    fail_times(breaker, run_call, 1)
    breaker.force_open()
    clock.advance(10.0)
    assert breaker.state is OPEN
    assert breaker.snapshot()["transitions"] == {"closed->open": 1}


def test_force_closed_while_closed_clears_the_streak():
    breaker = make(failure_threshold=3)
    fail_times(breaker, run_call, 2)
    breaker.force_closed()
    fail_times(breaker, run_call, 2)
    snap = breaker.snapshot()
    assert (snap["state"], snap["consecutive_failures"], snap["transitions"]) == ("closed", 2, {})


def test_reset_starts_statistics_over():
    breaker = make(failure_threshold=1)
    breaker.call(ok)
    fail_times(breaker, run_call, 1)
    with pytest.raises(CircuitBreakerError):
        breaker.call(ok)
    breaker.reset()
    snap = breaker.snapshot()
    assert snap["state"] == "closed"
    assert (snap["calls"], snap["rejections"], snap["transitions"], snap["transition_log"]) == (0, 0, {}, [])


# -- call forms ----------------------------------------------------------------------------


def test_decorator_keeps_metadata_and_works_on_methods():
    breaker = make()

    @breaker
    def fetch_ticker(symbol, *, venue="binance"):
        """Fetch one ticker."""
        return f"{venue}:{symbol}"

    assert fetch_ticker.__name__ == "fetch_ticker"
    assert fetch_ticker.__doc__ == "Fetch one ticker."
    assert fetch_ticker.__wrapped__.__name__ == "fetch_ticker"
    assert fetch_ticker.circuit_breaker is breaker
    assert fetch_ticker("BTC", venue="kraken") == "kraken:BTC"

    class Client:
        @breaker
        def get(self, path):
            return (self, path)

    client = Client()
    assert client.get("/x") == (client, "/x")


def test_call_passes_an_argument_named_fn():
    breaker = make()
    # The point of the test: fn= goes to the guarded function, not to call().
    assert breaker.call(lambda fn: fn, fn="kw") == "kw"  # pylint: disable=kwarg-superseded-by-positional-arg


def test_decorator_rejects_what_it_cannot_guard():
    breaker = make()
    with pytest.raises(TypeError, match="callables"):
        breaker(42)


def test_context_manager_nests_and_passes_exceptions_through():
    breaker = make(failure_threshold=2)
    with breaker as entered:
        assert entered is breaker
        with pytest.raises(Boom), breaker:
            raise Boom
    snap = breaker.snapshot()
    assert (snap["successes"], snap["failures"]) == (1, 1)


def test_context_manager_rejects_while_open():
    breaker = make(failure_threshold=1)
    fail_times(breaker, run_context, 1)
    body = []
    with pytest.raises(CircuitBreakerError), breaker:
        body.append("ran")
    assert body == []


def test_error_pickles():
    err = CircuitBreakerError("db", 12.5, 3.0)
    # Round-trips bytes made on the same line: nothing untrusted is unpickled.
    copy = pickle.loads(pickle.dumps(err))  # noqa: S301
    assert (copy.name, copy.retry_at, copy.retry_after, copy.state, str(copy)) == ("db", 12.5, 3.0, OPEN, str(err))
    assert CircuitState("half_open") is HALF_OPEN


# -- registry ------------------------------------------------------------------------------


def test_registry_gives_the_same_breaker_for_a_name():
    registry = CircuitBreakerRegistry()
    clock = FakeClock()
    cfg = CircuitBreakerConfig(failure_threshold=1)
    first = registry.get("binance_api", cfg, clock=clock)
    assert registry.get("binance_api") is first
    assert registry.get("binance_api", CircuitBreakerConfig(failure_threshold=1), clock=clock) is first
    with pytest.raises(ValueError, match="different config"):
        registry.get("binance_api", CircuitBreakerConfig(failure_threshold=2))
    with pytest.raises(ValueError, match="different clock or store"):
        registry.get("binance_api", clock=FakeClock())
    with pytest.raises(ValueError, match="different clock or store"):
        registry.get("binance_api", store=object())
    second = registry.get("postgres", clock=clock)
    assert registry.names() == ["binance_api", "postgres"]
    assert registry.breakers() == [first, second]
    fail_times(first, run_call, 1)
    assert registry.snapshot_all()["binance_api"]["state"] == "open"
    registry.reset_all()
    assert {name: s["state"] for name, s in registry.snapshot_all().items()} == {
        "binance_api": "closed",
        "postgres": "closed",
    }
    registry.remove("postgres")
    registry.remove("postgres")
    assert registry.names() == ["binance_api"]


def test_registry_hands_out_one_breaker_to_racing_threads():
    registry = CircuitBreakerRegistry()
    barrier = threading.Barrier(8, timeout=30)
    got = []

    def worker():
        barrier.wait()
        got.append(registry.get("shared"))

    threads = [threading.Thread(target=worker) for _thread in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8
    assert all(b is got[0] for b in got)


def test_global_registry_functions():
    name = "binance_api_test_global"
    try:
        breaker = get_circuit_breaker(name)
        assert get_circuit_breaker(name) is breaker
        assert get_registry().get(name) is breaker
        assert name in list_circuit_breakers()
        breaker.force_open()
        assert snapshot_all_circuit_breakers()[name]["state"] == "open"
        reset_all_circuit_breakers()
        assert breaker.state is CLOSED
    finally:
        get_registry().remove(name)
    assert name not in list_circuit_breakers()


# -- threads -------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3])
def test_half_open_lets_exactly_max_calls_through_16_threads(limit):
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, success_threshold=100, timeout=1.0, half_open_max_calls=limit)
    fail_times(breaker, run_call, 1)
    clock.advance(1.0)
    start = threading.Barrier(16, timeout=30)
    release = threading.Event()
    cond = threading.Condition()
    entered, rejected = [], []

    def trial():
        with cond:
            entered.append(threading.get_ident())
            cond.notify_all()
        assert release.wait(timeout=30)
        return "trial"

    def worker():
        start.wait()
        try:
            breaker.call(trial)
        except CircuitBreakerError:
            with cond:
                rejected.append(threading.get_ident())
                cond.notify_all()

    threads = [threading.Thread(target=worker) for _thread in range(16)]
    for t in threads:
        t.start()
    with cond:
        assert cond.wait_for(lambda: len(entered) + len(rejected) == 16, timeout=30)
    assert (len(entered), len(rejected)) == (limit, 16 - limit)
    release.set()
    for t in threads:
        t.join()
    snap = breaker.snapshot()
    assert (snap["state"], snap["half_open_successes"], snap["rejections"]) == ("half_open", limit, 16 - limit)


@FORMS
def test_closed_calls_run_concurrently(invoke):
    # Each call waits inside the guarded function until all four are inside: a breaker
    # that held its lock across the call would break the barrier instead.
    breaker = make()
    inside = threading.Barrier(4, timeout=30)
    results = []

    def guarded():
        return inside.wait()

    def worker():
        results.append(invoke(breaker, guarded))

    threads = [threading.Thread(target=worker) for _thread in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2, 3]
    assert breaker.snapshot()["successes"] == 4


def test_exact_counts_after_8_threads_of_10000_calls():
    breaker = CircuitBreaker(
        "hammer", CircuitBreakerConfig(failure_threshold=10**9, failure_rate_threshold=1.0, minimum_calls=100)
    )
    calls_per_thread = 10_000
    start = threading.Barrier(8, timeout=30)
    raised = []

    def maybe_fail(i):
        if i % 10 == 0:
            raise Boom
        return i

    def worker():
        start.wait()
        failures = 0
        for i in range(calls_per_thread):
            try:
                breaker.call(maybe_fail, i)
            except Boom:
                failures += 1
        raised.append(failures)

    threads = [threading.Thread(target=worker) for _thread in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so the calls interleave finely
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    snap = breaker.snapshot()
    assert raised == [1000] * 8
    assert (snap["calls"], snap["successes"], snap["failures"]) == (80_000, 72_000, 8_000)
    assert (snap["state"], snap["rejections"], snap["window_calls"]) == ("closed", 0, 100)


def test_racing_failures_open_the_breaker_exactly_once():
    breaker = make(failure_threshold=5)
    transitions = []
    breaker.add_listener(lambda b, old, new: transitions.append((old, new)))
    start = threading.Barrier(8, timeout=30)
    outcomes = []

    def worker():
        start.wait()
        for _attempt in range(50):
            try:
                breaker.call(boom)
            except Boom:
                outcomes.append("failed")
            except CircuitBreakerError:
                outcomes.append("rejected")

    threads = [threading.Thread(target=worker) for _thread in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = breaker.snapshot()
    assert transitions == [(CLOSED, OPEN)]
    assert snap["transitions"] == {"closed->open": 1}
    assert snap["failures"] == outcomes.count("failed") >= 5
    assert snap["rejections"] == outcomes.count("rejected") == 400 - snap["failures"]


# -- self-test ---------------------------------------------------------------------------


def test_self_test_passes_and_reports_each_check():
    result = self_test()
    assert result["ok"] is True
    names = [c["name"] for c in result["checks"]]
    assert names == [
        "closed call",
        "opens after failure_threshold",
        "open rejects",
        "half-open after timeout",
        "half-open admits half_open_max_calls",
        "closes after success_threshold",
    ]
    assert all(c["ok"] for c in result["checks"])


def test_self_test_reports_a_broken_state_machine(monkeypatch):
    # Loosen one rule for real (two trial slots) and see the self-test notice.
    class TwoTrialSlots(CircuitBreakerConfig):
        def __post_init__(self):
            super().__post_init__()
            object.__setattr__(self, "half_open_max_calls", 2)

    monkeypatch.setattr(cbmod, "CircuitBreakerConfig", TwoTrialSlots)
    result = self_test()
    assert result["ok"] is False
    failed = [c["name"] for c in result["checks"] if not c["ok"]]
    assert failed == ["half-open admits half_open_max_calls"]


def test_self_test_reports_unexpected_errors(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no breaker today")

    monkeypatch.setattr(cbmod, "CircuitBreaker", broken)
    result = self_test()
    assert result["ok"] is False
    assert result["checks"] == [{"name": "unexpected error", "ok": False, "detail": "RuntimeError: no breaker today"}]


def test_self_test_reports_an_open_breaker_that_lets_calls_through(monkeypatch):
    monkeypatch.setattr(CircuitBreaker, "_admit_locked", lambda self, now: (self._epoch, None, None))
    result = self_test()
    failed = {c["name"]: c["detail"] for c in result["checks"] if not c["ok"]}
    assert failed["open rejects"] == "call was let through while open"


def test_main_prints_json_and_exits_by_result(capsys, monkeypatch):
    assert cbmod.main(["--self-test"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    monkeypatch.setattr(cbmod, "self_test", lambda: {"ok": False, "checks": []})
    assert cbmod.main(["--self-test"]) == 1


def test_module_runs_as_main(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["circuit_breaker", "--self-test"])
    monkeypatch.delitem(sys.modules, cbmod.__name__)  # run_module executes a fresh copy
    with pytest.raises(SystemExit) as info:
        runpy.run_module(cbmod.__name__, run_name="__main__")
    assert info.value.code == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_cli_runs_as_deployed_package_on_system_python(tmp_path):
    # Deployed layout: /opt/tradingbot/lib/tradingbot_ops/circuit_breaker.py, run by the
    # host's python3 (3.11 on Debian 12), not the controller's.
    package = tmp_path / "tradingbot_ops"
    package.mkdir()
    (package / "__init__.py").write_text("")
    copy_breaker_modules(package)
    python = shutil.which("python3", path="/usr/bin") or sys.executable
    proc = subprocess.run(
        [python, "-m", "tradingbot_ops.circuit_breaker", "--self-test"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
