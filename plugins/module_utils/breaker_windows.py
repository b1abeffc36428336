"""The circuit breaker's rolling window: the last N calls, and/or the calls of the last N seconds.

A mixin over the breaker's own attributes rather than an object of its own: the closed-state
fast path bumps ``_window_seq`` inline, and one more attribute hop would cost it.
"""

from __future__ import annotations

import sys
from collections import deque

__all__ = ["RollingWindow"]


class RollingWindow:
    """Count and time bounds of the window the failure rate is measured over.

    Count-only: calls are numbered and only the failures' numbers are kept, so recording a
    success is one increment. Time-bounded: each call's (clock reading, failed) is kept.
    """

    def _init_window(self, config):
        self._window_cap = sys.maxsize if config.window_size is None else config.window_size
        self._window_duration = config.window_duration
        self._timed_window = config.window_duration is not None

    def _reset_window(self):
        self._window_seq = 0
        self._failure_seqs = deque()
        self._window = deque()
        self._window_failures = 0

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
