"""The backup catalog: file names, the manifest, and listing the backups of a storage backend.

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
says ``created_by: tradingbot.ops``. The original system's backups (``.db.gz`` and
``.sql.gz`` without a manifest) are listed as legacy, unverified, and never chosen by
themselves; anything else is never listed, restored or deleted.
"""

import datetime
import json
import os
import re

from .compression import COMPRESSION_SUFFIX, COMPRESSIONS, SUFFIX_COMPRESSION
from .errors import BackupError
from .fsutil import file_lock, write_json_atomic
from .storage.local import LocalStorage

CREATED_BY = "tradingbot.ops"
MANIFEST_FORMAT_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
ENGINES = ("sqlite", "postgresql")
PG_FORMATS = ("plain", "custom")
LEGACY_STATUS = "legacy, unverified"

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

# The names are a file-format fact shared by both engines (and by the original system).
_FILE_PREFIX = {"sqlite": "sqlite", "postgresql": "postgres"}
_PREFIX_ENGINE = {prefix: engine for engine, prefix in _FILE_PREFIX.items()}
_EXTENSION = {("sqlite", "plain"): ".db", ("postgresql", "plain"): ".sql", ("postgresql", "custom"): ".dump"}

BACKUP_NAME_RE = re.compile(
    r"^(?P<prefix>sqlite|postgres)_backup_(?P<stamp>\d{8}_\d{6})"
    r"\.(?P<ext>db|sql|dump)(?P<csuffix>\.gz|\.zst)?$"
)
# What the original scripts wrote: ``sqlite3 DB ".backup X" && gzip X`` and ``pg_dump | gzip``.
LEGACY_NAME_RE = re.compile(r"^(?:sqlite_backup_\d{8}_\d{6}\.db|postgres_backup_\d{8}_\d{6}\.sql)\.gz$")
STAMP_FORMAT = "%Y%m%d_%H%M%S"


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
    ext = _EXTENSION.get((engine, fmt), ".db")
    suffix = "" if (fmt, compression) == ("custom", "gzip") else COMPRESSION_SUFFIX[compression]
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
    engine = _PREFIX_ENGINE[match.group("prefix")]
    fmt = "custom" if match.group("ext") == "dump" else "plain"
    if _EXTENSION.get((engine, fmt)) != "." + match.group("ext"):
        return None
    if fmt == "custom" and match.group("csuffix") == ".gz":
        return None
    try:
        moment = datetime.datetime.strptime(match.group("stamp"), STAMP_FORMAT)
    except ValueError:
        return None
    return {
        "engine": engine,
        "timestamp": moment.replace(tzinfo=datetime.UTC),
        "format": fmt,
        "file_compression": SUFFIX_COMPRESSION[match.group("csuffix") or ""],
    }


def example_name(engine):
    """A backup name of ``engine`` for error messages."""
    return backup_name(engine, datetime.datetime(2025, 1, 1, 2, tzinfo=datetime.UTC))


def file_compression(path, manifest):
    """The compression of a backup file as a whole: from its name, else from its manifest."""
    parsed = parse_backup_name(os.path.basename(path)) or {}
    return parsed.get("file_compression") or manifest.get("compression") or "none"


def manifest_path(backup_path):
    """Return the sidecar manifest path of a backup file."""
    return str(backup_path) + MANIFEST_SUFFIX


def lock_path(backup_dir, engine):
    """Return the lock file that serialises backups/restores of one engine in one backup dir."""
    return os.path.join(str(backup_dir), f".{_FILE_PREFIX[engine]}_backup.lock")


def dir_lock(backup_dir, engine, timeout):
    """Hold the exclusive lock of ``engine``'s backups in ``backup_dir`` (see ``fsutil.file_lock``)."""
    path = lock_path(backup_dir, engine)
    return file_lock(
        path,
        lambda pid: (
            f"another {engine} backup or restore is running on {backup_dir} (lock {path} held by pid "
            f"{pid}); gave up after waiting {timeout}s"
        ),
        timeout,
    )


class Manifest(dict):
    """A backup's manifest: a dict of ``MANIFEST_KEYS`` that reads, writes and describes itself.

    Keys it does not know (added by later versions, the off-site copy) are kept as read.
    """

    @classmethod
    def read(cls, path):
        """Read a manifest; ``path`` may be the manifest or its backup file. Raises BackupError."""
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
        return cls(data)

    @classmethod
    def legacy(cls, name):
        """What is known of a backup of the original system: its name, nothing verified."""
        parsed = parse_backup_name(name)
        return cls(
            file=name,
            engine=parsed["engine"],
            format="plain",
            compression="gzip",
            legacy=True,
            verification={"ok": False, "method": "none", "detail": "made by the original system, no manifest"},
        )

    def write(self, backup_path, mode=0o640, uid=-1, gid=-1):
        """Write this manifest beside ``backup_path`` atomically."""
        write_json_atomic(manifest_path(backup_path), dict(self), mode, uid, gid)

    def is_ours(self, name):
        return self.get("created_by") == CREATED_BY and self.get("file") == name

    @property
    def verified(self):
        return (self.get("verification") or {}).get("ok") is True

    @property
    def is_legacy(self):
        return self.get("legacy") is True

    def describe(self, path):
        """Summarise the backup for results and prompts (no secrets: manifests hold none)."""
        verification = self.get("verification") or {}
        status = "verified" if self.verified else "unverified"
        if self.is_legacy:
            status = LEGACY_STATUS
        return {
            "name": os.path.basename(path),
            "path": path,
            "engine": self.get("engine"),
            "format": self.get("format"),
            "compression": self.get("compression"),
            "size": self.get("size"),
            "uncompressed_size": self.get("uncompressed_size"),
            "sha256": self.get("sha256"),
            "created": self.get("finished_at") or self.get("started_at"),
            "verified": self.verified,
            "legacy": self.is_legacy,
            "status": status,
            "verification": verification,
            "tables": self.get("tables") or {},
            "has_content_digest": bool(self.get("content_digest")),
        }


