"""The internal role's entry points refuse to run unless another role includes them
(prometheus.prometheus's `_common` does the same), checked with ansible-playbook itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
# The collection root tests/conftest.py put on sys.path (this checkout as tradingbot.ops).
COLLECTIONS = next(p for p in sys.path if (Path(p) / "ansible_collections" / "tradingbot" / "ops").exists())
ENTRY_POINTS = sorted(p.stem for p in (REPO / "roles" / "tradingbot" / "tasks").glob("*.yml") if p.stem != "main")


def run_play(tmp_path, tasks, roles_dir=None, *options):
    play = [{"name": "Probe", "hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": tasks}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    env = dict(
        os.environ,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
        ANSIBLE_ROLES_PATH=str(roles_dir or tmp_path),
    )
    interpreter = f"ansible_python_interpreter={sys.executable}"
    return subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", "localhost,", "-e", interpreter, *options, "play.yml"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )


def test_the_entry_points_are_found():
    assert ENTRY_POINTS == ["absent", "lib", "timer", "units"]


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_an_entry_point_refuses_to_run_from_a_play(tmp_path, entry_point):
    include = {"ansible.builtin.include_role": {"name": "tradingbot.ops.tradingbot", "tasks_from": entry_point}}
    result = run_play(tmp_path, [{"name": "Include", **include}])
    assert result.returncode != 0
    assert "tradingbot.ops.tradingbot is internal" in result.stdout, result.stdout


def test_an_entry_point_runs_when_a_role_includes_it(tmp_path):
    # The control: the same include from inside a role passes the guard (units with no units).
    role = tmp_path / "roles" / "caller" / "tasks"
    role.mkdir(parents=True)
    include = {
        "ansible.builtin.include_role": {"name": "tradingbot.ops.tradingbot", "tasks_from": "units"},
        "vars": {"_tradingbot_units": []},
    }
    (role / "main.yml").write_text(json.dumps([{"name": "Include", **include}]))
    result = run_play(
        tmp_path, [{"name": "Caller", "ansible.builtin.include_role": {"name": "caller"}}], tmp_path / "roles"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is internal" not in result.stdout


def test_absent_removes_only_the_paths_that_exist(tmp_path):
    # Check mode, since this host has no systemd for the reload handler: the probe still runs
    # for real, and the removal reports what it would remove without touching it.
    present = [tmp_path / "present.conf", tmp_path / "dangling-link"]
    present[0].write_text("x")
    present[1].symlink_to(tmp_path / "nowhere")
    missing = tmp_path / "never-installed.service"
    role = tmp_path / "roles" / "caller" / "tasks"
    role.mkdir(parents=True)
    include = {
        "ansible.builtin.include_role": {"name": "tradingbot.ops.tradingbot", "tasks_from": "absent"},
        "vars": {"_tradingbot_absent": [str(p) for p in (present[0], missing, present[1])]},
    }
    (role / "main.yml").write_text(json.dumps([{"name": "Include", **include}]))
    play = [{"name": "Caller", "ansible.builtin.include_role": {"name": "caller"}}]
    result = run_play(tmp_path, play, tmp_path / "roles", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    would_remove = [line for line in result.stdout.splitlines() if line.startswith("changed:")]
    assert [str(p) in " ".join(would_remove) for p in present] == [True, True]
    assert str(missing) not in result.stdout.split("Remove the ones that exist", 1)[1]
    assert all(os.path.lexists(p) for p in present)


def test_absent_finds_units_by_name_in_the_unit_directory(tmp_path):
    # The unit directory is the test's own (an extra var outranks the role's vars); check mode
    # reports what would be disabled and removed, and leaves it.
    units = tmp_path / "units"
    units.mkdir()
    (units / "old-job.timer").write_text("[Timer]\n")
    role = tmp_path / "roles" / "caller" / "tasks"
    role.mkdir(parents=True)
    include = {
        "ansible.builtin.include_role": {"name": "tradingbot.ops.tradingbot", "tasks_from": "absent"},
        "vars": {
            "_tradingbot_absent_units": ["old-job.timer", "old-job.service", "old-job.timer"],
            "_tradingbot_absent_stop": ["old-job.timer", "old-job.service"],
        },
    }
    (role / "main.yml").write_text(json.dumps([{"name": "Include", **include}]))
    play = [{"name": "Caller", "ansible.builtin.include_role": {"name": "caller"}}]
    result = run_play(tmp_path, play, tmp_path / "roles", "--check", "-e", f"__tradingbot_unit_dir={units}")
    assert result.returncode == 0, result.stdout + result.stderr
    changed = [line for line in result.stdout.splitlines() if line.startswith("changed:")]
    assert len(changed) == 2, result.stdout  # disable old-job.timer, remove its file
    assert all("old-job.timer" in line for line in changed)
    assert "old-job.service" not in " ".join(changed)
    assert (units / "old-job.timer").exists()
