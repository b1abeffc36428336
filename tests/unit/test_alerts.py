"""The alert rules and the dashboard, checked with the real promtool against what the code writes.

- ``promtool check rules`` on the shipped rules file;
- ``promtool test rules``: for every alert, input series on which it fires, and healthy
  series, a fresh host and near-threshold series on which it stays quiet;
- ``promtool check metrics`` on textfiles written by the real writers (the backup CLI on a
  real SQLite database, the recovery drill's CLI, the service stop hook), run as the hosts
  run them: ``python3 -m tradingbot_ops.<cli>``;
- every metric the rules and the dashboard query is one of those, or a breaker exporter name;
- the role installs the file, checks it with promtool first, and changes nothing the second time.

promtool comes from Debian's prometheus package, extracted by tools/bootstrap.sh into
``<cache>/bin/promtool``; ``TRADINGBOT_PROMTOOL`` names another one. Under CI a missing
promtool fails.
"""

import json
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import ansible_collections
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "tradingbot_alerts"
RULES = ROLE / "files" / "tradingbot.rules.yml"
DASHBOARD = ROLE / "files" / "tradingbot-dashboard.json"
HOST_PYTHON = "/usr/bin/python3"  # the hosts' Python (3.11 on Debian 12)
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
# Where tests/conftest.py makes the checkout importable as tradingbot.ops.
COLLECTIONS_ROOT = next(Path(p).parent for p in ansible_collections.__path__ if Path(p, "tradingbot", "ops").is_dir())

# Written by the breaker's exporter (issue 15, item 4), which is built on another branch;
# these are the names agreed with it. Everything else below is read from real output.
BREAKER_METRICS = {
    "tradingbot_circuit_breaker_state",
    "tradingbot_circuit_breaker_calls_total",
    "tradingbot_circuit_breaker_failures_total",
    "tradingbot_circuit_breaker_rejections_total",
    "tradingbot_circuit_breaker_last_transition_timestamp_seconds",
}


def find_promtool():
    if os.environ.get("TRADINGBOT_PROMTOOL"):
        return os.environ["TRADINGBOT_PROMTOOL"]
    cache = os.environ.get("TRADINGBOT_OPS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tradingbot-ops"
    )
    cached = os.path.join(cache, "bin", "promtool")
    return cached if os.access(cached, os.X_OK) else shutil.which("promtool")


@pytest.fixture(scope="session")
def promtool():
    path = find_promtool()
    if not path:
        reason = "no promtool: tools/bootstrap.sh extracts it into the cache, or set TRADINGBOT_PROMTOOL"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def rules():
    return {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}


# --- promtool test rules ----------------------------------------------------------------------

HOST = {"instance": "trade1:9100", "job": "node"}
BACKUP = {**HOST, "engine": "sqlite", "database": "/opt/tradingbot/data/tradingbot.db"}
BREAKER = {**HOST, "breaker": "binance_api"}
UNIT = {**HOST, "unit": "tradingbot.service"}
STOP_RESULTS = ("success", "exit-code", "signal", "watchdog", "oom-kill")  # a subset of what is written
DAY = 86400


def series(name, labels, values):
    matchers = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{matchers}}}", "values": values}


def daily(days, per_day):
    """A timestamp that moves to the start of each day, sampled per_day times a day."""
    return " ".join(f"{day * DAY}x{per_day - 1}" for day in range(days))


def healthy_host(days=3):
    """Every series of a host whose backups, drill, breakers and service are fine (5m samples)."""
    samples = days * 288 - 1
    return [
        series("tradingbot_backup_last_run_timestamp_seconds", BACKUP, daily(days, 288)),
        series("tradingbot_backup_last_success_timestamp_seconds", BACKUP, daily(days, 288)),
        series("tradingbot_backup_last_result", BACKUP, f"1x{samples}"),
        series("tradingbot_recovery_drill_success", HOST, f"1x{samples}"),
        series("tradingbot_recovery_drill_checks_failed", HOST, f"0x{samples}"),
        series("tradingbot_recovery_drill_last_run_timestamp_seconds", HOST, f"0x{samples}"),
        # The off-site copy runs after each night's backup and copies it.
        series("tradingbot_offsite_last_run_timestamp_seconds", HOST, daily(days, 288)),
        series("tradingbot_offsite_last_success_timestamp_seconds", HOST, daily(days, 288)),
        series("tradingbot_offsite_last_run_success", HOST, f"1x{samples}"),
        series("tradingbot_offsite_pending_backups", HOST, f"0x{samples}"),
        series("tradingbot_offsite_newest_copy_timestamp_seconds", HOST, daily(days, 288)),
        series("tradingbot_offsite_copied_backups", HOST, f"1x{samples}"),
        *fresh_service(samples),
    ]


