"""Retention selection (pure logic), checked against hand-computed expectations."""

import datetime

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils.catalog import backup_name
from ansible_collections.tradingbot.ops.plugins.module_utils.retention import select_retention

UTC = datetime.UTC
NOW = datetime.datetime(2025, 3, 15, 2, 0, 0, tzinfo=UTC)


def entry(moment, verified=True):
    return {"name": backup_name("sqlite", moment), "timestamp": moment, "verified": verified, "path": "/x"}


def daily(days, hour=2, verified=True):
    """One backup per day for the last ``days`` days (the newest is NOW)."""
    return [entry(NOW - datetime.timedelta(days=d, hours=2 - hour), verified) for d in range(days)]


def kept_days(kept):
    return sorted((NOW - e["timestamp"]).days for e, _reasons in kept)


def test_age_keeps_the_last_seven_days_by_default():
    kept, deleted = select_retention(daily(20), NOW)
    assert kept_days(kept) == [0, 1, 2, 3, 4, 5, 6]
    assert len(deleted) == 13


def test_all_backups_older_than_the_limit_keep_the_newest_verified():
    old = [entry(NOW - datetime.timedelta(days=d)) for d in (30, 20, 10)]
    kept, deleted = select_retention(old, NOW, days=7)
    assert [e["timestamp"] for e, _reasons in kept] == [NOW - datetime.timedelta(days=10)]
    assert kept[0][1] == ["newest 1 verified"]
    assert len(deleted) == 2


def test_keep_verified_counts_only_verified_backups():
    backups = [
        entry(NOW - datetime.timedelta(days=10), verified=False),
        entry(NOW - datetime.timedelta(days=11), verified=False),
        entry(NOW - datetime.timedelta(days=12)),
        entry(NOW - datetime.timedelta(days=13)),
        entry(NOW - datetime.timedelta(days=14)),
    ]
    kept, _deleted = select_retention(backups, NOW, days=7, keep_verified=2)
    assert kept_days(kept) == [12, 13]


def test_count_rule_keeps_the_newest_n():
    kept, deleted = select_retention(daily(10), NOW, days=0, count=3)
    assert kept_days(kept) == [0, 1, 2]
    assert len(deleted) == 7


def test_rules_combine_as_a_union():
    kept, _deleted = select_retention(daily(10), NOW, days=2, count=4)
    assert kept_days(kept) == [0, 1, 2, 3]


def test_gfs_keeps_newest_of_each_day_week_and_month():
    # Two backups a day (02:00 and 14:00) for 100 days.
    backups = []
    for d in range(100):
        day = NOW - datetime.timedelta(days=d)
        backups.append(entry(day))
        backups.append(entry(day - datetime.timedelta(hours=12)))
    kept, deleted = select_retention(backups, NOW, days=0, daily=3, weekly=2, monthly=3)
    kept_times = {e["timestamp"] for e, _reasons in kept}
    # daily: today's 02:00, then the 14:00 backups of the two days before (the newest of each day).
    assert datetime.datetime(2025, 3, 15, 2, 0, tzinfo=UTC) in kept_times
    assert datetime.datetime(2025, 3, 14, 14, 0, tzinfo=UTC) in kept_times
    assert datetime.datetime(2025, 3, 13, 14, 0, tzinfo=UTC) in kept_times
    # weekly: 2025-03-15 is in ISO week 11 (kept as daily); week 10 ends on Sunday 03-09.
    assert datetime.datetime(2025, 3, 9, 14, 0, tzinfo=UTC) in kept_times
    # monthly: March (kept as daily), then the last backups of February and January.
    assert datetime.datetime(2025, 2, 28, 14, 0, tzinfo=UTC) in kept_times
    assert datetime.datetime(2025, 1, 31, 14, 0, tzinfo=UTC) in kept_times
    assert len(kept_times) == 6
    assert len(deleted) == 200 - 6


def test_gfs_reasons_are_reported():
    kept, _deleted = select_retention(daily(3), NOW, days=0, daily=1, weekly=1, monthly=1, keep_verified=1)
    assert kept[0][1] == ["newest 1 verified", "daily", "weekly", "monthly"]
    assert len(kept) == 1


def test_a_week_of_failures_does_not_wipe_everything():
    # Backups stopped 9 days ago: the original script's `find -mtime +7 -delete` would delete all of them.
    backups = [entry(NOW - datetime.timedelta(days=d)) for d in range(9, 30)]
    kept, deleted = select_retention(backups, NOW)
    assert kept_days(kept) == [9]
    assert len(deleted) == 20


@pytest.mark.parametrize("keep_verified", [1, 3])
def test_newest_verified_survive_any_rule(keep_verified):
    backups = daily(10)
    kept, _deleted = select_retention(backups, NOW, days=0, count=0, keep_verified=keep_verified)
    assert kept_days(kept) == list(range(keep_verified))


def test_empty_input():
    assert select_retention([], NOW) == ([], [])
