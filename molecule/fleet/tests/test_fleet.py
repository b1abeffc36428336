"""Rollouts across the three hosts that converge.yml put on 0.1.0 of the demo app.

The tests run in file order, each on the state the one before left: a version that fails its
app-level check (through site.yml, which hands a version change on running hosts to the
rollout), check mode, a good version, a re-run, and a restart with one host down already.
"""

import itertools
import json
import os
import re
import subprocess

import pytest
import testinfra

NAMES = [f"tradingbot-debian12-fleet-{n}" for n in (1, 2, 3)]
HOSTS = [testinfra.get_host(f"podman://{name}") for name in NAMES]
WHEELS = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "wheels")
_OLD, GOOD, BAD = (os.path.join(WHEELS, f"tradingbot_demo-{v}-py3-none-any.whl") for v in ("0.1.0", "0.2.0", "0.3.0"))
VENV = "/opt/tradingbot/venv"
HEALTH = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/health', timeout=5).read().decode())"
RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", re.MULTILINE)


def playbook(name, *args):
    """Run a playbook of the collection the way an operator does, on molecule's inventory.

    Returns the run and its output (stdout, then stderr, where ansible-core 2.19+ also writes
    a task's error) with the callback's line wrapping undone.
    """
    argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], f"tradingbot.ops.{name}", *args]
    env = os.environ | {"ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
    run = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900, env=env)
    print(run.stdout[-6000:], run.stderr[-2000:])  # shown when a test fails
    return run, " ".join((run.stdout + run.stderr).split())


def health(host):
    return json.loads(host.check_output("python3 -c %s", HEALTH))


def unit(host):
    """The unit's last stop and start (monotonic microseconds: the hosts share one kernel clock)."""
    props = "ActiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic,MainPID"
    out = host.check_output("systemctl show --property=%s tradingbot.service", props)
    values = dict(line.split("=", 1) for line in out.splitlines())
    return {key: int(value) for key, value in values.items()}


def installed(host, venv):
    """The demo app's version installed in a venv directory, from its dist-info."""
    out = host.check_output("ls -d %s/lib/python3*/site-packages/tradingbot_demo-*.dist-info", venv)
    return re.search(r"tradingbot_demo-(.+)\.dist-info", out)[1]


def test_hosts_start_on_the_old_version():
    assert [health(h)["version"] for h in HOSTS] == ["0.1.0"] * 3
    assert [health(h)["status"] for h in HOSTS] == ["ok"] * 3


def test_a_failing_version_is_rolled_back_on_the_first_host_and_stops_the_rollout():
    before = [unit(h) for h in HOSTS]
    run, out = playbook("site", "-e", f"tradingbot_venv_app_source={BAD}")
    assert run.returncode != 0
    assert f"{NAMES[0]} failed its gate on the new version" in out
    assert "was rolled back to the previous venv" in out
    first, *rest = HOSTS
    # The first host ran the bad version, failed, and serves the old one again.
    assert unit(first)["ActiveEnterTimestampMonotonic"] > before[0]["ActiveEnterTimestampMonotonic"]
    answer = health(first)
    assert answer | {"status": "ok", "version": "0.1.0"} == answer
    assert installed(first, VENV) == "0.1.0"
    assert installed(first, f"{VENV}.failed") == "0.3.0"
    assert not first.file(f"{VENV}.rollback").exists
    # The others were never touched: same process, same version, no new venv.
    for host, was in zip(rest, before[1:], strict=True):
        assert unit(host) == was
        assert health(host)["version"] == "0.1.0"
        assert installed(host, VENV) == "0.1.0"
        assert not host.file(f"{VENV}.rollback").exists


def test_check_mode_shows_the_batches_and_what_each_host_gets():
    before = [unit(h) for h in HOSTS]
    run, out = playbook("rolling", "--check", "-e", f"tradingbot_venv_app_source={GOOD}")
    assert run.returncode == 0
    # The default ramp [1, "25%", "100%"] on three hosts: one host per batch.
    for n, name in enumerate(NAMES, start=1):
        assert f"upgrade: hosts {n} to {n} of 3: {name}" in out
        assert f"{name} gets {GOOD}: install, restart, gate" in out
    assert [unit(h) for h in HOSTS] == before
    assert [installed(h, VENV) for h in HOSTS] == ["0.1.0"] * 3


def test_a_good_version_reaches_every_host_with_never_two_down_at_once():
    before = [unit(h) for h in HOSTS]
    run = playbook("rolling", "-e", f"tradingbot_venv_app_source={GOOD}")[0]
    assert run.returncode == 0
    after = [unit(h) for h in HOSTS]
    downtimes = []
    for host, was, now in zip(HOSTS, before, after, strict=True):
        answer = health(host)
        assert answer | {"status": "ok", "version": "0.2.0"} == answer
        assert installed(host, f"{VENV}.previous") == "0.1.0"
        # Each host went down (stop) and came back (start) once, during this rollout.
        assert now["ActiveExitTimestampMonotonic"] > was["ActiveEnterTimestampMonotonic"]
        assert now["ActiveEnterTimestampMonotonic"] > now["ActiveExitTimestampMonotonic"]
        downtimes.append((now["ActiveExitTimestampMonotonic"], now["ActiveEnterTimestampMonotonic"]))
    ordered = sorted(downtimes)
    assert all(stop_next > start for (_stop, start), (stop_next, _start) in itertools.pairwise(ordered)), downtimes
    # ... and in inventory order, the ramp's.
    assert ordered == downtimes


def test_a_second_rollout_changes_nothing():
    before = [unit(h) for h in HOSTS]
    run = playbook("rolling", "-e", f"tradingbot_venv_app_source={GOOD}")[0]
    assert run.returncode == 0
    assert {host: int(changed) for host, changed in RECAP.findall(run.stdout)} == dict.fromkeys(NAMES, 0)
    assert [unit(h) for h in HOSTS] == before


@pytest.fixture
def third_host_down():
    HOSTS[2].check_output("systemctl stop tradingbot.service")
    yield
    HOSTS[2].check_output("systemctl start tradingbot.service")


@pytest.mark.usefixtures("third_host_down")
def test_a_restart_refuses_to_take_a_second_host_down():
    before = [unit(h) for h in HOSTS[:2]]
    run, out = playbook("rolling", "-e", "tradingbot_rollout_action=restart")
    assert run.returncode != 0
    assert f"Refusing to take {NAMES[0]} down: {NAMES[2]} is unhealthy already" in out
    assert [unit(h) for h in HOSTS[:2]] == before
