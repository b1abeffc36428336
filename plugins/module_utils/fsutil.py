"""File-system primitives: locks, fsync, atomic writes, SHA-256, timestamps (stdlib only).

Runs on controllers and on hosts (as the plain package ``tradingbot_ops``): it imports nothing
from Ansible.
"""

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import time

from .errors import BackupError

# The chunk size of every stream: reads, hashing, codecs and child pipes.
CHUNK_SIZE = 1024 * 1024


def utcnow():
    """Return the current time as an aware UTC datetime."""
    return datetime.datetime.now(datetime.UTC)


def isoformat(moment):
    """Format an aware datetime as ``YYYY-MM-DDTHH:MM:SSZ`` (second precision, UTC)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def file_lock(path, busy_message, timeout):
    """Hold an exclusive flock on ``path``.

    Waits up to ``timeout`` seconds (0: fail at once) and then raises BackupError with
    ``busy_message(holder_pid)``. The lock dies with its process, so a
    killed run never leaves it stuck.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BackupError(f"cannot open lock file {path}: {exc.strerror}") from exc
    try:
        deadline = time.monotonic() + max(0, timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise BackupError(f"cannot lock {path}: {exc.strerror}") from exc
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise BackupError(busy_message(holder))
            time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)


def _fsync_path(path, flags):
    fd = os.open(str(path), os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path):
    """fsync a file written and closed earlier, so that its data survives a crash."""
    _fsync_path(path, 0)


def fsync_dir(path):
    """fsync a directory so that renames and unlinks inside it survive a crash."""
    _fsync_path(path, os.O_DIRECTORY)


def write_atomic(path, text, mode=0o640, *, uid=-1, gid=-1, fsync=True):
    """Write ``text`` to ``path`` atomically: temp file, fsync, chmod/chown, rename, dir fsync.

    ``uid``/``gid`` of -1 leave the owner unchanged.
    """
    path = str(path)
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if uid != -1 or gid != -1:
            os.chown(tmp, uid, gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(directory)


def write_json_atomic(path, data, mode=0o640, uid=-1, gid=-1):
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically (see ``write_atomic``)."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode, uid=uid, gid=gid)


def sha256_file(path, chunk_size=CHUNK_SIZE):
    """Return the hex SHA-256 of a file, read in constant memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def oserror(action, path, exc):
    """A BackupError for a failed write, saying that older backups are untouched."""
    reason = exc.strerror or str(exc)
    if getattr(exc, "errno", None) == errno.ENOSPC:
        reason = "no space left on device"
    return BackupError(f"{action} {path} failed: {reason}; older backups are untouched")


def open_exclusive(path):
    """Create ``path`` (mode 0600, failing if it exists) and return it open for binary writing."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise oserror("creating", path, exc) from exc
    return os.fdopen(fd, "wb")


def finish_file(handle, path):
    """Flush, fsync and close a file written with ``open_exclusive``."""
    try:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
    except OSError as exc:
        raise oserror("writing", path, exc) from exc
