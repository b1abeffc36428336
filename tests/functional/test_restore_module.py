"""The db_restore module through `ansible`, and playbooks/restore.yml through `ansible-playbook`."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils.backup import run_backup
from ansible_collections.tradingbot.ops.plugins.module_utils.engines.sqlite_db import sqlite_content_digest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PYTHON = sys.executable


def ansible_env():
    collections = (
        REPO.parents[2] if REPO.parent.parent.name == "ansible_collections" else REPO / ".pytest_cache" / "collections"
    )
    return dict(
        os.environ,
        PATH=f"{BIN}:{os.environ['PATH']}",
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_LOCALHOST_WARNING="False",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
    )


def adhoc(args, *extra):
    """Run db_restore on localhost; return (rc, result dict)."""
    proc = subprocess.run(
        [
            str(BIN / "ansible"),
            "localhost",
            "-m",
            "tradingbot.ops.db_restore",
            "-a",
            json.dumps(args),
            "-e",
            f"ansible_python_interpreter={PYTHON}",
            *extra,
        ],
        env=ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    # Ad hoc output is "localhost | STATUS => {json}".
    start = proc.stdout.index("=> {") + 3
    return proc.returncode, json.loads(proc.stdout[start:])


def make_db(path, rows):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS trades (id INTEGER PRIMARY KEY, qty REAL)")
    conn.executemany("INSERT INTO trades VALUES (?, ?)", [(i, i * 1.5) for i in rows])
    conn.commit()
    conn.close()


@pytest.fixture
def host(tmp_path):
    """A base dir laid out like /opt/tradingbot with a backup of 100 rows, then 20 more rows."""
    for sub in ("data", "backups", "logs"):
        (tmp_path / sub).mkdir()
    db = str(tmp_path / "data" / "tradingbot.db")
    make_db(db, range(100))
    backed_up = sqlite_content_digest(db)
    backup = run_backup({"engine": "sqlite", "database": db, "backup_dir": str(tmp_path / "backups")})["path"]
    make_db(db, range(100, 120))
    return {
        "base": tmp_path,
        "db": db,
        "backup_dir": str(tmp_path / "backups"),
        "backup": backup,
        "backed_up": backed_up,
        "current": sqlite_content_digest(db),
    }


def test_module_restores_reports_and_refuses(host):
    args = {"engine": "sqlite", "database": host["db"], "backup_dir": host["backup_dir"]}

    rc, planned = adhoc(args, "--check")
    assert rc == 0, planned
    assert planned["changed"] is True
    assert planned["plan"]["over"] == host["db"]
    assert sqlite_content_digest(host["db"]) == host["current"]

    rc, listed = adhoc(dict(args, operation="list"))
    assert rc == 0, listed
    assert [entry["path"] for entry in listed["backups"]] == [host["backup"]]
    assert listed["safety_copies"] == []

    rc, restored = adhoc(args)
    assert rc == 0, restored
    assert restored["changed"] is True
    assert restored["validation"]["ok"] is True
    assert restored["backup"]["name"] == os.path.basename(host["backup"])
    assert sqlite_content_digest(host["db"]) == host["backed_up"]
    assert sqlite_content_digest(restored["safety_copy"]) == host["current"]

    rc, refused = adhoc(dict(args, backup_file="../data/tradingbot.db"))
    assert rc != 0
    assert "refusing backup_file" in refused["msg"]
    assert refused["live_untouched"] is True

    rc, back = adhoc(dict(args, operation="rollback", safety_copy=restored["safety_copy"]))
    assert rc == 0, back
    assert sqlite_content_digest(host["db"]) == host["current"]


def run_playbook(host, *extra):
    inventory = host["base"] / "inventory.yml"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": PYTHON,
                            "ansible_become": False,
                            "tradingbot_base_dir": str(host["base"]),
                            # No such unit here: the playbook skips stop and start.
                            "tradingbot_service_name": "tradingbot-restore-test-absent",
                        }
                    }
                }
            }
        )
    )
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(REPO / "playbooks" / "restore.yml"), *extra],
        env=ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    )


def test_playbook_check_mode_changes_nothing(host):
    before = sorted(os.listdir(host["base"] / "data"))
    proc = run_playbook(host, "--check")
    assert proc.returncode == 0, proc.stdout
    assert "Would restore " + os.path.basename(host["backup"]) in proc.stdout
    assert sorted(os.listdir(host["base"] / "data")) == before
    assert sqlite_content_digest(host["db"]) == host["current"]


def test_playbook_restores_without_prompt_when_confirmed(host):
    proc = run_playbook(host, "-e", "restore_confirm=true")
    assert proc.returncode == 0, proc.stdout
    assert sqlite_content_digest(host["db"]) == host["backed_up"]
    log = (host["base"] / "logs" / "restore.log").read_text()
    assert f"restored {host['backup']} over {host['db']}" in log


def test_playbook_failed_health_check_puts_the_previous_database_back(host):
    # Nothing listens on port 9: the health check fails for real after a good restore.
    proc = run_playbook(
        host,
        "-e",
        "restore_confirm=true",
        "-e",
        "restore_health_check=always",
        "-e",
        "tradingbot_health_url=http://127.0.0.1:9/health",
        "-e",
        "tradingbot_service_health_retries=0",
    )
    assert proc.returncode != 0
    assert "The previous database was put back from the safety copy" in proc.stdout
    assert str(host["base"] / "data" / "tradingbot.db.pre-restore-") in proc.stdout
    assert sqlite_content_digest(host["db"]) == host["current"]


def test_playbook_refuses_a_corrupt_backup_before_touching_anything(host):
    with open(host["backup"], "r+b") as handle:
        handle.seek(40)
        handle.write(b"\xff\xff")
    before = sorted(os.listdir(host["base"] / "data"))
    proc = run_playbook(host, "-e", "restore_confirm=true", "-e", f"restore_file={os.path.basename(host['backup'])}")
    assert proc.returncode != 0
    assert "restore would be refused" in proc.stdout
    assert sorted(os.listdir(host["base"] / "data")) == before
    assert sqlite_content_digest(host["db"]) == host["current"]
