"""The copy job's options, names and metrics file, without a store."""

import datetime
import hashlib
import os

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils import offsite_config, offsite_metrics
from ansible_collections.tradingbot.ops.plugins.module_utils.encryption import EncryptionError, recipient_fingerprint
from ansible_collections.tradingbot.ops.plugins.module_utils.offsite_config import OffsiteError, parse_options

RECIPIENT = "age1gc6e29njjwtx7pf70y7tetp7nzfhvvd977j20krp69fm7hx3havslkmu9q"
BASE = {"backup_dir": "/var/backups/tradingbot", "recipient": RECIPIENT, "s3_bucket": "tradingbot"}


def test_defaults_lock_every_copy_past_the_gfs_horizon():
    opts = parse_options(BASE)
    assert opts["object_lock_days"] > opts["retention_monthly"] * 31
    assert (opts["retention_days"], opts["retention_daily"], opts["retention_weekly"], opts["retention_monthly"]) == (
        7,
        30,
        12,
        12,
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"recipient": "AGE-SECRET-KEY-1QQQQ"}, "the recipient must be an age public key"),
        ({"object_lock_days": 0}, "object_lock_days must be > 0"),
        ({"retention_daily": -1}, "retention_daily cannot be negative"),
        ({"s3_secret_access_key": "x"}, "unknown option"),
        ({"s3_bucket": None}, "missing required option s3_bucket"),
    ],
)
def test_bad_options_are_refused_with_one_line(override, message):
    with pytest.raises(OffsiteError, match=message) as refused:
        parse_options({**BASE, **override})
    assert "\n" not in str(refused.value)
    assert "AGE-SECRET-KEY" not in str(refused.value)


def test_the_fingerprint_is_the_sha256_of_the_recipient_string():
    expected = "sha256:" + hashlib.sha256(RECIPIENT.encode("ascii")).hexdigest()
    assert recipient_fingerprint(RECIPIENT) == recipient_fingerprint(f"  {RECIPIENT}\n") == expected
    with pytest.raises(EncryptionError):
        recipient_fingerprint(RECIPIENT[:-1])


def test_store_keys_map_back_to_backup_names_and_nothing_else():
    name = "sqlite_backup_20260101_020000.db.gz"
    assert offsite_config.backup_name_of(offsite_config.ciphertext_key(name)) == name
    assert offsite_config.backup_name_of(offsite_config.manifest_key(name)) == name
    assert offsite_config.backup_name_of(name) is None
    assert offsite_config.backup_name_of("notes.txt.age") is None


def test_a_failed_run_keeps_the_last_success_so_its_age_keeps_growing(tmp_path):
    first = datetime.datetime(2026, 1, 1, 2, 0, tzinfo=datetime.UTC)
    offsite_metrics.write_metrics(str(tmp_path), True, first, pending=0, newest_copy=first, copied=1)
    later = first + datetime.timedelta(hours=5)
    path = offsite_metrics.write_metrics(str(tmp_path), False, later, pending=3)
    with open(path, encoding="utf-8") as handle:
        values = dict(line.split() for line in handle if not line.startswith("#"))
    assert values == {
        "tradingbot_offsite_last_run_timestamp_seconds": str(later.timestamp()),
        "tradingbot_offsite_last_run_success": "0",
        "tradingbot_offsite_last_success_timestamp_seconds": str(first.timestamp()),
        "tradingbot_offsite_pending_backups": "3",
        "tradingbot_offsite_newest_copy_timestamp_seconds": str(first.timestamp()),
    }
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
