"""Demo stand-in for the tradingbot service (see README.md)."""
