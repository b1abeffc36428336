"""age encryption of backups on the host, streaming, with Debian's ``age`` binary.

The host holds only the recipient (an ``age1...`` public key), so a compromised host cannot
read its own past copies. The identity (the ``AGE-SECRET-KEY-1...`` private key) comes from the
controller for a restore only: it is written to a 0600 file in a private 0700 directory
(in RAM when /dev/shm or ``$RUNTIME_DIRECTORY`` is there), named to age by path, and removed
when the restore ends, failed or not. It never reaches argv, a log or a result.

The recipient's fingerprint, recorded in every off-site manifest, is ``sha256:`` and the hex
SHA-256 of the recipient string: stable, public, and checkable against an identity by
deriving its recipient (``age-keygen -y``).
"""

# This package also runs on hosts outside Ansible (the off-site copy timer).
# pylint: disable=ansible-bad-function

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

from .errors import BackupError as _PipeError  # what ChildPipe raises when age fails
from .errors import TradingbotError
from .fsutil import CHUNK_SIZE
from .streams import ChildPipe

AGE_HEADER = b"age-encryption.org/v1\n"
_RECIPIENT_RE = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")  # bech32, X25519
_IDENTITY_PREFIX = "AGE-SECRET-KEY-1"


class EncryptionError(TradingbotError):
    """Encrypting or decrypting failed, or a key is unusable. The message never carries a key."""


def age_binary(name="age"):
    found = shutil.which(name)
    if not found:
        raise EncryptionError(f"the {name} binary is not installed (apt install age)")
    return found


def check_recipient(recipient):
    """Return the recipient, stripped, or raise EncryptionError when it is not an age X25519 key."""
    value = recipient.strip() if isinstance(recipient, str) else ""
    if not _RECIPIENT_RE.match(value):
        raise EncryptionError("the recipient must be an age public key (age1 followed by 58 bech32 characters)")
    return value


def recipient_fingerprint(recipient):
    return "sha256:" + hashlib.sha256(check_recipient(recipient).encode("ascii")).hexdigest()


@contextlib.contextmanager
def identity_file(identity):
    """Yield the path of a 0600 file holding ``identity``; the file and its 0700 directory are
    removed on exit, whatever happens."""
    text = identity.strip() if isinstance(identity, str) else ""
    if not any(line.startswith(_IDENTITY_PREFIX) for line in text.splitlines()):
        raise EncryptionError(f"the identity is not an age secret key ({_IDENTITY_PREFIX}...)")
    directory = tempfile.mkdtemp(prefix="tradingbot-age-", dir=_private_tmp())
    try:
        path = os.path.join(directory, "identity")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text + "\n")
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _private_tmp():
    for candidate in (os.environ.get("RUNTIME_DIRECTORY"), "/dev/shm"):  # noqa: S108 - RAM, not disk
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return None


def identity_fingerprint(identity_path):
    """Fingerprint of the recipient that belongs to the identity in ``identity_path``."""
    proc = subprocess.run(
        [age_binary("age-keygen"), "-y", identity_path],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        # age-keygen names the problem without echoing the key.
        lines = proc.stderr.strip().splitlines()
        raise EncryptionError(f"the identity is unusable: {lines[-1] if lines else 'age-keygen failed'}")
    recipients = [line for line in proc.stdout.split() if line.startswith("age1")]
    if len(recipients) != 1:
        raise EncryptionError("the identity file must hold exactly one age identity")
    return recipient_fingerprint(recipients[0])


class HashingReader:
    """A binary reader over ``source`` (read/readinto) that hashes and counts what passes."""

    def __init__(self, source):
        self._source = source
        self._sha = hashlib.sha256()
        self.size = 0

    def readinto(self, buffer):
        count = self._source.readinto(buffer)
        if count:
            with memoryview(buffer) as view:
                self._sha.update(view[:count])
            self.size += count
        return count

    def read(self, size=-1):
        data = self._source.read(size)
        self._sha.update(data)
        self.size += len(data)
        return data

    def hexdigest(self):
        return self._sha.hexdigest()


def hashed_chunks(chunks, sha):
    """Pass ``chunks`` through, updating ``sha`` (a hashlib object)."""
    for chunk in chunks:
        sha.update(chunk)
        yield chunk


def file_chunks(path):
    with open(path, "rb") as handle:
        yield from iter(lambda: handle.read(CHUNK_SIZE), b"")


class Encryption:
    """``age -r RECIPIENT`` over the file at ``path``: read the ciphertext from ``reader``.

    After ``close()``: ``plaintext_sha256``/``plaintext_size`` of what went in, and
    ``ciphertext_sha256``/``ciphertext_size`` of what came out.
    """

    def __init__(self, path, recipient):
        self.recipient = check_recipient(recipient)
        self._plain_sha = hashlib.sha256()
        self._plain_size = 0
        self._pipe = ChildPipe(
            [age_binary(), "-r", self.recipient],
            f"age encryption of {os.path.basename(path)} failed",
            feed=self._counted(hashed_chunks(file_chunks(path), self._plain_sha)),
        )
        self.reader = HashingReader(self._pipe)

    def _counted(self, chunks):
        for chunk in chunks:
            self._plain_size += len(chunk)
            yield chunk

    def close(self, kill=False):
        try:
            self._pipe.close(kill=kill)
        except _PipeError as exc:
            raise EncryptionError(str(exc)) from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(kill=exc_type is not None)
        return False

    @property
    def plaintext_sha256(self):
        return self._plain_sha.hexdigest()

    @property
    def plaintext_size(self):
        return self._plain_size

    @property
    def ciphertext_sha256(self):
        return self.reader.hexdigest()

    @property
    def ciphertext_size(self):
        return self.reader.size


def decrypt_to_file(chunks, identity_path, dest_path):
    """Decrypt the ciphertext ``chunks`` with the identity file into ``dest_path`` (created,
    mode 0600); return ``(plaintext_sha256, plaintext_size)``. Raises EncryptionError with age's
    own reason when it refuses (no matching identity, a damaged or truncated ciphertext)."""
    sha = hashlib.sha256()
    size = 0
    fd = os.open(dest_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        try:
            with ChildPipe([age_binary(), "-d", "-i", identity_path], "age decryption failed", feed=chunks) as pipe:
                for chunk in pipe:
                    sha.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except _PipeError as exc:
            raise EncryptionError(str(exc)) from None
        out.flush()
        os.fsync(out.fileno())
    return sha.hexdigest(), size
