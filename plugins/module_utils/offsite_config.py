"""What the off-site copy job is configured with, and how its copies are named in the store.

A copy of backup ``<name>`` is the ciphertext ``<name>.age`` and its manifest
``<name>.age.manifest.json``; it counts only once both are there.
"""

from __future__ import annotations

import json

from .catalog import ENGINES, MANIFEST_SUFFIX, parse_backup_name
from .encryption import EncryptionError, check_recipient
from .errors import BackupError as _OptionError  # what validate_options raises
from .errors import TradingbotError
from .options import validate_options
from .storage.s3 import DEFAULT_CONCURRENCY, DEFAULT_PART_SIZE, S3Storage
from .storage.s3_client import load_credentials

CIPHERTEXT_SUFFIX = ".age"
DAY = 86400

# Options of the copy job, in AnsibleModule argument_spec form; the host CLI validates its JSON
# config against it. docs/offsite.md documents each.
OFFSITE_OPTIONS = {
    "backup_dir": {"type": "path", "required": True},
    "engine": {"type": "str", "choices": list(ENGINES)},
    "recipient": {"type": "str", "required": True},
    "s3_bucket": {"type": "str", "required": True},
    "s3_endpoint": {"type": "str"},
    "s3_region": {"type": "str", "default": "us-east-1"},
    "s3_prefix": {"type": "str", "default": ""},
    "s3_path_style": {"type": "bool", "default": True},
    "s3_ca_bundle": {"type": "path"},
    "s3_credentials_file": {"type": "path"},
    "s3_credential_name": {"type": "str", "default": "offsite-s3"},
    "s3_part_size_mib": {"type": "int", "default": DEFAULT_PART_SIZE // (1024 * 1024)},
    "s3_upload_concurrency": {"type": "int", "default": DEFAULT_CONCURRENCY},
    "s3_max_attempts": {"type": "int", "default": 5},
    "s3_connect_timeout": {"type": "int", "default": 10},
    "s3_read_timeout": {"type": "int", "default": 60},
    # Longer than the GFS horizon (12 months), so no copy retention keeps is ever unlocked.
    "object_lock_days": {"type": "float", "default": 400.0},
    # Everything younger than retention_days is kept (set it no shorter than the local
    # backups' retention_days, so every local backup is copied); GFS thins out the rest.
    "retention_days": {"type": "int", "default": 7},
    "retention_daily": {"type": "int", "default": 30},
    "retention_weekly": {"type": "int", "default": 12},
    "retention_monthly": {"type": "int", "default": 12},
    "metrics_dir": {"type": "path"},
    "breaker_state_file": {"type": "path"},
    "breaker_failure_threshold": {"type": "int", "default": 3},
    "breaker_timeout": {"type": "float", "default": 900.0},
}


class OffsiteError(TradingbotError):
    """The copy job failed; the message is the one journal line."""


def ciphertext_key(name):
    return name + CIPHERTEXT_SUFFIX


def manifest_key(name):
    return name + CIPHERTEXT_SUFFIX + MANIFEST_SUFFIX


def backup_name_of(key):
    """The backup name a store key belongs to, or None when it is not one of our keys."""
    for suffix in (CIPHERTEXT_SUFFIX + MANIFEST_SUFFIX, CIPHERTEXT_SUFFIX):
        if key.endswith(suffix):
            name = key[: -len(suffix)]
            return name if parse_backup_name(name) else None
    return None


def complete_copies(infos):
    """The backups with a complete copy among the store's ObjectInfos: name to the
    ciphertext's ObjectInfo."""
    keys = {info.key: info for info in infos}
    names = {backup_name_of(key) for key in keys if key.endswith(MANIFEST_SUFFIX)}
    return {name: keys[ciphertext_key(name)] for name in names if name and ciphertext_key(name) in keys}


def parse_options(options):
    try:
        opts = validate_options(OFFSITE_OPTIONS, options)
    except _OptionError as exc:
        raise OffsiteError(f"invalid off-site configuration: {exc}") from None
    for name in ("retention_days", "retention_daily", "retention_weekly", "retention_monthly", "s3_max_attempts"):
        if opts[name] < 0:
            raise OffsiteError(f"invalid off-site configuration: {name} cannot be negative")
    if opts["object_lock_days"] <= 0:
        raise OffsiteError("invalid off-site configuration: object_lock_days must be > 0 (copies are always locked)")
    try:
        check_recipient(opts["recipient"])
    except EncryptionError as exc:
        raise OffsiteError(f"invalid off-site configuration: {exc}") from None
    return opts


def read_config(path):
    """The validated options of the copy job's JSON config file at ``path``.

    A missing file means off-site copies were never set up on this host: the error says how.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise OffsiteError(
            f"no off-site configuration at {path}: off-site copies are not set up on this host; "
            "run site.yml with tradingbot_offsite_enabled=true (docs/offsite.md)"
        ) from None
    except (OSError, ValueError) as exc:
        raise OffsiteError(f"cannot read the off-site configuration {path}: {exc}") from None
    return parse_options(data)


def open_storage(opts, lock=True, credentials=None):
    """The S3 backend the options describe. ``lock=False`` for reading only (restore)."""
    if credentials is None:
        credentials = load_credentials(opts["s3_credentials_file"], opts["s3_credential_name"])
    return S3Storage(
        bucket=opts["s3_bucket"],
        credentials=credentials,
        endpoint=opts["s3_endpoint"],
        region=opts["s3_region"],
        prefix=opts["s3_prefix"],
        path_style=opts["s3_path_style"],
        ca_bundle=opts["s3_ca_bundle"],
        lock_seconds=opts["object_lock_days"] * DAY if lock else 0,
        part_size=opts["s3_part_size_mib"] * 1024 * 1024,
        concurrency=opts["s3_upload_concurrency"],
        max_attempts=opts["s3_max_attempts"],
        connect_timeout=opts["s3_connect_timeout"],
        read_timeout=opts["s3_read_timeout"],
    )
