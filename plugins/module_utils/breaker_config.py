"""Circuit breaker configuration: the thresholds of one breaker, checked on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["CircuitBreakerConfig", "CircuitBreakerConfigError"]


class CircuitBreakerConfigError(ValueError):
    """A CircuitBreakerConfig value is out of range or of the wrong type."""


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
    KeyboardInterrupt or asyncio's CancelledError are never recorded.
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
