"""The circuit breaker's asyncio forms: ``await breaker.acall(coro_fn)``, ``@breaker`` on an
``async def``, and ``async with breaker``.

The breaker's lock is a threading.Lock held only for bookkeeping, never across an
``await``: admission and recording each take it once, and the awaited call runs outside
it. Half-open trial leases are counted under it, so exactly ``half_open_max_calls`` tasks
get through. A call is timed from before its first ``await`` to after the last, so
slow-call detection sees the awaited duration. A cancelled call (asyncio.CancelledError,
a BaseException) is recorded as neither success nor failure, and frees its trial slot.
``async with`` keeps its ticket per asyncio task, so it needs a running asyncio loop.
"""

from __future__ import annotations

import functools
import sys

__all__ = ["AsyncCallForms"]


def _current_task():
    # asyncio is loaded by whoever runs the loop; importing it here would add ~0.1 s to every
    # synchronous caller, such as each backup and restore run.
    return sys.modules["asyncio"].current_task()


class AsyncCallForms:
    """Breaker mixin for coroutine callers."""

    def _init_async(self):
        # Tickets of open ``async with`` blocks by task (a stack, for nesting): tasks on one
        # thread interleave, so per-thread tickets would mix them up. A dict keyed by task
        # costs half what a ContextVar does per block; an entry goes when its block exits.
        self._task_tickets = {}

    async def acall(self, fn, /, *args, **kwargs):
        """Await ``fn(*args, **kwargs)`` through the breaker; raise CircuitBreakerError
        instead while it is open."""
        ep = self._closed_epoch
        if ep is None:
            return await self._acall_slow(fn, args, kwargs)
        clock = self._clock
        start = clock()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._finish(ep, None, start, clock(), exc)
            raise
        end = clock()
        if end - start >= self._slow_threshold:
            self._finish(ep, None, start, end, None)
        else:
            self._record_quick_success(ep, end)
        return result

    async def _acall_slow(self, fn, args, kwargs):
        ep, lease = self._enter()
        clock = self._clock
        start = clock()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._finish(ep, lease, start, clock(), exc)
            raise
        self._finish(ep, lease, start, clock(), None)
        return result

    def _guard_coroutine_function(self, fn):
        breaker = self
        clock = self._clock
        slow_threshold = self._slow_threshold

        # acall() with fn bound, inlined: awaiting acall() would cost one more coroutine.
        @functools.wraps(fn)
        async def guarded(*args, **kwargs):
            ep = breaker._closed_epoch
            if ep is None:
                return await breaker._acall_slow(fn, args, kwargs)
            start = clock()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                breaker._finish(ep, None, start, clock(), exc)
                raise
            end = clock()
            if end - start >= slow_threshold:
                breaker._finish(ep, None, start, end, None)
            else:
                breaker._record_quick_success(ep, end)
            return result

        guarded.circuit_breaker = self
        return guarded

    async def __aenter__(self):
        ep = self._closed_epoch
        lease = None
        if ep is None:
            ep, lease = self._enter()
        ticket = (ep, lease, self._clock())
        task = _current_task()
        stack = self._task_tickets.get(task)
        if stack is None:
            self._task_tickets[task] = [ticket]
        else:
            stack.append(ticket)
        return self

    async def __aexit__(self, exc_type, exc, tb):
        task = _current_task()
        stack = self._task_tickets[task]
        ep, lease, start = stack.pop()
        if not stack:
            del self._task_tickets[task]
        end = self._clock()
        # No lease and the fast path on means the block was admitted while closed.
        if exc is not None or lease is not None or not self._fast_path or end - start >= self._slow_threshold:
            self._finish(ep, lease, start, end, exc)
        else:
            self._record_quick_success(ep, end)
        return False
