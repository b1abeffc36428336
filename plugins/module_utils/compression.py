"""Compression codecs: gzip on a thread pool, zstd as a child pipe, and full decoding (stdlib only).

The one place that knows the compressions, their levels and their file-name suffixes.
"""

import collections
import concurrent.futures
import contextlib
import functools
import gzip
import hashlib
import itertools
import os
import re
import shutil
import zlib

from .errors import BackupError
from .fsutil import CHUNK_SIZE
from .streams import ChildPipe, threaded

COMPRESSIONS = ("gzip", "zstd", "none")
DEFAULT_LEVELS = {"gzip": 6, "zstd": 3, "none": 0}
LEVEL_RANGES = {"gzip": (1, 9), "zstd": (1, 19), "none": (0, 0)}
# The whole-file compression's file-name suffix, both ways.
COMPRESSION_SUFFIX = {"gzip": ".gz", "zstd": ".zst", "none": ""}
SUFFIX_COMPRESSION = {suffix: name for name, suffix in COMPRESSION_SUFFIX.items()}
# Compressed gzip members in flight per worker: bounds memory whatever the database size.
_INFLIGHT_PER_WORKER = 2
# The start of every gzip member zlib writes (deflate, no flags, no mtime): where the members of
# compress_stream's files begin, so that a decoder can inflate them side by side.
_GZIP_MEMBER_START = b"\x1f\x8b\x08\x00\x00\x00\x00\x00"
# A piece handed to one worker ends at the next member start, or here whatever follows.
_PIECE_LIMIT = 4 * CHUNK_SIZE
# What one worker may inflate from a piece: a member of compress_stream decodes to CHUNK_SIZE.
_PIECE_OUTPUT_LIMIT = 2 * CHUNK_SIZE
# How compress_stream proves, per compression, that what it wrote decodes to the source.
_DECODE_CHECKS = {
    "gzip": "decoded while writing (gzip): every member inflated again and equal to its source bytes",
    "zstd": "decoded while writing (zstd -t): XXH64 content checksum and decoded size equal the source's",
    "none": "written as read",
}
# zstd -t -v's last line: "<name> : <decoded size> bytes".
_ZSTD_TESTED = re.compile(r":\s*(\d+) bytes\s*$")


def compression_of(path):
    """Return the whole-file compression of a path from its suffix: gzip, zstd or none."""
    path = str(path)
    for name, suffix in COMPRESSION_SUFFIX.items():
        if suffix and path.endswith(suffix):
            return name
    return "none"


def compression_workers():
    """Threads for gzip compression: the machine's cores, capped (zlib releases the GIL)."""
    return max(1, min(os.cpu_count() or 1, 4))


def zstd_binary():
    """Return the path of the ``zstd`` binary, or raise BackupError with a clear message."""
    found = shutil.which("zstd")
    if not found:
        raise BackupError("compression zstd was requested but the zstd binary is not installed (apt install zstd)")
    return found


def gunzip(chunks):
    """Inflate a (possibly multi-member) gzip stream given as chunks; yield decoded pieces of at
    most CHUNK_SIZE bytes, so memory stays bounded whatever the compression ratio."""
    decoder = zlib.decompressobj(wbits=31)
    in_member = False
    try:
        for piece in chunks:
            data = piece
            while True:
                in_member = in_member or bool(data)
                out = decoder.decompress(data, CHUNK_SIZE)
                if out:
                    yield out
                if decoder.eof:
                    data = decoder.unused_data  # a further member may follow
                    decoder = zlib.decompressobj(wbits=31)
                    in_member = False
                    if not data:
                        break
                    continue
                data = decoder.unconsumed_tail
                if not data and len(out) < CHUNK_SIZE:
                    break
    except zlib.error as exc:
        raise BackupError(f"the gzip stream does not decode: {exc}") from exc
    if in_member:
        raise BackupError("the gzip stream is truncated (it ends inside a member)")


def _in_order(function, items, workers, window=None):
    """Yield ``(item, function(item))`` for each of ``items``, in their order, computed on
    ``workers`` threads at most ``_INFLIGHT_PER_WORKER`` items per worker ahead, so memory stays
    bounded. ``window``, when given, holds what was handed to the threads and not yet yielded:
    a caller that stops early takes those items over. Closing cancels what has not started."""
    window = collections.deque() if window is None else window
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for item in items:
                window.append((item, pool.submit(function, item)))
                while len(window) > workers * _INFLIGHT_PER_WORKER:
                    first, result = window.popleft()
                    yield first, result.result()
            while window:
                first, result = window.popleft()
                yield first, result.result()
        finally:
            for _item, result in window:
                result.cancel()


def gzip_pieces(chunks):
    """Cut a gzip stream, given as chunks, where a member starts; yield the pieces.

    A piece is whole members when every member start is found and none is faked by the bytes
    inside a member; a piece is cut at ``_PIECE_LIMIT`` when no start follows (a file of one
    large member). ``gunzip_parallel`` tells the cases apart.
    """
    buffered = b""
    scanned = 1  # where the search for the next start resumes: past the piece's own start
    for chunk in chunks:
        buffered += chunk
        while True:
            cut = buffered.find(_GZIP_MEMBER_START, scanned)
            if cut < 0 and len(buffered) > _PIECE_LIMIT:
                cut = _PIECE_LIMIT
            if cut < 0:
                scanned = max(1, len(buffered) - len(_GZIP_MEMBER_START) + 1)
                break
            yield buffered[:cut]
            buffered = buffered[cut:]
            scanned = 1
    if buffered:
        yield buffered


