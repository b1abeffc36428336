"""The way back from the off-site store: find the copies, and fetch one for the local restore.

``fetch_copy`` downloads a copy, verifies the ciphertext against its manifest, decrypts it
with an identity from the controller, verifies the plaintext, and writes the backup and its
manifest into a local directory, where the local restore takes over. ``fetch_for_restore`` is
that, driven by the copy job's config file (the offsite_fetch module); ``check_ciphertext``
checks a copy without the identity (the recovery drill on the host, which has none).
"""

# This package also runs on hosts outside Ansible (the off-site copy timer).
# pylint: disable=ansible-bad-function

from __future__ import annotations

import contextlib
import hashlib
import json
import os

from .catalog import Manifest, example_name, parse_backup_name
from .encryption import EncryptionError, decrypt_to_file, identity_file, identity_fingerprint
from .errors import BackupError, RestoreError
from .fsutil import sha256_file
from .offsite_config import (
    CIPHERTEXT_SUFFIX,
    backup_name_of,
    ciphertext_key,
    complete_copies,
    manifest_key,
    open_storage,
    read_config,
)

LATEST = "latest"


def list_copies(storage):
    """Names of the backups with a complete copy in ``storage``, newest first."""
    found = complete_copies(storage.list())
    return sorted(found, key=lambda name: parse_backup_name(name)["timestamp"], reverse=True)


def read_offsite_manifest(storage, name):
    """The off-site manifest of ``name``; RestoreError when it is missing or not ours."""
    if storage.stat(manifest_key(name)) is None:
        raise RestoreError(f"off-site copy {name} has no manifest in {storage.describe()}; refusing to restore it")
    try:
        data = json.loads(storage.read_bytes(manifest_key(name)))
    except ValueError:
        raise RestoreError(f"the off-site manifest of {name} is not JSON; refusing to restore it") from None
    manifest = Manifest(data) if isinstance(data, dict) else Manifest()
    if not manifest.is_ours(name) or not isinstance(manifest.get("offsite"), dict):
        raise RestoreError(f"the off-site manifest of {name} is not a tradingbot.ops off-site manifest; refusing")
    return manifest


def choose_copy(storage, backup=LATEST, engine=None):
    """``(name, manifest, incomplete)`` of the copy to restore: ``backup`` by name, or the newest
    complete copy of ``engine`` (any engine when None). ``incomplete`` names the ciphertexts in
    the store without a manifest (a hidden or never-written one), which "latest" passes over."""
    if backup in (None, "", LATEST):
        infos = storage.list()
        complete = complete_copies(infos)
        ciphertexts = {backup_name_of(info.key) for info in infos if info.key.endswith(CIPHERTEXT_SUFFIX)}
        incomplete = sorted(ciphertexts - set(complete) - {None})
        names = [
            name
            for name in sorted(complete, key=lambda n: parse_backup_name(n)["timestamp"], reverse=True)
            if engine is None or parse_backup_name(name)["engine"] == engine
        ]
        if not names:
            raise RestoreError(
                f"no complete off-site copy of a {engine or 'tradingbot.ops'} backup in {storage.describe()}"
                + (f" (without a manifest: {', '.join(incomplete)})" if incomplete else "")
            )
        name = names[0]
    else:
        parsed = parse_backup_name(backup)
        if parsed is None:
            raise RestoreError(f"{backup!r} is not a backup name (for example {example_name(engine or 'sqlite')})")
        if engine and parsed["engine"] != engine:
            raise RestoreError(f"{backup} is not a {engine} backup (for example {example_name(engine)})")
        name, incomplete = backup, []
    return name, read_offsite_manifest(storage, name), incomplete


def describe_copy(name, manifest):
    """What the manifest says of a copy, for results and prompts (no secret: manifests hold none)."""
    offsite = manifest["offsite"]
    facts = {key: value for key, value in manifest.describe(name).items() if key not in ("path", "verification")}
    facts.update(
        {
            key: offsite.get(key)
            for key in (
                "object",
                "recipient_fingerprint",
                "ciphertext_sha256",
                "ciphertext_size",
                "version_id",
                "locked_until",
                "uploaded_at",
            )
        }
    )
    return facts


def check_identity(identity_path, name, manifest):
    """Refuse, before anything is downloaded, an identity that is not the copy's recipient."""
    expected = manifest["offsite"].get("recipient_fingerprint")
    if identity_fingerprint(identity_path) != expected:
        raise RestoreError(f"the identity does not match the recipient of {name} ({expected}); refusing to decrypt")


def check_ciphertext(storage, name):
    """Download the ciphertext of ``name`` and check its SHA-256 and size against the off-site
    manifest, without decrypting (no identity needed); return the manifest."""
    manifest = read_offsite_manifest(storage, name)
    offsite = manifest["offsite"]
    cipher_sha = _Sha256()
    for _chunk in cipher_sha.passing(storage.iter_object(ciphertext_key(name))):
        pass
    if cipher_sha.hexdigest() != offsite.get("ciphertext_sha256") or cipher_sha.size != offsite.get("ciphertext_size"):
        raise RestoreError(_tampered(name))
    return manifest


def _already_fetched(dest, manifest):
    """True when ``dest`` and its manifest are there and the file is the manifest's."""
    try:
        local = Manifest.read(dest)
        return (
            local.get("sha256") == manifest.get("sha256")
            and os.path.isfile(dest)
            and os.path.getsize(dest) == manifest.get("size")
            and sha256_file(dest) == manifest.get("sha256")
        )
    except (BackupError, OSError):  # not there, or unreadable: fetch it again
        return False


def fetch_for_restore(config, identity, dest_dir, *, backup=LATEST, engine=None, check_mode=False):
    """Choose a copy from the store the off-site config file ``config`` names, and fetch it into
    ``dest_dir`` (``fetch_copy``). In check mode, name the copy and check the identity against
    it (when one is given) without downloading. A copy already in ``dest_dir`` with the
    manifest's SHA-256 is not fetched again (``changed`` false)."""
    opts = read_config(config)
    if not os.path.isdir(dest_dir):
        raise RestoreError(f"dest_dir {dest_dir} is not a directory")
    storage = open_storage(opts, lock=False)
    name, manifest, incomplete = choose_copy(storage, backup, engine or opts["engine"])
    dest = os.path.join(dest_dir, name)
    result = {
        "changed": False,
        "backup": describe_copy(name, manifest),
        "path": dest,
        "source": storage.describe(),
        "incomplete": incomplete,
    }
    if _already_fetched(dest, manifest):
        result["msg"] = f"{dest} is already the off-site copy of {name} (SHA-256 matches its manifest)"
        return result
    if not identity:
        if not check_mode:
            raise RestoreError(f"an age identity is needed to decrypt {name}; none was given")
        result.update(changed=True, msg=f"would fetch {name} from {storage.describe()} (no identity given to check)")
        return result
    if check_mode:
        with identity_file(identity) as identity_path:
            check_identity(identity_path, name, manifest)
        result.update(changed=True, msg=f"would fetch {name} from {storage.describe()}; the identity is its recipient")
        return result
    fetched = fetch_copy(storage, name, identity, dest_dir)
    result.update(changed=True, msg=f"fetched {name} from {storage.describe()}: it matches its manifest")
    result["sha256"], result["size"] = fetched["sha256"], fetched["size"]
    return result


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
            check_identity(identity_path, name, manifest)
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
    manifest.write(dest, mode=0o600)
    return {
        "path": dest,
        "manifest": dict(manifest),
        "sha256": plain_sha,
        "size": plain_size,
        "source": storage.describe(),
    }


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
