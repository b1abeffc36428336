"""The parts of an S3 upload: fixed buffers read from a stream, and request bodies over them.

Memory stays at ``buffers`` parts for the whole upload, however large the backup.
"""

from __future__ import annotations

import io
import itertools


def read_parts(stream, size, buffers=1):
    """Yield ``stream`` in parts of ``size`` bytes (the last may be shorter, the first may be
    empty), as views of ``buffers`` buffers taken in turn: a part stays valid until ``buffers``
    more have been read. The buffers are allocated once for the whole upload, so the heap
    cannot fragment into more parts' worth than that."""
    pool = [bytearray(size) for _buffer in range(buffers)]
    for index in itertools.count():
        with memoryview(pool[index % buffers]) as view:
            filled = 0
            while filled < size:
                count = stream.readinto(view[filled:])
                if not count:
                    break
                filled += count
            with view[:filled] as part:
                yield part
        if filled < size:
            return


class PartBody(io.RawIOBase):
    """A seekable reader over one part's buffer, without copying it: botocore would otherwise
    wrap bytes in a BytesIO (a copy of a bytearray), and the part would sit in memory twice.
    Seekable, so a retry re-sends it. Closing it lets go of the buffer, whoever still holds
    the reader (botocore keeps request objects around until they are collected)."""

    def __init__(self, buffer):
        super().__init__()
        self._view = memoryview(buffer)
        self._pos = 0

    def __len__(self):
        return len(self._view)

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, target):
        count = min(len(target), len(self._view) - self._pos)
        target[:count] = self._view[self._pos : self._pos + count]
        self._pos += count
        return count

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self):
        return self._pos

    def close(self):
        if not self.closed:
            self._view.release()
        super().close()
