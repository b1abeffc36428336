"""Circuit breaker for asyncio callers: ``@breaker`` on an ``async def``, ``await
breaker.acall()``, ``async with breaker``.

Real event loops and real tasks; the breaker's clock is a fake one (as resilience4j's
tests do), advanced while tasks are suspended, so no test sleeps to reach a state.
"""

import asyncio
import inspect

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils.circuit_breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerError,
)
from test_circuit_breaker import FakeClock


class Boom(Exception):
    pass


async def ok():
    await asyncio.sleep(0)
    return "ok"


async def boom():
    await asyncio.sleep(0)
    raise Boom("down")


async def run_acall(breaker, fn, *args):
    return await breaker.acall(fn, *args)


async def run_decorated(breaker, fn, *args):
    return await breaker(fn)(*args)


async def run_async_with(breaker, fn, *args):
    async with breaker:
        return await fn(*args)


FORMS = pytest.mark.parametrize(
    "invoke", [run_acall, run_decorated, run_async_with], ids=["acall", "decorator", "async-with"]
)


def make(clock=None, **config):
    return CircuitBreaker("async-test", CircuitBreakerConfig(**config), clock=clock or FakeClock())


async def fail_times(breaker, invoke, count):
    for _attempt in range(count):
        with pytest.raises(Boom):
            await invoke(breaker, boom)


async def open_then_half_open(breaker, clock, invoke):
    await fail_times(breaker, invoke, breaker.config.failure_threshold)
    assert breaker.state is OPEN
    clock.advance(breaker.config.timeout)
    assert breaker.state is HALF_OPEN


def test_decorator_wraps_a_coroutine_function():
    breaker = make()

    async def fetch_ticker(symbol):
        """Ticker of one symbol."""
        await asyncio.sleep(0)
        return symbol.upper()

    guarded = breaker(fetch_ticker)
    assert inspect.iscoroutinefunction(guarded)
    assert (guarded.__name__, guarded.__doc__, guarded.__wrapped__) == (
        "fetch_ticker",
        "Ticker of one symbol.",
        fetch_ticker,
    )
    assert guarded.circuit_breaker is breaker
    assert asyncio.run(guarded("btc")) == "BTC"
    assert breaker.snapshot()["successes"] == 1


@FORMS
def test_opens_after_failures_and_rejects_without_running(invoke):
    clock = FakeClock()
    breaker = make(clock, failure_threshold=3, timeout=30.0)
    ran = []

    async def tracked():
        ran.append(True)
        return await ok()

    async def scenario():
        assert await invoke(breaker, ok) == "ok"
        await fail_times(breaker, invoke, 3)
        assert breaker.state is OPEN
        clock.advance(10.0)
        with pytest.raises(CircuitBreakerError) as info:
            await invoke(breaker, tracked)
        return info.value

    error = asyncio.run(scenario())
    assert (error.state, error.retry_after) == (OPEN, 20.0)
    assert ran == []
    snap = breaker.snapshot()
    assert (snap["successes"], snap["failures"], snap["rejections"]) == (1, 3, 1)


@FORMS
@pytest.mark.parametrize("slots", [1, 3])
def test_half_open_admits_exactly_n_of_50_concurrent_tasks(invoke, slots):
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2, success_threshold=slots, timeout=5.0, half_open_max_calls=slots)
    inside = []

    async def trial(gate):
        inside.append(True)
        await gate.wait()
        return "ok"

    async def scenario():
        await open_then_half_open(breaker, clock, invoke)
        gate = asyncio.Event()
        tasks = [asyncio.create_task(invoke(breaker, trial, gate)) for _task in range(50)]
        while len(inside) < slots or sum(t.done() for t in tasks) < 50 - slots:
            await asyncio.sleep(0)  # let every task reach admission
        assert breaker.snapshot()["half_open_in_flight"] == slots
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(scenario())
    assert len(inside) == slots
    assert results.count("ok") == slots
    rejected = [r for r in results if isinstance(r, CircuitBreakerError)]
    assert len(rejected) == 50 - slots
    assert {r.state for r in rejected} == {HALF_OPEN}
    assert breaker.state is CLOSED  # slots successes met success_threshold


def test_no_lock_is_held_while_the_call_is_awaited():
    breaker = make(failure_threshold=100, minimum_calls=100, window_size=100)
    seen = []

    async def probe(gate):
        seen.append(breaker._lock.locked())
        await gate.wait()

    async def scenario():
        gate = asyncio.Event()
        tasks = [asyncio.create_task(breaker.acall(probe, gate)) for _task in range(10)]
        while len(seen) < 10:
            await asyncio.sleep(0)
        # All ten are suspended inside the guarded call at once, and the breaker answers.
        snap = breaker.snapshot()
        gate.set()
        await asyncio.gather(*tasks)
        return snap

    snap = asyncio.run(scenario())
    assert seen == [False] * 10
    assert (snap["state"], snap["calls"]) == ("closed", 0)
    assert breaker.snapshot()["successes"] == 10


