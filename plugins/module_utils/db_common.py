"""Primitives shared by the backup engine and the restore engine (stdlib only).

This file runs on controllers and on hosts (deployed as the plain package ``tradingbot_ops``),
so it imports nothing from Ansible and only relative modules of its own package.

Backup file names (UTC timestamps, the original script's names)::

    sqlite_backup_YYYYMMDD_HHMMSS.db.gz      sqlite, gzip (default)
    sqlite_backup_YYYYMMDD_HHMMSS.db.zst     sqlite, zstd
    sqlite_backup_YYYYMMDD_HHMMSS.db         sqlite, uncompressed
    postgres_backup_YYYYMMDD_HHMMSS.sql.gz   postgresql plain SQL, gzip (default)
    postgres_backup_YYYYMMDD_HHMMSS.sql.zst  postgresql plain SQL, zstd
    postgres_backup_YYYYMMDD_HHMMSS.sql      postgresql plain SQL, uncompressed
    postgres_backup_YYYYMMDD_HHMMSS.dump     postgresql custom format; with ``gzip`` pg_dump
                                             compresses inside the archive (``-Z level``),
                                             with ``none`` it does not (``-Z 0``)
    postgres_backup_YYYYMMDD_HHMMSS.dump.zst postgresql custom format written with ``-Z 0``
                                             and compressed by zstd outside

Every backup has a sidecar manifest ``<backup file>.manifest.json`` (see ``MANIFEST_KEYS``).
A file counts as one of ours only when its name matches ``BACKUP_NAME_RE`` and its manifest
says ``created_by: tradingbot.ops``; nothing else is ever listed, restored or deleted.
"""

# This package also runs on hosts outside Ansible (the backup timer), where run_command,
# exit_json and module.log do not exist.
# pylint: disable=ansible-bad-function

import contextlib
import datetime
import errno
import fcntl
import gzip
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import zlib

CREATED_BY = "tradingbot.ops"
MANIFEST_FORMAT_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
CHUNK_SIZE = 1024 * 1024

ENGINES = ("sqlite", "postgresql")
COMPRESSIONS = ("gzip", "zstd", "none")
PG_FORMATS = ("plain", "custom")
DEFAULT_LEVELS = {"gzip": 6, "zstd": 3, "none": 0}
LEVEL_RANGES = {"gzip": (1, 9), "zstd": (1, 19), "none": (0, 0)}

# Keys every manifest carries; ``content_digest`` may be null when it was not computed.
MANIFEST_KEYS = (
    "format_version",
    "created_by",
    "file",
    "engine",
    "format",
    "compression",
    "compression_level",
    "sha256",
    "size",
    "uncompressed_size",
    "uncompressed_sha256",
    "source",
    "started_at",
    "finished_at",
    "duration_seconds",
    "tool_versions",
    "tables",
    "content_digest",
    "verification",
)

_FILE_PREFIX = {"sqlite": "sqlite", "postgresql": "postgres"}
_COMPRESSION_SUFFIX = {"gzip": ".gz", "zstd": ".zst", "none": ""}

BACKUP_NAME_RE = re.compile(
    r"^(?P<prefix>sqlite|postgres)_backup_(?P<stamp>\d{8}_\d{6})"
    r"\.(?P<ext>db|sql|dump)(?P<csuffix>\.gz|\.zst)?$"
)
STAMP_FORMAT = "%Y%m%d_%H%M%S"
SQLITE_HEADER = b"SQLite format 3\x00"
PG_DUMP_COMPLETE = b"-- PostgreSQL database dump complete"


class BackupError(Exception):
    """A backup or restore step failed; the message is one clear line for the operator."""


# Options shared by db_backup and db_restore, in AnsibleModule argument_spec form. The modules
# use it as their argument_spec; the host-side CLIs validate their JSON config against it
# (``validate_options``). plugins/doc_fragments/database.py documents exactly these.
COMMON_OPTIONS = {
    "engine": {"type": "str", "required": True, "choices": list(ENGINES)},
    "database": {"type": "str", "required": True},
    "backup_dir": {"type": "path", "required": True},
    "pg_host": {"type": "str"},
    "pg_port": {"type": "int", "default": 5432},
    "pg_user": {"type": "str"},
    "pg_password": {"type": "str", "no_log": True},
    "pg_passfile": {"type": "path"},
    "pg_bin_dir": {"type": "path"},
    "pg_connect_timeout": {"type": "int", "default": 10},
}


