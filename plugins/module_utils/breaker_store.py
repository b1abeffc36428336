"""Circuit breaker state shared between processes: FileStateStore and the record it holds."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections import deque

from .breaker_state import CircuitState, _Epoch

__all__ = ["FileStateStore", "SharedState"]

_LOG = logging.getLogger(__name__)

_STORE_FORMAT = 1
_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return not isinstance(exc, ProcessLookupError)  # EPERM: alive, another user's
    return True


def _read_boot_id():
    try:
        with open(_BOOT_ID_PATH, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"


class SharedState:
    """Breaker mixin: load the state machine from a store record, and save it back."""

    def _synced(self, action, args, record):
        """Store transaction body: load the shared record, act, return the new record."""
        self._import(record)
        result = action(*args)
        return self._export(), result

    def _import(self, record):
        if record is None or record.get("format") != _STORE_FORMAT:
            return  # nothing shared yet (or an unknown format): ours becomes the record
        state = CircuitState(record["state"])
        opened_at, retry_at = record["opened_at"], record["retry_at"]
        trials = {lease: pid for lease, pid in record["trials"].items() if _pid_alive(pid)}
        window = [(t, bool(failed)) for t, failed in record["window"]]
        if record["boot_id"] != self._store.boot_id:
            # Monotonic readings from before a reboot mean nothing now, and the processes
            # that held trial leases are gone. A timed open period counts as elapsed.
            now = self._clock()
            trials, window = {}, []
            if retry_at is not None:
                opened_at = retry_at = now
        ep = self._epoch
        if record["epoch"] != ep.number or state is not ep.state:
            self._epoch = _Epoch(record["epoch"], state, opened_at, retry_at)
        else:
            ep.opened_at, ep.retry_at = opened_at, retry_at
        self._consecutive_failures = record["consecutive_failures"]
        self._half_open_successes = record["half_open_successes"]
        self._trials = trials
        self._window_seq = record["window_seq"]
        self._failure_seqs = deque(record["failure_seqs"])
        self._window = deque(window)
        self._window_failures = sum(1 for entry in window if entry[1])

    def _export(self):
        ep = self._epoch
        return {
            "format": _STORE_FORMAT,
            "boot_id": self._store.boot_id,
            "state": ep.state.value,
            "epoch": ep.number,
            "opened_at": ep.opened_at,
            "retry_at": ep.retry_at,
            "consecutive_failures": self._consecutive_failures,
            "half_open_successes": self._half_open_successes,
            "trials": dict(self._trials),
            "window_seq": self._window_seq,
            "failure_seqs": list(self._failure_seqs),
            "window": [[t, failed] for t, failed in self._window],
        }


class FileStateStore:
    """Breaker state shared by processes through one JSON file.

    Each access holds an exclusive flock on ``<path>.lock`` (the data file itself is
    replaced on write, so it cannot carry the lock); writes go to a temp file in the same
    directory, are fsynced, then renamed over the data file. Clock readings are valid only
    within one boot, so each record carries the boot id. Several breakers can share a file.
    """

    def __init__(self, path, *, boot_id=None):
        self.path = os.fspath(path)
        self.lock_path = self.path + ".lock"
        self.boot_id = _read_boot_id() if boot_id is None else boot_id

    def __repr__(self):
        return f"<FileStateStore {self.path!r}>"

    @contextlib.contextmanager
    def _locked(self):
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self):
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except ValueError:
            _LOG.warning("circuit breaker store %s is not valid JSON; starting it over", self.path)
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data):
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".circuit-breaker-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def transact(self, name, apply):
        """Under the lock: ``new_record, result = apply(record or None)``; save, return result."""
        with self._locked():
            data = self._read()
            record = data.get(name)
            new_record, result = apply(record)
            if new_record != record:
                data[name] = new_record
                self._write(data)
            return result

    def load(self):
        """All records, by breaker name."""
        with self._locked():
            return self._read()

    def delete(self, name):
        with self._locked():
            data = self._read()
            if data.pop(name, None) is not None:
                self._write(data)
