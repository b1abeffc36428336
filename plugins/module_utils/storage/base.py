"""The storage seam: where backup files and their manifests live.

A backend stores flat objects under keys, which are backup file names (and manifest names)
relative to its root: the local backup directory, or a bucket and prefix. Backup, restore,
retention and the off-site copy job only talk to this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import StorageError

__all__ = ["ObjectInfo", "Storage", "StorageError"]


@dataclass(frozen=True)
class ObjectInfo:
    """What a backend knows about one stored object."""

    key: str
    size: int
    mtime: float  # seconds since the epoch
    locked_until: float | None = None  # retention lock (S3 Object Lock), epoch seconds
    metadata: dict = field(default_factory=dict)


class Storage:
    """Interface of a storage backend. Keys never contain a slash."""

    name = "abstract"

    def put(self, key, source_path, metadata=None):
        """Store the file at ``source_path`` under ``key``; return its ObjectInfo."""
        raise NotImplementedError

    def get(self, key, dest_path):
        """Write the object to ``dest_path`` atomically (temp file, fsync, rename)."""
        raise NotImplementedError

    def list(self, prefix=""):
        """Return the ObjectInfo of every key starting with ``prefix``, sorted by key."""
        raise NotImplementedError

    def stat(self, key):
        """Return the ObjectInfo of ``key``, or None when there is no such object."""
        raise NotImplementedError

    def delete(self, key):
        """Delete ``key``. A missing key is not an error; a locked one raises StorageError."""
        raise NotImplementedError

    def describe(self):
        """One line naming the backend and its location, without secrets, for logs."""
        return self.name
