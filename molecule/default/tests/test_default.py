"""The issue's Verify list, on hosts converged by site.yml (see ../molecule.yml).

Debian 13 runs with a custom user and a base dir under /home (../host_vars/), Debian 12
with the defaults; expectations come from the same files the converge read.
"""

import json
import re
import shlex
import time
from pathlib import Path

import pytest
import yaml

SCENARIO = Path(__file__).resolve().parent.parent
REPO = SCENARIO.parent.parent
SHARED_DEFAULTS = yaml.safe_load((REPO / "roles/tradingbot/defaults/main.yml").read_text())
TEST_VARS = yaml.safe_load((SCENARIO / "group_vars/all.yml").read_text())
UNIT = "tradingbot.service"
HEALTH_URL = SHARED_DEFAULTS["tradingbot_health_url"]
# The demo logs this on SIGHUP, after reopening its log file.
REOPENED = "log file reopened"


def wait_for(predicate, what, attempts=60, delay=1.0):
    """Poll for an event; the deadline only bounds a failing run, it is not what is tested."""
    for _attempt in range(attempts):
        value = predicate()
        if value:
            return value
        time.sleep(delay)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.fixture(scope="module")
def cfg(host):
    host_vars_file = SCENARIO / "host_vars" / f"{host.backend.name}.yml"
    host_vars = yaml.safe_load(host_vars_file.read_text()) if host_vars_file.exists() else {}
    user = host_vars.get("tradingbot_user", SHARED_DEFAULTS["tradingbot_user"])
    base = host_vars.get("tradingbot_base_dir", SHARED_DEFAULTS["tradingbot_base_dir"])
    return {
        "user": user,
        "group": host_vars.get("tradingbot_group", SHARED_DEFAULTS["tradingbot_group"]),
        "base": base,
        "data": f"{base}/data",
        "logs": f"{base}/logs",
        "backups": f"{base}/backups",
        "venv": f"{base}/venv",
        "home": "read-only" if base.startswith("/home/") else "yes",
    }


def show(host, unit, *props):
    out = host.check_output(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines())


def health(host):
    code = (
        "import sys, urllib.request\n"
        "try:\n"
        f"    r = urllib.request.urlopen({HEALTH_URL!r}, timeout=5)\n"
        "    print(r.status, r.read().decode())\n"
        "except Exception as e:\n"
        "    print(0, e)\n"
    )
    status, body = host.check_output(f"python3 -c {shlex.quote(code)}").split(" ", 1)
    return int(status), body


def main_pid(host):
    return int(show(host, UNIT, "MainPID")["MainPID"])


def test_service_user_has_no_login(host, cfg):
    user = host.user(cfg["user"])
    assert user.exists
    assert user.group == cfg["group"]
    assert user.shell == "/usr/sbin/nologin"
    assert not host.file(user.home).exists


@pytest.mark.parametrize(
    ("key", "owner", "mode"),
    [("base", "root", 0o750), ("data", None, 0o750), ("logs", None, 0o750), ("backups", None, 0o750)],
)
def test_directories(host, cfg, key, owner, mode):
    d = host.file(cfg[key])
    assert d.is_directory
    assert d.user == (owner or cfg["user"])
    assert d.group == cfg["group"]
    assert d.mode == mode


def test_system_dirs_stay_root_owned(host):
    for path in ("/etc", "/usr", "/var", "/etc/systemd/system"):
        assert host.file(path).user == "root", path


def test_env_file_is_private_and_holds_the_secret(host, cfg):
    env = host.file(f"{cfg['base']}/.env")
    assert env.user == cfg["user"]
    assert env.mode == 0o600
    key, value = next(iter(TEST_VARS["tradingbot_service_env_secrets"].items()))
    assert f"{key}={value}" in env.content_string


def test_venv_imports_the_app_and_the_breaker_as_the_service_user(host, cfg):
    code = "import tradingbot.__main__, tradingbot_ops.circuit_breaker as cb; print(cb.CircuitBreaker.__name__)"
    out = host.run(f"runuser -u {cfg['user']} -- {cfg['venv']}/bin/python -c {shlex.quote(code)}")
    assert out.rc == 0, out.stderr
    assert out.stdout.strip() == "CircuitBreaker"


def test_bundled_package_is_not_writable_by_the_service_user(host, cfg):
    out = host.run(f"runuser -u {cfg['user']} -- touch {cfg['base']}/lib/tradingbot_ops/x.py")
    assert out.rc != 0
    assert host.file(f"{cfg['base']}/lib/tradingbot_ops/circuit_breaker.py").user == "root"


def test_the_installed_package_is_module_utils_as_a_whole(host, cfg):
    # Subpackages included, bytecode left out, nothing else: the directory travels as one archive.
    module_utils = REPO / "plugins" / "module_utils"
    local = sorted(
        str(path.relative_to(module_utils))
        for path in module_utils.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )
    package = f"{cfg['base']}/lib/tradingbot_ops"
    listing = host.check_output(f"cd {package} && find . -name __pycache__ -prune -o -type f -printf '%P\\n'")
    assert sorted(listing.split()) == local
    assert "storage/base.py" in local