def fresh_service(minutes, stops=None):
    """The service's series: closed breaker, stop counters as written by ``init``."""
    stops = stops or {}
    return [
        series("tradingbot_circuit_breaker_state", {**BREAKER, "state": "closed"}, f"1x{minutes}"),
        series("tradingbot_circuit_breaker_state", {**BREAKER, "state": "open"}, f"0x{minutes}"),
        series("tradingbot_circuit_breaker_state", {**BREAKER, "state": "half_open"}, f"0x{minutes}"),
        *[
            series("tradingbot_service_stops_total", {**UNIT, "result": result}, stops.get(result, f"0x{minutes}"))
            for result in STOP_RESULTS
        ],
    ]


def breaker_states(closed, open_, half_open):
    return [
        series("tradingbot_circuit_breaker_state", {**BREAKER, "state": "closed"}, closed),
        series("tradingbot_circuit_breaker_state", {**BREAKER, "state": "open"}, open_),
        series("tradingbot_circuit_breaker_state", {**BREAKER, "state": "half_open"}, half_open),
    ]


def stops(counts, minutes=119):
    """Stop counters over ``minutes`` one-minute samples; counts maps result to its values."""
    return [
        series("tradingbot_service_stops_total", {**UNIT, "result": result}, counts.get(result, f"0x{minutes}"))
        for result in STOP_RESULTS
    ]


def fires(labels, summary):
    return [(labels, summary)]


QUIET = []

