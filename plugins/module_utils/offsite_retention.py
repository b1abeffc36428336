"""Off-site retention: its own GFS settings over the copies in the store, never deleting a
copy that is still locked."""

from __future__ import annotations

from .catalog import parse_backup_name
from .offsite_config import DAY, ciphertext_key, manifest_key
from .retention import select_retention


def select_copies(opts, names, now):
    """``select_retention`` over backup names (every copy counts as verified): ``(kept, dropped)``."""
    entries = []
    for name in names:
        parsed = parse_backup_name(name)
        if parsed:
            entries.append({"name": name, "timestamp": parsed["timestamp"], "verified": True})
    return select_retention(
        entries,
        now,
        days=opts["retention_days"],
        count=0,
        daily=opts["retention_daily"],
        weekly=opts["retention_weekly"],
        monthly=opts["retention_monthly"],
        keep_verified=1,
    )


def apply_retention(guarded, opts, copies, now):
    """Delete the copies off-site retention drops, except those still locked; return
    ``(deleted, locked)`` lists of backup names. ``copies`` maps names to the ciphertext's
    ObjectInfo (None: uploaded by this run); ``guarded`` calls the store."""
    _kept, dropped = select_copies(opts, set(copies), now)
    deleted, locked = [], []
    lock_seconds = opts["object_lock_days"] * DAY
    for entry in dropped:
        name = entry["name"]
        info = copies[name]
        # Written less than object_lock_days ago: locked for sure, no request needed (with a
        # setting lowered since, older copies are locked longer, and the check below finds it).
        if info is None or info.mtime + lock_seconds > now.timestamp():
            locked.append(name)
            continue
        keys = (manifest_key(name), ciphertext_key(name))
        if any(guarded("locked_until", key) for key in keys):
            locked.append(name)
            continue
        for key in keys:  # the manifest first: a copy without one no longer counts
            guarded("delete", key)
        deleted.append(name)
    return deleted, locked
