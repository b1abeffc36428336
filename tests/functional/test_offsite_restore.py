"""Restore from the off-site store: the offsite_fetch module through `ansible`, and
playbooks/restore.yml with restore_source=offsite through `ansible-playbook`, against a real
SeaweedFS, real age and real SQLite and PostgreSQL databases.

The identity reaches Ansible only through a vars file or a controller file, as an operator's
vault would: never argv. The tests watch every process's argv while they run.
"""

import glob
import json
import os
import sqlite3
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import seaweedfs
import test_offsite as copy_job
from ansible_collections.tradingbot.ops.plugins.module_utils import catalog, offsite_config, recovery_drill
from ansible_collections.tradingbot.ops.plugins.module_utils.backup import run_backup
from ansible_collections.tradingbot.ops.plugins.module_utils.engines.pg_client import pg_table_counts, psql_script
from ansible_collections.tradingbot.ops.plugins.module_utils.engines.sqlite_db import sqlite_table_counts
from ansible_collections.tradingbot.ops.plugins.module_utils.offsite import run_copy
from test_restore_module import BIN, PYTHON, REPO, ansible_env

MODULE = "tradingbot.ops.offsite_fetch"
HOST_PYTHON = copy_job.HOST_PYTHON

# The copy job's fixtures (a SeaweedFS on loopback, a locked bucket per test, age key pairs, the
# host's 0600 credentials file), shared rather than copied.
tools = copy_job.tools
server = copy_job.server
bucket = copy_job.bucket
host_credentials = copy_job.host_credentials
s3 = copy_job.s3
keys = copy_job.keys
CmdlineWatcher = copy_job.CmdlineWatcher


def identity_lines(keys):
    return [line for pair in keys.values() for line in pair["identity"].splitlines() if line.startswith("AGE-SECRET")]


def assert_no_identity(keys, *texts):
    for text in texts:
        data = text if isinstance(text, bytes) else text.encode()
        for line in identity_lines(keys):
            assert line.encode() not in data


def make_db(path, rows):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS trades (id INTEGER PRIMARY KEY, qty REAL)")
    conn.executemany("INSERT INTO trades VALUES (?, ?)", [(i, i * 1.5) for i in rows])
    conn.commit()
    conn.close()


def write_config(path, s3, backup_dir, recipient, **extra):
    """The copy job's config as the tradingbot_offsite role writes it: no secret inside."""
    config = {
        "backup_dir": str(backup_dir),
        "recipient": recipient,
        "s3_endpoint": s3["server"].endpoint,
        "s3_bucket": s3["bucket"],
        "s3_prefix": "host1",
        "s3_credentials_file": s3["credentials"],
        "s3_max_attempts": 2,
        **extra,
    }
    path.write_text(json.dumps(config))
    return config


@pytest.fixture
def copied(s3, keys, tmp_path):
    """A host layout (data, backups, logs, config) whose SQLite backups are in the store: three
    of 100 rows (now, a day and two days old); then the live database grows to 120 rows."""
    for sub in ("data", "backups", "logs", "etc"):
        (tmp_path / sub).mkdir()
    db = tmp_path / "data" / "tradingbot.db"
    make_db(db, range(100))
    backup_dir = tmp_path / "backups"
    newest = run_backup({"engine": "sqlite", "database": str(db), "backup_dir": str(backup_dir)})["path"]
    older = copy_job.clone_backup(newest, 1)
    oldest = copy_job.clone_backup(newest, 2)
    config = tmp_path / "etc" / "offsite.json"
    opts = write_config(config, s3, backup_dir, keys["good"]["recipient"])
    assert sorted(run_copy(opts)["copied"]) == sorted(os.path.basename(p) for p in (newest, older, oldest))
    make_db(db, range(100, 120))
    vars_file = tmp_path / "secrets.json"  # what a vault would hold
    vars_file.write_text(
        json.dumps({"good_identity": keys["good"]["identity"], "other_identity": keys["other"]["identity"]})
    )
    os.chmod(vars_file, 0o600)
    staging = tmp_path / "staging"
    staging.mkdir()
    return {
        "base": tmp_path,
        "db": str(db),
        "backup_dir": backup_dir,
        "newest": os.path.basename(newest),
        "older": os.path.basename(older),
        "oldest": os.path.basename(oldest),
        "config": config,
        "vars": vars_file,
        "staging": staging,
        "s3": s3,
    }