# (id, alert, input series, [(eval time, expected alerts)], sample and evaluation interval)
CASES = [
    (
        "stale: no success for 27 h",
        "TradingbotBackupStale",
        [series("tradingbot_backup_last_success_timestamp_seconds", BACKUP, "0x1700")],
        [
            ("26h9m", QUIET),  # pending: older than 26 h for only 8 minutes
            ("27h", fires(BACKUP, "The newest sqlite backup on trade1:9100 is 1d 3h 0m 0s old.")),
        ],
        "1m",
    ),
    (
        "stale: the last success carries over a failed night",
        "TradingbotBackupStale",
        [series("tradingbot_backup_last_success_timestamp_seconds", BACKUP, "0x1700")],
        [("25h59m", QUIET)],
        "1m",
    ),
    (
        "missing: the metrics disappeared",
        "TradingbotBackupMissing",
        [series("tradingbot_backup_last_run_timestamp_seconds", BACKUP, "0x600")],
        [
            ("10h20m", QUIET),  # gone for 15 minutes: pending
            ("11h", fires(BACKUP, "trade1:9100 no longer reports its sqlite backups.")),
        ],
        "1m",
    ),
    (
        "never ran: no backup metrics for 27 h",
        "TradingbotBackupNeverRan",
        [series("up", HOST, "1x1700")],
        [("25h", QUIET), ("27h", fires({}, "No tradingbot host has reported a backup run for 26 hours."))],
        "1m",
    ),
    (
        "failed: the last run failed",
        "TradingbotBackupFailed",
        [series("tradingbot_backup_last_result", BACKUP, "1x1440 0x59 1x20")],
        [
            ("23h", QUIET),
            ("24h30m", fires(BACKUP, "The last sqlite backup run on trade1:9100 failed.")),
            ("25h10m", QUIET),  # the next run succeeded
        ],
        "1m",
    ),
    (
        "drill failed",
        "TradingbotRecoveryDrillFailed",
        [
            series("tradingbot_recovery_drill_success", HOST, "1x60 0x60"),
            series("tradingbot_recovery_drill_checks_failed", HOST, "0x60 2x60"),
        ],
        [("30m", QUIET), ("90m", fires(HOST, "The recovery drill on trade1:9100 failed 2 of its checks."))],
        "1m",
    ),
    (
        "drill overdue: last ran 36 days ago",
        "TradingbotRecoveryDrillOverdue",
        [series("tradingbot_recovery_drill_last_run_timestamp_seconds", HOST, "0x1800")],
        [
            ("35d", QUIET),
            ("35d1h", QUIET),  # overdue for 30 minutes: pending
            ("36d", fires(HOST, "The recovery drill on trade1:9100 last ran 36d 0h 0m 0s ago.")),
        ],
        "30m",
    ),
    (
        "drill on schedule: monthly runs",
        "TradingbotRecoveryDrillOverdue",
        [series("tradingbot_recovery_drill_last_run_timestamp_seconds", HOST, f"0x1439 {30 * DAY}x1000")],
        [("34d", QUIET), ("44d", QUIET)],
        "30m",
    ),
    (
        "offsite stale: no successful copy run for 27 h",
        "TradingbotOffsiteStale",
        [series("tradingbot_offsite_last_success_timestamp_seconds", HOST, "0x1700")],
        [
            ("26h9m", QUIET),  # pending: older than 26 h for only 8 minutes
            ("27h", fires(HOST, "The last successful off-site copy on trade1:9100 was 1d 3h 0m 0s ago.")),
        ],
        "1m",
    ),
    (
        "offsite stale: a daily copy run is on time",
        "TradingbotOffsiteStale",
        [series("tradingbot_offsite_last_success_timestamp_seconds", HOST, f"0x1439 {DAY}x1000")],
        [("23h59m", QUIET), ("25h59m", QUIET), ("49h", QUIET)],
        "1m",
    ),
    (
        "offsite failed: the last copy run failed",
        "TradingbotOffsiteFailed",
        [series("tradingbot_offsite_last_run_success", HOST, "1x1440 0x59 1x20")],
        [
            ("23h", QUIET),
            ("24h30m", fires(HOST, "The last off-site copy run on trade1:9100 failed.")),
            ("25h10m", QUIET),  # the next run succeeded
        ],
        "1m",
    ),
    (
        "offsite backlog: 3 backups wait for 7 hours",
        "TradingbotOffsiteBacklog",
        [series("tradingbot_offsite_pending_backups", HOST, "0x60 3x420 0x60")],
        [
            ("5h", QUIET),  # waiting for 4 hours: pending
            ("7h30m", fires(HOST, "3 verified backups on trade1:9100 have waited 6 hours for their off-site copy.")),
            ("8h30m", QUIET),  # a run caught up
        ],
        "1m",
    ),
    (
        "offsite backlog: a run catches up within 6 hours",
        "TradingbotOffsiteBacklog",
        [series("tradingbot_offsite_pending_backups", HOST, "0x60 2x299 0x300")],
        [("6h", QUIET), ("7h30m", QUIET)],
        "1m",
    ),
    (
        "breaker open, probing in half_open, for 15 minutes",
        "TradingbotCircuitBreakerOpen",
        breaker_states("1x4 0x15", "0x4 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0", "0x4 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1"),
        [
            ("10m", QUIET),
            ("16m", fires(BREAKER, "Circuit breaker binance_api on trade1:9100 has not closed for 10 minutes.")),
        ],
        "1m",
    ),
    (
        "breaker open for 5 minutes, then closed",
        "TradingbotCircuitBreakerOpen",
        breaker_states("1x4 0x4 1x10", "0x4 1x4 0x10", "0x19"),
        [("8m", QUIET), ("19m", QUIET)],
        "1m",
    ),
    (
        "restarting: 5 failed stops in 40 minutes",
        "TradingbotServiceRestarting",
        stops({"exit-code": "0x9 1x9 2x9 3x4 4x4 5x4", "signal": "0x45"}, minutes=45),
        [("45m", fires(UNIT, "tradingbot.service on trade1:9100 failed 5 times in the last hour."))],
        "1m",
    ),
    (
        "restarting: failures of several kinds add up",
        "TradingbotServiceRestarting",
        stops({"exit-code": "0x59 1x9 2x49", "signal": "0x69 1x9 2x39", "oom-kill": "0x119"}),
        [("119m", fires(UNIT, "tradingbot.service on trade1:9100 failed 4 times in the last hour."))],
        "1m",
    ),
    (
        "restarting: 3 failed stops in an hour is the limit",
        "TradingbotServiceRestarting",
        stops({"exit-code": "0x69 1x9 2x9 3x29"}),
        # Evaluated between two samples, as real scrapes are: increase() extrapolates 3 to 3.03.
        [("119m", QUIET), ("119m30s", QUIET)],
        ("1m", "30s"),
    ),
    (
        "restarting: deploy restarts are clean stops",
        "TradingbotServiceRestarting",
        stops({"success": "0x9 1x9 2x9 3x9 4x9 5x9 6x59"}),
        [("60m", QUIET), ("119m", QUIET)],
        "1m",
    ),
    (
        "watchdog kill",
        "TradingbotServiceWatchdogKill",
        stops({"watchdog": "0x29 1x89"}),
        [
            ("29m", QUIET),
            (
                "31m",
                fires(
                    {**UNIT, "result": "watchdog"},
                    "systemd's watchdog killed tradingbot.service on trade1:9100 in the last hour.",
                ),
            ),
            ("95m", QUIET),  # an hour later it clears
        ],
        "1m",
    ),
]


