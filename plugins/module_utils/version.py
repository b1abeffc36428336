"""The collection's version, carried by the ``tradingbot_ops`` package on hosts (pinned to galaxy.yml by a test)."""

VERSION = "0.1.0"
