"""The replication role's units and config, rendered by ansible-playbook from the role's own
templates and variables, scored and verified by this host's systemd.

Gate: `systemd-analyze security` exposure <= 1.5 for tradingbot-litestream.service (and its
metrics job). The config the role writes is the one module_utils/litestream.py builds, so the
service and the sqlite_pitr module read the same replica.
"""

import base64
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils import litestream

# The shared renderer in tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import role_render
from role_render import ROLES, content_task, role_var_files, template_task

sys.path.insert(0, os.path.dirname(__file__))

from test_unit_hardening import directives, exposure, failing_checks, run_validate

VAR_FILES = role_var_files("tradingbot", "tradingbot_litestream")
TEMPLATES = {
    "tradingbot-litestream.service": "tradingbot-litestream.service.j2",
    "tradingbot-litestream-metrics.service": "tradingbot-litestream-metrics.service.j2",
    "tradingbot-litestream-metrics.timer": "tradingbot-litestream-metrics.timer.j2",
    "litestream.yml": "litestream.yml.j2",
}
# systemd-analyze --threshold takes tenths.
THRESHOLD = 15
# What a service that talks to a store cannot pass, as for the off-site copy (docs/offsite.md).
NETWORKED_FAILING = {
    "PrivateNetwork",
    "RestrictAddressFamilies_AF_INET_INET6",
    "RestrictAddressFamilies_AF_UNIX",
    "ProtectProc",
    "IPAddressDeny",
    "RootDirectoryOrRootImage",
    "DeviceAllow",
}
RECIPIENT = "age1qcv645yszndugttzjat37pqnn5ycm3kjmwfysypz7dr48mequggq9du7he"
HOST_IDENTITY = "AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZNDTXVZ"
HOST_RECIPIENT = "age1ukv9y0vw7zqvs0c3c3e4z9tgkqlkkutqml2t03ewz7a7vhkcauqsm8zqaq"
HOST_KEY_FILE = f"# created: 2026-12-01T00:00:00Z\n# public key: {HOST_RECIPIENT}\n{HOST_IDENTITY}\n"
SECRET = "not-in-any-unit-secret"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


def render(out, extra_vars):
    templates = [
        {"src": str(ROLES / "tradingbot_litestream" / "templates" / src), "dest": str(out / name)}
        for name, src in TEMPLATES.items()
    ]
    command = [{"content": "{{ __tradingbot_verify_unit }}", "dest": str(out / "verify_unit.cmd")}]
    tasks = [template_task("Render the templates", templates), content_task("Write the validate command", command)]
    base_vars = {
        "tradingbot_offsite_enabled": True,
        "tradingbot_offsite_recipient": RECIPIENT,
        "tradingbot_offsite_s3_bucket": "copies",
        "tradingbot_offsite_s3_endpoint": "https://s3.example:8443",
        "tradingbot_offsite_s3_access_key_id": "host-key-id",
        "tradingbot_offsite_s3_secret_access_key": SECRET,
        # What slurp returns for the host's key file.
        "__tradingbot_litestream_key_file": {"content": base64.b64encode(HOST_KEY_FILE.encode()).decode()},
    }
    return role_render.render(out, VAR_FILES, tasks, {**base_vars, **extra_vars})


@pytest.fixture(scope="module")
def defaults(tmp_path_factory):
    return render(tmp_path_factory.mktemp("defaults"), {})


@pytest.fixture(scope="module")
def options(tmp_path_factory):
    """Every option away from its default, and a base dir that exists here (for verify)."""
    base = tmp_path_factory.mktemp("base")
    for sub in ("data", "metrics", "local-replica", "bin"):
        (base / sub).mkdir()
    (base / "bin" / "litestream").symlink_to(shutil.which("true"))
    return render(
        tmp_path_factory.mktemp("options"),
        {
            "tradingbot_base_dir": str(base),
            "tradingbot_metrics_dir": str(base / "metrics"),
            "tradingbot_litestream_binary": str(base / "bin" / "litestream"),
            "tradingbot_litestream_local_replica_dir": str(base / "local-replica"),
            "tradingbot_litestream_ip_address_allow": ["192.0.2.10"],
            "tradingbot_litestream_sync_interval": "2s",
            "tradingbot_offsite_s3_ca_certificate": "-----BEGIN CERTIFICATE-----\n...",
        },
    )