def expected_alert(rule, labels, summary):
    """promtool compares all labels and annotations: the series' labels plus the rule's, and
    the annotations with {{ $labels.X }} filled in (the summary is given, as an operator reads it)."""
    annotations = {"summary": summary}
    for key in ("description", "runbook_url"):
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], rule["annotations"][key])
        assert "{{" not in text, f"{rule['alert']} {key}: the test only fills in $labels"
        annotations[key] = text
    return {"exp_labels": {**labels, **rule.get("labels", {})}, "exp_annotations": annotations}


def run_rule_test(promtool, tmp_path, interval, input_series, checks):
    """``interval``: the sample interval, also the evaluation interval unless a pair gives both."""
    sample_interval, evaluation_interval = (interval, interval) if isinstance(interval, str) else interval
    test_file = tmp_path / "test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(RULES)],
                "evaluation_interval": evaluation_interval,
                "tests": [{"interval": sample_interval, "input_series": input_series, "alert_rule_test": checks}],
            }
        )
    )
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_alert_fires_when_it_should_and_only_then(promtool, tmp_path, case):
    _name, alert, input_series, evals, interval = case
    rule = rules()[alert]
    checks = [
        {
            "eval_time": eval_time,
            "alertname": alert,
            "exp_alerts": [expected_alert(rule, labels, summary) for labels, summary in expected],
        }
        for eval_time, expected in evals
    ]
    run_rule_test(promtool, tmp_path, interval, input_series, checks)


@pytest.mark.parametrize(
    ("input_series", "eval_times", "interval"),
    [
        pytest.param(healthy_host(), ["1h", "25h", "26h30m", "49h", "71h"], "5m", id="healthy host"),
        # The service runs (breakers closed, stop counters at 0) but no backup or drill has run yet.
        pytest.param(fresh_service(1499), ["1m", "1h", "25h"], "1m", id="fresh host"),
        pytest.param([], ["1m", "25h"], "1m", id="fresh host without series"),
    ],
)
def test_every_alert_is_quiet(promtool, tmp_path, input_series, eval_times, interval):
    checks = [
        {"eval_time": eval_time, "alertname": alert, "exp_alerts": []} for alert in rules() for eval_time in eval_times
    ]
    run_rule_test(promtool, tmp_path, interval, input_series, checks)


def test_every_alert_has_a_firing_and_a_quiet_case():
    firing = {c[1] for c in CASES if any(expected for _time, expected in c[3])}
    quiet = {c[1] for c in CASES if any(not expected for _time, expected in c[3])}
    assert firing == set(rules())
    assert quiet == set(rules())


# --- the rules file itself --------------------------------------------------------------------


def test_promtool_checks_the_rules(promtool):
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_rejects_a_broken_rule(promtool, tmp_path):
    broken = yaml.safe_load(RULES.read_text())
    broken["groups"][0]["rules"][0]["expr"] = "time() - tradingbot_backup_last_success_timestamp_seconds >"
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "broken.yml")], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0


