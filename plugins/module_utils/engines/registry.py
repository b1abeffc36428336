"""The adapter registry: the one place that chooses code by engine name."""

from ..catalog import ENGINES
from ..errors import BackupError
from .postgresql import PostgresqlAdapter
from .sqlite import SqliteAdapter

_ADAPTERS = {adapter.name: adapter for adapter in (SqliteAdapter(), PostgresqlAdapter())}
if tuple(_ADAPTERS) != ENGINES:  # catalog.ENGINES names the options' choices
    raise ImportError(f"engine adapters {tuple(_ADAPTERS)} differ from catalog.ENGINES {ENGINES}")


def adapter(engine):
    """Return the adapter of ``engine``, or raise BackupError naming the known engines."""
    try:
        return _ADAPTERS[engine]
    except (KeyError, TypeError):
        raise BackupError(f"unknown engine {engine!r}: expected one of {', '.join(_ADAPTERS)}") from None