def _convert(name, kind, value):
    if kind in ("str", "path"):
        if not isinstance(value, str):
            raise BackupError(f"option {name} must be a string, got {type(value).__name__}")
        return os.path.expanduser(value) if kind == "path" else value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
                return int(value)
            raise BackupError(f"option {name} must be an integer, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BackupError(f"option {name} must be a number, got {value!r}")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise BackupError(f"option {name} must be true or false, got {value!r}")
        return value
    raise BackupError(f"option {name} has an unsupported type {kind}")


def validate_options(spec, values):
    """Check a plain dict of options against an argument_spec-style ``spec``.

    For callers without AnsibleModule (the host-side CLIs): rejects unknown keys, missing
    required ones, wrong types and values outside ``choices``; fills in defaults. Returns a
    new dict with every key of ``spec``.
    """
    if not isinstance(values, dict):
        raise BackupError("the configuration must be a JSON object of option names to values")
    unknown = sorted(set(values) - set(spec))
    if unknown:
        raise BackupError(f"unknown option(s): {', '.join(unknown)}")
    result = {}
    for name, rules in spec.items():
        value = values.get(name)
        if value is None:
            if rules.get("required"):
                raise BackupError(f"missing required option {name}")
            result[name] = rules.get("default")
            continue
        value = _convert(name, rules.get("type", "str"), value)
        if "choices" in rules and value not in rules["choices"]:
            raise BackupError(f"option {name} must be one of {', '.join(map(str, rules['choices']))}, got {value!r}")
        result[name] = value
    return result


def lock_path(backup_dir, engine):
    """Return the lock file that serialises backups/restores of one engine in one backup dir."""
    return os.path.join(str(backup_dir), f".{_FILE_PREFIX[engine]}_backup.lock")


@contextlib.contextmanager
def dir_lock(backup_dir, engine, timeout):
    """Hold an exclusive flock on ``lock_path(backup_dir, engine)``.

    Waits up to ``timeout`` seconds (0: fail at once) and then raises BackupError naming the
    holder's pid. The lock dies with its process, so a killed run never leaves it stuck.
    """
    path = lock_path(backup_dir, engine)
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
                raise BackupError(
                    f"another {engine} backup or restore is running on {backup_dir} (lock {path} held by pid "
                    f"{holder}); gave up after waiting {timeout}s"
                )
            time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)


def utcnow():
    """Return the current time as an aware UTC datetime."""
    return datetime.datetime.now(datetime.UTC)


