"""The way back from the off-site store: find the copies, and fetch one for the local restore.

``fetch_copy`` downloads a copy, verifies the ciphertext against its manifest, decrypts it
with an identity from the controller, verifies the plaintext, and writes the backup and its
manifest into a local directory, where the local restore takes over.
"""

# This package also runs on hosts outside Ansible (the off-site copy timer).
# pylint: disable=ansible-bad-function

from __future__ import annotations

import contextlib
import hashlib
import json
import os

from .catalog import Manifest, parse_backup_name
from .encryption import EncryptionError, decrypt_to_file, identity_file, identity_fingerprint
from .errors import RestoreError
from .offsite_config import ciphertext_key, complete_copies, manifest_key


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
