"""The job defaults that decide what survives an outage, checked through the real validation."""

from ansible_collections.tradingbot.ops.plugins.module_utils.options import (
    BACKUP_OPTIONS,
    RESTORE_OPTIONS,
    validate_options,
)

JOB = {"engine": "sqlite", "database": "/srv/app.db", "backup_dir": "/srv/backups"}


def test_a_job_keeps_the_three_newest_verified_and_never_deletes_legacy_files_by_default():
    options = validate_options(BACKUP_OPTIONS, JOB)
    assert options["retention_keep_verified"] == 3
    assert options["retention_delete_legacy"] is False


def test_a_restore_refuses_legacy_files_by_default():
    assert validate_options(RESTORE_OPTIONS, JOB)["allow_legacy"] is False
