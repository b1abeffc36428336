"""After the incident in converge.yml: the service runs on exactly the backed-up data."""

import json
import time

DB = "/opt/tradingbot/data/tradingbot.db"
BACKUPS = "/opt/tradingbot/backups"
# Rows as text, in id order; `id <= N` compares the live database on the backup's range only,
# because the service keeps writing new rows once it is back.
ROWS_UP_TO = "SELECT group_concat(id || '|' || at || '|' || ifnull(price, '') || '|' || source, char(10)) "
ROWS_UP_TO += "FROM (SELECT * FROM ticks WHERE id <= {max_id} ORDER BY id)"


def sqlite(host, path, sql):
    result = host.run("sqlite3 -readonly %s %s", path, sql)
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def latest_backup(host):
    names = host.run("ls -1 %s", BACKUPS).stdout.split()
    backups = sorted(name for name in names if name.startswith("sqlite_backup_") and name.endswith(".db.gz"))
    assert backups, names
    return f"{BACKUPS}/{backups[-1]}"


def test_the_backup_playbook_kept_every_backup_the_job_keeps(host):
    # converge.yml planted these before running the backup playbook; the job keeps 30 days, or 7
    # days and 4 weeklies: either keeps the 10 to 24-day-old ones and drops the 40-day one.
    planted = json.loads(host.file("/root/planted-backups.json").content_string)
    present = set(host.run("ls -1 %s", BACKUPS).stdout.split())
    kept = {name for name, days in planted.items() if days <= 24}
    dropped = {name for name, days in planted.items() if days > 30}
    assert len(kept) == 3 and len(dropped) == 1, planted
    assert kept <= present, sorted(present)
    assert not dropped & present, sorted(present)
    # The playbook's backup is the service user's, like the timer's.
    backup = host.file(latest_backup(host))
    assert (backup.user, backup.group, backup.mode) == ("tradingbot", "tradingbot", 0o640)


def test_service_is_back(host):
    assert host.service("tradingbot").is_running
    health = host.run(
        "python3 -c %s", "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/health').read().decode())"
    )
    assert json.loads(health.stdout)["status"] == "ok"


def test_data_equals_the_backup(host):
    backup = latest_backup(host)
    manifest = json.loads(host.file(backup + ".manifest.json").content_string)
    unpacked = host.run("mktemp -d").stdout.strip() + "/backup.db"
    assert host.run("gzip -dc %s > %s", backup, unpacked).rc == 0

    max_id = int(sqlite(host, unpacked, "SELECT max(id) FROM ticks"))
    assert int(sqlite(host, unpacked, "SELECT count(*) FROM ticks")) == manifest["tables"]["ticks"]
    assert sqlite(host, DB, ROWS_UP_TO.format(max_id=max_id)) == sqlite(
        host, unpacked, ROWS_UP_TO.format(max_id=max_id)
    )
    assert sqlite(host, DB, "SELECT count(*) FROM ticks WHERE source = 'damaged'") == "0"


def test_the_damaged_database_is_kept_as_the_safety_copy(host):
    copies = host.run("ls -1d %s.*", DB).stdout.split()
    safety = [path for path in copies if not path.endswith(("-wal", "-shm"))]
    assert len(safety) == 1, copies
    assert int(sqlite(host, safety[0], "SELECT count(*) FROM ticks WHERE source = 'damaged'")) > 0
    assert host.file(safety[0]).user == "tradingbot"


DRILL = "tradingbot-recovery-drill.service"
DRILL_METRICS = "/var/lib/tradingbot-metrics/tradingbot_recovery_drill.prom"
LOGROTATE = "/etc/logrotate.d/tradingbot"


def run_drill(host):
    started = host.run("systemctl start --wait %s", DRILL)
    invocation = host.run("systemctl show -P InvocationID %s", DRILL).stdout.strip()
    journal = host.run("journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID=%s", invocation).stdout
    return started.rc, journal, host.file(DRILL_METRICS).content_string


def test_the_recovery_drill_passes_on_the_restored_host(host):
    assert host.run("systemctl is-enabled tradingbot-recovery-drill.timer").stdout.strip() == "enabled"
    rc, journal, metrics = run_drill(host)
    assert rc == 0, journal
    assert "Total tests: 8\nPassed: 8\nFailed: 0\nPass rate: 100%" in journal
    assert "tradingbot_recovery_drill_success 1" in metrics


def test_the_recovery_drill_fails_naming_a_check_broken_on_purpose(host):
    original = host.file(LOGROTATE).content_string
    host.run("printf '%%s' %s > %s", "/opt/tradingbot/logs/*.log {\n  rotate_every_fortnight\n}\n", LOGROTATE)
    try:
        rc, journal, metrics = run_drill(host)
    finally:
        host.run("printf '%%s' %s > %s", original, LOGROTATE)
    assert rc != 0
    assert "[FAIL] logrotate configuration" in journal
    assert "Failed: 1" in journal
    assert "tradingbot_recovery_drill_success 0" in metrics


SERVICE_STOPS = "/var/lib/tradingbot-metrics/tradingbot_service_tradingbot.service.prom"


def stops(host, result):
    text = host.file(SERVICE_STOPS).content_string
    line = f'tradingbot_service_stops_total{{unit="tradingbot.service",result="{result}"}} '
    return int(next(row for row in text.splitlines() if row.startswith(line)).split()[-1])


def test_the_stop_hook_counts_the_restores_stop_and_a_killed_service(host):
    # The restore stopped the service cleanly at least once.
    assert stops(host, "success") >= 1
    killed_before = stops(host, "signal")
    pid = host.check_output("systemctl show -P MainPID tradingbot.service")
    host.check_output(f"kill -KILL {pid}")
    for _attempt in range(60):
        if stops(host, "signal") == killed_before + 1:
            break
        time.sleep(1)
    assert stops(host, "signal") == killed_before + 1
    for _attempt in range(60):
        if host.run("systemctl is-active tradingbot.service").stdout.strip() == "active":
            break
        time.sleep(1)
    assert host.run("systemctl is-active tradingbot.service").stdout.strip() == "active"
