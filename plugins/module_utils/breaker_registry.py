"""The process's circuit breakers by name: the same name always gives the same breaker."""

from __future__ import annotations

import threading

from .breaker_calls import CircuitBreaker

__all__ = [
    "CircuitBreakerRegistry",
    "get_circuit_breaker",
    "get_registry",
    "list_circuit_breakers",
    "reset_all_circuit_breakers",
    "snapshot_all_circuit_breakers",
]


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
