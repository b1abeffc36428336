"""The circuit breaker's asyncio forms: ``await breaker.acall(coro_fn)``, ``@breaker`` on an
``async def``, and ``async with breaker``.

The breaker's lock is a threading.Lock held only for bookkeeping, never across an
``await``: admission and recording each take it once, and the awaited call runs outside
it. Half-open trial leases are counted under it, so exactly ``half_open_max_calls`` tasks
get through. A call is timed from before its first ``await`` to after the last, so
slow-call detection sees the awaited duration. A cancelled call (asyncio.CancelledError,
a BaseException) is recorded as neither success nor failure, and frees its trial slot.
"""

from __future__ import annotations

import contextvars
import functools

__all__ = ["AsyncCallForms"]


class AsyncCallForms:
    """Breaker mixin for coroutine callers."""

    def _init_async(self):
        # Tickets of open ``async with`` blocks, per task: each task runs in its own
        # context, so interleaved tasks on one thread never see each other's tickets.
        self._async_tickets = contextvars.ContextVar(f"circuit_breaker_tickets_{self.name}", default=())

    async def acall(self, fn, /, *args, **kwargs):
        """Await ``fn(*args, **kwargs)`` through the breaker; raise CircuitBreakerError
        instead while it is open."""
        ep = self._closed_epoch
        lease = None
        if ep is None:
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
        acall = self.acall

        @functools.wraps(fn)
        async def guarded(*args, **kwargs):
            return await acall(fn, *args, **kwargs)

        guarded.circuit_breaker = self
        return guarded

    async def __aenter__(self):
        ep = self._closed_epoch
        lease = None
        if ep is None:
            ep, lease = self._enter()
        tickets = self._async_tickets
        tickets.set((*tickets.get(), (ep, lease, self._clock())))
        return self

    async def __aexit__(self, exc_type, exc, tb):
        tickets = self._async_tickets
        stack = tickets.get()
        ep, lease, start = stack[-1]
        tickets.set(stack[:-1])
        self._finish(ep, lease, start, self._clock(), exc)
        return False
