"""How the S3 backend reaches a store: the key pair, the botocore client and its settings.

- Credentials come from a 0600 JSON file or systemd's ``LoadCredential=`` (``load_credentials``),
  never from argv, the environment or ~/.aws; no error message quotes them.
- Retries: botocore's ``standard`` mode (exponential backoff with jitter) on every call.
- botocore's own default checksums (1.36 and later) are switched off: the backend sends a
  Content-MD5 with every request instead, so the same requests go out from Debian's boto3 1.26
  and from newer ones, and stores that reject aws-chunked trailers still work.

The client is botocore's own (boto3 is a layer over it that the backend does not use; Debian's
python3-boto3 brings python3-botocore). Its import is guarded so that module_utils imports
without it; building a client then raises a clear StorageError.

Memory (issue 12: the copy job's peak RSS is at most 64 MiB): under Debian 12's python3,
``import boto3`` and one client take 51.5 MiB; botocore's own session 2 MiB less (boto3 adds
s3transfer and multiprocessing). botocore 1.29 imports ``urllib3.contrib.pyopenssl`` only to
take the stdlib's SSLContext back out of it and falls back to urllib3's, the same class, when
that import fails; the import loads pyOpenSSL and cryptography, another 6.6 MiB. And Debian's
botocore imports requests, which loads chardet's language models (2.5 MiB) when chardet is
installed and uses charset_normalizer otherwise; botocore never guesses a text encoding. Both
are held off while botocore loads (``_without``), so botocore and requests take their fallbacks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import stat as stat_module
import sys
import warnings

from ..errors import StorageError


@contextlib.contextmanager
def _without(modules):
    """Make ``import`` of each of ``modules`` fail inside the block (unless loaded already), then allow it again."""
    held = [module for module in modules if module not in sys.modules]
    for module in held:
        sys.modules[module] = None  # the import system's own "not importable" mark
    try:
        with warnings.catch_warnings():
            # requests' version check names charset_normalizer when chardet is held off.
            warnings.filterwarnings("ignore", message=r"urllib3 \(.*\) or chardet \(.*\)/charset_normalizer")
            yield
    finally:
        for module in held:
            if sys.modules.get(module, ...) is None:
                del sys.modules[module]


def _memory_heavy_optional_modules():
    held = ["urllib3.contrib.pyopenssl"]
    if importlib.util.find_spec("charset_normalizer") is not None:  # requests needs one of the two
        held.append("chardet")
    return held


try:
    with _without(_memory_heavy_optional_modules()):
        import botocore
        import botocore.session
        from botocore.config import Config as BotoConfig
        from botocore.exceptions import BotoCoreError, ClientError
        from botocore.handlers import add_expect_header
except ImportError:  # pragma: no cover - exercised on hosts without python3-botocore
    botocore = None
    BotoCoreError = ClientError = ()

# The botocore errors are the backend's too; () when botocore is missing, so ``except`` still works.
__all__ = [
    "CREDENTIAL_KEYS",
    "BotoCoreError",
    "ClientError",
    "describe_location",
    "load_credentials",
    "make_client",
    "require_botocore",
]

CREDENTIAL_KEYS = ("access_key_id", "secret_access_key")


def require_botocore():
    if botocore is None:
        raise StorageError(
            "the S3 backend needs botocore: install python3-boto3 or python3-botocore (Debian), or pip install boto3"
        )


def load_credentials(path=None, credential_name=None):
    """Read the S3 key pair from a JSON file ``{"access_key_id": ..., "secret_access_key": ...}``.

    With ``credential_name`` and systemd's ``$CREDENTIALS_DIRECTORY`` set (``LoadCredential=``),
    the file ``$CREDENTIALS_DIRECTORY/<credential_name>`` is read, whose access systemd sets;
    otherwise ``path``, which must not be readable by group or others. The secret never appears in an error message.
    """
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    # systemd guards its own copy: a per-unit directory, and since systemd 256 (Debian 13) files
    # 0440 root:root with an ACL for the unit's User=, so their mode bits are not the operator's.
    from_systemd = bool(credential_name and directory and os.path.exists(os.path.join(directory, credential_name)))
    if from_systemd:
        path = os.path.join(directory, credential_name)
    elif not path:
        raise StorageError(
            "no S3 credentials: set credentials_file, or load the credential "
            f"{credential_name or '(none named)'} with systemd's LoadCredential="
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"cannot open S3 credentials {path}: {exc.strerror}") from None
    with os.fdopen(fd, encoding="utf-8") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not from_systemd and mode & (stat_module.S_IRWXG | stat_module.S_IRWXO):
            raise StorageError(f"S3 credentials {path} are mode {mode & 0o777:04o}; make them 0600 (or 0400)")
        try:
            data = json.load(handle)
        except ValueError:
            # The parser's message could quote the file's contents.
            raise StorageError(f"S3 credentials {path} are not a JSON object") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), str) and data[key] for key in CREDENTIAL_KEYS):
        raise StorageError(f"S3 credentials {path} need the keys {', '.join(CREDENTIAL_KEYS)}")
    return {key: data[key] for key in CREDENTIAL_KEYS}


def make_client(credentials, *, endpoint, region, path_style, ca_bundle, max_attempts, connect_timeout, read_timeout):
    """A botocore S3 client with explicit keys and the settings the module docstring explains."""
    require_botocore()
    options = {
        "region_name": region,
        "retries": {"mode": "standard", "max_attempts": max_attempts},
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "s3": {"addressing_style": "path" if path_style else "virtual"},
    }
    if _botocore_has_checksum_settings():
        # Content-MD5 on every request is the integrity check; see the module docstring.
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    # A session of its own: no shared state, and no credentials from the environment or
    # ~/.aws, since explicit keys override every other source.
    session = botocore.session.Session()
    client = session.create_client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=credentials["access_key_id"],
        aws_secret_access_key=credentials["secret_access_key"],
        verify=ca_bundle if ca_bundle else True,
        config=BotoConfig(**options),
    )
    # botocore sends "Expect: 100-continue" with every file-like body and then waits up to
    # a second for an interim answer that SeaweedFS 4.48 never sends: 0.5 s lost per part.
    client.meta.events.unregister("before-call.s3", add_expect_header)
    return client


def describe_location(bucket, prefix="", endpoint=None, region="us-east-1"):
    """``s3://bucket/prefix at endpoint``: where a store is, without credentials."""
    where = endpoint or f"AWS S3 ({region})"
    prefix = prefix.strip("/")
    location = f"{bucket}/{prefix}" if prefix else bucket
    return f"s3://{location} at {where}"


def _botocore_has_checksum_settings():
    """botocore 1.36 added request/response checksum settings (and made them default on)."""
    version = tuple(int(part) for part in botocore.__version__.split(".")[:2])
    return version >= (1, 36)