def fetch(copied, calls, *extra):
    """Run offsite_fetch on localhost once per call, in one playbook (one Ansible start-up).

    Each call is ``(identity_var, args)`` or ``(identity_var, args, "check")`` (that task in
    check mode); the identity comes from the vars file, as from a vault. Returns ([result per
    call], output).
    """
    results = copied["base"] / "results.json"
    tasks = []
    for number, (identity_var, args, *check) in enumerate(calls):
        module_args = {"config": str(copied["config"]), "dest_dir": str(copied["staging"]), "engine": "sqlite"}
        module_args.update(args)
        if identity_var:
            module_args["identity"] = f"{{{{ {identity_var} }}}}"
        task = {"name": f"call {number}", MODULE: module_args, "register": f"call_{number}", "ignore_errors": True}
        tasks.append(dict(task, check_mode=bool(check)))
    listed = ", ".join(f"call_{number}" for number in range(len(calls)))
    tasks.append(
        {
            "name": "Keep the results",
            "ansible.builtin.copy": {"content": f"{{{{ [{listed}] | to_json }}}}", "dest": str(results)},
            "check_mode": False,
        }
    )
    playbook = copied["base"] / "fetch.yml"
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(playbook),
            "-e",
            f"ansible_python_interpreter={PYTHON}",
            "-e",
            f"@{copied['vars']}",
            *extra,
        ],
        env=ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return json.loads(results.read_text()), output


def test_check_mode_names_the_copy_then_a_fetch_decrypts_and_verifies_and_a_second_changes_nothing(copied, keys):
    calls = [
        (None, {}, "check"),
        ("good_identity", {"backup": copied["older"]}, "check"),
        ("other_identity", {}, "check"),
        ("good_identity", {}),
        ("good_identity", {}),
    ]
    shm_before = set(glob.glob("/dev/shm/tradingbot-age-*"))
    with CmdlineWatcher() as watcher:
        (planned, named, wrong, fetched, again), output = fetch(copied, calls, "-vvv")

    assert planned["changed"] is True, planned
    assert planned["backup"]["name"] == copied["newest"]
    assert planned["backup"]["tables"] == {"trades": 100}
    assert planned["backup"]["ciphertext_sha256"]
    assert planned["path"] == str(copied["staging"] / copied["newest"])
    assert planned["source"] == f"s3://{copied['s3']['bucket']}/host1 at {copied['s3']['server'].endpoint}"
    assert named["backup"]["name"] == copied["older"], named
    assert "the identity is its recipient" in named["msg"]
    assert wrong["failed"] is True
    assert "the identity does not match the recipient of " + copied["newest"] in wrong["msg"]

    assert fetched["changed"] is True, fetched
    path = copied["staging"] / copied["newest"]
    assert fetched["path"] == str(path)
    local = catalog.read_manifest(copied["backup_dir"] / copied["newest"])
    assert fetched["sha256"] == local["sha256"]
    assert path.read_bytes() == (copied["backup_dir"] / copied["newest"]).read_bytes()
    assert catalog.read_manifest(path)["sha256"] == local["sha256"]
    # Only what the fetch wrote: check mode wrote nothing.
    assert sorted(os.listdir(copied["staging"])) == [copied["newest"], copied["newest"] + catalog.MANIFEST_SUFFIX]
    assert again["changed"] is False, again
    assert "already the off-site copy" in again["msg"]

    assert any(b"fetch.yml" in argv for argv in watcher.seen), "the watcher saw the run"
    assert "AnsiballZ_offsite_fetch" in output, "-vvv output"
    assert_no_identity(keys, output, *watcher.seen)
    assert set(glob.glob("/dev/shm/tradingbot-age-*")) == shm_before, "the identity file outlived the fetch"


