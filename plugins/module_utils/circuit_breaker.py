"""Circuit breaker (CLOSED -> OPEN -> HALF_OPEN) for calls to exchanges and databases.

Stdlib only, no Ansible imports: the roles deploy the collection's module_utils onto hosts
as the package ``tradingbot_ops`` for the app and the backup timer, and modules import it
from the collection. This module is the public import path; the parts live in one module
per concern (breaker_config, breaker_windows, breaker_state, breaker_store, breaker_calls,
breaker_async, breaker_registry). Design notes are in docs/circuit_breaker.md.

Example::

    breaker = get_circuit_breaker("binance_api", CircuitBreakerConfig(failure_threshold=5))

    @breaker
    def fetch_ticker():
        ...

    @breaker
    async def fetch_depth():
        ...

    try:
        result = breaker.call(risky_function)
    except CircuitBreakerError:
        result = fallback_value
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from .breaker_calls import CircuitBreaker
from .breaker_config import CircuitBreakerConfig, CircuitBreakerConfigError
from .breaker_registry import (
    CircuitBreakerRegistry,
    get_circuit_breaker,
    get_registry,
    list_circuit_breakers,
    reset_all_circuit_breakers,
    snapshot_all_circuit_breakers,
)
from .breaker_state import CLOSED, HALF_OPEN, OPEN, CircuitBreakerError, CircuitState
from .breaker_store import FileStateStore

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
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
