"""Point-in-time restore of a SQLite database from its Litestream replica, into a staging file.

1. list the replica and plan: the generation, snapshot and WAL range for the target; a target
   outside the reachable range is refused here, before anything is written;
2. (not in check mode) ``litestream restore -timestamp T -o STAGING``, with the age identity in
   a 0600 temp config that is removed whatever happens;
3. integrity-check the staging file; a bad one is removed.

The live database is never touched: the caller applies the staging file through the restore
flow's safety copy, validation and rollback (docs/replication.md).
"""

# pylint: disable=ansible-bad-function

from __future__ import annotations

import contextlib
import os

from . import litestream
from .fsutil import utcnow

# 0.3.13 restores into STAGING.tmp, replays the WAL there with SQLite (checkpointed, truncated)
# and renames it: the -wal and -shm of the temp name stay behind.
_LEFTOVERS = (".tmp", ".tmp-wal", ".tmp-shm")
NOT_PREDICTED = ("the download and decryption of the snapshot and WAL segments", "the integrity check of the copy")


def _replica(opts):
    keys = ("database", "s3_bucket", "s3_path", "s3_endpoint", "s3_region", "s3_path_style")
    replica = {key: opts[key] for key in keys}
    replica["s3_access_key_id"] = opts["s3_access_key_id"]
    replica["s3_secret_access_key"] = opts["s3_secret_access_key"]
    return replica


def staging_path(opts, now):
    name = f"{os.path.basename(opts['database'])}.pitr-{now.strftime('%Y%m%d_%H%M%S_%f')}"
    return os.path.join(opts["staging_dir"], name)


def restore(opts, check_mode=False):
    """Return the module result; raise litestream.LitestreamError on any refusal or failure."""
    target = litestream.parse_target(opts["target_time"])
    if not os.path.isdir(opts["staging_dir"]):
        raise litestream.LitestreamError(f"staging_dir {opts['staging_dir']} is not a directory")
    if not check_mode and not opts.get("identity"):
        raise litestream.LitestreamError("identity (the age secret key) is required to restore")
    binary = litestream.binary(opts.get("litestream_binary"))
    secrets = (opts.get("identity"), opts["s3_secret_access_key"])
    run_args = {"ca_bundle": opts.get("s3_ca_bundle"), "secrets": secrets}
    identity = opts.get("identity") or None
    text = litestream.config_text(_replica(opts), identity=identity)
    staging = staging_path(opts, utcnow())
    result = {
        "changed": False,
        "target_time": "latest" if target is None else litestream.fmt_time(target),
        "staging_file": staging,
        "not_predicted": list(NOT_PREDICTED) if check_mode else [],
    }
    with litestream.secret_config(text) as config:
        generations = litestream.listing(binary, config, opts["database"], **run_args)
        result["reachable"] = litestream.reachable(generations)
        result.update(litestream.plan(generations, target))
        if check_mode:
            return result
        if os.path.lexists(staging):
            raise litestream.LitestreamError(f"{staging} exists already")
        args = ["-o", staging]
        if target is not None:
            args += ["-timestamp", litestream.fmt_time(target)]
        try:
            _out, log = litestream.run(binary, "restore", config, opts["database"], *args, **run_args)
            _remove_restore_leftovers(staging)
            result["check"] = litestream.integrity_check(staging, full=opts.get("integrity_check", "full") == "full")
        except BaseException:
            for leftover in (staging, *(staging + suffix for suffix in _LEFTOVERS)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
            raise
    os.chmod(staging, 0o600)
    result["changed"] = True
    result["log"] = log.splitlines()
    return result


def _remove_restore_leftovers(staging):
    wal = staging + ".tmp-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        raise litestream.LitestreamError(f"litestream left unreplayed WAL frames in {wal}")
    for suffix in _LEFTOVERS[1:]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging + suffix)