def isoformat(moment):
    """Format an aware datetime as ``YYYY-MM-DDTHH:MM:SSZ`` (second precision, UTC)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def backup_name(engine, moment, fmt="plain", compression="gzip"):
    """Build the file name of a backup taken at ``moment`` (aware datetime, rendered in UTC).

    ``engine`` is ``sqlite`` or ``postgresql``; ``fmt`` is ``plain`` or ``custom`` (postgresql);
    ``compression`` is ``gzip``, ``zstd`` or ``none``. Custom format with gzip is compressed by
    pg_dump itself, so its name ends in ``.dump`` without ``.gz``.
    """
    if engine not in ENGINES:
        raise BackupError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if compression not in COMPRESSIONS:
        raise BackupError(f"unknown compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}")
    if fmt not in PG_FORMATS:
        raise BackupError(f"unknown format {fmt!r}: expected one of {', '.join(PG_FORMATS)}")
    stamp = moment.astimezone(datetime.UTC).strftime(STAMP_FORMAT)
    if engine == "sqlite":
        ext = ".db"
    elif fmt == "custom":
        ext = ".dump"
    else:
        ext = ".sql"
    suffix = _COMPRESSION_SUFFIX[compression]
    if fmt == "custom" and compression == "gzip":
        suffix = ""
    return f"{_FILE_PREFIX[engine]}_backup_{stamp}{ext}{suffix}"


def parse_backup_name(name):
    """Parse a backup file name; return a dict or None when it is not one of our names.

    Keys: ``engine``, ``timestamp`` (aware UTC datetime), ``format`` (``plain``/``custom``),
    ``file_compression`` (compression applied to the file as a whole: ``gzip``/``zstd``/``none``;
    a custom-format ``.dump`` reports ``none`` even if pg_dump compressed inside it).
    """
    match = BACKUP_NAME_RE.match(name)
    if not match:
        return None
    prefix, ext = match.group("prefix"), match.group("ext")
    if (prefix == "sqlite") != (ext == "db"):
        return None
    if ext == "dump" and match.group("csuffix") == ".gz":
        return None
    try:
        moment = datetime.datetime.strptime(match.group("stamp"), STAMP_FORMAT)
    except ValueError:
        return None
    suffix = match.group("csuffix") or ""
    return {
        "engine": "sqlite" if prefix == "sqlite" else "postgresql",
        "timestamp": moment.replace(tzinfo=datetime.UTC),
        "format": "custom" if ext == "dump" else "plain",
        "file_compression": {".gz": "gzip", ".zst": "zstd", "": "none"}[suffix],
    }


def manifest_path(backup_path):
    """Return the sidecar manifest path of a backup file."""
    return str(backup_path) + MANIFEST_SUFFIX


def read_manifest(path):
    """Read a manifest JSON file; raise BackupError when it is missing or not a JSON object.

    ``path`` may be the manifest itself or the backup file it belongs to.
    """
    path = str(path)
    if not path.endswith(MANIFEST_SUFFIX):
        path = manifest_path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as exc:
        raise BackupError(f"manifest {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise BackupError(f"cannot read manifest {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise BackupError(f"manifest {path} is not a JSON object")
    return data


def fsync_dir(path):
    """fsync a directory so that renames and unlinks inside it survive a crash."""
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path, data, mode=0o640, uid=-1, gid=-1):
    """Write ``data`` as JSON to ``path`` atomically: temp file, fsync, chmod/chown, rename, dir fsync.

    ``uid``/``gid`` of -1 leave the owner unchanged.
    """
    path = str(path)
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if uid != -1 or gid != -1:
            os.chown(tmp, uid, gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def sha256_file(path, chunk_size=CHUNK_SIZE):
    """Return the hex SHA-256 of a file, read in constant memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def compression_of(path):
    """Return the whole-file compression of a path from its suffix: gzip, zstd or none."""
    path = str(path)
    if path.endswith(".gz"):
        return "gzip"
    if path.endswith(".zst"):
        return "zstd"
    return "none"


def zstd_binary():
    """Return the path of the ``zstd`` binary, or raise BackupError with a clear message."""
    found = shutil.which("zstd")
    if not found:
        raise BackupError("compression zstd was requested but the zstd binary is not installed (apt install zstd)")
    return found


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
        # A file, so a chatty child never blocks on stderr; close() closes it.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            stdin = subprocess.DEVNULL if feed is None else subprocess.PIPE
            self._proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=self._stderr)
        except BaseException:
            self._stderr.close()
            raise
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


def zstd_decompressor(feed):
    """A ``ChildPipe`` decoding the zstd stream ``feed`` (zstd checks its frame checksums)."""
    return ChildPipe([zstd_binary(), "-d", "-c", "-q"], "the zstd stream does not decode", feed)


def zstd_compressor(feed, level):
    """A ``ChildPipe`` compressing ``feed`` with zstd at ``level``."""
    # One thread: zstd -3 outruns pg_dump and the SQLite integrity check that run beside it,
    # and multi-threaded zstd needs ~40-60 MiB of buffers against 7 MiB single-threaded.
    return ChildPipe([zstd_binary(), f"-{level}", "--single-thread", "-q", "-c", "--no-progress"], "zstd failed", feed)


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
    and hashing the file, decoding, and hashing the decoded stream overlap on separate threads
    (zstd: a child process). Raises BackupError when the file does not decode.
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
            decoded = gunzip(stack.enter_context(contextlib.closing(threaded(read_hashed()))))
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


