"""Circuit breaker (CLOSED -> OPEN -> HALF_OPEN) for calls to exchanges and databases.

Stdlib only, no Ansible imports: the roles deploy this file onto hosts as
``tradingbot_ops.circuit_breaker`` for the app and the backup timer, and modules import it
from the collection. Design notes are in docs/circuit_breaker.md.

Example::

    breaker = get_circuit_breaker("binance_api", CircuitBreakerConfig(failure_threshold=5))

    @breaker
    def fetch_ticker():
        ...

    try:
        result = breaker.call(risky_function)
    except CircuitBreakerError:
        result = fallback_value
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import fcntl
import functools
import inspect
import itertools
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, fields

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerConfigError",
    "CircuitBreakerError",
    "CircuitBreakerRegistry",
    "CircuitState",
    "FileStateStore",
    "get_circuit_breaker",
    "get_registry",
    "list_circuit_breakers",
    "reset_all_circuit_breakers",
    "self_test",
    "snapshot_all_circuit_breakers",
]

_LOG = logging.getLogger(__name__)

# The transition log is for humans reading a snapshot; the counts stay exact regardless.
_TRANSITION_LOG_SIZE = 50
_STORE_FORMAT = 1
_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


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


class CircuitBreakerConfigError(ValueError):
    """A CircuitBreakerConfig value is out of range or of the wrong type."""


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


def _exception_types(name, value):
    """Normalise one exception class or an iterable of them to a tuple."""
    items = (value,) if isinstance(value, (type, str)) else value  # a str is one bad item, not many
    try:
        items = tuple(items)
    except TypeError:
        raise CircuitBreakerConfigError(
            f"{name} must be an exception class or a sequence of them, got {value!r}"
        ) from None
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise CircuitBreakerConfigError(f"{name} must contain only exception classes, got {item!r}")
    return items


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CircuitBreakerConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_seconds(name, value, allow_none):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        none = " or None" if allow_none else ""
        raise CircuitBreakerConfigError(f"{name} must be a finite number of seconds > 0{none}, got {value!r}")


def _type_name(exc_type):
    module = exc_type.__module__
    return exc_type.__qualname__ if module == "builtins" else f"{module}.{exc_type.__qualname__}"


@dataclass(frozen=True)
class CircuitBreakerConfig:
    """Thresholds of one breaker; every value is checked on construction.

    The first six names and defaults are the original system's. The rolling window holds
    the last ``window_size`` calls, and/or the calls of the last ``window_duration``
    seconds (None switches a bound off; at least one must be set). Exceptions matching
    ``ignored_exceptions`` are recorded as neither success nor failure; others matching
    ``failure_exceptions`` are failures; any other ``Exception`` means the dependency
    answered and counts as a success (unless slow). ``BaseException``s such as
    KeyboardInterrupt are never recorded.
    """

    failure_threshold: int = 5
    success_threshold: int = 2
    timeout: float = 60.0
    failure_rate_threshold: float = 0.5
    minimum_calls: int = 10
    slow_call_threshold: float | None = 5.0
    window_size: int | None = 100
    window_duration: float | None = None
    half_open_max_calls: int = 1
    failure_exceptions: tuple = (Exception,)
    ignored_exceptions: tuple = ()

    def __post_init__(self):
        _check_int("failure_threshold", self.failure_threshold, 1)
        _check_int("success_threshold", self.success_threshold, 1)
        _check_seconds("timeout", self.timeout, allow_none=False)
        rate = self.failure_rate_threshold
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise CircuitBreakerConfigError(f"failure_rate_threshold must be a number in (0, 1], got {rate!r}")
        _check_int("minimum_calls", self.minimum_calls, 1)
        _check_seconds("slow_call_threshold", self.slow_call_threshold, allow_none=True)
        if self.window_size is not None:
            _check_int("window_size", self.window_size, 1)
        _check_seconds("window_duration", self.window_duration, allow_none=True)
        if self.window_size is None and self.window_duration is None:
            raise CircuitBreakerConfigError("window_size and window_duration cannot both be None")
        if self.window_size is not None and self.minimum_calls > self.window_size:
            raise CircuitBreakerConfigError(
                f"minimum_calls ({self.minimum_calls}) cannot exceed window_size ({self.window_size}):"
                " the failure rate would never count"
            )
        _check_int("half_open_max_calls", self.half_open_max_calls, 1)
        # Frozen dataclass: normalise in place so equal configs compare equal.
        object.__setattr__(self, "failure_exceptions", _exception_types("failure_exceptions", self.failure_exceptions))
        object.__setattr__(self, "ignored_exceptions", _exception_types("ignored_exceptions", self.ignored_exceptions))

    def to_dict(self):
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("failure_exceptions", "ignored_exceptions"):
            data[key] = [_type_name(t) for t in data[key]]
        return data


class _Epoch:
    """One stay in one state. A call is judged against the epoch that admitted it, so a
    call that finishes after a transition updates the statistics but not the new state."""

    __slots__ = ("number", "opened_at", "retry_at", "state")

    def __init__(self, number, state, opened_at=None, retry_at=None):
        self.number = number
        self.state = state
        self.opened_at = opened_at
        self.retry_at = retry_at


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return not isinstance(exc, ProcessLookupError)  # EPERM: alive, another user's
    return True


class CircuitBreaker:
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
        # Hot-path copies of the config.
        self._slow_threshold = math.inf if config.slow_call_threshold is None else config.slow_call_threshold
        self._window_cap = sys.maxsize if config.window_size is None else config.window_size
        self._window_duration = config.window_duration
        # The fast path (no lock to admit, a few updates to record a quick success) needs
        # all the state in memory.
        self._fast_path = store is None
        self._timed_window = config.window_duration is not None
        self._epoch = _Epoch(0, CLOSED)
        self._closed_epoch = self._epoch if self._fast_path else None
        self._pending = []
        self._reset_counters()
        self._reset_stats()

    def __repr__(self):
        return f"<CircuitBreaker {self.name!r} {self._epoch.state.value}>"

    # -- state kept per epoch ---------------------------------------------------------

    def _reset_counters(self):
        self._consecutive_failures = 0
        self._half_open_successes = 0
        self._trials = {}  # lease id -> pid of the process running that trial call
        # Count-only window: calls are numbered, and only the failures' numbers are kept,
        # so recording a success is one increment.
        self._window_seq = 0
        self._failure_seqs = deque()
        # Time-based window: (clock reading, failed) per call.
        self._window = deque()
        self._window_failures = 0

    def _reset_stats(self):
        self._successes = 0
        self._failures = 0
        self._slow_calls = 0
        self._ignored = 0
        self._rejections = 0
        self._callback_errors = 0
        self._transition_counts = {}
        self._transition_log = deque(maxlen=_TRANSITION_LOG_SIZE)

    # -- public API -------------------------------------------------------------------

    @property
    def state(self):
        """Current state; an open breaker whose timeout has passed reports half-open."""
        self._run_locked(self._refresh_locked, self._clock())
        return self._epoch.state

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
        """Decorator form: ``@breaker``."""
        if not callable(fn):
            raise TypeError(f"@{type(self).__name__} decorates callables, got {fn!r}")
        if inspect.iscoroutinefunction(fn):
            raise TypeError("coroutine functions are not supported: the breaker would time creating the coroutine")
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

    # -- admission and recording ------------------------------------------------------

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
            kind = _IGNORED
        self._run_locked(self._record_locked, ep, lease, kind, slow, end)

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

    def _push(self, failed, now):
        if not self._timed_window:
            self._window_seq += 1
            if failed:
                self._failure_seqs.append(self._window_seq)
            return
        window = self._window
        if len(window) >= self._window_cap and window.popleft()[1]:
            self._window_failures -= 1
        window.append((now, failed))
        if failed:
            self._window_failures += 1
        self._drop_expired(now)  # keeps a success-only window from growing without bound

    def _drop_expired(self, now):
        horizon = now - self._window_duration
        window = self._window
        while window and window[0][0] <= horizon:
            if window.popleft()[1]:
                self._window_failures -= 1

    def _window_counts(self, now):
        """(calls, failures) in the rolling window at ``now``."""
        if not self._timed_window:
            horizon = self._window_seq - self._window_cap
            seqs = self._failure_seqs
            while seqs and seqs[0] <= horizon:
                seqs.popleft()
            return min(self._window_seq, self._window_cap), len(seqs)
        self._drop_expired(now)
        return len(self._window), self._window_failures

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
        self._transition_log.append(
            {"from": old_state.value, "to": new_state.value, "reason": reason, "clock": now, "time": time.time()}
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

    # -- shared state -----------------------------------------------------------------

    def _synced(self, action, args, record):
        """Store transaction body: load the shared record, act, return the new record."""
        self._import(record)
        result = action(*args)
        return self._export(), result

    def _import(self, record):
        if record is None or record.get("format") != _STORE_FORMAT:
            return  # nothing shared yet (or an unknown format): ours becomes the record
        state = CircuitState(record["state"])
        opened_at, retry_at = record["opened_at"], record["retry_at"]
        trials = {lease: pid for lease, pid in record["trials"].items() if _pid_alive(pid)}
        window = [(t, bool(failed)) for t, failed in record["window"]]
        if record["boot_id"] != self._store.boot_id:
            # Monotonic readings from before a reboot mean nothing now, and the processes
            # that held trial leases are gone. A timed open period counts as elapsed.
            now = self._clock()
            trials, window = {}, []
            if retry_at is not None:
                opened_at = retry_at = now
        ep = self._epoch
        if record["epoch"] != ep.number or state is not ep.state:
            self._epoch = _Epoch(record["epoch"], state, opened_at, retry_at)
        else:
            ep.opened_at, ep.retry_at = opened_at, retry_at
        self._consecutive_failures = record["consecutive_failures"]
        self._half_open_successes = record["half_open_successes"]
        self._trials = trials
        self._window_seq = record["window_seq"]
        self._failure_seqs = deque(record["failure_seqs"])
        self._window = deque(window)
        self._window_failures = sum(1 for entry in window if entry[1])

    def _export(self):
        ep = self._epoch
        return {
            "format": _STORE_FORMAT,
            "boot_id": self._store.boot_id,
            "state": ep.state.value,
            "epoch": ep.number,
            "opened_at": ep.opened_at,
            "retry_at": ep.retry_at,
            "consecutive_failures": self._consecutive_failures,
            "half_open_successes": self._half_open_successes,
            "trials": dict(self._trials),
            "window_seq": self._window_seq,
            "failure_seqs": list(self._failure_seqs),
            "window": [[t, failed] for t, failed in self._window],
        }


def _read_boot_id():
    try:
        with open(_BOOT_ID_PATH, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"


class FileStateStore:
    """Breaker state shared by processes through one JSON file.

    Each access holds an exclusive flock on ``<path>.lock`` (the data file itself is
    replaced on write, so it cannot carry the lock); writes go to a temp file in the same
    directory, are fsynced, then renamed over the data file. Clock readings are valid only
    within one boot, so each record carries the boot id. Several breakers can share a file.
    """

    def __init__(self, path, *, boot_id=None):
        self.path = os.fspath(path)
        self.lock_path = self.path + ".lock"
        self.boot_id = _read_boot_id() if boot_id is None else boot_id

    def __repr__(self):
        return f"<FileStateStore {self.path!r}>"

    @contextlib.contextmanager
    def _locked(self):
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self):
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except ValueError:
            _LOG.warning("circuit breaker store %s is not valid JSON; starting it over", self.path)
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data):
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".circuit-breaker-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def transact(self, name, apply):
        """Under the lock: ``new_record, result = apply(record or None)``; save, return result."""
        with self._locked():
            data = self._read()
            record = data.get(name)
            new_record, result = apply(record)
            if new_record != record:
                data[name] = new_record
                self._write(data)
            return result

    def load(self):
        """All records, by breaker name."""
        with self._locked():
            return self._read()

    def delete(self, name):
        with self._locked():
            data = self._read()
            if data.pop(name, None) is not None:
                self._write(data)


class CircuitBreakerRegistry:
    """Breakers by name: the same name always gives the same breaker."""

    def __init__(self):
        self._lock = threading.Lock()
        self._breakers = {}

    def get(self, name, config=None, *, clock=None, store=None):
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = CircuitBreaker(name, config, clock=clock, store=store)
                self._breakers[name] = breaker
                return breaker
        if config is not None and config != breaker.config:
            raise ValueError(f"circuit breaker {name!r} already exists with a different config")
        if (clock is not None and clock is not breaker._clock) or (store is not None and store is not breaker._store):
            raise ValueError(f"circuit breaker {name!r} already exists with a different clock or store")
        return breaker

    def names(self):
        with self._lock:
            return sorted(self._breakers)

    def breakers(self):
        with self._lock:
            return [self._breakers[name] for name in sorted(self._breakers)]

    def remove(self, name):
        with self._lock:
            self._breakers.pop(name, None)

    def reset_all(self):
        for breaker in self.breakers():
            breaker.reset()

    def snapshot_all(self):
        return {breaker.name: breaker.snapshot() for breaker in self.breakers()}


_REGISTRY = CircuitBreakerRegistry()


def get_registry():
    return _REGISTRY


def get_circuit_breaker(name, config=None, *, clock=None, store=None):
    """The process-wide breaker called ``name``, created with ``config`` on first use."""
    return _REGISTRY.get(name, config, clock=clock, store=store)


def list_circuit_breakers():
    return _REGISTRY.names()


def reset_all_circuit_breakers():
    _REGISTRY.reset_all()


def snapshot_all_circuit_breakers():
    return _REGISTRY.snapshot_all()


# -- self-test (used by the recovery self-test on hosts) ----------------------------------


class _SelfTestClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def self_test():
    """Drive a private breaker through closed -> open -> half-open -> closed on a fake clock."""
    checks = []

    def check(name, ok, detail):
        checks.append({"name": name, "ok": bool(ok), "detail": detail})

    def fail():
        raise OSError("self-test failure")

    clock = _SelfTestClock()
    try:
        config = CircuitBreakerConfig(failure_threshold=2, success_threshold=2, timeout=10.0, half_open_max_calls=1)
        breaker = CircuitBreaker("self-test", config, clock=clock)
        check("closed call", breaker.call(lambda: 42) == 42 and breaker.state is CLOSED, f"state={breaker.state.value}")
        for _attempt in range(2):
            with contextlib.suppress(OSError):
                breaker.call(fail)
        check("opens after failure_threshold", breaker.state is OPEN, f"state={breaker.state.value}")
        try:
            breaker.call(lambda: None)
            check("open rejects", False, "call was let through while open")
        except CircuitBreakerError as exc:
            check("open rejects", exc.name == "self-test" and exc.retry_after == 10.0, str(exc))
        clock.now += 10.0
        check("half-open after timeout", breaker.state is HALF_OPEN, f"state={breaker.state.value}")

        def trial():
            try:
                breaker.call(lambda: None)
            except CircuitBreakerError:
                return "rejected"
            return "admitted"

        nested = breaker.call(trial)
        check("half-open admits half_open_max_calls", nested == "rejected", f"second concurrent trial {nested}")
        breaker.call(lambda: None)
        snap = breaker.snapshot()
        check("closes after success_threshold", snap["state"] == "closed", json.dumps(snap["transitions"]))
    except Exception as exc:  # a self-test reports, it does not crash
        check("unexpected error", False, f"{type(exc).__name__}: {exc}")
    return {"ok": all(c["ok"] for c in checks), "checks": checks}


def main(argv=None):
    """Host CLI, never run inside a module (modules report through exit_json)."""
    parser = argparse.ArgumentParser(prog="python3 -m tradingbot_ops.circuit_breaker")
    parser.add_argument("--self-test", action="store_true", required=True, help="exercise the state machine")
    parser.parse_args(argv)
    result = self_test()
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
