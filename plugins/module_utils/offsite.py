"""The off-site copy job: every verified local backup, encrypted on the host, into an S3 bucket.

One run (``run_copy``):

1. lists the verified local backups and the copies already in the store;
2. uploads, newest first, each backup that off-site retention keeps and that is not in the
   store yet, so a run after an outage catches up. A copy is the ciphertext ``<name>.age``
   and then its manifest ``<name>.age.manifest.json``: a copy counts only once its manifest
   is there. After each upload the store's size and ETag (its MD5) must match what was sent,
   and the plaintext's SHA-256 must match the local manifest;
3. applies off-site retention (its own GFS settings), which never tries to delete a copy that
   is still locked;
4. writes the textfile metrics.

Every store call goes through the circuit breaker ``offsite_s3``, whose state lives in a
``FileStateStore`` file so that it is shared across runs: during a long outage a run fails
fast, and the breaker lets one probe through after its timeout. A failed run raises
OffsiteError with one line for the journal.

``fetch_copy`` is the way back: download, verify the ciphertext against its manifest, decrypt
with an identity from the controller, verify the plaintext, and write the backup and its
manifest into a local directory, where the local restore takes over.
"""

# This package also runs on hosts outside Ansible (the off-site copy timer).
# pylint: disable=ansible-bad-function

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import tempfile
import time

from .backup_engine import select_retention
from .circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitBreakerError, FileStateStore
from .db_common import (
    CREATED_BY,
    ENGINES,
    MANIFEST_SUFFIX,
    isoformat,
    list_backups,
    parse_backup_name,
    utcnow,
    validate_options,
    write_json_atomic,
)
from .db_common import BackupError as _OptionError
from .encryption import (
    Encryption,
    EncryptionError,
    check_recipient,
    decrypt_to_file,
    identity_file,
    identity_fingerprint,
    recipient_fingerprint,
)
from .errors import RestoreError, StorageError, TradingbotError
from .storage.s3 import DEFAULT_CONCURRENCY, DEFAULT_PART_SIZE, S3Storage, describe_location, load_credentials

CIPHERTEXT_SUFFIX = ".age"
OFFSITE_FORMAT_VERSION = 1
BREAKER_NAME = "offsite_s3"
METRICS_FILE = "tradingbot_offsite.prom"
METRIC_PREFIX = "tradingbot_offsite_"
DAY = 86400

