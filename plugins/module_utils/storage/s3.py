"""S3 storage backend: backups and manifests as objects in a bucket, under a prefix.

Built on botocore (Debian's python3-boto3 or python3-botocore on hosts); the client, its
settings and the key pair come from ``s3_client``, the part buffers from ``s3_parts``. Without
botocore, constructing an ``S3Storage`` raises a clear StorageError.

- Uploads stream: ``concurrency`` parts (default 3 of ``part_size``, 5 MiB) are in memory,
  and in flight, at a time; the next part is read while they upload. A file smaller than a
  part is one PUT; anything larger is a multipart upload.
- Every PUT and part carries the Content-MD5 of its bytes, which the store checks; the ETag
  the store reports is compared with the one computed here (MD5, or MD5 of the part MD5s).
- Object Lock: with ``lock_seconds`` > 0 every object is written in COMPLIANCE mode, retained
  until now + ``lock_seconds``. ``delete`` removes every version of a key and refuses, before
  trying, when any version is still locked.
- Credentials are passed in by the caller (see ``s3_client.load_credentials``), never read
  from argv; ``describe()`` and every error message leave them out.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import datetime
import hashlib
import itertools
import os
import tempfile

from ..errors import StorageError
from .base import ObjectInfo, Storage
from .s3_client import BotoCoreError, ClientError, describe_location, make_client, require_botocore
from .s3_parts import read_parts

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's floor for every part but the last
# 3 parts of 5 MiB in flight: what fits the copy job's 64 MiB (issue 12) beside botocore's ~43 MiB
# (see docs/offsite.md, Benchmark); rclone's defaults are 4 of 5 MiB.
DEFAULT_PART_SIZE = MIN_PART_SIZE
DEFAULT_CONCURRENCY = 3
LOCK_MODE = "COMPLIANCE"


def _md5_b64(digest):
    return base64.b64encode(digest).decode("ascii")


def _epoch(moment):
    return moment.timestamp() if moment is not None else None


class S3Storage(Storage):
    """A bucket (and optional prefix) behind the Storage interface."""

    name = "s3"

    def __init__(
        self,
        *,
        bucket,
        credentials,
        endpoint=None,
        region="us-east-1",
        prefix="",
        path_style=True,
        ca_bundle=None,
        lock_seconds=0,
        part_size=DEFAULT_PART_SIZE,
        concurrency=DEFAULT_CONCURRENCY,
        max_attempts=5,
        connect_timeout=10,
        read_timeout=60,
    ):
        require_botocore()
        if not bucket:
            raise StorageError("the S3 backend needs a bucket name")
        if part_size < MIN_PART_SIZE:
            raise StorageError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum part size)")
        if concurrency < 1:
            raise StorageError("concurrency must be at least 1")
        if lock_seconds < 0:
            raise StorageError("lock_seconds cannot be negative")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.region = region
        self.lock_seconds = lock_seconds
        self.part_size = part_size
        self.concurrency = concurrency
        self._client = make_client(
            credentials,
            endpoint=endpoint,
            region=region,
            path_style=path_style,
            ca_bundle=ca_bundle,
            max_attempts=max_attempts,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )

    # -- helpers ------------------------------------------------------------------------

    def _object_key(self, key):
        if not key or "/" in key:
            raise StorageError(f"invalid storage key {key!r}: keys are plain file names")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, action, key, exc):
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            detail = f"{error.get('Code', 'error')}: {error.get('Message') or 'no message'}"
        else:
            detail = str(exc)
        where = f" {key}" if key else ""
        return StorageError(f"S3 {action}{where} failed at {self.describe()}: {detail}")

    def _call(self, action, key, fn, **kwargs):
        try:
            return fn(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(action, key, exc) from None

    def _lock_args(self):
        if not self.lock_seconds:
            return {}
        until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=self.lock_seconds)
        return {"ObjectLockMode": LOCK_MODE, "ObjectLockRetainUntilDate": until}

    def _info(self, key, head):
        until = head.get("ObjectLockRetainUntilDate") if head.get("ObjectLockMode") else None
        return ObjectInfo(
            key=key,
            size=head["ContentLength"],
            mtime=_epoch(head.get("LastModified")) or 0.0,
            locked_until=_epoch(until),
            metadata={
                **head.get("Metadata", {}),
                "etag": head.get("ETag", "").strip('"'),
                "version_id": head.get("VersionId"),
            },
        )

    # -- Storage ------------------------------------------------------------------------

    def put(self, key, source_path, metadata=None):
        with open(source_path, "rb") as handle:
            return self.put_stream(key, handle, metadata)

    def put_stream(self, key, stream, metadata=None):
        """Upload what ``stream.read()`` returns until EOF (a pipe will do); return the ObjectInfo.

        Memory: ``concurrency`` parts. The ETag the store computes must equal the one computed here.
        """
        object_key = self._object_key(key)
        extra = {"Bucket": self.bucket, "Key": object_key, "Metadata": dict(metadata or {}), **self._lock_args()}
        parts = read_parts(stream, self.part_size, self.concurrency)
        first = next(parts)
        if len(first) < self.part_size:
            digest = hashlib.md5(first, usedforsecurity=False)
            response = self._call(
                "put", key, self._client.put_object, Body=first, ContentMD5=_md5_b64(digest.digest()), **extra
            )
            expected_etag = digest.hexdigest()
        else:
            response, expected_etag = self._multipart(key, object_key, extra, itertools.chain((first,), parts))
        etag = response.get("ETag", "").strip('"')
        if etag != expected_etag:
            raise StorageError(
                f"S3 put {key} at {self.describe()}: the store reports ETag {etag}, expected {expected_etag}"
            )
        return self.stat(key, version_id=response.get("VersionId"))

    def _multipart(self, key, object_key, extra, chunks):
        """Upload ``chunks`` as the parts of one object, up to ``concurrency`` at a time. The
        chunks come from ``read_parts`` with as many buffers, so a buffer is read into again only
        after the upload that used it has finished."""
        upload = self._call("create multipart upload", key, self._client.create_multipart_upload, **extra)
        upload_id = upload["UploadId"]

        def send(number, chunk):
            digest = hashlib.md5(chunk, usedforsecurity=False).digest()
            response = self._call(
                f"upload part {number} of",
                key,
                self._client.upload_part,
                Bucket=self.bucket,
                Key=object_key,
                UploadId=upload_id,
                PartNumber=number,
                Body=chunk,
                ContentMD5=_md5_b64(digest),
            )
            return {"ETag": response["ETag"], "PartNumber": number}, digest

        parts, digests, inflight = [], [], collections.deque()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="s3-part")
        try:
            for number, chunk in enumerate(chunks, start=1):
                inflight.append(pool.submit(send, number, chunk))
                if len(inflight) == self.concurrency:  # the oldest buffer is read into next
                    part, digest = inflight.popleft().result()
                    parts.append(part)
                    digests.append(digest)
            while inflight:
                part, digest = inflight.popleft().result()
                parts.append(part)
                digests.append(digest)
            response = self._call(
                "complete multipart upload",
                key,
                self._client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=object_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            with contextlib.suppress(BotoCoreError, ClientError):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
            raise
        pool.shutdown(wait=True)
        expected = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
        return response, f"{expected}-{len(parts)}"

    def get(self, key, dest_path):
        directory = os.path.dirname(os.path.abspath(dest_path))
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dest_path) + ".", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in self.iter_object(key):
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, dest_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return dest_path

    def iter_object(self, key, chunk_size=1024 * 1024):
        """Yield the bytes of ``key`` in chunks, streaming (the restore path decrypts on the fly)."""
        response = self._call("get", key, self._client.get_object, Bucket=self.bucket, Key=self._object_key(key))
        body = response["Body"]
        try:
            while True:
                try:
                    chunk = body.read(chunk_size)
                except (BotoCoreError, OSError) as exc:
                    raise self._error("read", key, exc) from None
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    def read_bytes(self, key, limit=16 * 1024 * 1024):
        """The whole of a small object (a manifest); refuses anything over ``limit`` bytes."""
        data = b""
        for chunk in self.iter_object(key):
            data += chunk
            if len(data) > limit:
                raise StorageError(f"S3 object {key} is larger than {limit} bytes")
        return data

    def list(self, prefix=""):
        """ObjectInfo of every current object under ``prefix``. ``locked_until`` is None here:
        listing does not return lock state; ``stat`` does, and ``delete`` checks it."""
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        found = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for item in page.get("Contents", []):
                    key = item["Key"][len(base) :]
                    if "/" in key:
                        continue  # not one of ours: deeper than the prefix
                    found.append(
                        ObjectInfo(
                            key=key,
                            size=item["Size"],
                            mtime=_epoch(item.get("LastModified")) or 0.0,
                            metadata={"etag": item.get("ETag", "").strip('"')},
                        )
                    )
        except (BotoCoreError, ClientError) as exc:
            raise self._error("list", prefix, exc) from None
        return sorted(found, key=lambda info: info.key)

    def stat(self, key, version_id=None):
        kwargs = {"Bucket": self.bucket, "Key": self._object_key(key)}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            head = self._client.head_object(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error("stat", key, exc) from None
        except BotoCoreError as exc:
            raise self._error("stat", key, exc) from None
        return self._info(key, head)

    def versions(self, key):
        """Version ids of ``key``, delete markers included, as ``(version_id, is_marker)``."""
        object_key = self._object_key(key)
        found = []
        paginator = self._client.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=object_key):
                for kind, marker in (("Versions", False), ("DeleteMarkers", True)):
                    found += [(item["VersionId"], marker) for item in page.get(kind, []) if item["Key"] == object_key]
        except (BotoCoreError, ClientError) as exc:
            raise self._error("list versions of", key, exc) from None
        return found

    def locked_until(self, key):
        """The latest retain-until time (epoch seconds) over every version of ``key``, or None."""
        latest = None
        now = datetime.datetime.now(datetime.UTC).timestamp()
        for version_id, marker in self.versions(key):
            if marker:
                continue
            info = self.stat(key, version_id=version_id)
            if info and info.locked_until and info.locked_until > now:
                latest = max(latest or 0, info.locked_until)
        return latest

    def delete(self, key):
        until = self.locked_until(key)
        if until is not None:
            stamp = datetime.datetime.fromtimestamp(until, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise StorageError(f"S3 object {key} is locked until {stamp}; it cannot be deleted before then")
        object_key = self._object_key(key)
        for version_id, _marker in self.versions(key):
            self._call(
                "delete", key, self._client.delete_object, Bucket=self.bucket, Key=object_key, VersionId=version_id
            )

    def describe(self):
        return describe_location(self.bucket, self.prefix, self.endpoint, self.region)