def list_backups(backup_dir, engine=None):
    """List our backups in ``backup_dir``, newest first.

    Only files whose name matches ``BACKUP_NAME_RE`` (for ``engine``, when given) and that
    have a readable manifest with ``created_by: tradingbot.ops`` are listed. Each entry is a
    dict: ``path``, ``name``, ``timestamp`` (aware UTC datetime), ``verified`` (bool, from the
    manifest's verification.ok) and ``manifest`` (the parsed dict).
    """
    entries = []
    try:
        names = os.listdir(backup_dir)
    except FileNotFoundError:
        return entries
    for name in names:
        parsed = parse_backup_name(name)
        if parsed is None or (engine and parsed["engine"] != engine):
            continue
        path = os.path.join(backup_dir, name)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        try:
            manifest = read_manifest(manifest_path(path))
        except BackupError:
            continue
        if manifest.get("created_by") != CREATED_BY or manifest.get("file") != name:
            continue
        verification = manifest.get("verification") or {}
        entries.append(
            {
                "path": path,
                "name": name,
                "timestamp": parsed["timestamp"],
                "verified": verification.get("ok") is True,
                "manifest": manifest,
            }
        )
    entries.sort(key=lambda entry: (entry["timestamp"], entry["name"]), reverse=True)
    return entries


def _sqlite_connect_ro(path):
    if not os.path.isfile(path):
        raise BackupError(f"SQLite database {path} does not exist")
    # A read-only URI connection never creates the file or its -wal/-shm as a side effect.
    return sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True)


def _sqlite_user_tables(conn):
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
    ).fetchall()
    return [row[0] for row in rows]


def quote_ident(name):
    """Quote an SQL identifier (SQLite and PostgreSQL rules agree)."""
    return '"' + name.replace('"', '""') + '"'


def sqlite_table_counts(path):
    """Return ``{table: row count}`` for every user table of a SQLite file (read-only)."""
    conn = _sqlite_connect_ro(path)
    try:
        return {
            table: conn.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchone()[0]  # noqa: S608
            for table in _sqlite_user_tables(conn)
        }
    except sqlite3.Error as exc:
        raise BackupError(f"cannot count rows in {path}: {exc}") from exc
    finally:
        conn.close()


def sqlite_content_digest(path):
    """Return a deterministic SHA-256 over the schema and rows of every user table.

    Rows are ordered by all columns, so the digest depends only on content, not on page
    layout: a restored copy of the same data gives the same digest.
    """
    digest = hashlib.sha256()
    conn = _sqlite_connect_ro(path)
    try:
        for table in _sqlite_user_tables(conn):
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({quote_ident(table)})")]
            digest.update(repr(("table", table, columns)).encode())
            order = ", ".join(str(i + 1) for i in range(len(columns)))
            cursor = conn.execute(f"SELECT * FROM {quote_ident(table)} ORDER BY {order}")  # noqa: S608
            for row in cursor:
                digest.update(repr(row).encode())
                digest.update(b"\n")
    except sqlite3.Error as exc:
        raise BackupError(f"cannot read {path}: {exc}") from exc
    finally:
        conn.close()
    return digest.hexdigest()


# --- PostgreSQL -------------------------------------------------------------------------------
#
# ``params`` is a dict with the db_backup/db_restore option names: ``database`` (database name),
# ``pg_host``, ``pg_port``, ``pg_user``, ``pg_password``, ``pg_passfile``, ``pg_bin_dir``,
# ``pg_connect_timeout``. Missing keys fall back to libpq's defaults.


def pg_binary(params, name):
    """Return the path of a PostgreSQL client binary (``pg_dump``, ``psql``, ...)."""
    bin_dir = params.get("pg_bin_dir")
    if bin_dir:
        path = os.path.join(bin_dir, name)
        if not os.access(path, os.X_OK):
            raise BackupError(f"{name} not found in pg_bin_dir {bin_dir}")
        return path
    found = shutil.which(name)
    if not found:
        raise BackupError(f"{name} is not installed (apt install postgresql-client)")
    return found


def pg_connection_env(params, base=None):
    """Build the environment for libpq tools from connection params.

    Sets PGHOST/PGPORT/PGUSER/PGDATABASE/PGCONNECT_TIMEOUT, and the password through
    PGPASSWORD (``pg_password``) or PGPASSFILE (``pg_passfile``): never through argv.
    ``base`` defaults to a copy of os.environ without any inherited PG* variables.
    """
    env = dict(os.environ if base is None else base)
    for key in list(env):
        if key.startswith("PG"):
            del env[key]
    mapping = {
        "PGHOST": params.get("pg_host"),
        "PGPORT": params.get("pg_port"),
        "PGUSER": params.get("pg_user"),
        "PGDATABASE": params.get("database"),
        "PGCONNECT_TIMEOUT": params.get("pg_connect_timeout"),
        "PGPASSWORD": params.get("pg_password"),
        "PGPASSFILE": params.get("pg_passfile"),
    }
    for key, value in mapping.items():
        if value not in (None, ""):
            env[key] = str(value)
    env.setdefault("PGAPPNAME", "tradingbot.ops")
    return env


