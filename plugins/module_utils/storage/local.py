"""The local directory backend of the storage interface: the backup directory itself."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile

from ..errors import StorageError
from ..fsutil import fsync_dir
from .base import ObjectInfo, Storage


class LocalStorage(Storage):
    """Objects are the regular files directly inside ``root``; symlinks and subdirectories are
    never listed, read or deleted."""

    name = "local"

    def __init__(self, root):
        self.root = os.path.abspath(str(root))

    def path(self, key):
        """The file holding ``key``: local streaming (writing, decoding) reads and writes it in place."""
        if not key or "/" in key or key in (".", ".."):
            raise StorageError(f"invalid storage key {key!r}")
        return os.path.join(self.root, key)

    def _info(self, key, st):
        return ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime)

    def put(self, key, source_path, metadata=None):
        """Move a file of this directory under ``key`` (a rename), or copy one from elsewhere."""
        target = self.path(key)
        try:
            if os.path.dirname(os.path.abspath(source_path)) == self.root:
                os.replace(source_path, target)
            else:
                fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.root)
                try:
                    with os.fdopen(fd, "wb") as out, open(source_path, "rb") as src:
                        shutil.copyfileobj(src, out)
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(tmp, target)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
            fsync_dir(self.root)
            return self._info(key, os.stat(target))
        except OSError as exc:
            raise StorageError(f"cannot store {target}: {exc.strerror or exc}") from exc

    def get(self, key, dest_path):
        directory = os.path.dirname(os.path.abspath(dest_path))
        fd, tmp = tempfile.mkstemp(prefix=".get.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out, open(self.path(key), "rb") as src:
                shutil.copyfileobj(src, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest_path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StorageError(f"cannot read {self.path(key)}: {exc.strerror or exc}") from exc

    def list(self, prefix=""):
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        infos = []
        for key in names:
            if not key.startswith(prefix):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(self.root, key))
                if stat.S_ISREG(st.st_mode):
                    infos.append(self._info(key, st))
        return infos

    def stat(self, key):
        try:
            st = os.lstat(self.path(key))
        except FileNotFoundError:
            return None
        return self._info(key, st) if stat.S_ISREG(st.st_mode) else None

    def delete(self, key):
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot delete {self.path(key)}: {exc.strerror or exc}") from exc

    def sync(self):
        """Make deletions and renames durable (one directory fsync for a batch)."""
        fsync_dir(self.root)

    def describe(self):
        return f"local directory {self.root}"
