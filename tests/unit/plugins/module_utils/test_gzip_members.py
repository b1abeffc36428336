"""The gzip decoder of restores: the members of our backups inflated side by side, and any other
gzip stream decoded in order, with the same errors as the sequential decoder."""

import gzip
import io
import os
import random

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils import compression as codecs
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import BackupError
from ansible_collections.tradingbot.ops.plugins.module_utils.fsutil import CHUNK_SIZE


def _member(data, level=6):
    """One gzip member as compress_stream writes it."""
    return codecs._gzip_member(data, level)


def _rows(size, seed=7):
    generator = random.Random(seed)  # noqa: S311 - test rows, not secrets
    out = io.BytesIO()
    while out.tell() < size:
        out.write(f"{generator.randrange(10**9)} BTCUSDT {generator.random():.6f}\n".encode())
    return out.getvalue()[:size]


def _chunks(blob, size):
    return (blob[i : i + size] for i in range(0, len(blob), size))


@pytest.fixture
def in_order(monkeypatch):
    """How many times the decoder fell back to decoding in order."""
    calls = []
    sequential = codecs.gunzip

    def counted(chunks):
        calls.append(1)
        return sequential(chunks)

    monkeypatch.setattr(codecs, "gunzip", counted)
    return calls


def _decode(blob, workers=2, read_size=CHUNK_SIZE):
    return b"".join(codecs.gunzip_parallel(_chunks(blob, read_size), workers))


@pytest.mark.parametrize("read_size", [CHUNK_SIZE, 65537, 7])
def test_backup_members_are_inflated_side_by_side(tmp_path, in_order, read_size):
    data = _rows(5 * CHUNK_SIZE + 123)
    with open(tmp_path / "b.gz", "wb") as handle:
        codecs.compress_stream(io.BytesIO(data), handle, "gzip", 6, workers=2)
    blob = (tmp_path / "b.gz").read_bytes()
    assert len(list(codecs.gzip_pieces(_chunks(blob, read_size)))) == 6  # one piece a member
    assert _decode(blob, read_size=read_size) == data
    assert in_order == []


def test_a_member_start_inside_a_member_is_decoded_in_order(in_order):
    # Stored (level 0), the payload's bytes appear in the file as they are, member start included.
    faked = b"a" * 5000 + _member(b"an archived gzip file") + b"b" * 5000
    blob = _member(b"first") + _member(faked, level=0) + _member(b"last")
    assert len(list(codecs.gzip_pieces([blob]))) == 4
    assert _decode(blob) == b"first" + faked + b"last"
    assert in_order == [1]


def test_a_member_larger_than_a_piece_is_decoded_in_order(in_order):
    large = os.urandom(5 * CHUNK_SIZE)  # incompressible: the member exceeds a piece
    blob = _member(b"head") + _member(large) + _member(b"tail")
    assert _decode(blob) == b"head" + large + b"tail"
    assert in_order == [1]


def test_a_gzip_file_of_another_tool_is_decoded():
    data = _rows(3 * CHUNK_SIZE)
    out = io.BytesIO()
    with gzip.GzipFile(filename="trades.db", mode="wb", fileobj=out, mtime=1700000000) as handle:
        handle.write(data)
    assert _decode(out.getvalue()) == data


def test_one_worker_decodes_in_order(in_order):
    blob = _member(b"one") + _member(b"two")
    assert _decode(blob, workers=1) == b"onetwo"
    assert in_order == [1]


def _damaged_backup(tmp_path, damage):
    with open(tmp_path / "b.gz", "wb") as handle:
        codecs.compress_stream(io.BytesIO(_rows(4 * CHUNK_SIZE)), handle, "gzip", 6, workers=2)
    return damage(bytearray((tmp_path / "b.gz").read_bytes()))


def _flip_middle(blob):
    blob[len(blob) // 2] ^= 0xFF
    return bytes(blob)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_flip_middle, "does not decode"),
        (lambda blob: bytes(blob[:-100]), "truncated"),
        (lambda blob: bytes(blob) + b"\0\0\0\0", "does not decode"),
    ],
    ids=["flipped byte", "truncated", "trailing bytes"],
)
def test_a_damaged_backup_is_refused(tmp_path, damage, message):
    blob = _damaged_backup(tmp_path, damage)
    with pytest.raises(BackupError, match=message):
        _decode(blob)


def test_the_pieces_in_flight_stay_bounded(tmp_path, monkeypatch):
    """The reader runs at most a window ahead of what has been handed on."""
    data = _rows(40 * CHUNK_SIZE)
    with open(tmp_path / "b.gz", "wb") as handle:
        codecs.compress_stream(io.BytesIO(data), handle, "gzip", 1, workers=2)
    blob = (tmp_path / "b.gz").read_bytes()
    read = []
    counted = (read.append(len(chunk)) or chunk for chunk in _chunks(blob, CHUNK_SIZE))
    decoded = codecs.gunzip_parallel(counted, 2)
    next(decoded)
    assert sum(read) < 8 * CHUNK_SIZE < len(blob)
    decoded.close()
