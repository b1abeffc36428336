"""The parts of an S3 upload: a few fixed buffers, read from a stream in turn.

Memory stays at ``buffers`` parts for the whole upload, however large the backup.
"""

from __future__ import annotations


def read_parts(stream, size, buffers=1):
    """Yield ``stream`` in parts of ``size`` bytes, each a bytearray of exactly its length (the
    last may be shorter; only an empty stream gives an empty part), taken from ``buffers`` buffers in turn: a part
    stays valid until ``buffers`` more have been read.

    The buffers are allocated once for the whole upload, so the heap cannot fragment into more
    parts' worth than that, and only as they are needed (a small file takes one). A part is the
    buffer itself, not a view or a copy: botocore sends a bytearray body in one ``sendall`` and
    hashes it for the signature in one call, where a file-like body is read and sent 8 KiB at a
    time. The last part is its buffer cut down in place; no part is read after it.
    """
    pool = []
    index = 0
    while True:
        if len(pool) < buffers:
            pool.append(bytearray(size))
        buffer = pool[index % buffers]
        filled = 0
        with memoryview(buffer) as view:
            while filled < size:
                count = stream.readinto(view[filled:])
                if not count:
                    break
                filled += count
        if filled < size:
            if filled or not index:
                del buffer[filled:]
                yield buffer
            return
        yield buffer
        index += 1