def tool_error(stderr):
    """The line of a PostgreSQL tool's stderr that says what went wrong (the last error line,
    not a trailing DETAIL or HINT), or None."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"\b(error|ERROR|FATAL|fatal):", line)]
    if errors:
        return errors[-1]
    return lines[-1] if lines else None


def pg_redact(text, params):
    """Remove the password from a text (an error message) before it is logged or returned."""
    password = params.get("pg_password")
    if password:
        text = text.replace(str(password), "********")
    return text


def _snapshot_args(snapshot):
    if not snapshot:
        return []
    if not re.fullmatch(r"[0-9A-Fa-f-]+", snapshot):
        raise BackupError(f"invalid snapshot id {snapshot!r}")
    return ["-c", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "-c", f"SET TRANSACTION SNAPSHOT '{snapshot}'"]


def psql_query(params, sql, database=None, snapshot=None):
    """Run one SQL statement through psql and return its unaligned, tuples-only output.

    With ``snapshot`` (an id from ``pg_export_snapshot()``), the statement sees exactly that
    snapshot, e.g. the one a concurrent pg_dump uses. Raises BackupError with psql's last error
    line (password redacted) on failure.
    """
    env = pg_connection_env(dict(params, database=database or params.get("database")))
    argv = [pg_binary(params, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-F", "\t"]
    argv += [*_snapshot_args(snapshot), "-c", sql]
    if snapshot:
        argv += ["-c", "COMMIT"]
    proc = subprocess.run(argv, env=env, capture_output=True, check=False)
    if proc.returncode != 0:
        detail = tool_error(proc.stderr) or f"exit {proc.returncode}"
        raise BackupError(pg_redact(f"psql failed: {detail}", params))
    return proc.stdout.decode("utf-8")


# Ordinary tables (partitions included, partitioned parents excluded so rows count once),
# from pg_catalog: information_schema would hide tables the user has no privilege on.
_PG_USER_TABLES = (
    "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' "
    "ORDER BY 1"
)


def pg_table_counts(params, database=None, snapshot=None):
    """Return ``{schema.table: row count}`` for every user table, counted exactly.

    ``snapshot``: count as of an exported snapshot (see ``psql_query``).
    """
    # Table names come from pg_catalog through quote_ident.
    sql = (
        "SELECT t.name, (xpath('/row/c/text()', query_to_xml('SELECT count(*) AS c FROM ' || t.name,"  # noqa: S608
        " false, true, '')))[1]::text::bigint FROM (" + _PG_USER_TABLES + ") AS t(name) ORDER BY 1"
    )
    counts = {}
    for line in psql_query(params, sql, database, snapshot).splitlines():
        if line:
            name, count = line.rsplit("\t", 1)
            counts[name] = int(count)
    return counts


def pg_content_digest(params, database=None):
    """Return a deterministic SHA-256 over every user table's rows (ordered by their text form).

    Meant for tests and post-restore checks: it reads every row, so it costs a full scan.
    """
    digest = hashlib.sha256()
    tables = [line for line in psql_query(params, _PG_USER_TABLES, database).splitlines() if line]
    env = pg_connection_env(dict(params, database=database or params.get("database")))
    for table in tables:
        digest.update(f"table {table}\n".encode())
        sql = f'COPY (SELECT t::text FROM {table} t ORDER BY t::text COLLATE "C") TO STDOUT'  # noqa: S608
        argv = [pg_binary(params, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]
        with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            for chunk in iter(lambda: proc.stdout.read(CHUNK_SIZE), b""):
                digest.update(chunk)
            err = proc.stderr.read()
        if proc.returncode != 0:
            raise BackupError(pg_redact(f"psql failed reading {table}: {tool_error(err)}", params))
    return digest.hexdigest()
