"""Render roles' templates and variables on localhost with ansible-playbook, as the roles do.

Tests read what a role would write (units, configurations, commands) without a host: the play
loads the roles' defaults and vars, then runs the tasks it is given.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROLES = REPO / "roles"
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")


def role_var_files(*roles):
    """The defaults and vars files of ``roles``, in order: what those roles see."""
    return [str(ROLES / role / kind / "main.yml") for role in roles for kind in ("defaults", "vars")]


def template_task(name, items, mode="0600"):
    """A task that renders each ``{"src", "dest"}`` of ``items``."""
    return {
        "name": name,
        "ansible.builtin.template": {"src": "{{ item.src }}", "dest": "{{ item.dest }}", "mode": mode},
        "loop": items,
    }


def content_task(name, items, mode="0600"):
    """A task that writes each ``{"content", "dest"}`` of ``items`` (a variable's value, rendered)."""
    return {
        "name": name,
        "ansible.builtin.copy": {"content": "{{ item.content }}", "dest": "{{ item.dest }}", "mode": mode},
        "loop": items,
    }


def render(out, var_files, tasks, extra_vars):
    """Run ``tasks`` on localhost with ``var_files`` and ``extra_vars``; fail the test on an error."""
    out.mkdir(parents=True, exist_ok=True)
    # The play's own templates/ dir is on the template search path: there the units find the
    # shared sandbox block, as they do through the shared role's `units` entry point.
    templates = out / "templates"
    if not templates.exists():
        templates.symlink_to(ROLES / "tradingbot" / "templates")
    play = [{"name": "Render", "hosts": "localhost", "connection": "local", "gather_facts": False}]
    play[0].update({"vars_files": var_files, "tasks": tasks})
    (out / "play.yml").write_text(json.dumps(play))
    (out / "vars.json").write_text(json.dumps({"ansible_python_interpreter": sys.executable, **extra_vars}))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", "localhost,", "-e", f"@{out / 'vars.json'}", str(out / "play.yml")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out
