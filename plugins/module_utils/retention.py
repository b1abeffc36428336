"""Retention: which backups to keep, and deleting the rest through the storage backend."""

import collections
import datetime

from .catalog import MANIFEST_SUFFIX, list_backups
from .errors import StorageError


def select_retention(entries, now, *, days=7, count=0, daily=0, weekly=0, monthly=0, keep_verified=1):
    """Decide which backups to keep; return ``(kept, deleted)``.

    ``entries`` are ``list_backups`` entries (newest first; only ``timestamp``, ``verified``
    and ``name`` are read). A backup is kept when any rule keeps it (as restic's ``forget``):

    - the newest ``keep_verified`` verified backups, whatever their age;
    - ``days`` > 0: those younger than ``days`` days;
    - ``count`` > 0: the newest ``count``;
    - ``daily``/``weekly``/``monthly`` > 0: the newest backup of each of the last N days /
      ISO weeks / months that have backups (GFS).

    ``kept`` is a list of ``(entry, [reasons])``; ``deleted`` a list of entries.
    """
    entries = sorted(entries, key=lambda e: (e["timestamp"], e["name"]), reverse=True)
    reasons = collections.OrderedDict((e["name"], []) for e in entries)
    for entry in [e for e in entries if e["verified"]][: max(keep_verified, 0)]:
        reasons[entry["name"]].append(f"newest {keep_verified} verified")
    if days > 0:
        limit = now - datetime.timedelta(days=days)
        for entry in entries:
            if entry["timestamp"] > limit:
                reasons[entry["name"]].append(f"within {days} days")
    for entry in entries[: max(count, 0)]:
        reasons[entry["name"]].append(f"newest {count}")
    buckets = (
        (daily, "daily", lambda ts: ts.date()),
        (weekly, "weekly", lambda ts: ts.isocalendar()[:2]),
        (monthly, "monthly", lambda ts: (ts.year, ts.month)),
    )
    for keep, label, key in buckets:
        seen = set()
        for entry in entries:
            if len(seen) >= keep:
                break
            bucket = key(entry["timestamp"])
            if bucket not in seen:
                seen.add(bucket)
                reasons[entry["name"]].append(label)
    kept = [(e, reasons[e["name"]]) for e in entries if reasons[e["name"]]]
    deleted = [e for e in entries if not reasons[e["name"]]]
    return kept, deleted


def retention_args(opts):
    """The ``select_retention`` keywords of a job's options."""
    return {
        "days": opts["retention_days"],
        "count": opts["retention_count"],
        "daily": opts["retention_daily"],
        "weekly": opts["retention_weekly"],
        "monthly": opts["retention_monthly"],
        "keep_verified": opts["retention_keep_verified"],
    }


def plan_retention(storage, engine, opts, now, new_entry=None):
    """``(kept, deleted)`` for ``engine``'s backups in ``storage`` (and a backup about to be written).

    The original system's backups take part only with ``retention_delete_legacy``: they are
    unverified, so only the age and count rules can keep them.
    """
    entries = list_backups(storage, engine, legacy=bool(opts.get("retention_delete_legacy")))
    if new_entry is not None:
        entries.append(new_entry)
    return select_retention(entries, now, **retention_args(opts))


def apply_retention(storage, engine, opts, now, log):
    """Delete what ``plan_retention`` does not keep; return ``(deleted paths, kept paths)``."""
    kept, doomed = plan_retention(storage, engine, opts, now)
    deleted = []
    for entry in doomed:
        # The backup first: a manifest without its backup is a leftover the next run removes.
        for key in (entry["name"], entry["name"] + MANIFEST_SUFFIX):
            try:
                storage.delete(key)
            except StorageError as exc:
                log("WARNING", f"retention could not delete: {exc}")
        deleted.append(entry["path"])
        log("INFO", f"retention deleted {entry['path']}")
    if deleted:
        storage.sync()
    return deleted, [entry["path"] for entry, _reasons in kept]