def test_refusals_are_clear_and_leave_nothing_behind(copied, keys):
    bucket_name = copied["s3"]["bucket"]
    # The attacker (the admin's keys here) can only stack a new version on the locked one.
    key = "host1/" + offsite_config.ciphertext_key(copied["older"])
    data = bytearray(copy_job.object_bytes(copied["s3"], key))
    data[len(data) // 2] ^= 0x01
    copy_job.s3_client(copied["s3"]["server"], seaweedfs.ADMIN).put_object(
        Bucket=bucket_name, Key=key, Body=bytes(data)
    )
    # The host's own keys can hide a manifest behind a delete marker.
    copy_job.s3_client(copied["s3"]["server"], seaweedfs.HOST).delete_object(
        Bucket=bucket_name, Key="host1/" + offsite_config.manifest_key(copied["oldest"])
    )
    calls = [
        ("other_identity", {}),
        ("good_identity", {"backup": copied["older"]}),
        ("good_identity", {"backup": copied["oldest"]}),
        ("good_identity", {"config": str(copied["base"] / "etc" / "absent.json")}),
        (None, {}, "check"),
    ]
    (*results, latest), output = fetch(copied, calls)
    expected = [
        f"the identity does not match the recipient of {copied['newest']}",
        f"the ciphertext of {copied['older']} differs from its manifest (SHA-256 or size): tampered or damaged",
        f"off-site copy {copied['oldest']} has no manifest in s3://{bucket_name}/host1",
        "off-site copies are not set up on this host; run site.yml with tradingbot_offsite_enabled=true",
    ]
    for result, message in zip(results, expected, strict=True):
        assert result["failed"] is True, result
        assert message in result["msg"]
    assert os.listdir(copied["staging"]) == []
    assert_no_identity(keys, output)

    # "latest" passes over the copy without a manifest, and names it.
    assert latest["backup"]["name"] == copied["newest"]
    assert latest["incomplete"] == [copied["oldest"]]


# -- playbooks/restore.yml with restore_source=offsite -----------------------------------------


def run_playbook(copied, playbook, *extra, **host_vars):
    inventory = copied["base"] / "inventory.yml"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": PYTHON,
                            "ansible_become": False,
                            "tradingbot_base_dir": str(copied["base"]),
                            "tradingbot_config_dir": str(copied["base"] / "etc"),
                            "tradingbot_offsite_enabled": True,
                            # No such unit here: the playbook skips stop and start.
                            "tradingbot_service_name": "tradingbot-offsite-restore-test-absent",
                            **host_vars,
                        }
                    }
                }
            }
        )
    )
    return subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(inventory),
            str(REPO / "playbooks" / playbook),
            *extra,
        ],
        env=ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    )


def run_restore_playbook(copied, *extra, **host_vars):
    return run_playbook(copied, "restore.yml", "-e", "restore_source=offsite", *extra, **host_vars)


def staging_dirs(copied):
    return [name for name in os.listdir(copied["backup_dir"]) if name.startswith(".offsite-restore")]