# Options of the copy job, in AnsibleModule argument_spec form; the host CLI validates its JSON
# config against it. docs/offsite.md documents each.
OFFSITE_OPTIONS = {
    "backup_dir": {"type": "path", "required": True},
    "engine": {"type": "str", "choices": list(ENGINES)},
    "recipient": {"type": "str", "required": True},
    "s3_bucket": {"type": "str", "required": True},
    "s3_endpoint": {"type": "str"},
    "s3_region": {"type": "str", "default": "us-east-1"},
    "s3_prefix": {"type": "str", "default": ""},
    "s3_path_style": {"type": "bool", "default": True},
    "s3_ca_bundle": {"type": "path"},
    "s3_credentials_file": {"type": "path"},
    "s3_credential_name": {"type": "str", "default": "offsite-s3"},
    "s3_part_size_mib": {"type": "int", "default": DEFAULT_PART_SIZE // (1024 * 1024)},
    "s3_upload_concurrency": {"type": "int", "default": DEFAULT_CONCURRENCY},
    "s3_max_attempts": {"type": "int", "default": 5},
    "s3_connect_timeout": {"type": "int", "default": 10},
    "s3_read_timeout": {"type": "int", "default": 60},
    # Longer than the GFS horizon (12 months), so no copy retention keeps is ever unlocked.
    "object_lock_days": {"type": "float", "default": 400.0},
    # Everything younger than retention_days is kept (set it no shorter than the local
    # backups' retention_days, so every local backup is copied); GFS thins out the rest.
    "retention_days": {"type": "int", "default": 7},
    "retention_daily": {"type": "int", "default": 30},
    "retention_weekly": {"type": "int", "default": 12},
    "retention_monthly": {"type": "int", "default": 12},
    "metrics_dir": {"type": "path"},
    "breaker_state_file": {"type": "path"},
    "breaker_failure_threshold": {"type": "int", "default": 3},
    "breaker_timeout": {"type": "float", "default": 900.0},
}


class OffsiteError(TradingbotError):
    """The copy job failed; the message is the one journal line."""


def ciphertext_key(name):
    return name + CIPHERTEXT_SUFFIX


def manifest_key(name):
    return name + CIPHERTEXT_SUFFIX + MANIFEST_SUFFIX


def backup_name_of(key):
    """The backup name a store key belongs to, or None when it is not one of our keys."""
    for suffix in (CIPHERTEXT_SUFFIX + MANIFEST_SUFFIX, CIPHERTEXT_SUFFIX):
        if key.endswith(suffix):
            name = key[: -len(suffix)]
            return name if parse_backup_name(name) else None
    return None


def parse_options(options):
    try:
        opts = validate_options(OFFSITE_OPTIONS, options)
    except _OptionError as exc:
        raise OffsiteError(f"invalid off-site configuration: {exc}") from None
    for name in ("retention_days", "retention_daily", "retention_weekly", "retention_monthly", "s3_max_attempts"):
        if opts[name] < 0:
            raise OffsiteError(f"invalid off-site configuration: {name} cannot be negative")
    if opts["object_lock_days"] <= 0:
        raise OffsiteError("invalid off-site configuration: object_lock_days must be > 0 (copies are always locked)")
    try:
        check_recipient(opts["recipient"])
    except EncryptionError as exc:
        raise OffsiteError(f"invalid off-site configuration: {exc}") from None
    return opts


def open_storage(opts, lock=True, credentials=None):
    """The S3 backend the options describe. ``lock=False`` for reading only (restore)."""
    if credentials is None:
        credentials = load_credentials(opts["s3_credentials_file"], opts["s3_credential_name"])
    return S3Storage(
        bucket=opts["s3_bucket"],
        credentials=credentials,
        endpoint=opts["s3_endpoint"],
        region=opts["s3_region"],
        prefix=opts["s3_prefix"],
        path_style=opts["s3_path_style"],
        ca_bundle=opts["s3_ca_bundle"],
        lock_seconds=opts["object_lock_days"] * DAY if lock else 0,
        part_size=opts["s3_part_size_mib"] * 1024 * 1024,
        concurrency=opts["s3_upload_concurrency"],
        max_attempts=opts["s3_max_attempts"],
        connect_timeout=opts["s3_connect_timeout"],
        read_timeout=opts["s3_read_timeout"],
    )


def make_breaker(opts):
    store = FileStateStore(opts["breaker_state_file"]) if opts["breaker_state_file"] else None
    config = CircuitBreakerConfig(
        failure_threshold=opts["breaker_failure_threshold"],
        timeout=opts["breaker_timeout"],
        # An upload of a large backup is slow by nature, not a sign of trouble.
        slow_call_threshold=None,
        failure_exceptions=(StorageError,),
    )
    return CircuitBreaker(BREAKER_NAME, config, store=store)


class _GuardedStore:
    """Every call to the store through the breaker; an open breaker becomes one clear error.

    The client is built inside the first call, so a run that the breaker turns away does not
    even pay for creating it."""

    def __init__(self, opts, breaker):
        self._opts = opts
        # Read before any call: a missing or unreadable key file is a configuration error, not
        # an outage, and must not open the breaker.
        self._credentials = load_credentials(opts["s3_credentials_file"], opts["s3_credential_name"])
        self._storage = None
        self.breaker = breaker
        self.location = describe_location(opts["s3_bucket"], opts["s3_prefix"], opts["s3_endpoint"], opts["s3_region"])

    def _run(self, method, args, kwargs):
        if self._storage is None:
            self._storage = open_storage(self._opts, credentials=self._credentials)
        return getattr(self._storage, method)(*args, **kwargs)

    def __call__(self, method, *args, **kwargs):
        try:
            return self.breaker.call(self._run, method, args, kwargs)
        except CircuitBreakerError as exc:
            raise OffsiteError(f"store {self.location} not tried: {exc}") from None


def _remote_copies(guarded):
    """The backups with a complete copy (ciphertext and manifest) in the store: name to the
    ciphertext's ObjectInfo."""
    keys = {info.key: info for info in guarded("list")}
    names = {backup_name_of(key) for key in keys if key.endswith(MANIFEST_SUFFIX)}
    return {name: keys[ciphertext_key(name)] for name in names if name and ciphertext_key(name) in keys}


def _retention_entries(names):
    entries = []
    for name in names:
        parsed = parse_backup_name(name)
        if parsed:
            entries.append({"name": name, "timestamp": parsed["timestamp"], "verified": True})
    return entries


def _retention(opts, names, now):
    return select_retention(
        _retention_entries(names),
        now,
        days=opts["retention_days"],
        count=0,
        daily=opts["retention_daily"],
        weekly=opts["retention_weekly"],
        monthly=opts["retention_monthly"],
        keep_verified=1,
    )


def _offsite_manifest(local_manifest, encryption, info, recipient, now):
    manifest = dict(local_manifest)
    manifest["offsite"] = {
        "format_version": OFFSITE_FORMAT_VERSION,
        "object": info.key,
        "encryption": "age",
        "recipient_fingerprint": recipient_fingerprint(recipient),
        "plaintext_sha256": encryption.plaintext_sha256,
        "plaintext_size": encryption.plaintext_size,
        "ciphertext_sha256": encryption.ciphertext_sha256,
        "ciphertext_size": encryption.ciphertext_size,
        "etag": info.metadata.get("etag"),
        "version_id": info.metadata.get("version_id"),
        "locked_until": isoformat(datetime.datetime.fromtimestamp(info.locked_until, datetime.UTC))
        if info.locked_until
        else None,
        "uploaded_at": isoformat(now),
    }
    return manifest


def copy_backup(guarded, entry, recipient, now=None):
    """Encrypt one local backup, upload it, check it, then upload its manifest; return the
    off-site manifest."""
    now = now or utcnow()
    name = entry["name"]
    local = entry["manifest"]
    with Encryption(entry["path"], recipient) as encryption:
        info = guarded("put_stream", ciphertext_key(name), encryption.reader, {"backup": name})
    if encryption.plaintext_sha256 != local.get("sha256") or encryption.plaintext_size != local.get("size"):
        raise OffsiteError(
            f"{name} changed since it was verified (SHA-256 or size differ from its manifest); not copied"
        )
    if info.size != encryption.ciphertext_size:
        raise OffsiteError(
            f"copy of {name} in {guarded.location} is {info.size} bytes; {encryption.ciphertext_size} were sent"
        )
    manifest = _offsite_manifest(local, encryption, info, recipient, now)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=MANIFEST_SUFFIX) as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        guarded("put", manifest_key(name), handle.name, {"backup": name})
    return manifest


