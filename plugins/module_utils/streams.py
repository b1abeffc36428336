"""Child processes as streaming filters, and threads that overlap stream stages (stdlib only).

Runs on controllers and on hosts (as the plain package ``tradingbot_ops``).
"""

# This package also runs on hosts outside Ansible (the backup timer), where run_command does
# not exist.
# pylint: disable=ansible-bad-function

import contextlib
import fcntl
import queue
import signal
import subprocess
import tempfile
import threading

from .errors import BackupError
from .fsutil import CHUNK_SIZE

# Linux's fcntl to resize a pipe; the constant is missing from fcntl before Python 3.10.
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def widen_pipe(stream):
    """Give a pipe a buffer of CHUNK_SIZE instead of 64 KiB, so the process writing it runs on
    while the reader hashes, counts or compresses a chunk; where it fails, the pipe stays."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fcntl.fcntl(stream.fileno(), _F_SETPIPE_SZ, CHUNK_SIZE)
    return stream


class ChildPipe:
    """A child process used as a streaming filter, e.g. zstd compressing or decompressing.

    ``feed`` (an iterable of bytes; None gives the child no stdin) is written to the child's
    stdin by a thread of its own while the caller reads stdout, by iterating (chunks of up to
    CHUNK_SIZE) or through read()/readinto(). close() reaps the child and raises
    ``BackupError("<failure> (exit N): <its last stderr line>")`` when it failed; leaving a
    ``with`` block by an exception kills the child instead.
    """

    def __init__(self, argv, failure, feed=None):
        self._failure = failure
        self._feed_error = None
        self._cut_short = False
        self._closed = False
        self.messages = []  # the child's stderr lines, once closed
        # A file, so a chatty child never blocks on stderr; close() closes it.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            stdin = subprocess.DEVNULL if feed is None else subprocess.PIPE
            self._proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=self._stderr)
        except BaseException:
            self._stderr.close()
            raise
        widen_pipe(self._proc.stdout)
        if feed is not None:
            widen_pipe(self._proc.stdin)
        self._feeder = None
        if feed is not None:
            self._feeder = threading.Thread(target=self._feed, args=(feed,), daemon=True)
            self._feeder.start()

    def _feed(self, chunks):
        try:
            for chunk in chunks:
                self._proc.stdin.write(chunk)
        except BrokenPipeError:
            self._cut_short = True  # the child stopped reading; close() says why
        except BaseException as exc:  # raised by close(), in the caller's thread
            self._feed_error = exc
        finally:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
            with contextlib.suppress(Exception):
                getattr(chunks, "close", lambda: None)()

    def __iter__(self):
        return iter(lambda: self._proc.stdout.read(CHUNK_SIZE), b"")

    def read(self, size=-1):
        return self._proc.stdout.read(size)

    def readinto(self, buffer):
        return self._proc.stdout.readinto(buffer)

    def close(self, kill=False):
        if self._closed:
            return
        self._closed = True
        if kill:
            self._proc.kill()  # unblocks the feeder too
        # A child still writing gets SIGPIPE, so a reader may stop early without a deadlock.
        self._proc.stdout.close()
        if self._feeder is not None:
            self._feeder.join()
        code = self._proc.wait()
        self._stderr.seek(0)
        lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
        self._stderr.close()
        self.messages = lines
        if kill:
            return
        if self._feed_error is not None:
            raise self._feed_error
        if code not in (0, -signal.SIGPIPE):  # SIGPIPE: the reader stopped early, as it may
            raise BackupError(f"{self._failure} (exit {code}): {lines[-1] if lines else 'no message'}")
        if code == 0 and self._cut_short:
            raise BackupError(f"{self._failure}: it exited before reading all of its input")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(kill=exc_type is not None)
        return False


def threaded(iterable, depth=4):
    """Iterate ``iterable`` on a thread of its own (so its work overlaps the consumer's); yield
    its items in order. Close the generator to stop the thread early."""
    items = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item):
        while not stop.is_set():
            try:
                items.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in iterable:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def tool_version(argv):
    """The first line of a tool's ``--version`` output, or None when it cannot be run."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(argv, capture_output=True, check=False, timeout=30).stdout
        return out.decode("utf-8", "replace").strip().splitlines()[0]
    return None
