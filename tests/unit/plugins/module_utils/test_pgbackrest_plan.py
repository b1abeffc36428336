"""The pgBackRest restore plan: targets, WAL segment arithmetic, timeline history and backup choice.

The functional tests (tests/functional/test_pgbackrest.py) run the same logic against a real
repository; these pin its edge cases on pgBackRest's documented JSON shape.
"""

import datetime

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils import pgbackrest_plan as plan
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import RestoreError

UTC = datetime.UTC


def backup(label, start_segment, stop_lsn, stop_epoch, kind="full"):
    return {
        "label": label,
        "type": kind,
        "error": False,
        "database": {"id": 1},
        "archive": {"start": start_segment, "stop": start_segment},
        "lsn": {"start": "0/1000000", "stop": stop_lsn},
        "timestamp": {"start": stop_epoch - 5, "stop": stop_epoch},
    }


def stanza(backups, newest_segment):
    return {
        "name": "s",
        "status": {"code": 0, "message": "ok"},
        "db": [{"id": 1}],
        "archive": [{"database": {"id": 1}, "min": "000000010000000000000001", "max": newest_segment}],
        "backup": backups,
    }


def test_targets():
    assert plan.parse_target("latest") is None
    assert plan.parse_target("2026-12-01 10:15:00+00") == datetime.datetime(2026, 12, 1, 10, 15, tzinfo=UTC)
    assert plan.parse_target("2026-12-01T11:15:00+01:00") == datetime.datetime(2026, 12, 1, 10, 15, tzinfo=UTC)
    with pytest.raises(RestoreError, match="no time zone"):
        plan.parse_target("2026-12-01 10:15:00")
    with pytest.raises(RestoreError, match="neither"):
        plan.parse_target("yesterday")
    # What `-e restore_target_time=2026-12-01 10:15:00+00` leaves after the shell: the hint says how to quote.
    with pytest.raises(RestoreError, match="quote the value inside the argument"):
        plan.parse_target("2026-12-01")


def test_segments_and_history():
    assert plan.previous_segment("000000020000000100000000") == "0000000200000000000000FF"
    assert plan.previous_segment("000000010000000000000000") is None
    assert plan.parse_history("1\t0/3000000\tbefore 2026-12-01\n\n2\t0/5000000\tx\n") == {1: 0x3000000, 2: 0x5000000}


def test_the_commit_search_steps_back_onto_the_parent_timelines():
    # Timeline 3 left 2 at 0/5000000, which left 1 at 0/3000000 (a segment boundary: a restore to
    # latest): segment 5 is 3's first, 4 and 3 are 2's, 2 and below are 1's.
    history = {1: 0x3000000, 2: 0x5000000}
    steps, segment = [], "000000030000000000000006"
    while segment and len(steps) < 5:
        segment = plan.previous_segment_on_history(segment, history)
        steps.append(segment)
    assert steps == [
        "000000030000000000000005",
        "000000020000000000000004",
        "000000020000000000000003",
        "000000010000000000000002",
        "000000010000000000000001",
    ]
    # A switch inside a segment: the new timeline's copy of that segment holds the parent's part.
    assert plan.previous_segment_on_history("000000020000000000000004", {1: 0x3000100}) == "000000020000000000000003"
    assert plan.previous_segment_on_history("000000020000000000000001", {}) == "000000020000000000000000"


def test_a_backup_after_the_branch_point_is_not_used():
    early = backup("F1", "000000010000000000000002", "0/2000100", 1000)
    late = backup("D1", "000000010000000000000004", "0/4000100", 2000, "diff")
    entry = stanza([early, late], "00000002000000000000000A")
    history = {1: 0x3000000}  # timeline 2 left timeline 1 at 0/3000000, before D1 ended
    last_commit = datetime.datetime.fromtimestamp(4000, UTC)
    chosen = plan.make_plan(entry, datetime.datetime.fromtimestamp(3000, UTC), last_commit, history)
    assert chosen["backup"] == "F1"
    assert chosen["target_timeline"] == 2


def test_an_unreachable_target_names_the_range():
    entry = stanza([backup("F1", "000000010000000000000002", "0/2000100", 1000)], "000000010000000000000005")
    last_commit = datetime.datetime.fromtimestamp(5000, UTC)
    with pytest.raises(RestoreError, match="outside the reachable range") as early:
        plan.make_plan(entry, datetime.datetime.fromtimestamp(999, UTC), last_commit, {})
    assert early.value.result["reachable"]["end"] == plan.format_time(last_commit)
    with pytest.raises(RestoreError, match="outside the reachable range"):
        plan.make_plan(entry, datetime.datetime.fromtimestamp(5001, UTC), last_commit, {})
    assert plan.make_plan(entry, last_commit, last_commit, {})["backup"] == "F1"


def test_after_a_rollback_the_live_timeline_is_followed():
    # Timeline 2 was restored, then rolled back: timeline 1 is live again and went on writing,
    # so the archive's newest segment is on the abandoned timeline 2.
    full = backup("F1", "000000010000000000000002", "0/2000100", 1000)
    later = backup("D1", "000000010000000000000006", "0/6000100", 3000, "diff")
    entry = stanza([full, later], "000000020000000000000005")
    last_commit = datetime.datetime.fromtimestamp(4000, UTC)
    followed = plan.make_plan(
        entry, datetime.datetime.fromtimestamp(3500, UTC), last_commit, {}, newest_segment="000000010000000000000007"
    )
    assert followed["target_timeline"] == 1
    assert followed["wal_end"] == "000000010000000000000007"
    assert followed["backup"] == "D1", "a backup of the live timeline after the abandoned branch is used"
    # By default the newest timeline: the same backup is off its history.
    assert (
        plan.make_plan(entry, datetime.datetime.fromtimestamp(3500, UTC), last_commit, {1: 0x3000000})["backup"] == "F1"
    )
