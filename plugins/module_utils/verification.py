"""Checking a backup file: against what was written, against its manifest, and validating a
restored copy against the manifest's row counts and content digest."""

import os

from .catalog import file_compression
from .compression import decode_file
from .errors import BackupError
from .fsutil import sha256_file


class PreflightError(BackupError):
    """A backup fails its SHA-256, size or full-decode check: a restore may fall back to an older one."""


def compare_written(path, decoded, expected):
    """Compare a full decode of a just-written backup with what the writer hashed.

    ``expected`` holds ``raw_sha256``/``raw_size`` (the source stream) and ``sha256``/``size``
    (the file). Returns the manifest's ``verification`` dict; raises BackupError on a mismatch.
    """
    name = os.path.basename(path)
    if decoded["sha256"] != expected["sha256"] or decoded["size"] != expected["size"]:
        raise BackupError(f"{name} on disk differs from what was written (sha256 or size mismatch)")
    if decoded["decoded_sha256"] != expected["raw_sha256"] or decoded["decoded_size"] != expected["raw_size"]:
        raise BackupError(f"{name} does not decode to the source stream (sha256 or size mismatch)")
    return {"ok": True, "detail": f"{decoded['decoded_size']} bytes decoded"}


def check_written(path, written):
    """Check a just-written backup whose stream ``compress_stream`` decoded as it wrote it.

    The file is read back from disk and must hash to the bytes that were written, so it decodes
    to what the writer decoded: the source stream. Returns the manifest's ``verification``.
    """
    name = os.path.basename(path)
    if written["decoded_size"] != written["raw_size"]:
        raise BackupError(f"{name} does not decode to the source stream (size mismatch)")
    if sha256_file(path) != written["sha256"] or os.path.getsize(path) != written["size"]:
        raise BackupError(f"{name} on disk differs from what was written (sha256 or size mismatch)")
    return {
        "ok": True,
        "detail": f"{written['decoded_size']} bytes decoded while writing",
        "method": f"{written['decode_check']}; sha256 of the file on disk equals what was written",
    }


def checksum_problems(sha256, size, manifest):
    """What differs between a file's SHA-256/size and its manifest's (a legacy file has neither)."""
    problems = []
    if manifest.get("legacy") and manifest.get("sha256") is None:
        return problems
    if sha256 != manifest.get("sha256"):
        problems.append(f"SHA-256 {sha256} differs from the manifest's {manifest.get('sha256')}")
    if manifest.get("size") is not None and size != manifest["size"]:
        problems.append(f"size {size} differs from the manifest's {manifest['size']}")
    return problems


def check_stream(stats, manifest, format_problems):
    """Compare what ``decode_file`` saw with the manifest; return the list of problems.

    ``format_problems(stats, manifest)`` is the engine adapter's check of its file signatures.
    """
    problems = checksum_problems(stats["sha256"], stats["size"], manifest)
    expected = manifest.get("uncompressed_size")
    if expected is not None and stats["decoded_size"] != expected:
        problems.append(f"decoded size {stats['decoded_size']} differs from the manifest's {expected}")
    return problems + format_problems(stats, manifest)


def decode_backup(path, manifest, sink=None):
    """Decode a backup completely, feeding ``sink``; return ``decode_file``'s digests."""
    # No hash of the decoded stream: the file's SHA-256 is checked against the manifest and
    # gzip/zstd check their own checksums, so it would cost a core and add no safety.
    return decode_file(path, file_compression(path, manifest), sink, hash_decoded=False)


def preflight(path, manifest, format_problems, sink=None):
    """Hash and decode a backup, checking it against its manifest; raise PreflightError on any problem."""
    try:
        stats = decode_backup(path, manifest, sink)
    except BackupError as exc:
        raise PreflightError(f"backup {os.path.basename(path)} is unreadable: {exc}") from exc
    problems = check_stream(stats, manifest, format_problems)
    if problems:
        raise PreflightError(f"backup {os.path.basename(path)} fails pre-flight: {'; '.join(problems)}")
    return {"sha256": stats["sha256"], "size": stats["size"], "uncompressed_size": stats["decoded_size"]}


def verify_checksum(path, manifest):
    """Check a backup's SHA-256 and size against its manifest without decoding it."""
    size = os.path.getsize(path)
    digest = sha256_file(path)
    problems = checksum_problems(digest, size, manifest)
    if problems:
        raise PreflightError(f"backup {os.path.basename(path)} fails pre-flight: {'; '.join(problems)}")
    return {"sha256": digest, "size": size}


def compare_counts(expected, actual):
    """Return ``{table: {"expected": n, "actual": m}}`` for every table whose rows differ."""
    return {
        table: {"expected": expected.get(table), "actual": actual.get(table)}
        for table in sorted(set(expected) | set(actual))
        if expected.get(table) != actual.get(table)
    }


def validate_counts_and_digest(checks, manifest, count, digest, verify_digest):
    """Record the row-count and content-digest checks of a restored copy; return whether all passed."""
    expected = manifest.get("tables")
    if expected is None:
        checks["row_counts"] = {"ok": True, "skipped": "the manifest records no row counts"}
    else:
        mismatches = compare_counts(expected, count())
        checks["row_counts"] = {"ok": not mismatches, "tables": len(expected), "mismatches": mismatches}
    if not manifest.get("content_digest"):
        checks["content_digest"] = {"ok": True, "skipped": "the manifest records no content digest"}
    elif not verify_digest:
        checks["content_digest"] = {"ok": True, "skipped": "verify_content_digest is off"}
    else:
        actual = digest()
        checks["content_digest"] = {"ok": actual == manifest["content_digest"], "actual": actual}
    return all(check["ok"] for check in checks.values())


def validation_failure(checks):
    """One line naming the failed checks and the first row-count differences."""
    failed = [name for name, check in checks.items() if not check["ok"]]
    detail = checks.get("row_counts", {}).get("mismatches")
    text = f"validation failed: {', '.join(failed)}"
    if detail:
        text += "; rows differ from the manifest: " + ", ".join(
            f"{table} {counts['actual']} != {counts['expected']}" for table, counts in list(detail.items())[:5]
        )
    return text