def _inflate_piece(piece):
    """Inflate a piece that is exactly one gzip member; None when it is anything else."""
    decoder = zlib.decompressobj(wbits=31)
    try:
        out = decoder.decompress(piece, _PIECE_OUTPUT_LIMIT)
    except zlib.error:
        return None
    if decoder.eof and not decoder.unused_data and not decoder.unconsumed_tail:
        return out
    return None


def gunzip_parallel(chunks, workers):
    """``gunzip``, with the members of ``chunks`` inflated on ``workers`` threads (zlib releases
    the GIL); yield the decoded pieces in order.

    Each piece ``gzip_pieces`` cuts is inflated on its own as one member. The first piece that
    is not exactly one member (a member start faked by the bytes in a member, a member larger
    than a piece, a corrupt or truncated member) and everything after it go through ``gunzip``
    in this thread, which decodes any gzip stream and raises on a bad one.
    """
    if workers < 2:
        yield from gunzip(chunks)
        return
    pieces = gzip_pieces(chunks)
    window = collections.deque()
    inflated = _in_order(_inflate_piece, pieces, workers, window)
    with contextlib.closing(inflated):
        for piece, out in inflated:
            if out is None:
                rest = [piece, *(later for later, _inflation in window)]
                break
            if out:
                yield out
        else:
            return
    yield from gunzip(itertools.chain(rest, pieces))


def zstd_decompressor(feed):
    """A ``ChildPipe`` decoding the zstd stream ``feed`` (zstd checks its frame checksums)."""
    return ChildPipe([zstd_binary(), "-d", "-c", "-q"], "the zstd stream does not decode", feed)


def zstd_compressor(feed, level):
    """A ``ChildPipe`` compressing ``feed`` with zstd at ``level``."""
    # One thread: zstd -3 outruns pg_dump and the SQLite integrity check that run beside it,
    # and multi-threaded zstd needs ~40-60 MiB of buffers against 7 MiB single-threaded.
    argv = [zstd_binary(), f"-{level}", "--check", "--single-thread", "-q", "-c", "--no-progress"]
    return ChildPipe(argv, "zstd failed", feed)


def open_decompressed(path, compression=None):
    """Open a backup file for streaming reads of its decompressed bytes.

    ``compression`` defaults to the one implied by the file suffix. Returns a binary reader
    usable as a context manager; a corrupt gzip stream raises ``EOFError``/``OSError``/
    ``zlib.error`` while reading, a corrupt zstd stream raises BackupError on close().
    zstd runs as a child process through pipes (never a shell).
    """
    compression = compression or compression_of(path)
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "zstd":
        return ChildPipe([zstd_binary(), "-d", "-c", "-q", "--", str(path)], f"zstd -d {path} failed")
    if compression == "none":
        return open(path, "rb")
    raise BackupError(f"unknown compression {compression!r}")


def decode_file(path, compression, sink=None, hash_decoded=True):
    """Read a backup file once and decode it completely, in constant memory; return digests.

    Returns ``{sha256, size}`` of the file's bytes and ``{decoded_sha256, decoded_size, head,
    tail}`` of the decoded stream (``decoded_sha256`` is None unless ``hash_decoded``;
    ``head``/``tail`` are its first 16 and last 4096 bytes). ``sink``, when given, receives
    every decoded chunk (a temp file, pg_restore's stdin); what it raises propagates. Reading
    and hashing the file, decoding (gzip: members side by side on a thread pool; zstd: a child
    process), and hashing the decoded stream overlap on separate threads. Raises BackupError
    when the file does not decode.
    """
    file_sha = hashlib.sha256()
    size = 0

    def read_hashed():
        nonlocal size
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK_SIZE), b""):
                file_sha.update(chunk)
                size += len(chunk)
                yield chunk

    decoded_sha = hashlib.sha256() if hash_decoded else None
    decoded_size = 0
    head = tail = b""
    with contextlib.ExitStack() as stack:
        # Closed in reverse order: each consumer thread is joined before what it reads is closed.
        if compression == "gzip":
            decoded = gunzip_parallel(
                stack.enter_context(contextlib.closing(threaded(read_hashed()))), compression_workers()
            )
            stack.enter_context(contextlib.closing(decoded))
        elif compression == "zstd":
            decoded = stack.enter_context(zstd_decompressor(read_hashed()))
        elif compression == "none":
            decoded = stack.enter_context(contextlib.closing(read_hashed()))
        else:
            raise BackupError(f"unknown compression {compression!r}")
        if hash_decoded:
            decoded = stack.enter_context(contextlib.closing(threaded(decoded)))
        for chunk in decoded:
            if len(head) < 16:
                head += chunk[: 16 - len(head)]
            tail = (tail + chunk[-4096:])[-4096:]
            decoded_size += len(chunk)
            if decoded_sha is not None:
                decoded_sha.update(chunk)
            if sink is not None:
                sink(chunk)
    return {
        "sha256": file_sha.hexdigest(),
        "size": size,
        "decoded_sha256": decoded_sha.hexdigest() if decoded_sha is not None else None,
        "decoded_size": decoded_size,
        "head": head,
        "tail": tail,
    }


