"""tradingbot.ops helpers (circuit breaker, backup engine) installed on the host.

Copied by the tradingbot.ops roles from the collection's plugins/module_utils; do not edit here.
"""