def read_manifest(path):
    """Read a manifest JSON file (see ``Manifest.read``)."""
    return Manifest.read(path)


def as_storage(where):
    """A storage backend for a backup directory path, or ``where`` itself when it is one."""
    return where if hasattr(where, "list") else LocalStorage(where)


def list_backups(where, engine=None, *, legacy=False):
    """List our backups in a backup dir (or storage backend), newest first.

    Only files whose name matches ``BACKUP_NAME_RE`` (for ``engine``, when given) and that
    have a readable manifest with ``created_by: tradingbot.ops`` are listed, plus, with
    ``legacy``, the original system's backups that have no manifest. Each entry is a dict:
    ``path``, ``name``, ``timestamp`` (aware UTC datetime), ``verified`` (bool, from the
    manifest's verification.ok), ``legacy`` and ``manifest`` (a ``Manifest``).
    """
    storage = as_storage(where)
    keys = {info.key for info in storage.list()}
    entries = []
    for name in keys:
        parsed = parse_backup_name(name)
        if parsed is None or (engine and parsed["engine"] != engine):
            continue
        path = storage.path(name)
        if name + MANIFEST_SUFFIX in keys:
            try:
                manifest = Manifest.read(manifest_path(path))
            except BackupError:
                continue
            if not manifest.is_ours(name):
                continue
        elif legacy and LEGACY_NAME_RE.match(name):
            manifest = Manifest.legacy(name)
        else:
            continue
        entries.append(
            {
                "path": path,
                "name": name,
                "timestamp": parsed["timestamp"],
                "verified": manifest.verified,
                "legacy": manifest.is_legacy,
                "manifest": manifest,
            }
        )
    entries.sort(key=lambda entry: (entry["timestamp"], entry["name"]), reverse=True)
    return entries


def describe_backup(path, manifest):
    """Summarise a backup for results and prompts (see ``Manifest.describe``)."""
    return Manifest(manifest).describe(path)


def list_restorable(backup_dir, engine):
    """Our backups and the original system's for ``engine``, newest first, with manifest data."""
    return [entry["manifest"].describe(entry["path"]) for entry in list_backups(backup_dir, engine, legacy=True)]


def resolve_named_backup(backup_dir, name, engine, allow_legacy=False):
    """Return ``(path, manifest)`` for a backup named inside ``backup_dir``.

    Accepts a bare file name, or an absolute path whose directory is the backup dir. Refuses
    anything else (``..``, subdirectories, other directories, symlinks), names that are not
    backups of this engine, files without our manifest, and legacy files unless ``allow_legacy``.
    """
    real_dir = os.path.realpath(backup_dir)
    refused = f"refusing backup_file {name!r}: it is not a file directly inside {real_dir}"
    if os.path.isabs(name):
        if os.path.realpath(os.path.dirname(os.path.normpath(name))) != real_dir:
            raise BackupError(refused)
        base = os.path.basename(os.path.normpath(name))
    elif "/" in name or name in ("", ".", ".."):
        raise BackupError(refused)
    else:
        base = name
    path = os.path.join(real_dir, base)
    if os.path.islink(path):
        raise BackupError(f"refusing backup_file {name!r}: it is a symlink")
    parsed = parse_backup_name(base)
    if parsed is None or parsed["engine"] != engine:
        raise BackupError(f"refusing backup_file {name!r}: not a {engine} backup name (e.g. {example_name(engine)})")
    if not os.path.isfile(path):
        raise BackupError(f"backup {path} does not exist")
    if not os.path.exists(manifest_path(path)) and LEGACY_NAME_RE.match(base):
        if not allow_legacy:
            raise BackupError(
                f"refusing {path}: it has no manifest ({LEGACY_STATUS}: a backup of the original system); "
                "set allow_legacy: true to verify it in full and restore it"
            )
        return path, Manifest.legacy(base)
    manifest = Manifest.read(manifest_path(path))
    if not manifest.is_ours(base):
        raise BackupError(f"refusing {path}: its manifest was not written by tradingbot.ops for this file")
    if manifest.get("engine") != engine:
        raise BackupError(f"refusing {path}: its manifest says engine {manifest.get('engine')!r}, not {engine!r}")
    return path, manifest
