"""The options of db_backup and db_restore, and their validation outside Ansible (stdlib only).

Each spec is in AnsibleModule argument_spec form: the modules use it as their argument_spec,
and the host-side CLIs validate their JSON config against it (``validate_options``).
plugins/doc_fragments/database.py documents ``COMMON_OPTIONS``; each module documents its own.
"""

import grp
import os
import pwd
import re

from .catalog import ENGINES, PG_FORMATS
from .compression import COMPRESSIONS
from .errors import BackupError

# Options shared by db_backup and db_restore.
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

# The db_backup module's argument_spec and the backup CLI's config schema: one definition.
BACKUP_OPTIONS = dict(
    COMMON_OPTIONS,
    format={"type": "str", "default": "plain", "choices": list(PG_FORMATS)},
    compression={"type": "str", "default": "gzip", "choices": list(COMPRESSIONS)},
    compression_level={"type": "int"},
    mode={"type": "str", "default": "0640"},
    owner={"type": "str"},
    group={"type": "str"},
    retention_days={"type": "int", "default": 7},
    retention_count={"type": "int", "default": 0},
    retention_daily={"type": "int", "default": 0},
    retention_weekly={"type": "int", "default": 0},
    retention_monthly={"type": "int", "default": 0},
    retention_keep_verified={"type": "int", "default": 3},
    retention_delete_legacy={"type": "bool", "default": False},
    lock_timeout={"type": "int", "default": 300},
    log_file={"type": "path"},
    metrics_dir={"type": "path"},
    content_digest={"type": "bool", "default": False},
    pg_retries={"type": "int", "default": 3},
    pg_retry_delay={"type": "float", "default": 2.0},
)

# The db_restore module's argument_spec.
RESTORE_OPTIONS = dict(
    COMMON_OPTIONS,
    operation={"type": "str", "choices": ["restore", "list", "rollback"], "default": "restore"},
    backup_file={"type": "str"},
    allow_legacy={"type": "bool", "default": False},
    safety_copy={"type": "str"},
    integrity_check={"type": "str", "choices": ["quick", "full"], "default": "quick"},
    verify_content_digest={"type": "bool", "default": True},
    maintenance_db={"type": "str", "default": "postgres"},
    terminate_connections={"type": "bool", "default": True},
    lock_timeout={"type": "int", "default": 300},
    log_file={"type": "path"},
)

RETENTION_COUNTS = ("retention_days", "retention_count", "retention_daily", "retention_weekly", "retention_monthly")


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


def parse_mode(value):
    """Parse an octal file mode given as ``'0640'``, ``'640'`` or an int."""
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    elif isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value.strip()):
        mode = int(value.strip(), 8)
    else:
        raise BackupError(f"mode must be an octal string such as '0640', got {value!r}")
    if not 0 <= mode <= 0o7777:
        raise BackupError(f"mode {value!r} is out of range")
    return mode


def resolve_owner(owner, group):
    """Return ``(uid, gid)`` for user/group names or numeric ids; -1 leaves one unchanged."""
    uid = gid = -1
    if owner:
        try:
            uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
        except KeyError as exc:
            raise BackupError(f"owner {owner!r} does not exist") from exc
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError as exc:
            raise BackupError(f"group {group!r} does not exist") from exc
    return uid, gid


def check_counts(opts):
    """Refuse negative counts and a retention that could delete the newest verified backup."""
    for key in RETENTION_COUNTS:
        if opts[key] < 0:
            raise BackupError(f"{key} must be >= 0, got {opts[key]}")
    if opts["retention_keep_verified"] < 1:
        raise BackupError("retention_keep_verified must be >= 1: the newest verified backup is never deleted")
    if opts["lock_timeout"] < 0:
        raise BackupError("lock_timeout must be >= 0")
