"""The circuit breaker's state machine: epochs, admission, recording, transitions.

A mixin over the breaker's attributes (see CircuitBreaker in breaker_calls). Methods named
``*_locked`` run under the breaker's lock, through ``_run_locked``.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import time
from collections import deque

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "BreakerStateMachine", "CircuitBreakerError", "CircuitState"]

_LOG = logging.getLogger(__name__)

# The transition log is for humans reading a snapshot; the counts stay exact regardless.
_TRANSITION_LOG_SIZE = 50


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN

# Outcome kinds of a finished call.
_SUCCESS = "success"
_FAILURE = "failure"
_IGNORED = "ignored"


class CircuitBreakerError(Exception):
    """Raised instead of running the call while the breaker rejects calls.

    ``retry_at`` is a reading of the breaker's clock (monotonic by default) at which a call
    will be let through again, ``retry_after`` the seconds left until then. Both are None
    when that time is unknown: forced open, or half-open with every trial slot taken.
    """

    def __init__(self, name, retry_at=None, retry_after=None, state=OPEN):
        self.name = name
        self.retry_at = retry_at
        self.retry_after = retry_after
        self.state = CircuitState(state)
        if retry_after is not None:
            when = f"retry in {retry_after:.3f} s"
        elif self.state is HALF_OPEN:
            when = "all half-open trial calls are in flight"
        else:
            when = "forced open"
        super().__init__(f"circuit breaker {name!r} is {self.state.value}: {when}")

    def __reduce__(self):
        return (type(self), (self.name, self.retry_at, self.retry_after, self.state))


class _Epoch:
    """One stay in one state. A call is judged against the epoch that admitted it, so a
    call that finishes after a transition updates the statistics but not the new state."""

    __slots__ = ("number", "opened_at", "retry_at", "state")

    def __init__(self, number, state, opened_at=None, retry_at=None):
        self.number = number
        self.state = state
        self.opened_at = opened_at
        self.retry_at = retry_at


class BreakerStateMachine:
    """CLOSED -> OPEN -> HALF_OPEN -> CLOSED, with statistics and state-change callbacks."""

    def _init_state(self):
        self._epoch = _Epoch(0, CLOSED)
        self._closed_epoch = self._epoch if self._fast_path else None
        self._pending = []
        self._last_transition_time = time.time()
        self._reset_counters()
        self._reset_stats()

    # -- state kept per epoch, and statistics ------------------------------------------

    def _reset_counters(self):
        self._consecutive_failures = 0
        self._half_open_successes = 0
        self._trials = {}  # lease id -> pid of the process running that trial call
        self._reset_window()

    def _reset_stats(self):
        self._successes = 0
        self._failures = 0
        self._slow_calls = 0
        self._ignored = 0
        self._rejections = 0
        self._callback_errors = 0
        self._transition_counts = {}
        self._transition_log = deque(maxlen=_TRANSITION_LOG_SIZE)

    # -- admission and recording ------------------------------------------------------

    def _enter(self):
        ep, lease, error = self._run_locked(self._admit_locked, self._clock())
        if error is not None:
            raise error
        return ep, lease

    def _finish(self, ep, lease, start, end, exc):
        elapsed = end - start
        slow = elapsed >= self._slow_threshold
        if exc is None:
            kind = _FAILURE if slow else _SUCCESS
        elif isinstance(exc, self.config.ignored_exceptions):
            kind = _IGNORED
        elif isinstance(exc, self.config.failure_exceptions):
            kind = _FAILURE
        elif isinstance(exc, Exception):
            kind = _FAILURE if slow else _SUCCESS
        else:
            kind = _IGNORED  # KeyboardInterrupt, SystemExit, asyncio.CancelledError
        self._run_locked(self._record_locked, ep, lease, kind, slow, end)

    def _record_quick_success(self, ep, now):
        """Record a quick success of a call admitted while closed (no lease, no store).

        It can only end the failure streak and take a slot in the window. The synchronous
        forms inline this body (see CircuitBreaker.call); the asyncio forms call it, since
        an await costs more than the call.
        """
        lock = self._lock
        lock.acquire()
        try:
            self._successes += 1
            if ep is self._epoch:
                self._consecutive_failures = 0
                if self._timed_window:
                    self._push(False, now)
                else:
                    self._window_seq += 1
        finally:
            lock.release()

    def _run_locked(self, action, *args):
        """Run ``action`` under the lock (and the store's lock, with its state loaded),
        then notify listeners of any transition after releasing the locks."""
        with self._lock:
            if self._store is None:
                result = action(*args)
            else:
                result = self._store.transact(self.name, functools.partial(self._synced, action, args))
            pending = self._pending
            self._pending = []
        if pending:
            self._notify(pending)
        return result

    def _admit_locked(self, now):
        ep = self._refresh_locked(now)
        if ep.state is CLOSED:
            return ep, None, None
        if ep.state is OPEN:
            self._rejections += 1
            retry_after = None if ep.retry_at is None else ep.retry_at - now
            return ep, None, CircuitBreakerError(self.name, ep.retry_at, retry_after, OPEN)
        if len(self._trials) >= self.config.half_open_max_calls:
            self._rejections += 1
            return ep, None, CircuitBreakerError(self.name, None, None, HALF_OPEN)
        lease = f"{os.getpid()}:{id(self):x}:{next(self._lease_ids)}"
        self._trials[lease] = os.getpid()
        return ep, lease, None

    def _record_locked(self, ep, lease, kind, slow, now):
        if slow:
            self._slow_calls += 1
        if kind is _IGNORED:
            self._ignored += 1
        elif kind is _FAILURE:
            self._failures += 1
        else:
            self._successes += 1
        if lease is not None:
            self._trials.pop(lease, None)
        if ep is not self._epoch or kind is _IGNORED:
            return
        failed = kind is _FAILURE
        if ep.state is CLOSED:
            self._consecutive_failures = self._consecutive_failures + 1 if failed else 0
            self._push(failed, now)
            if failed:  # only a failure is checked against the thresholds
                self._check_closed_locked(now)
        elif failed:  # HALF_OPEN: no call is admitted while OPEN
            self._transition_locked(OPEN, now, "trial call failed")
        else:
            self._half_open_successes += 1
            if self._half_open_successes >= self.config.success_threshold:
                self._transition_locked(CLOSED, now, f"{self._half_open_successes} trial calls succeeded")

    # -- transitions ------------------------------------------------------------------

    def _check_closed_locked(self, now):
        cfg = self.config
        if self._consecutive_failures >= cfg.failure_threshold:
            self._transition_locked(OPEN, now, f"{self._consecutive_failures} consecutive failures")
            return
        calls, failures = self._window_counts(now)
        if calls >= cfg.minimum_calls and failures / calls >= cfg.failure_rate_threshold:
            self._transition_locked(OPEN, now, f"failure rate {failures}/{calls} calls")

    def _refresh_locked(self, now):
        """Apply the transitions that time alone causes; return the current epoch."""
        ep = self._epoch
        if ep.state is OPEN and ep.retry_at is not None and now >= ep.retry_at:
            self._transition_locked(HALF_OPEN, now, "open timeout elapsed")
        return self._epoch

    def _transition_locked(self, new_state, now, reason, timed=True):
        old_state = self._epoch.state
        if new_state is OPEN:
            retry_at = now + self.config.timeout if timed else None
            epoch = _Epoch(self._epoch.number + 1, OPEN, now, retry_at)
        else:
            epoch = _Epoch(self._epoch.number + 1, new_state)
        self._half_open_successes = 0
        self._trials = {}
        if new_state is CLOSED:
            self._reset_counters()
        self._epoch = epoch
        self._closed_epoch = epoch if new_state is CLOSED and self._fast_path else None
        key = f"{old_state.value}->{new_state.value}"
        self._transition_counts[key] = self._transition_counts.get(key, 0) + 1
        self._last_transition_time = wall = time.time()
        self._transition_log.append(
            {"from": old_state.value, "to": new_state.value, "reason": reason, "clock": now, "time": wall}
        )
        self._pending.append((old_state, new_state))

    def _force_locked(self, state, reason):
        ep = self._epoch
        if state is OPEN:
            if ep.state is OPEN:
                ep.retry_at = None  # already open: just stop the timer, no state change
            else:
                self._transition_locked(OPEN, self._clock(), reason, timed=False)
        elif ep.state is CLOSED:
            self._reset_counters()
        else:
            self._transition_locked(CLOSED, self._clock(), reason)

    def _reset_locked(self):
        self._force_locked(CLOSED, "reset")
        self._reset_stats()

    # -- reporting --------------------------------------------------------------------

    def _snapshot_locked(self, now):
        ep = self._refresh_locked(now)
        calls, failures = self._window_counts(now)
        return {
            "name": self.name,
            "state": ep.state.value,
            "retry_after": None if ep.retry_at is None else max(0.0, ep.retry_at - now),
            "calls": self._successes + self._failures + self._ignored,
            "successes": self._successes,
            "failures": self._failures,
            "slow_calls": self._slow_calls,
            "ignored": self._ignored,
            "rejections": self._rejections,
            "consecutive_failures": self._consecutive_failures,
            "half_open_successes": self._half_open_successes,
            "half_open_in_flight": len(self._trials),
            "window_calls": calls,
            "window_failures": failures,
            "failure_rate": failures / calls if calls else 0.0,
            "transitions": dict(self._transition_counts),
            "transition_log": list(self._transition_log),
            "last_transition_time": self._last_transition_time,
            "callback_errors": self._callback_errors,
            "shared": self._store is not None,
            "config": self.config.to_dict(),
        }

    def _notify(self, pending):
        for old_state, new_state in pending:
            for callback in list(self._listeners):
                try:
                    callback(self, old_state, new_state)
                except Exception:
                    # A broken listener must not break the guarded call.
                    _LOG.exception("circuit breaker %r: state-change callback %r failed", self.name, callback)
                    with self._lock:
                        self._callback_errors += 1