def test_unit_properties(host, cfg):
    props = show(
        host,
        UNIT,
        "Type",
        "WatchdogUSec",
        "MemoryMax",
        "CPUQuotaPerSecUSec",
        "Restart",
        "RestartUSec",
        "ProtectSystem",
        "ProtectHome",
        "NoNewPrivileges",
        "PrivateTmp",
        "PrivateDevices",
        "User",
        "ActiveState",
        "SubState",
        "UnitFileState",
    )
    assert props == {
        "Type": "notify",
        # 60 in the template, 5 from the drop-in (tradingbot_service_overrides).
        "WatchdogUSec": "5s",
        "MemoryMax": str(2 * 1024**3),
        "CPUQuotaPerSecUSec": "2s",
        "Restart": "always",
        "RestartUSec": "10s",
        "ProtectSystem": "strict",
        "ProtectHome": cfg["home"],
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "User": cfg["user"],
        "ActiveState": "active",
        "SubState": "running",
        "UnitFileState": "enabled",
    }


def test_usr_is_read_only_in_the_service_namespace(host, cfg):
    pid = main_pid(host)
    usr = host.check_output(f"findmnt -N {pid} -no OPTIONS --target /usr")
    assert usr.split(",")[0] == "ro"
    data = host.check_output(f"findmnt -N {pid} -no OPTIONS --target {cfg['data']}")
    assert data.split(",")[0] == "rw"
    # The control: outside the namespace /usr is writable, so "ro" above is the sandbox's doing.
    assert host.check_output("findmnt -no OPTIONS --target /usr").split(",")[0] == "rw"


def test_memory_max_is_in_the_cgroup(host):
    cgroup = show(host, UNIT, "ControlGroup")["ControlGroup"]
    v2 = host.file(f"/sys/fs/cgroup{cgroup}/memory.max")
    v1 = host.file(f"/sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes")
    limit = v2.content_string if v2.exists else v1.content_string
    assert int(limit) == 2 * 1024**3
    assert show(host, UNIT, "MemoryCurrent")["MemoryCurrent"].isdigit()


def test_exposure_is_within_the_threshold(host):
    out = host.run(f"systemd-analyze security --threshold=15 --no-pager {UNIT}")
    assert out.rc == 0, out.stdout
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out.stdout)
    assert level and float(level.group(1)) <= 1.5, out.stdout


def test_health_answers_200(host):
    status, body = health(host)
    assert status == 200, body
    assert json.loads(body)["status"] == "ok"


def test_timer_is_scheduled_daily_at_two(host):
    listed = host.check_output("systemctl list-timers --all --no-legend tradingbot-backup.timer")
    assert "tradingbot-backup.timer" in listed
    props = show(host, "tradingbot-backup.timer", "NextElapseUSecRealtime", "Persistent", "RandomizedDelayUSec")
    assert props["Persistent"] == "yes"
    assert props["RandomizedDelayUSec"] == "5min"
    # "Fri 2026-11-27 02:00:00 UTC", plus up to 5 minutes of randomized delay.
    hour_minute = re.search(r" (\d\d):(\d\d):\d\d ", props["NextElapseUSecRealtime"])
    assert hour_minute, props
    assert (int(hour_minute.group(1)), int(hour_minute.group(2))) < (2, 6)
    assert int(hour_minute.group(1)) == 2


def test_backup_service_writes_a_real_backup(host, cfg):
    before = set(host.check_output(f"ls -1 {cfg['backups']}").split())
    run = host.run("systemctl start tradingbot-backup.service")
    result = show(host, "tradingbot-backup.service", "Result", "User")
    journal = host.run("journalctl -u tradingbot-backup.service --no-pager -n 30").stdout
    assert run.rc == 0, journal
    assert result == {"Result": "success", "User": cfg["user"]}
    new = sorted(set(host.check_output(f"ls -1 {cfg['backups']}").split()) - before)
    backups = [n for n in new if re.fullmatch(r"sqlite_backup_\d{8}_\d{6}\.db\.gz", n)]
    assert len(backups) == 1, new
    path = f"{cfg['backups']}/{backups[0]}"
    f = host.file(path)
    assert (f.user, f.group, f.mode) == (cfg["user"], cfg["group"], 0o640)
    # The backup decodes to a SQLite database holding the demo's rows.
    check = shlex.quote("PRAGMA integrity_check; SELECT count(*) > 0 FROM ticks")
    rows = host.check_output(f"d=$(mktemp -d) && gunzip -c {path} > $d/b.db && sqlite3 $d/b.db {check}; rm -rf $d")
    assert rows.split() == ["ok", "1"]


def test_logrotate_config_passes_debug_mode(host):
    out = host.run("logrotate -d /etc/logrotate.d/tradingbot")
    assert out.rc == 0, out.stderr
    assert "error:" not in out.stderr


def test_forced_rotation_makes_the_service_reopen_its_log(host, cfg):
    log = f"{cfg['logs']}/tradingbot.log"
    pid = main_pid(host)
    out = host.run("logrotate -f /etc/logrotate.d/tradingbot")
    assert out.rc == 0, out.stderr
    assert host.file(f"{log}.1").exists
    wait_for(lambda: REOPENED in host.file(log).content_string, "the service to reopen its log")
    # The demo keeps writing to the new file, and was reloaded, not restarted.
    assert main_pid(host) == pid
    assert host.file(log).user == cfg["user"]


def test_watchdog_restarts_a_hung_service(host):
    restarts = int(show(host, UNIT, "NRestarts")["NRestarts"])
    pid = main_pid(host)
    host.check_output(f"kill -STOP {pid}")
    wait_for(lambda: int(show(host, UNIT, "NRestarts")["NRestarts"]) > restarts, "a watchdog restart")
    journal = host.check_output(f"journalctl -u {UNIT} --no-pager -n 50")
    assert "Watchdog timeout" in journal
    wait_for(lambda: show(host, UNIT, "ActiveState")["ActiveState"] == "active", "the restarted service")
    assert main_pid(host) != pid
    assert wait_for(lambda: health(host)[0] == 200, "health after the restart")
