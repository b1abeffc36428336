"""CircuitBreaker: the synchronous call forms (call(), @breaker, with) over the state machine.

The class is assembled from one mixin per concern, all over the breaker's own attributes:
the state machine (breaker_state), the rolling window (breaker_windows), the shared store
(breaker_store) and the asyncio forms (breaker_async). Design notes are in
docs/circuit_breaker.md.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import threading
import time

from .breaker_async import AsyncCallForms
from .breaker_config import CircuitBreakerConfig
from .breaker_state import CLOSED, OPEN, BreakerStateMachine
from .breaker_store import SharedState
from .breaker_windows import RollingWindow

__all__ = ["CircuitBreaker"]


class CircuitBreaker(BreakerStateMachine, RollingWindow, SharedState, AsyncCallForms):
    """Guards calls to one dependency. Thread-safe; the lock is never held while the
    guarded function runs, so calls through one breaker run concurrently."""

    def __init__(self, name, config=None, *, clock=None, store=None, listeners=()):
        if not isinstance(name, str) or not name:
            raise ValueError(f"circuit breaker name must be a non-empty string, got {name!r}")
        if config is None:
            config = CircuitBreakerConfig()
        elif not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"config must be a CircuitBreakerConfig, got {type(config).__name__}")
        self.name = name
        self.config = config
        self._clock = time.monotonic if clock is None else clock
        self._store = store
        self._lock = threading.Lock()
        self._listeners = list(listeners)
        self._local = threading.local()
        self._lease_ids = itertools.count(1)
        # Hot-path copy of the config.
        self._slow_threshold = math.inf if config.slow_call_threshold is None else config.slow_call_threshold
        # The fast path (no lock to admit, a few updates to record a quick success) needs
        # all the state in memory.
        self._fast_path = store is None
        self._init_window(config)
        self._init_async()
        self._init_state()

    def __repr__(self):
        return f"<CircuitBreaker {self.name!r} {self._epoch.state.value}>"

    @property
    def state(self):
        """Current state; an open breaker whose timeout has passed reports half-open."""
        self._run_locked(self._refresh_locked, self._clock())
        return self._epoch.state

    @property
    def last_transition_time(self):
        """Wall-clock time (epoch seconds) of the last state change, or of the creation."""
        return self._last_transition_time

    def call(self, fn, /, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` through the breaker; raise CircuitBreakerError instead
        while it is open."""
        ep = self._closed_epoch
        if ep is None:
            return self._call_slow(fn, args, kwargs)
        clock = self._clock
        start = clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._finish(ep, None, start, clock(), exc)
            raise
        end = clock()
        if end - start >= self._slow_threshold:
            self._finish(ep, None, start, end, None)
            return result
        # A quick success admitted while closed can only end the failure streak and take a
        # slot in the window. This record is inlined here, in @breaker and in
        # __exit__ (a method call would add a fifth to the overhead); acquire/release costs
        # half of a with-statement.
        lock = self._lock
        lock.acquire()
        try:
            self._successes += 1
            if ep is self._epoch:
                self._consecutive_failures = 0
                if self._timed_window:
                    self._push(False, end)
                else:
                    self._window_seq += 1
        finally:
            lock.release()
        return result

    def __call__(self, fn):
        """Decorator form: ``@breaker``, on a function or an ``async def``."""
        if not callable(fn):
            raise TypeError(f"@{type(self).__name__} decorates callables, got {fn!r}")
        if inspect.iscoroutinefunction(fn):
            return self._guard_coroutine_function(fn)
        breaker = self
        # Fixed for the breaker's life: closure cells load faster than attributes.
        clock = self._clock
        slow_threshold = self._slow_threshold
        acquire = self._lock.acquire
        release = self._lock.release

        # The body of call() with fn bound, inlined: a nested call() would add a third to
        # the overhead. The behaviour tests run through call(), @breaker and with alike.
        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            ep = breaker._closed_epoch
            if ep is None:
                return breaker._call_slow(fn, args, kwargs)
            start = clock()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                breaker._finish(ep, None, start, clock(), exc)
                raise
            end = clock()
            if end - start >= slow_threshold:
                breaker._finish(ep, None, start, end, None)
                return result
            acquire()
            try:
                breaker._successes += 1
                if ep is breaker._epoch:
                    breaker._consecutive_failures = 0
                    if breaker._timed_window:
                        breaker._push(False, end)
                    else:
                        breaker._window_seq += 1
            finally:
                release()
            return result

        guarded.circuit_breaker = self
        return guarded

    def __enter__(self):
        ep = self._closed_epoch
        lease = None
        if ep is None:
            ep, lease = self._enter()
        # Tickets live per thread (and stack up when nested), since one breaker guards
        # many threads' blocks at once.
        local = self._local
        try:
            tickets = local.tickets
        except AttributeError:
            tickets = local.tickets = []
        tickets.append((ep, lease, self._clock()))
        return self

    def __exit__(self, exc_type, exc, tb):
        ep, lease, start = self._local.tickets.pop()
        end = self._clock()
        # No lease and the fast path on means the block was admitted while closed.
        if exc is not None or lease is not None or not self._fast_path or end - start >= self._slow_threshold:
            self._finish(ep, lease, start, end, exc)
            return False
        # The same quick-success record as in call(); see there.
        lock = self._lock
        lock.acquire()
        try:
            self._successes += 1
            if ep is self._epoch:
                self._consecutive_failures = 0
                if self._timed_window:
                    self._push(False, end)
                else:
                    self._window_seq += 1
        finally:
            lock.release()
        return False

    def add_listener(self, callback):
        """Call ``callback(breaker, old_state, new_state)`` after each state change."""
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback):
        with self._lock:
            self._listeners.remove(callback)

    def force_open(self):
        """Open and stay open, rejecting every call, until force_closed() or reset()."""
        self._run_locked(self._force_locked, OPEN, "forced open")

    def force_closed(self):
        """Close now; the failure streak and the window start over, statistics are kept."""
        self._run_locked(self._force_locked, CLOSED, "forced closed")

    def reset(self):
        """Close, and start the state and the statistics over."""
        self._run_locked(self._reset_locked)

    def snapshot(self):
        """Everything about the breaker as a dict of plain JSON types."""
        return self._run_locked(self._snapshot_locked, self._clock())

    def _call_slow(self, fn, args, kwargs):
        ep, lease = self._enter()
        clock = self._clock
        start = clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._finish(ep, lease, start, clock(), exc)
            raise
        self._finish(ep, lease, start, clock(), None)
        return result
