"""The recovery drill against a real SQLite deployment laid out in a temp dir.

The systemd and logrotate checks are exercised on real hosts by the molecule scenarios;
here the units list is empty and a real logrotate file is checked.
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils import backup, recovery_drill
from ansible_collections.tradingbot.ops.plugins.module_utils.engines.pg_client import psql_script
from damage import corrupt_flip


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.fixture
def deployment(tmp_path):
    data = tmp_path / "data"
    backups = tmp_path / "backups"
    data.mkdir()
    backups.mkdir()
    live_db = data / "tradingbot.db"
    recovery_drill.make_scratch_sqlite(str(live_db), rows=50)
    config = {"engine": "sqlite", "database": str(live_db), "backup_dir": str(backups)}
    latest = backup.run_backup(dict(config))["path"]
    logrotate = tmp_path / "logrotate.conf"
    logrotate.write_text(f"{tmp_path}/app.log {{\n  daily\n  rotate 3\n  missingok\n}}\n")
    config_file = tmp_path / "backup.json"
    config_file.write_text(json.dumps(config))
    return {"config": config, "config_file": config_file, "latest": latest, "live_db": live_db, "logrotate": logrotate}


def run_recovery_drill(deployment):
    return recovery_drill.RecoveryDrill(
        deployment["config"], logrotate_config=str(deployment["logrotate"]), scratch_root=None
    ).run()


def test_every_check_passes_and_live_data_is_only_read(deployment):
    before = {p: sha256(p) for p in (deployment["latest"], deployment["live_db"])}
    listing = sorted(os.listdir(deployment["config"]["backup_dir"]))

    report = run_recovery_drill(deployment)

    assert report["ok"], report["checks"]
    assert report["total"] == 8
    assert report["pass_rate"] == 100
    assert {p: sha256(p) for p in before} == before
    assert sorted(os.listdir(deployment["config"]["backup_dir"])) == listing


def test_a_corrupted_latest_backup_fails_the_named_check(deployment):
    corrupt_flip(deployment["latest"])

    report = run_recovery_drill(deployment)

    assert not report["ok"]
    assert report["failed_checks"] == ["restore engine usable"]


def test_an_invalid_logrotate_file_fails_the_named_check(deployment):
    deployment["logrotate"].write_text("/var/log/x.log {\n  rotate_every_fortnight\n}\n")

    report = run_recovery_drill(deployment)

    assert report["failed_checks"] == ["logrotate configuration"]


def test_cli_prints_the_original_summary_and_exits_non_zero_on_failure(deployment, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "lib"))
    package = tmp_path / "lib" / "tradingbot_ops"
    package.parent.mkdir()
    os.symlink(os.path.dirname(recovery_drill.__file__), package)
    argv = [sys.executable, "-m", "tradingbot_ops.recovery_drill", "--config", str(deployment["config_file"])]
    argv += ["--logrotate-config", str(deployment["logrotate"]), "--metrics-dir", str(tmp_path)]

    passing = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    deployment["logrotate"].write_text("/var/log/x.log {\n  rotate_every_fortnight\n}\n")
    failing = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)

    assert passing.returncode == 0, passing.stderr
    assert "Recovery Test Summary" in passing.stdout
    assert "Total tests: 8\nPassed: 8\nFailed: 0\nPass rate: 100%" in passing.stdout
    assert failing.returncode == 1
    assert "[FAIL] logrotate configuration" in failing.stdout
    metrics = (tmp_path / "tradingbot_recovery_drill.prom").read_text()
    assert "tradingbot_recovery_drill_success 0" in metrics


def test_the_drill_on_postgresql_restores_the_live_database_into_scratch(postgres_cluster, tmp_path):
    postgres_cluster.drop_database("drill_pg")
    postgres_cluster.create_database("drill_pg")
    params = postgres_cluster.params(database="drill_pg")
    psql_script(params, "CREATE TABLE fills (id int PRIMARY KEY)", "drill_pg")
    psql_script(params, "INSERT INTO fills SELECT generate_series(1, 250)", "drill_pg")
    config = dict(params, engine="postgresql", backup_dir=str(tmp_path / "backups"))
    backup.run_backup(dict(config))

    report = recovery_drill.RecoveryDrill(config).run()

    assert report["ok"], report["checks"]
    assert report["total"] == 10
    assert [c["name"] for c in report["checks"][-2:]] == ["postgresql backup", "postgresql restore"]
    scratch = postgres_cluster.psql("SELECT datname FROM pg_database WHERE datname LIKE 'drill_pg_%'", "postgres")
    assert scratch.strip() == ""  # the scratch and safety databases are gone again
    postgres_cluster.drop_database("drill_pg")