@FORMS
def test_slow_call_is_timed_over_the_await(invoke):
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, slow_call_threshold=2.0)

    async def slow(gate):
        await gate.wait()
        return "late"

    async def scenario():
        gate = asyncio.Event()
        task = asyncio.create_task(invoke(breaker, slow, gate))
        await asyncio.sleep(0)  # the task is now suspended inside the call
        clock.advance(2.5)
        gate.set()
        return await task

    # Creating the coroutine takes no time on this clock; only the awaited run is slow.
    assert asyncio.run(scenario()) == "late"
    snap = breaker.snapshot()
    assert (snap["slow_calls"], snap["failures"], snap["state"]) == (1, 1, "open")


@FORMS
def test_cancelled_trial_counts_as_neither_and_frees_its_slot(invoke):
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2, success_threshold=1, timeout=5.0)

    async def hang():
        await asyncio.Event().wait()

    async def scenario():
        await open_then_half_open(breaker, clock, invoke)
        task = asyncio.create_task(invoke(breaker, hang))
        await asyncio.sleep(0)
        assert breaker.snapshot()["half_open_in_flight"] == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after_cancel = breaker.snapshot()
        assert await invoke(breaker, ok) == "ok"  # the slot was freed
        return after_cancel

    after_cancel = asyncio.run(scenario())
    assert after_cancel["state"] == "half_open"
    assert after_cancel["half_open_in_flight"] == 0
    assert (after_cancel["successes"], after_cancel["failures"], after_cancel["ignored"]) == (0, 2, 1)
    assert breaker.state is CLOSED


def test_cancelled_call_does_not_end_a_failure_streak():
    breaker = make(failure_threshold=3)

    async def scenario():
        await fail_times(breaker, run_acall, 2)
        task = asyncio.create_task(breaker.acall(asyncio.sleep, 3600))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await fail_times(breaker, run_acall, 1)

    asyncio.run(scenario())
    assert breaker.state is OPEN


def test_async_with_keeps_each_tasks_ticket_apart():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2, success_threshold=2, timeout=5.0, half_open_max_calls=2)

    async def block(gate, fail):
        async with breaker:
            await gate.wait()
            if fail:
                raise Boom("down")
        return "ok"

    async def scenario():
        await open_then_half_open(breaker, clock, run_async_with)
        first_gate, second_gate = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(block(first_gate, fail=False))
        second = asyncio.create_task(block(second_gate, fail=False))
        await asyncio.sleep(0)
        # Both blocks are open on one thread; they finish in the other order.
        second_gate.set()
        assert await second == "ok"
        assert breaker.snapshot()["half_open_in_flight"] == 1
        first_gate.set()
        assert await first == "ok"

    asyncio.run(scenario())
    snap = breaker.snapshot()
    assert (snap["state"], snap["half_open_in_flight"], snap["successes"]) == ("closed", 0, 2)


def test_async_with_nests_in_one_task():
    breaker = make()

    async def scenario():
        async with breaker as outer:
            assert outer is breaker
            with pytest.raises(Boom):
                async with breaker:
                    raise Boom("inner")

    asyncio.run(scenario())
    snap = breaker.snapshot()
    assert (snap["successes"], snap["failures"]) == (1, 1)


@FORMS
def test_a_success_admitted_in_an_earlier_epoch_does_not_end_the_new_streak(invoke):
    breaker = make(failure_threshold=2)

    async def waits(gate):
        await gate.wait()
        return "ok"

    async def scenario():
        gate = asyncio.Event()
        stale = asyncio.create_task(invoke(breaker, waits, gate))
        await asyncio.sleep(0)  # admitted while closed, now suspended
        await fail_times(breaker, invoke, 2)
        breaker.force_closed()  # a new closed epoch
        await fail_times(breaker, invoke, 1)
        gate.set()
        assert await stale == "ok"
        await fail_times(breaker, invoke, 1)  # the second failure of this epoch's streak

    asyncio.run(scenario())
    snap = breaker.snapshot()
    assert (snap["state"], snap["successes"], snap["failures"]) == ("open", 1, 4)


@FORMS
def test_time_window_counts_async_calls(invoke):
    clock = FakeClock()
    breaker = make(clock, window_size=None, window_duration=10.0, minimum_calls=4, failure_threshold=10)

    async def scenario():
        for _call in range(3):
            assert await invoke(breaker, ok) == "ok"
        clock.advance(11.0)  # those three leave the window
        assert await invoke(breaker, ok) == "ok"
        await fail_times(breaker, invoke, 1)

    asyncio.run(scenario())
    snap = breaker.snapshot()
    assert (snap["window_calls"], snap["window_failures"], snap["state"]) == (2, 1, "closed")
