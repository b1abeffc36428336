"""Pure logic of the backup primitives: names, option validation, modes, streaming codecs."""

import datetime
import gzip
import io
import os
import shutil

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils import catalog, fsutil, options, verification
from ansible_collections.tradingbot.ops.plugins.module_utils import compression as codecs
from ansible_collections.tradingbot.ops.plugins.module_utils.engines import pg_client
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import BackupError

UTC = datetime.UTC
MOMENT = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("engine", "fmt", "compression", "expected"),
    [
        ("sqlite", "plain", "gzip", "sqlite_backup_20250102_030405.db.gz"),
        ("sqlite", "plain", "zstd", "sqlite_backup_20250102_030405.db.zst"),
        ("sqlite", "plain", "none", "sqlite_backup_20250102_030405.db"),
        ("postgresql", "plain", "gzip", "postgres_backup_20250102_030405.sql.gz"),
        ("postgresql", "plain", "zstd", "postgres_backup_20250102_030405.sql.zst"),
        ("postgresql", "custom", "gzip", "postgres_backup_20250102_030405.dump"),
        ("postgresql", "custom", "zstd", "postgres_backup_20250102_030405.dump.zst"),
    ],
)
def test_names_round_trip(engine, fmt, compression, expected):
    name = catalog.backup_name(engine, MOMENT, fmt, compression)
    assert name == expected
    parsed = catalog.parse_backup_name(name)
    assert parsed["engine"] == engine
    assert parsed["timestamp"] == MOMENT
    assert parsed["format"] == fmt


def test_names_are_utc():
    tokyo = datetime.timezone(datetime.timedelta(hours=9))
    assert catalog.backup_name("sqlite", MOMENT.astimezone(tokyo)) == "sqlite_backup_20250102_030405.db.gz"


@pytest.mark.parametrize(
    "name",
    [
        "sqlite_backup_20250102_030405.sql.gz",
        "postgres_backup_20250102_030405.db.gz",
        "postgres_backup_20250102_030405.dump.gz",
        "sqlite_backup_20251302_030405.db.gz",
        "sqlite_backup_20250102_030405.db.gz.manifest.json",
        ".sqlite_backup_20250102_030405.db.gz.tmp-12",
        "backup.db.gz",
    ],
)
def test_foreign_names_are_rejected(name):
    assert catalog.parse_backup_name(name) is None


def test_unknown_compression_is_refused():
    with pytest.raises(BackupError, match="unknown compression 'lz4'"):
        catalog.backup_name("sqlite", MOMENT, "plain", "lz4")


def test_validate_options_fills_defaults_and_converts():
    opts = options.validate_options(
        options.BACKUP_OPTIONS, {"engine": "sqlite", "database": "/d.db", "backup_dir": "/b", "lock_timeout": "5"}
    )
    assert opts["lock_timeout"] == 5
    assert opts["compression"] == "gzip"
    assert opts["retention_days"] == 7
    assert set(opts) == set(options.BACKUP_OPTIONS)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"engine": "sqlite", "database": "/d"}, "missing required option backup_dir"),
        ({"engine": "mysql", "database": "/d", "backup_dir": "/b"}, "engine must be one of"),
        ({"engine": "sqlite", "database": "/d", "backup_dir": "/b", "retention_days": "a week"}, "must be an integer"),
        ({"engine": "sqlite", "database": "/d", "backup_dir": "/b", "content_digest": "yes"}, "true or false"),
        ({"engine": "sqlite", "database": "/d", "backup_dir": "/b", "compression": "lz4"}, "compression must be one"),
        ({"engine": "sqlite", "database": "/d", "backup_dir": "/b", "retention": 7}, "unknown option"),
        ({"engine": "sqlite", "database": ["/d"], "backup_dir": "/b"}, "database must be a string"),
    ],
)
def test_validate_options_rejects_bad_input(values, message):
    with pytest.raises(BackupError, match=message):
        options.validate_options(options.BACKUP_OPTIONS, values)


@pytest.mark.parametrize(("value", "expected"), [("0640", 0o640), ("600", 0o600), (0o640, 0o640)])
def test_parse_mode(value, expected):
    assert options.parse_mode(value) == expected


@pytest.mark.parametrize("value", ["rw-r-----", "0999", "", "12345"])
def test_parse_mode_rejects(value):
    with pytest.raises(BackupError, match="mode"):
        options.parse_mode(value)


def test_pg_connection_env_carries_password_in_env_only():
    params = {"database": "db", "pg_host": "h", "pg_port": 5433, "pg_user": "u", "pg_password": "pw"}
    env = pg_client.pg_connection_env(params, base={"PATH": "/bin", "PGPASSWORD": "inherited", "PGSERVICE": "x"})
    assert env["PGPASSWORD"] == "pw"
    assert env["PGHOST"] == "h"
    assert env["PGPORT"] == "5433"
    assert env["PGDATABASE"] == "db"
    assert "PGSERVICE" not in env
    assert env["PATH"] == "/bin"