def apply_retention(guarded, opts, copies, now):
    """Delete the copies off-site retention drops, except those still locked; return
    ``(deleted, locked)`` lists of backup names. ``copies`` maps names to the ciphertext's
    ObjectInfo (None: uploaded by this run)."""
    _kept, dropped = _retention(opts, set(copies), now)
    deleted, locked = [], []
    lock_seconds = opts["object_lock_days"] * DAY
    for entry in dropped:
        name = entry["name"]
        info = copies[name]
        # Written less than object_lock_days ago: locked for sure, no request needed (with a
        # setting lowered since, older copies are locked longer, and the check below finds it).
        if info is None or info.mtime + lock_seconds > now.timestamp():
            locked.append(name)
            continue
        keys = (manifest_key(name), ciphertext_key(name))
        if any(guarded("locked_until", key) for key in keys):
            locked.append(name)
            continue
        for key in keys:  # the manifest first: a copy without one no longer counts
            guarded("delete", key)
        deleted.append(name)
    return deleted, locked


def run_copy(options, check_mode=False, now=None):
    """One run of the copy job; return a result dict, or raise OffsiteError (metrics written)."""
    opts = parse_options(options)
    now = now or utcnow()
    started = time.monotonic()
    local = [entry for entry in list_backups(opts["backup_dir"], opts["engine"]) if entry["verified"]]
    result = {"changed": False, "copied": [], "deleted": [], "locked": [], "pending": []}
    listed = False
    try:
        guarded = _GuardedStore(opts, make_breaker(opts))
        remote = _remote_copies(guarded)
        listed = True
        local_names = {entry["name"] for entry in local}
        kept, _dropped = _retention(opts, set(remote) | local_names, now)
        wanted = {entry["name"] for entry, _reasons in kept}
        missing = [entry for entry in local if entry["name"] not in remote and entry["name"] in wanted]
        result["pending"] = [entry["name"] for entry in missing]
        result["store"] = guarded.location
        if check_mode:
            _kept, would_drop = _retention(opts, set(remote) | {e["name"] for e in missing}, now)
            result["would_delete"] = [entry["name"] for entry in would_drop]
            result["changed"] = bool(missing or would_drop)
            return result
        for entry in missing:  # newest first: the freshest copy matters most
            copy_backup(guarded, entry, opts["recipient"], now)
            result["copied"].append(entry["name"])
            result["pending"].remove(entry["name"])
            remote[entry["name"]] = None
        result["deleted"], result["locked"] = apply_retention(guarded, opts, remote, now)
        result["changed"] = bool(result["copied"] or result["deleted"])
    except (StorageError, EncryptionError, OffsiteError) as exc:
        pending = result["pending"] if listed else _pending_after_failure(opts, local)
        _write_metrics_quietly(opts, False, now, pending=len(pending))
        raise OffsiteError(f"off-site copy failed: {exc}") from None
    result["duration_seconds"] = round(time.monotonic() - started, 3)
    newest = max((parse_backup_name(n)["timestamp"] for n in remote), default=None)
    _write_metrics_quietly(opts, True, now, pending=0, newest_copy=newest, copied=len(result["copied"]))
    result["msg"] = (
        f"copied {len(result['copied'])}, deleted {len(result['deleted'])}, "
        f"kept {len(result['locked'])} locked past retention"
    )
    return result