def test_playbook_restores_the_newest_copy_on_a_host_that_lost_its_backups(copied, keys, tmp_path):
    for name in os.listdir(copied["backup_dir"]):  # the host lost its local backups
        os.unlink(copied["backup_dir"] / name)
    identity_file = tmp_path / "identity.txt"  # a file on the controller
    identity_file.write_text(keys["good"]["identity"])
    os.chmod(identity_file, 0o600)

    planned = run_restore_playbook(copied, "--check", "-e", f"restore_offsite_identity_file={identity_file}")
    assert planned.returncode == 0, planned.stdout
    assert f"Would fetch {copied['newest']}" in planned.stdout
    assert sqlite_table_counts(copied["db"]) == {"trades": 120}
    assert staging_dirs(copied) == []

    with CmdlineWatcher() as watcher:
        done = run_restore_playbook(
            copied, "-vvv", "-e", "restore_confirm=true", "-e", f"restore_offsite_identity_file={identity_file}"
        )
    assert done.returncode == 0, done.stdout
    assert f"Restored {copied['newest']}" in done.stdout
    assert sqlite_table_counts(copied["db"]) == {"trades": 100}
    safety = [name for name in os.listdir(copied["base"] / "data") if ".pre-restore-" in name]
    assert len(safety) == 1
    assert sqlite_table_counts(str(copied["base"] / "data" / safety[0])) == {"trades": 120}
    assert staging_dirs(copied) == [], "the staging copy outlived the restore"
    assert any(b"restore.yml" in argv for argv in watcher.seen), "the watcher saw the run"
    assert_no_identity(keys, done.stdout, done.stderr, *watcher.seen)


def test_playbook_refusal_leaves_the_live_database_untouched(copied, keys):
    before = sorted(os.listdir(copied["base"] / "data"))
    proc = run_restore_playbook(
        copied,
        "-e",
        "restore_confirm=true",
        "-e",
        "restore_offsite_identity={{ other_identity }}",
        "-e",
        f"@{copied['vars']}",
    )
    assert proc.returncode != 0
    assert "the identity does not match the recipient of " + copied["newest"] in proc.stdout
    assert sorted(os.listdir(copied["base"] / "data")) == before
    assert sqlite_table_counts(copied["db"]) == {"trades": 120}
    assert staging_dirs(copied) == [], "the staging copy outlived the refusal"
    assert_no_identity(keys, proc.stdout, proc.stderr)


@pytest.fixture
def pg_live(postgres_cluster):
    """A live database of 100 rows, owned by the test role; a short name leaves room for the
    safety copy's suffix within PostgreSQL's 63 bytes."""
    name = "offsite_live"
    postgres_cluster.create_database(name)
    params = postgres_cluster.params(database=name)
    psql_script(params, "CREATE TABLE trades (id int PRIMARY KEY, qty real)", name)
    psql_script(params, "INSERT INTO trades SELECT i, i * 1.5 FROM generate_series(1, 100) i", name)
    yield params
    rows = postgres_cluster.psql("SELECT datname FROM pg_database", database="postgres").split()
    for database in rows:
        if database.startswith(name):
            postgres_cluster.drop_database(database)


def test_playbook_restores_postgresql_from_the_store(s3, keys, tmp_path, pg_live, postgres_cluster):
    params = pg_live
    for sub in ("data", "backups", "logs", "etc"):
        (tmp_path / sub).mkdir()
    backup_dir = tmp_path / "backups"
    run_backup({**params, "engine": "postgresql", "backup_dir": str(backup_dir)})
    config = tmp_path / "etc" / "offsite.json"
    run_copy(write_config(config, s3, backup_dir, keys["good"]["recipient"]))
    psql_script(params, "INSERT INTO trades SELECT i, 0 FROM generate_series(101, 130) i", params["database"])
    for name in os.listdir(backup_dir):
        os.unlink(backup_dir / name)
    vars_file = tmp_path / "secrets.json"
    vars_file.write_text(json.dumps({"vault_identity": keys["good"]["identity"]}))
    copied = {"base": tmp_path, "backup_dir": backup_dir}
    proc = run_restore_playbook(
        copied,
        "-e",
        "restore_confirm=true",
        "-e",
        f"@{vars_file}",
        "-e",
        "restore_offsite_identity={{ vault_identity }}",
        tradingbot_database_type="postgresql",
        tradingbot_postgresql_host=params["pg_host"],
        tradingbot_postgresql_port=params["pg_port"],
        tradingbot_postgresql_database=params["database"],
        tradingbot_postgresql_user=params["pg_user"],
        tradingbot_postgresql_password=params["pg_password"],
    )
    assert proc.returncode == 0, proc.stdout
    assert pg_table_counts(params) == {"public.trades": 100}
    rows = postgres_cluster.psql("SELECT datname FROM pg_database", database="postgres").split()
    (safety,) = [name for name in rows if name.startswith(params["database"] + "_pre_restore_")]
    assert pg_table_counts(dict(params, database=safety)) == {"public.trades": 130}
    assert staging_dirs(copied) == []
    assert_no_identity(keys, proc.stdout, proc.stderr)


