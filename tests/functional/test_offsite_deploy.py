"""The role's rendered off-site configuration and credential, run by the host CLI against a real
SeaweedFS, as tradingbot-offsite.service runs it: /usr/bin/python3 with Debian's boto3, the key
pair in $CREDENTIALS_DIRECTORY/offsite-s3 (what LoadCredential= provides), the breaker state and
the metrics where the role puts them. Nothing is hand-written: the files come from the role's
own templates and variables, rendered by ansible-playbook.
"""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# The shared renderer in tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import role_render
import seaweedfs
from role_render import REPO, ROLES, role_var_files

# The store, a locked bucket per test, the age keys and a real database: test_offsite's fixtures.
from test_offsite import (  # noqa: F401  # pylint: disable=unused-import  # fixtures
    HOST_PYTHON,
    app_db,
    backup,
    bucket,
    keys,
    require,
    server,
    tools,
)


def render_role(out, extra_vars):
    """offsite.json and the credential's content, from the role's template and variables."""
    (out / "credentials").mkdir(mode=0o700, parents=True)
    tasks = [
        {
            "name": "Render the configuration",
            "ansible.builtin.template": {
                "src": str(ROLES / "tradingbot_offsite" / "templates" / "offsite.json.j2"),
                "dest": str(out / "offsite.json"),
                "mode": "0640",
            },
        },
        {
            "name": "Write the credential",
            "ansible.builtin.copy": {
                "content": "{{ __tradingbot_offsite_credential_content }}",
                "dest": str(out / "credentials" / "offsite-s3"),
                "mode": "0400",
            },
            "no_log": True,
        },
        {
            "name": "Show the problems the role would report",
            "ansible.builtin.copy": {
                "content": "{{ __tradingbot_offsite_problems | to_json }}",
                "dest": str(out / "problems.json"),
                "mode": "0600",
            },
        },
    ]
    return role_render.render(out, role_var_files("tradingbot", "tradingbot_offsite"), tasks, extra_vars)


@pytest.mark.skipif(not os.path.exists(HOST_PYTHON), reason="needs the hosts' /usr/bin/python3")
def test_the_rendered_config_and_credential_copy_a_backup(server, bucket, keys, app_db, tmp_path):  # noqa: F811 - fixtures
    proc = subprocess.run([HOST_PYTHON, "-c", "import boto3"], capture_output=True, check=False)
    require(proc.returncode == 0, "python3-boto3 for /usr/bin/python3 (apt install python3-boto3)")
    base = tmp_path / "opt"
    (base / "state").mkdir(parents=True)
    (base / "metrics").mkdir()
    name = os.path.basename(backup(app_db, base / "backups"))
    out = render_role(
        tmp_path / "rendered",
        {
            "tradingbot_base_dir": str(base),
            "__tradingbot_offsite_state_dir": str(base / "state"),
            "tradingbot_metrics_dir": str(base / "metrics"),
            "tradingbot_offsite_enabled": True,
            "tradingbot_offsite_recipient": keys["good"]["recipient"],
            "tradingbot_offsite_s3_endpoint": server.endpoint,
            "tradingbot_offsite_s3_bucket": bucket,
            "tradingbot_offsite_s3_prefix": "app1",
            "tradingbot_offsite_s3_access_key_id": seaweedfs.HOST["access_key"],
            "tradingbot_offsite_s3_secret_access_key": seaweedfs.HOST["secret_key"],
        },
    )
    assert json.loads((out / "problems.json").read_text()) == []
    config = (out / "offsite.json").read_text()
    assert seaweedfs.HOST["secret_key"] not in config
    assert stat.S_IMODE(os.stat(out / "credentials" / "offsite-s3").st_mode) == 0o400

    lib = tmp_path / "lib"
    lib.mkdir()
    os.symlink(REPO / "plugins" / "module_utils", lib / "tradingbot_ops")
    env = {
        **os.environ,
        "PYTHONPATH": str(lib),
        "PYTHONDONTWRITEBYTECODE": "1",
        "CREDENTIALS_DIRECTORY": str(out / "credentials"),
    }
    env.pop("AWS_CA_BUNDLE", None)
    argv = [HOST_PYTHON, "-m", "tradingbot_ops.offsite_cli", "--config", str(out / "offsite.json")]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["copied"] == [name]
    assert (base / "state" / "breaker.json").exists()
    metrics = (base / "metrics" / "tradingbot_offsite.prom").read_text()
    assert "tradingbot_offsite_last_run_success 1" in metrics

    # A second run has nothing to copy; the store down, the run fails with one line.
    again = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and json.loads(again.stdout)["copied"] == [], again.stderr
    server.stop()
    try:
        down = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    finally:
        server.start()
    assert down.returncode == 1
    assert len(down.stderr.strip().splitlines()) == 1
    assert down.stderr.startswith("tradingbot off-site copy failed: ")


def test_the_role_names_every_bad_setting_without_quoting_it(tmp_path):
    identity = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
    out = render_role(
        tmp_path / "rendered",
        {
            "tradingbot_offsite_enabled": True,
            "tradingbot_offsite_recipient": identity,
            "tradingbot_offsite_s3_endpoint": "s3.example:8443",
            "tradingbot_offsite_s3_ca_certificate": "not a certificate",
            "tradingbot_offsite_part_size_mib": 4,
        },
    )
    problems = json.loads((out / "problems.json").read_text())
    named = " ".join(problems)
    for variable in (
        "tradingbot_offsite_s3_bucket",
        "tradingbot_offsite_recipient",
        "tradingbot_offsite_s3_access_key_id",
        "tradingbot_offsite_s3_secret_access_key",
        "tradingbot_offsite_s3_endpoint",
        "tradingbot_offsite_s3_ca_certificate",
        "tradingbot_offsite_part_size_mib",
    ):
        assert variable in named, variable
    assert len(problems) == 7
    assert identity not in named