# -- metrics ------------------------------------------------------------------------------


def _read_metrics(path):
    values = {}
    with contextlib.suppress(OSError), open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(METRIC_PREFIX):
                name, _space, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    values[name.split("{")[0][len(METRIC_PREFIX) :]] = float(value)
    return values


def _pending_after_failure(opts, local):
    """When the store cannot be listed: the verified local backups newer than the newest copy
    the last successful run saw (all of them when none is known)."""
    if not opts["metrics_dir"]:
        return [entry["name"] for entry in local]
    newest = _read_metrics(os.path.join(opts["metrics_dir"], METRICS_FILE)).get("newest_copy_timestamp_seconds")
    return [entry["name"] for entry in local if newest is None or entry["timestamp"].timestamp() > newest]


def write_metrics(metrics_dir, ok, now, *, pending, newest_copy=None, copied=None):
    """Write the textfile-collector file atomically; a failed run carries the last success over."""
    path = os.path.join(metrics_dir, METRICS_FILE)
    previous = _read_metrics(path)
    last_success = now.timestamp() if ok else previous.get("last_success_timestamp_seconds")
    newest = newest_copy.timestamp() if newest_copy else previous.get("newest_copy_timestamp_seconds")
    metrics = [
        ("last_run_timestamp_seconds", "Time of the last off-site copy run.", now.timestamp()),
        ("last_run_success", "1 when the last off-site copy run succeeded, 0 when it failed.", 1 if ok else 0),
        ("last_success_timestamp_seconds", "Time of the last successful off-site copy run.", last_success),
        ("pending_backups", "Verified local backups not yet in the off-site store.", pending),
        ("newest_copy_timestamp_seconds", "Backup time of the newest copy in the off-site store.", newest),
        ("copied_backups", "Backups copied by the last successful run.", copied),
    ]
    lines = []
    for name, help_text, value in metrics:
        if value is None:
            continue
        lines += [f"# HELP {METRIC_PREFIX}{name} {help_text}", f"# TYPE {METRIC_PREFIX}{name} gauge"]
        lines.append(f"{METRIC_PREFIX}{name} {value}")
    fd, tmp = tempfile.mkstemp(prefix=".tradingbot_offsite.", suffix=".prom.tmp", dir=metrics_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _write_metrics_quietly(opts, ok, now, **values):
    if opts["metrics_dir"]:
        # Metrics are for the alerts; a full disk must not mask the run's own outcome.
        with contextlib.suppress(OSError):
            write_metrics(opts["metrics_dir"], ok, now, **values)


# -- restore ------------------------------------------------------------------------------


def list_copies(storage):
    """Names of the backups with a complete copy in ``storage``, newest first."""
    keys = {info.key for info in storage.list()}
    names = {backup_name_of(key) for key in keys if key.endswith(MANIFEST_SUFFIX)}
    found = [name for name in names if name and ciphertext_key(name) in keys]
    return sorted(found, key=lambda name: parse_backup_name(name)["timestamp"], reverse=True)


def read_offsite_manifest(storage, name):
    """The off-site manifest of ``name``; RestoreError when it is missing or not ours."""
    if storage.stat(manifest_key(name)) is None:
        raise RestoreError(f"off-site copy {name} has no manifest in {storage.describe()}; refusing to restore it")
    try:
        manifest = json.loads(storage.read_bytes(manifest_key(name)))
    except ValueError:
        raise RestoreError(f"the off-site manifest of {name} is not JSON; refusing to restore it") from None
    offsite = manifest.get("offsite") if isinstance(manifest, dict) else None
    if manifest.get("created_by") != CREATED_BY or manifest.get("file") != name or not isinstance(offsite, dict):
        raise RestoreError(f"the off-site manifest of {name} is not a tradingbot.ops off-site manifest; refusing")
    return manifest


def fetch_copy(storage, name, identity, dest_dir):
    """Download, verify and decrypt the off-site copy of backup ``name`` into ``dest_dir``.

    ``identity`` is the age secret key text (from the controller). Writes ``dest_dir/name`` and
    its manifest; returns ``{path, manifest, ...}``. Refuses with RestoreError, leaving nothing
    behind in ``dest_dir``, when the manifest is missing, the identity is not the copy's
    recipient, the ciphertext differs from its manifest, or the plaintext does.
    """
    manifest = read_offsite_manifest(storage, name)
    offsite = manifest["offsite"]
    dest = os.path.join(dest_dir, name)
    partial = os.path.join(dest_dir, f".{name}.offsite.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)
    try:
        with identity_file(identity) as identity_path:
            if identity_fingerprint(identity_path) != offsite.get("recipient_fingerprint"):
                raise RestoreError(
                    f"the identity does not match the recipient of {name} "
                    f"({offsite.get('recipient_fingerprint')}); refusing to decrypt"
                )
            cipher_sha = _Sha256()
            try:
                plain_sha, plain_size = decrypt_to_file(
                    cipher_sha.passing(storage.iter_object(ciphertext_key(name))), identity_path, partial
                )
            except EncryptionError as exc:
                if not cipher_sha.complete:  # age stopped early: hash all of it to tell why
                    cipher_sha = _Sha256()
                    for _chunk in cipher_sha.passing(storage.iter_object(ciphertext_key(name))):
                        pass
                if cipher_sha.hexdigest() != offsite.get("ciphertext_sha256"):
                    raise RestoreError(_tampered(name)) from None
                raise RestoreError(f"cannot decrypt {name}: {exc}") from None
        if cipher_sha.hexdigest() != offsite.get("ciphertext_sha256") or cipher_sha.size != offsite.get(
            "ciphertext_size"
        ):
            raise RestoreError(_tampered(name))
        if plain_sha != manifest.get("sha256") or plain_size != manifest.get("size"):
            raise RestoreError(f"the decrypted {name} differs from its manifest (SHA-256 or size); refusing it")
        os.replace(partial, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    write_json_atomic(dest + MANIFEST_SUFFIX, manifest, mode=0o600)
    return {"path": dest, "manifest": manifest, "sha256": plain_sha, "size": plain_size, "source": storage.describe()}


def _tampered(name):
    return f"the ciphertext of {name} differs from its manifest (SHA-256 or size): tampered or damaged; refusing it"


class _Sha256:
    """Hashes the chunks it passes on; ``complete`` once the source ran out."""

    def __init__(self):
        self._sha = hashlib.sha256()
        self.size = 0
        self.complete = False

    def passing(self, chunks):
        for chunk in chunks:
            self._sha.update(chunk)
            self.size += len(chunk)
            yield chunk
        self.complete = True

    def hexdigest(self):
        return self._sha.hexdigest()