def test_replication_exposure_is_at_most_1_5(defaults, options):
    for rendered in (defaults, options):
        for name in ("tradingbot-litestream.service", "tradingbot-litestream-metrics.service"):
            rc, report = exposure(rendered / name, THRESHOLD)
            assert rc == 0, report


def test_replication_fails_only_the_checks_a_networked_service_must(defaults, options):
    for rendered in (defaults, options):
        assert failing_checks(rendered / "tradingbot-litestream.service") == NETWORKED_FAILING


def test_the_gate_fails_an_unhardened_litestream_unit(tmp_path):
    unit = tmp_path / "plain.service"
    unit.write_text("[Service]\nUser=tradingbot\nExecStart=/usr/local/bin/litestream replicate\n")
    rc, report = exposure(unit, THRESHOLD)
    assert rc != 0, report


def test_the_unit_runs_litestream_with_its_config_as_a_credential(defaults):
    unit = directives(defaults / "tradingbot-litestream.service")
    for line in (
        "User=tradingbot",
        "LoadCredential=litestream.yml:/etc/credstore/tradingbot-litestream.yml",
        "ExecStart=/usr/local/bin/litestream replicate -no-expand-env -config %d/litestream.yml",
        "Restart=always",
        "ReadWritePaths=/opt/tradingbot/data",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ):
        assert line in unit, line
    # No AWS_CA_BUNDLE without a store CA: 0.3.13 fails with the system bundle named there.
    assert not any("AWS_CA_BUNDLE" in line for line in unit)


def test_options_reach_the_units(options):
    unit = directives(options / "tradingbot-litestream.service")
    assert "IPAddressDeny=any" in unit and "IPAddressAllow=192.0.2.10" in unit
    (rw,) = [line for line in unit if line.startswith("ReadWritePaths=")]
    assert rw.endswith("/data " + str(Path(rw.split()[0].split("=")[1]).parent / "local-replica"))
    assert any(line.startswith("Environment=AWS_CA_BUNDLE=") and line.endswith("/offsite-ca.pem") for line in unit)
    metrics = directives(options / "tradingbot-litestream-metrics.service")
    (exec_start,) = [line for line in metrics if line.startswith("ExecStart=")]
    assert " -m tradingbot_ops.litestream_metrics --config %d/litestream.yml " in exec_start
    assert exec_start.endswith("/offsite-ca.pem")


def test_no_secret_is_in_a_unit(defaults, options):
    for rendered in (defaults, options):
        for name in TEMPLATES:
            if name.endswith((".service", ".timer")):
                text = (rendered / name).read_text()
                assert SECRET not in text and HOST_IDENTITY not in text, name


def test_the_config_is_the_one_the_module_utils_build(defaults, options):
    for rendered, local in ((defaults, None), (options, "local-replica")):
        config = json.loads((rendered / "litestream.yml").read_text())
        database = config["dbs"][0]["path"]
        replica = {
            "database": database,
            "s3_bucket": "copies",
            "s3_path": "localhost/litestream",
            "s3_endpoint": "https://s3.example:8443",
            "s3_region": "us-east-1",
            "s3_path_style": True,
            "s3_access_key_id": "host-key-id",
            "s3_secret_access_key": SECRET,
            "recipients": [RECIPIENT, HOST_RECIPIENT],
            "sync_interval": "2s" if local else "1s",
            "snapshot_interval": "24h",
            "retention": "168h",
        }
        local_dir = str(Path(database).parent.parent / local) if local else None
        expected = json.loads(litestream.config_text(replica, identity=HOST_IDENTITY, local_replica_dir=local_dir))
        assert config == expected


def test_verify_passes_the_units(options):
    for name in TEMPLATES:
        if name.endswith((".service", ".timer")):
            result = run_validate(options / "verify_unit.cmd", name, options / name)
            assert result.returncode == 0, result.stdout + result.stderr
    timer = options / "tradingbot-litestream-metrics.timer"
    assert "OnCalendar=*-*-* *:*:00" in directives(timer)
