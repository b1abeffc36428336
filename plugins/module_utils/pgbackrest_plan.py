"""What a pgBackRest point-in-time restore can reach, and which backup it would use.

Pure functions over ``pgbackrest info --output=json``, timeline history files and the newest
archived commit time; the orchestration (pgbackrest_pitr) gathers those and runs the restore.

A restore starts a new timeline, and the archive keeps the abandoned one. A backup is usable for
the current history only when its timeline is the newest one, or an ancestor that it left
*after* the backup ended (history file switch point at or past the backup's stop LSN). A backup
taken on timeline 1 after the point that timeline 2 branched from is not: recovery from it
fails ("requested timeline 2 is not a child of this server's history").
"""

from __future__ import annotations

import datetime

from .errors import RestoreError

UTC = datetime.UTC


def parse_lsn(text):
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def segment_timeline(segment):
    return int(segment[:8], 16)


def previous_segment(segment, segments_per_xlogid=0x100):
    """The WAL segment before ``segment`` on the same timeline (16 MiB segments), or None."""
    number = int(segment[8:16], 16) * segments_per_xlogid + int(segment[16:24], 16)
    if number == 0:
        return None
    number -= 1
    return f"{segment[:8]}{number // segments_per_xlogid:08X}{number % segments_per_xlogid:08X}"


_SEGMENT_BYTES = 16 * 1024 * 1024


def previous_segment_on_history(segment, history, segments_per_xlogid=0x100):
    """The WAL segment before ``segment`` on the history that leads to it, or None.

    ``history`` is ``segment``'s timeline's ancestors with their switch points. A segment that
    ends at or before an ancestor's switch point was written on that ancestor: a timeline's first
    segment after a restore to ``latest`` holds no commit, and the newest ones are its parent's.
    """
    previous = previous_segment(segment, segments_per_xlogid)
    if previous is None:
        return None
    number = int(previous[8:16], 16) * segments_per_xlogid + int(previous[16:24], 16)
    end = (number + 1) * _SEGMENT_BYTES
    timeline = segment_timeline(segment)
    for parent, switch_point in sorted(history.items(), key=lambda item: item[1]):
        if parent < timeline and end <= switch_point:
            timeline = parent
            break
    return f"{timeline:08X}{previous[8:]}"


def parse_history(text):
    """A timeline history file's lines as {parent timeline: switch point LSN}."""
    switch_points = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit():
            switch_points[int(fields[0])] = parse_lsn(fields[1])
    return switch_points


def parse_target(text):
    """``latest`` or an ISO 8601 time with a zone, as None or an aware datetime."""
    if text.strip().lower() == "latest":
        return None
    candidate = text.strip().replace(" ", "T", 1)
    if candidate.endswith(("Z", "z")):
        candidate = candidate[:-1] + "+00:00"
    # Python 3.10 reads "+00" only as "+00:00".
    if len(candidate) >= 3 and candidate[-3] in "+-" and candidate[-2:].isdigit():
        candidate += ":00"
    try:
        value = datetime.datetime.fromisoformat(candidate)
    except ValueError:
        raise RestoreError(f"target_time {text!r} is neither 'latest' nor an ISO 8601 time") from None
    if value.tzinfo is None:
        hint = ""
        if len(text.strip()) == 10:  # a date alone: `-e key=2026-12-01 10:15:00+00` split at the space
            hint = (
                "; on the command line, quote the value inside the argument"
                """ (-e 'restore_target_time="2026-12-01 10:15:00+00"') or write a T (2026-12-01T10:15:00+00)"""
            )
        raise RestoreError(f"target_time {text!r} has no time zone; add one, for example +00{hint}")
    return value


def format_time(value):
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def stanza_info(info, stanza):
    """The one stanza of ``pgbackrest info --output=json``, refused when pgBackRest calls it not ok."""
    for entry in info:
        if entry.get("name") == stanza:
            break
    else:
        raise RestoreError(f"pgBackRest knows no stanza {stanza!r}")
    status = entry.get("status", {})
    if status.get("code") not in (0, 2):  # 2: no backup yet, reported as such below
        raise RestoreError(f"stanza {stanza!r}: {status.get('message', 'unknown status')}")
    return entry


def current_archive(entry):
    """The archive of the stanza's current database (the newest db id), or refuse."""
    db_id = max((db["id"] for db in entry.get("db", [])), default=None)
    archives = [item for item in entry.get("archive", []) if item["database"]["id"] == db_id and item.get("max")]
    if not archives:
        raise RestoreError(f"stanza {entry['name']!r} has no archived WAL")
    return db_id, archives[0]


def usable_backups(entry, db_id, target_timeline, history):
    """Backups of the current history, oldest first (see the module docstring)."""
    usable = []
    for backup in entry.get("backup", []):
        if backup.get("error") or backup["database"]["id"] != db_id:
            continue
        timeline = segment_timeline(backup["archive"]["start"])
        stop_lsn = parse_lsn(backup["lsn"]["stop"])
        if timeline == target_timeline or (timeline in history and stop_lsn <= history[timeline]):
            usable.append(backup)
    return sorted(usable, key=lambda item: item["timestamp"]["stop"])


def stop_time(backup):
    return datetime.datetime.fromtimestamp(backup["timestamp"]["stop"], UTC)


def make_plan(entry, target, last_commit, history, newest_segment=None):
    """The restore's plan for ``target`` (None: latest), or a RestoreError naming the reachable range.

    ``newest_segment`` is the newest archived segment of the history to follow: by default the
    archive's newest, on its newest timeline (the live cluster's after a rollback, see
    pgbackrest_pitr.live_segment). ``last_commit`` is the newest commit time on that history (None
    when there is none); ``history`` that timeline's ancestors with their switch points.
    """
    db_id, archive = current_archive(entry)
    newest_segment = newest_segment or archive["max"]
    timeline = segment_timeline(newest_segment)
    backups = usable_backups(entry, db_id, timeline, history)
    if not backups:
        raise RestoreError(f"stanza {entry['name']!r} has no backup usable on timeline {timeline}")
    oldest = stop_time(backups[0])
    end = max(last_commit, stop_time(backups[-1])) if last_commit else stop_time(backups[-1])
    reachable = {"start": format_time(oldest), "end": format_time(end)}
    if target is None:
        chosen = backups[-1]
    else:
        if target < oldest or target > end:
            raise RestoreError(
                f"target {format_time(target)} is outside the reachable range {reachable['start']} .. "
                f"{reachable['end']} (the oldest usable backup's end .. the newest archived commit, on timeline"
                f" {timeline} up to {newest_segment}); nothing was touched",
                {"reachable": reachable, "target_timeline": timeline, "wal_end": newest_segment},
            )
        chosen = [backup for backup in backups if stop_time(backup) <= target][-1]
    return {
        "target_time": "latest" if target is None else format_time(target),
        "backup": chosen["label"],
        "backup_type": chosen["type"],
        "backup_stop_time": format_time(stop_time(chosen)),
        "wal_start": chosen["archive"]["start"],
        "wal_end": newest_segment,
        "target_timeline": timeline,
        "reachable": reachable,
    }