def runbook_anchors():
    """The headings of docs/alerts.md, as GitHub makes their anchors."""
    headings = re.findall(r"^#+ (.+)$", (REPO / "docs" / "alerts.md").read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("alert", sorted(rules()))
def test_each_alert_says_what_happened_what_to_do_and_where_to_read(alert):
    rule = rules()[alert]
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
    repository = yaml.safe_load((REPO / "galaxy.yml").read_text())["repository"]
    page, anchor = rule["annotations"]["runbook_url"].split("#")
    assert page == f"{repository}/blob/main/docs/alerts.md"
    assert anchor in runbook_anchors()


# --- what the code writes ---------------------------------------------------------------------


def host_cli(lib, module, *args, env=None):
    python = HOST_PYTHON if os.path.exists(HOST_PYTHON) else sys.executable
    return subprocess.run(
        [python, "-m", f"tradingbot_ops.{module}", *map(str, args)],
        env={**os.environ, **(env or {}), "PYTHONPATH": str(lib)},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="session")
def textfiles(tmp_path_factory):
    """Textfiles written by the real writers, as the hosts run them; maps a name to its path."""
    root = tmp_path_factory.mktemp("textfiles")
    lib = root / "lib"
    lib.mkdir()
    os.symlink(REPO / "plugins" / "module_utils", lib / "tradingbot_ops")
    database = root / "tradingbot.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, symbol TEXT, qty REAL)")
        conn.executemany("INSERT INTO trades (symbol, qty) VALUES (?, ?)", [(f"S{i % 7}", i / 4) for i in range(200)])
    conn.close()
    out = {}

    def keep(name, path):
        out[name] = root / f"{name}.prom"
        shutil.copy(path, out[name])

    def backup(name, metrics, config, expect_rc):
        metrics.mkdir(exist_ok=True)
        config_file = root / f"{name}.json"
        config_file.write_text(json.dumps({"engine": "sqlite", "backup_dir": str(root / "backups"), **config}))
        result = host_cli(lib, "backup_cli", "--config", config_file)
        assert result.returncode == expect_rc, result.stderr
        keep(name, metrics / "tradingbot_backup_sqlite.prom")
        return config_file

    metrics = root / "metrics"
    config_file = backup("backup-success", metrics, {"database": str(database), "metrics_dir": str(metrics)}, 0)
    backup("backup-failed-after-success", metrics, {"database": str(root / "gone.db"), "metrics_dir": str(metrics)}, 1)
    first = root / "metrics-first"
    backup("backup-failed-first", first, {"database": str(root / "gone.db"), "metrics_dir": str(first)}, 1)

    drill = root / "drill"
    drill.mkdir()
    result = host_cli(lib, "recovery_drill", "--config", config_file, "--metrics-dir", drill)
    assert result.returncode == 0, result.stdout + result.stderr
    keep("drill-passed", drill / "tradingbot_recovery_drill.prom")
    # A damaged copy of the newest backup: its checksum no longer matches.
    damaged = root / "damaged"
    shutil.copytree(root / "backups", damaged)
    newest = max(damaged.glob("sqlite_backup_*.db.gz"))
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    damaged_config = root / "damaged.json"
    damaged_config.write_text(json.dumps({"engine": "sqlite", "database": str(database), "backup_dir": str(damaged)}))
    result = host_cli(lib, "recovery_drill", "--config", damaged_config, "--metrics-dir", drill)
    assert result.returncode == 1, result.stdout + result.stderr
    keep("drill-failed", drill / "tradingbot_recovery_drill.prom")

    events = root / "events"
    events.mkdir()
    prom = events / "tradingbot_service_tradingbot.service.prom"
    result = host_cli(lib, "service_events", "--metrics-dir", events, "--unit", "tradingbot.service", "init")
    assert result.returncode == 0, result.stderr
    keep("service-init", prom)
    # What systemd sets for ExecStopPost= after a watchdog kill (SIGABRT) and after exit 1.
    for env in (
        {"SERVICE_RESULT": "watchdog", "EXIT_CODE": "killed", "EXIT_STATUS": "ABRT"},
        {"SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "1"},
    ):
        result = host_cli(
            lib, "service_events", "--metrics-dir", events, "--unit", "tradingbot.service", "record", env=env
        )
        assert result.returncode == 0, result.stderr
    keep("service-stopped", prom)

    # The off-site copy job's writer, called as the job calls it at the end of a run.
    def offsite(name, metrics, ok, now, **values):
        metrics.mkdir(exist_ok=True)
        result = subprocess.run(
            [HOST_PYTHON if os.path.exists(HOST_PYTHON) else sys.executable, "-c", OFFSITE_WRITER],
            input=json.dumps({"dir": str(metrics), "ok": ok, "now": now, **values}),
            env={**os.environ, "PYTHONPATH": str(lib)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        keep(name, metrics / "tradingbot_offsite.prom")

    copies = root / "offsite"
    # A success that copied 2 backups, the newest taken at 02:00; then a failed run with 3 waiting.
    offsite(
        "offsite-success",
        copies,
        True,
        "2026-12-01T03:00:00+00:00",
        pending=0,
        newest="2026-12-01T02:00:00+00:00",
        copied=2,
    )
    offsite("offsite-failed-after-success", copies, False, "2026-12-02T03:00:00+00:00", pending=3)
    offsite("offsite-failed-first", root / "offsite-first", False, "2026-12-01T03:00:00+00:00", pending=1)
    return out


OFFSITE_WRITER = """
import datetime, json, sys
from tradingbot_ops.offsite_metrics import write_metrics
args = json.load(sys.stdin)
when = lambda text: datetime.datetime.fromisoformat(text) if text else None
write_metrics(
    args["dir"], args["ok"], when(args["now"]), pending=args["pending"],
    newest_copy=when(args.get("newest")), copied=args.get("copied"),
)
"""


TEXTFILES = (
    "backup-success",
    "backup-failed-after-success",
    "backup-failed-first",
    "drill-passed",
    "drill-failed",
    "service-init",
    "service-stopped",
    "offsite-success",
    "offsite-failed-after-success",
    "offsite-failed-first",
)


@pytest.mark.parametrize("name", TEXTFILES)
def test_promtool_accepts_the_written_metrics(promtool, textfiles, name):
    with open(textfiles[name], "rb") as handle:
        result = subprocess.run(
            [promtool, "check", "metrics"], stdin=handle, capture_output=True, text=True, check=False
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_the_writers_write_what_the_alerts_read(textfiles):
    text = {name: path.read_text() for name, path in textfiles.items()}
    assert re.search(r"^tradingbot_backup_last_result\{.*\} 0$", text["backup-failed-after-success"], re.MULTILINE)
    assert "tradingbot_backup_last_success_timestamp_seconds{" in text["backup-failed-after-success"]
    # Never succeeded: no success timestamp, so the stale alert cannot fire on a made-up age.
    assert "tradingbot_backup_last_success_timestamp_seconds" not in text["backup-failed-first"]
    assert re.search(r"^tradingbot_recovery_drill_success 0$", text["drill-failed"], re.MULTILINE)
    assert 'tradingbot_service_stops_total{unit="tradingbot.service",result="watchdog"} 0' in text["service-init"]
    assert 'tradingbot_service_stops_total{unit="tradingbot.service",result="watchdog"} 1' in text["service-stopped"]
    assert 'tradingbot_service_stops_total{unit="tradingbot.service",result="exit-code"} 1' in text["service-stopped"]
    # A failed copy run: last_run_success 0 and backups waiting; the success and the newest copy
    # carry over, so the stale alert's age keeps growing from the real last success.
    success, failed = text["offsite-success"], text["offsite-failed-after-success"]
    assert re.search(r"^tradingbot_offsite_last_run_success 1$", success, re.MULTILINE)
    assert re.search(r"^tradingbot_offsite_pending_backups 0$", success, re.MULTILINE)
    assert re.search(r"^tradingbot_offsite_last_run_success 0$", failed, re.MULTILINE)
    assert re.search(r"^tradingbot_offsite_pending_backups 3$", failed, re.MULTILINE)
    for carried in ("last_success_timestamp_seconds", "newest_copy_timestamp_seconds"):
        value = re.search(rf"^tradingbot_offsite_{carried} (\S+)$", success, re.MULTILINE).group(1)
        assert f"tradingbot_offsite_{carried} {value}\n" in failed, carried
    assert re.search(r"^tradingbot_offsite_last_success_timestamp_seconds 1796094000(\.0)?$", success, re.MULTILINE)
    # Never succeeded: no success timestamp, so the stale alert cannot fire on a made-up age.
    assert "tradingbot_offsite_last_success_timestamp_seconds" not in text["offsite-failed-first"]
    assert "tradingbot_offsite_pending_backups 1" in text["offsite-failed-first"]


def written_metric_names(textfiles):
    names = set()
    for path in textfiles.values():
        names |= set(re.findall(r"^([a-zA-Z_:][\w:]*)", path.read_text(), re.MULTILINE))
    return names


PROMQL_NOISE = [
    r'"(?:[^"\\]|\\.)*"',  # string literals
    r"\{[^}]*\}",  # label matchers
    r"\[[^\]]*\]",  # ranges
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",  # label lists
    r"\boffset\s+\S+",
    r"\$\w+",  # Grafana variables
]
PROMQL_WORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring"}


def metric_names(expr):
    """The metric names a PromQL expression selects (not functions, keywords or labels)."""
    for noise in PROMQL_NOISE:
        expr = re.sub(noise, " ", expr)
    return {
        m.group(1)
        for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr)
        if m.group(1) not in PROMQL_WORDS
    }


def test_metric_names_parser():
    assert metric_names('round(sum by (instance, unit) (increase(a_total{result!="x"}[1h]))) > 3') == {"a_total"}
    assert metric_names("time() - b_seconds > 26 * 3600 and on (instance) c unless d offset 1h") == {
        "b_seconds",
        "c",
        "d",
    }
    assert metric_names('label_values(e{instance=~"$instance"}, instance)') == {"e", "instance"}


def dashboard_queries():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(METRIC, LABEL): the label is not a metric.
            exprs.append(re.sub(r",\s*\w+\)$", ")", variable["query"]["query"]))
    return exprs


def test_the_rules_query_only_metrics_that_are_written(textfiles):
    known = written_metric_names(textfiles) | BREAKER_METRICS
    queried = set().union(*(metric_names(rule["expr"]) for rule in rules().values()))
    assert queried
    assert queried <= known, queried - known


def test_the_dashboard_queries_only_metrics_that_are_written(textfiles):
    known = written_metric_names(textfiles) | BREAKER_METRICS
    exprs = dashboard_queries()
    assert all(metric_names(expr) for expr in exprs)
    queried = set().union(*(metric_names(expr) for expr in exprs))
    assert queried <= known, queried - known
    # Each part of the page: backups, the drill, breakers and service stops.
    for prefix in (
        "tradingbot_backup_",
        "tradingbot_recovery_drill_",
        "tradingbot_circuit_breaker_",
        "tradingbot_service_",
        "tradingbot_offsite_",
    ):
        assert any(name.startswith(prefix) for name in queried), prefix


def test_dashboard_panel_ids_are_unique():
    ids = [panel["id"] for panel in json.loads(DASHBOARD.read_text())["panels"]]
    assert len(ids) == len(set(ids))


# --- the stop hook ----------------------------------------------------------------------------


def test_record_refuses_to_run_outside_exec_stop_post(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    os.symlink(REPO / "plugins" / "module_utils", lib / "tradingbot_ops")
    env = {key: value for key, value in os.environ.items() if key != "SERVICE_RESULT"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tradingbot_ops.service_events",
            "--metrics-dir",
            str(tmp_path),
            "--unit",
            "x",
            "record",
        ],
        env={**env, "PYTHONPATH": str(lib)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "SERVICE_RESULT" in result.stderr
    assert not list(tmp_path.glob("*.prom"))


def test_concurrent_stops_are_all_counted(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    os.symlink(REPO / "plugins" / "module_utils", lib / "tradingbot_ops")
    argv = [
        sys.executable,
        "-m",
        "tradingbot_ops.service_events",
        "--metrics-dir",
        str(tmp_path),
        "--unit",
        "a.service",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(lib),
        "SERVICE_RESULT": "signal",
        "EXIT_CODE": "killed",
        "EXIT_STATUS": "KILL",
    }
    procs = [subprocess.Popen([*argv, "record"], env=env) for _stop in range(12)]
    assert [proc.wait(timeout=60) for proc in procs] == [0] * 12
    text = (tmp_path / "tradingbot_service_a.service.prom").read_text()
    assert 'tradingbot_service_stops_total{unit="a.service",result="signal"} 12' in text
    assert (
        'tradingbot_service_last_stop_info{unit="a.service",result="signal",exit_code="killed",exit_status="KILL"} 1'
        in text
    )
    # init keeps the counts.
    assert subprocess.run([*argv, "init"], env=env, check=False).returncode == 0
    assert (tmp_path / "tradingbot_service_a.service.prom").read_text() == text
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(HOST_PYTHON), reason="needs root and /usr/bin/python3")
def test_the_service_user_records_past_a_lock_file_left_by_root():
    # ExecStopPost= runs as the service user; an operator may have run the hook as root before.
    # tmp_path is private to root; the unprivileged run needs a directory it can traverse.
    root = Path(tempfile.mkdtemp(prefix="tradingbot-service-events-"))
    try:
        root.chmod(0o755)  # the unprivileged user must traverse it
        lib = root / "lib"
        lib.mkdir()
        os.symlink(REPO / "plugins" / "module_utils", lib / "tradingbot_ops")
        metrics = root / "metrics"
        metrics.mkdir()
        (metrics / ".tradingbot_service.lock").touch(mode=0o644)
        nobody = pwd.getpwnam("nobody")
        os.chown(metrics, nobody.pw_uid, nobody.pw_gid)
        argv = ["runuser", "-u", "nobody", "--", HOST_PYTHON, "-m", "tradingbot_ops.service_events"]
        result = subprocess.run(
            [*argv, "--metrics-dir", str(metrics), "--unit", "b.service", "record"],
            env={**os.environ, "PYTHONPATH": str(lib), "SERVICE_RESULT": "oom-kill"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        prom = metrics / "tradingbot_service_b.service.prom"
        assert prom.stat().st_uid == nobody.pw_uid
        assert 'tradingbot_service_stops_total{unit="b.service",result="oom-kill"} 1' in prom.read_text()
    finally:
        shutil.rmtree(root)


# --- the role -----------------------------------------------------------------------------------


def run_role(tmp_path, extra_vars, *flags, collections=None):
    play = [
        {
            "name": "Install the alerts",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "roles": [{"role": "tradingbot.ops.tradingbot_alerts"}],
        }
    ]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    (tmp_path / "vars.json").write_text(json.dumps({"ansible_python_interpreter": sys.executable, **extra_vars}))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    env["ANSIBLE_COLLECTIONS_PATH"] = str(collections or COLLECTIONS_ROOT)
    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", "localhost,", "-e", f"@{tmp_path / 'vars.json'}", *flags, str(tmp_path / "play.yml")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    recap = re.search(r"localhost\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", result.stdout)
    return result, recap and {"changed": int(recap.group(2)), "failed": int(recap.group(3))}


@pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason="needs the toolchain venv (tools/bootstrap.sh)")
def test_role_installs_checked_rules_and_the_dashboard_idempotently(promtool, tmp_path):
    extra = {
        "tradingbot_alerts_rules_dir": str(tmp_path / "rules"),
        "tradingbot_alerts_promtool": promtool,
        "tradingbot_alerts_prometheus_service": "",
        "tradingbot_alerts_grafana_dashboards_dir": str(tmp_path / "dashboards"),
    }
    rules_file = tmp_path / "rules" / "tradingbot.rules"
    result, recap = run_role(tmp_path, extra, "--check")
    assert recap == {"changed": 4, "failed": 0}, result.stdout + result.stderr
    assert not rules_file.exists()

    result, recap = run_role(tmp_path, extra)
    assert recap == {"changed": 4, "failed": 0}, result.stdout + result.stderr
    assert rules_file.read_bytes() == RULES.read_bytes()
    assert (tmp_path / "dashboards" / "tradingbot.json").read_bytes() == DASHBOARD.read_bytes()
    assert oct(rules_file.stat().st_mode & 0o777) == "0o644"

    result, recap = run_role(tmp_path, extra)
    assert recap == {"changed": 0, "failed": 0}, result.stdout + result.stderr


@pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason="needs the toolchain venv (tools/bootstrap.sh)")
def test_role_keeps_the_old_rules_when_promtool_rejects_the_new(promtool, tmp_path):
    # A copy of the role whose rules file promtool rejects, in a collection tree of its own.
    collection = tmp_path / "collections" / "ansible_collections" / "tradingbot" / "ops"
    shutil.copytree(ROLE, collection / "roles" / "tradingbot_alerts")
    broken = yaml.safe_load(RULES.read_text())
    broken["groups"][0]["rules"][0]["expr"] = "time() - tradingbot_backup_last_success_timestamp_seconds >"
    (collection / "roles" / "tradingbot_alerts" / "files" / "tradingbot.rules.yml").write_text(yaml.safe_dump(broken))
    rules_file = tmp_path / "rules" / "tradingbot.rules"
    rules_file.parent.mkdir()
    rules_file.write_text("# the rules in force\n")
    result, recap = run_role(
        tmp_path,
        {
            "tradingbot_alerts_rules_dir": str(rules_file.parent),
            "tradingbot_alerts_promtool": promtool,
            "tradingbot_alerts_prometheus_service": "",
        },
        collections=tmp_path / "collections",
    )
    assert recap and recap["failed"] == 1, result.stdout + result.stderr
    assert "TradingbotBackupStale" in result.stdout and "could not parse expression" in result.stdout
    assert rules_file.read_text() == "# the rules in force\n"
