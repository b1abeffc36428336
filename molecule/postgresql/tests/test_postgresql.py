"""The PostgreSQL host after the incident in side_effect.yml, and the backup unit's failure modes."""

import json
import re
import shlex

import pytest

PASSWORD = "molecule-pg-S3cret"
BACKUPS = "/opt/tradingbot/backups"
CONFIG = "/etc/tradingbot/backup.json"
PASSFILE = "/etc/tradingbot/pgpass"
METRICS = "/var/lib/tradingbot-metrics/tradingbot_backup_postgresql.prom"
UNIT = "tradingbot-backup.service"
# The rows prepare.yml loaded, generated again: the content the backup holds.
EXPECTED_TRADES = (
    "SELECT md5(string_agg(g || '|SYM' || (g % 23) || '|' || (g * 0.5) || '|2026-01-01 00:00:00+00', ',' ORDER BY g)) "
    "FROM generate_series(1, 5000) g"
)
LIVE_TRADES = (
    "SELECT md5(string_agg(id || '|' || symbol || '|' || qty || '|' || placed_at, ',' ORDER BY id)) FROM trades"
)


def psql(host, sql, database="tradingbot"):
    cmd = f"runuser -u postgres -- psql -X -At -d {shlex.quote(database)} -c {shlex.quote(sql)}"
    result = host.run("env TZ=UTC PGTZ=UTC " + cmd)
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def backups(host):
    names = host.run("ls -1A %s", BACKUPS).stdout.split()
    return sorted(name for name in names if name.startswith("postgres_backup_") and name.endswith(".sql.gz"))


def test_the_timer_unit_wrote_a_verified_backup_with_a_manifest(host):
    latest = backups(host)[-1]
    backup = host.file(f"{BACKUPS}/{latest}")
    manifest = json.loads(host.file(f"{BACKUPS}/{latest}.manifest.json").content_string)
    assert backup.mode == 0o640
    assert manifest["verification"]["ok"] is True
    assert manifest["tables"] == {"public.accounts": 50, "public.trades": 5000} or manifest["tables"] == {
        "accounts": 50,
        "trades": 5000,
    }


def test_the_data_equals_the_backup(host):
    assert psql(host, "SELECT count(*) FROM trades") == "5000"
    assert psql(host, "SELECT count(*) FROM accounts") == "50"
    assert psql(host, LIVE_TRADES) == psql(host, EXPECTED_TRADES)


def test_the_service_is_active(host):
    assert host.service("tradingbot").is_running


def test_the_damaged_database_is_kept_as_the_safety_copy(host):
    names = psql(
        host, "SELECT datname FROM pg_database WHERE datname LIKE 'tradingbot\\_pre\\_restore\\_%'", "postgres"
    )
    assert len(names.split()) == 1, names
    safety = names.split()[0]
    assert psql(host, "SELECT to_regclass('public.accounts') IS NULL", safety) == "t"
    assert int(psql(host, "SELECT count(*) FROM trades WHERE qty = -1", safety)) > 0


def test_the_password_stays_out_of_config_units_and_logs(host):
    passfile = host.file(PASSFILE)
    assert (passfile.user, passfile.mode) == ("tradingbot", 0o600)
    for path in (CONFIG, "/etc/systemd/system/tradingbot-backup.service", "/etc/systemd/system/tradingbot.service"):
        assert PASSWORD not in host.file(path).content_string, path
    journal = host.run("journalctl --no-pager -o cat")
    assert PASSWORD not in journal.stdout
    assert PASSWORD not in host.run("cat /opt/tradingbot/logs/*.log").stdout


def test_the_backup_unit_is_exposed_only_as_far_as_the_network_needs(host):
    result = host.run("systemd-analyze security --no-pager %s", UNIT)
    score = float(re.search(r"exposure level for \S+: ([0-9.]+)", result.stdout).group(1))
    print(f"exposure of {UNIT} (PostgreSQL): {score}")
    assert score <= 2.0, result.stdout


def backup_dir_entries(host):
    """Everything in the backup dir but the engine's persistent lock file."""
    return [name for name in host.run("ls -1A %s", BACKUPS).stdout.split() if not name.endswith(".lock")]


def edited_config(host, **changes):
    config = json.loads(host.file(CONFIG).content_string)
    return json.dumps(dict(config, **changes))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("wrong password", "password authentication failed"),
        ("unreachable server", "connection"),
    ],
)
def test_a_failing_backup_fails_the_unit_clearly_and_leaves_no_partial_file(host, breakage, message):
    original = host.file(CONFIG).content_string
    before = backup_dir_entries(host)
    if breakage == "wrong password":
        broken = edited_config(host, pg_passfile=None, pg_password="not-the-password")
    else:
        broken = edited_config(host, pg_port=1, pg_retries=1)
    host.run("printf '%%s' %s > %s", broken, CONFIG)
    try:
        started = host.run("systemctl start --wait %s", UNIT)
        result = host.run("systemctl show -P Result %s", UNIT).stdout.strip()
        journal = host.run("journalctl --no-pager -o cat -n 20 -u %s", UNIT).stdout
        metrics = host.file(METRICS).content_string
    finally:
        host.run("printf '%%s' %s > %s", original, CONFIG)
    assert started.rc != 0
    assert result == "exit-code"
    assert message in journal.lower()
    assert "not-the-password" not in journal
    assert 'tradingbot_backup_last_result{engine="postgresql",database="tradingbot"} 0' in metrics
    assert backup_dir_entries(host) == before
