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

The options and the store's key names are in ``offsite_config``, off-site retention in
``offsite_retention``, the metrics in ``offsite_metrics``, and the way back (``fetch_copy``)
in ``offsite_fetch``.
"""

# This package also runs on hosts outside Ansible (the off-site copy timer).
# pylint: disable=ansible-bad-function

from __future__ import annotations

import datetime
import io
import json
import time

from .catalog import Manifest, list_backups, parse_backup_name
from .circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitBreakerError, FileStateStore
from .encryption import Encryption, EncryptionError, recipient_fingerprint
from .errors import StorageError
from .fsutil import isoformat, utcnow
from .offsite_config import OffsiteError, ciphertext_key, complete_copies, manifest_key, open_storage, parse_options
from .offsite_metrics import pending_after_failure, write_metrics_quietly
from .offsite_retention import apply_retention, select_copies
from .storage.s3_client import describe_location, load_credentials

OFFSITE_FORMAT_VERSION = 1
BREAKER_NAME = "offsite_s3"


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


def _offsite_manifest(local_manifest, encryption, info, recipient, now):
    manifest = Manifest(local_manifest)
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
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"  # as Manifest.write lays it out
    guarded("put_stream", manifest_key(name), io.BytesIO(text.encode("utf-8")), {"backup": name})
    return manifest


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
        remote = complete_copies(guarded("list"))
        listed = True
        local_names = {entry["name"] for entry in local}
        kept, _dropped = select_copies(opts, set(remote) | local_names, now)
        wanted = {entry["name"] for entry, _reasons in kept}
        missing = [entry for entry in local if entry["name"] not in remote and entry["name"] in wanted]
        result["pending"] = [entry["name"] for entry in missing]
        result["store"] = guarded.location
        if check_mode:
            _kept, would_drop = select_copies(opts, set(remote) | {e["name"] for e in missing}, now)
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
        pending = result["pending"] if listed else pending_after_failure(opts, local)
        write_metrics_quietly(opts, False, now, pending=len(pending))
        raise OffsiteError(f"off-site copy failed: {exc}") from None
    result["duration_seconds"] = round(time.monotonic() - started, 3)
    newest = max((parse_backup_name(n)["timestamp"] for n in remote), default=None)
    write_metrics_quietly(opts, True, now, pending=0, newest_copy=newest, copied=len(result["copied"]))
    result["msg"] = (
        f"copied {len(result['copied'])}, deleted {len(result['deleted'])}, "
        f"kept {len(result['locked'])} locked past retention"
    )
    return result