def test_redact():
    assert pg_client.pg_redact("failed for pw!", {"pg_password": "pw!"}) == "failed for ********"


def _payload(size):
    # Compressible but not trivial: repeated lines with a counter.
    out = io.BytesIO()
    i = 0
    while out.tell() < size:
        out.write(f"row {i} {'x' * (i % 50)}\n".encode())
        i += 1
    return out.getvalue()[:size]


@pytest.mark.parametrize("compression", ["gzip", "none", "zstd"])
@pytest.mark.parametrize("size", [0, 1, fsutil.CHUNK_SIZE * 3 + 17])
def test_compress_then_decode_round_trip(tmp_path, compression, size):
    if compression == "zstd" and not shutil.which("zstd"):
        pytest.skip("zstd binary not installed")
    data = _payload(size)
    target = tmp_path / "out"
    with open(target, "wb") as handle:
        written = codecs.compress_stream(io.BytesIO(data), handle, compression, 3, workers=2)
    assert written["raw_size"] == size
    assert written["size"] == os.path.getsize(target)
    decoded = codecs.decode_file(str(target), compression)
    assert decoded["decoded_size"] == size
    assert decoded["decoded_sha256"] == written["raw_sha256"]
    assert decoded["sha256"] == written["sha256"] == fsutil.sha256_file(target)
    if compression == "gzip":
        # Standard tools read the multi-member stream too.
        assert gzip.decompress(target.read_bytes()) == data
    with codecs.open_decompressed(str(target), compression) as reader:
        assert reader.read() == data


def test_truncated_gzip_is_detected(tmp_path):
    target = tmp_path / "out.gz"
    with open(target, "wb") as handle:
        codecs.compress_stream(io.BytesIO(_payload(3 * fsutil.CHUNK_SIZE)), handle, "gzip", 6, workers=2)
    blob = target.read_bytes()
    target.write_bytes(blob[: len(blob) - 100])
    with pytest.raises(BackupError, match="truncated"):
        codecs.decode_file(str(target), "gzip")


def test_flipped_byte_in_gzip_is_detected(tmp_path):
    target = tmp_path / "out.gz"
    with open(target, "wb") as handle:
        codecs.compress_stream(io.BytesIO(_payload(3 * fsutil.CHUNK_SIZE)), handle, "gzip", 6, workers=2)
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(BackupError):
        codecs.decode_file(str(target), "gzip")


def test_flipped_byte_in_zstd_is_detected(tmp_path):
    if not shutil.which("zstd"):
        pytest.skip("zstd binary not installed")
    target = tmp_path / "out.zst"
    with open(target, "wb") as handle:
        codecs.compress_stream(io.BytesIO(_payload(3 * fsutil.CHUNK_SIZE)), handle, "zstd", 3, workers=2)
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(BackupError, match="does not decode"):
        codecs.decode_file(str(target), "zstd")


def _zstd_compressor_with(monkeypatch, change_output=None, change_input=None):
    """Run the real zstd compressor, with its input or its output changed on the way."""
    real = codecs.zstd_compressor

    def compressor(feed, level):
        pipe = real(change_input(feed) if change_input else feed, level)
        if change_output is None:
            return pipe
        return _Wrapped(pipe, change_output)

    monkeypatch.setattr(codecs, "zstd_compressor", compressor)


class _Wrapped:
    def __init__(self, pipe, change):
        self.pipe, self.change = pipe, change

    def __enter__(self):
        self.pipe.__enter__()
        return self.change(iter(self.pipe))

    def __exit__(self, *exc):
        return self.pipe.__exit__(*exc)


def test_zstd_output_corrupted_on_its_way_to_the_file_is_refused(tmp_path, monkeypatch):
    if not shutil.which("zstd"):
        pytest.skip("zstd binary not installed")

    def flip(chunks):
        for chunk in chunks:
            flipped = bytearray(chunk)
            flipped[len(flipped) // 2] ^= 0x01
            yield bytes(flipped)

    _zstd_compressor_with(monkeypatch, change_output=flip)
    with open(tmp_path / "out.zst", "wb") as handle, pytest.raises(BackupError, match="does not decode"):
        codecs.compress_stream(io.BytesIO(_payload(3 * fsutil.CHUNK_SIZE)), handle, "zstd", 3)


def test_zstd_input_cut_short_is_refused_by_its_decoded_size(tmp_path, monkeypatch):
    if not shutil.which("zstd"):
        pytest.skip("zstd binary not installed")

    def all_but_the_last(chunks):
        pending = None
        for chunk in chunks:
            if pending is not None:
                yield pending
            pending = chunk

    _zstd_compressor_with(monkeypatch, change_input=all_but_the_last)
    target = tmp_path / "out.zst"
    with open(target, "wb") as handle:
        written = codecs.compress_stream(io.BytesIO(_payload(3 * fsutil.CHUNK_SIZE)), handle, "zstd", 3)
    assert written["decoded_size"] == 2 * fsutil.CHUNK_SIZE < written["raw_size"]
    with pytest.raises(BackupError, match="size mismatch"):
        verification.check_written(str(target), written)