# -- the recovery drill's off-site checks ------------------------------------------------------


def drill(copied, **offsite):
    config = {"engine": "sqlite", "database": copied["db"], "backup_dir": str(copied["backup_dir"])}
    report = recovery_drill.RecoveryDrill(config, **offsite).run()
    return {check["name"]: check for check in report["checks"]}


def test_the_drill_checks_the_newest_copy_without_an_identity(copied, keys):
    checks = drill(copied, offsite_config=str(copied["config"]))
    assert checks["off-site copy"]["ok"], checks["off-site copy"]
    assert f"newest copy {copied['newest']}" in checks["off-site copy"]["detail"]

    # Encrypted to another key than the host's recipient: named.
    config = json.loads(copied["config"].read_text())
    other = copied["base"] / "etc" / "other.json"
    other.write_text(json.dumps(dict(config, recipient=keys["other"]["recipient"])))
    checks = drill(copied, offsite_config=str(other))
    assert not checks["off-site copy"]["ok"]
    assert "not to this host's recipient" in checks["off-site copy"]["detail"]

    # A tampered newest copy fails the check, naming it.
    key = "host1/" + offsite_config.ciphertext_key(copied["newest"])
    data = bytearray(copy_job.object_bytes(copied["s3"], key))
    data[-1] ^= 0x01
    copy_job.s3_client(copied["s3"]["server"], seaweedfs.ADMIN).put_object(
        Bucket=copied["s3"]["bucket"], Key=key, Body=bytes(data)
    )
    checks = drill(copied, offsite_config=str(copied["config"]))
    assert not checks["off-site copy"]["ok"]
    assert f"the ciphertext of {copied['newest']} differs from its manifest" in checks["off-site copy"]["detail"]


@pytest.mark.skipif(not os.path.exists(HOST_PYTHON), reason="needs the hosts' /usr/bin/python3")
def test_verify_playbook_with_an_identity_restores_the_newest_copy_into_scratch(copied, keys):
    proc = subprocess.run([HOST_PYTHON, "-c", "import boto3"], capture_output=True, check=False)
    copy_job.require(proc.returncode == 0, "python3-boto3 for /usr/bin/python3 (apt install python3-boto3)")
    # The host as site.yml leaves it: the package in lib/, the backup job's config.
    (copied["base"] / "lib").mkdir()
    os.symlink(REPO / "plugins" / "module_utils", copied["base"] / "lib" / "tradingbot_ops")
    backup_config = {"engine": "sqlite", "database": copied["db"], "backup_dir": str(copied["backup_dir"])}
    (copied["base"] / "etc" / "backup.json").write_text(json.dumps(backup_config))
    live = sqlite_table_counts(copied["db"])
    proc = run_playbook(
        copied,
        "verify.yml",
        "-e",
        f"@{copied['vars']}",
        "-e",
        "restore_offsite_identity={{ good_identity }}",
        # This machine has no service user: root stands in.
        tradingbot_user="root",
        tradingbot_group="root",
    )
    assert f"Fetched {copied['newest']}" in proc.stdout, proc.stdout
    assert f"[PASS] off-site restore: the off-site copy {copied['newest']}, decrypted" in proc.stdout, proc.stdout
    # No unit or logrotate file is installed here: exactly those checks fail, and nothing else.
    assert proc.returncode != 0
    assert "Recovery drill failed on localhost: systemd configuration, logrotate configuration" in proc.stdout
    assert sqlite_table_counts(copied["db"]) == live
    assert staging_dirs(copied) == [], "the fetched copy outlived the drill"
    assert_no_identity(keys, proc.stdout, proc.stderr)