def _gzip_member(data, level):
    """One gzip member holding ``data``, decoded again at once: the bytes written are proven
    to decode to the source beside the dump, not in a second pass over the file."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    member = comp.compress(data) + comp.flush()
    if zlib.decompress(member, 31) != data:
        raise BackupError("a gzip member does not decode to its source bytes")
    return member


class _Sink:
    """Writes compressed bytes to the temp file and hashes them as they pass."""

    def __init__(self, handle):
        self.handle = handle
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.handle.write(data)
        self.sha.update(data)
        self.size += len(data)


def _write_gzip(chunks, sink, level, workers):
    """Compress ``chunks`` into gzip members on ``workers`` threads, each decoded again there."""
    size = 0
    members = _in_order(functools.partial(_gzip_member, level=level), chunks, workers)
    with contextlib.closing(members):
        for chunk, member in members:
            size += len(chunk)
            sink.write(member)
    if size == 0:
        sink.write(_gzip_member(b"", level))
    return size


def zstd_tester(feed):
    """A ``ChildPipe`` running ``zstd -t -v`` on the zstd stream ``feed``: a full decode, checked
    against the frames' XXH64 content checksums, that writes nothing but the decoded size."""
    return ChildPipe([zstd_binary(), "-t", "-v", "-"], "the zstd stream written does not decode", feed)


def _write_zstd(chunks, sink, level):
    """Compress ``chunks`` with zstd and decode the output again with ``zstd -t``; return the
    decoded size.

    The compressor hashes its input into each frame (``--check``: XXH64) and ``zstd -t`` fails
    unless the decoded frames hash the same, so the decoded stream is the source; nothing
    decoded comes back through this process. The caller compares the size with the source's.
    """

    def written(compressed):
        for data in compressed:
            sink.write(data)
            yield data

    # Two stages overlap: a thread feeds zstd from the source, a thread writes zstd's output
    # and feeds it to zstd -t, while this one waits for zstd -t's verdict.
    with zstd_compressor(chunks, level) as compressed, zstd_tester(written(compressed)) as tester:
        tester.read()
    report = _ZSTD_TESTED.search(tester.messages[-1] if tester.messages else "")
    if report is None:
        raise BackupError(f"zstd -t did not report the decoded size: {' '.join(tester.messages[-1:]) or 'no output'}")
    return int(report.group(1))


def compress_stream(source, handle, compression, level, *, workers=None, observe=None):
    """Stream ``source`` (a binary reader) through ``compression`` into ``handle``, decoding
    what is written as it is written.

    Memory stays bounded: gzip runs as independent 1 MiB gzip members compressed (and decoded
    again) by a pool of ``workers`` threads (a valid multi-member gzip file that gzip -d and
    Python read); zstd as a single-threaded child process fed by a thread, its output decoded by
    ``zstd -t`` against its content checksum. ``observe``, when given, sees every source chunk
    (a row counter). Returns ``{raw_sha256, raw_size, sha256, size, decoded_size, decode_check,
    head, tail}``: ``decoded_size`` bytes of the output were decoded and equal the source (how:
    ``decode_check``), whose first 16 and last 4096 bytes are ``head`` and ``tail``. Raises
    BackupError otherwise.
    """
    sink = _Sink(handle)
    raw_sha = hashlib.sha256()
    raw_size = 0
    head = tail = b""

    def raw_chunks():
        nonlocal raw_size, head, tail
        # A thread of its own reads the source, so the writer of a pipe never waits on the
        # hashing, counting and compressing below.
        with contextlib.closing(threaded(iter(lambda: source.read(CHUNK_SIZE), b""))) as chunks:
            for chunk in chunks:
                raw_sha.update(chunk)
                if raw_size < 16:
                    head = (head + chunk)[:16]
                tail = (tail + chunk[-4096:])[-4096:]
                raw_size += len(chunk)
                if observe is not None:
                    observe(chunk)
                yield chunk

    if compression == "none":
        for chunk in raw_chunks():
            sink.write(chunk)
        decoded_size = raw_size  # written as read; the re-read of the file compares the bytes
    elif compression == "gzip":
        decoded_size = _write_gzip(raw_chunks(), sink, level, workers or compression_workers())
    elif compression == "zstd":
        decoded_size = _write_zstd(raw_chunks(), sink, level)
    else:
        raise BackupError(f"unknown compression {compression!r}")
    return {
        "raw_sha256": raw_sha.hexdigest(),
        "raw_size": raw_size,
        "sha256": sink.sha.hexdigest(),
        "size": sink.size,
        "decoded_size": decoded_size,
        "decode_check": _DECODE_CHECKS[compression],
        "head": head,
        "tail": tail,
    }
