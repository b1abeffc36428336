"""Litestream 0.3.13 (SQLite continuous replication): its replica, its listing, point-in-time restore.

The collection talks to Litestream only through its own commands (``snapshots``, ``wal``,
``restore``), run with a JSON config (JSON is YAML) and ``-no-expand-env``, so that a ``$`` in a
secret stays as it is. A config that carries a secret (the S3 key, the age identity for a
restore) is a 0600 file in a private 0700 directory, removed when the command ends: no secret in
argv or the environment.

0.3.13 reports every replica object by its upload time (the store's LastModified, whole seconds),
not by its commit time: a restore to T replays the segments uploaded by T (docs/replication.md).
"""

# This package also runs on hosts outside Ansible (the replication metrics timer).
# pylint: disable=ansible-bad-function

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile

from .encryption import _private_tmp, check_recipient
from .errors import TradingbotError

VERSION = "0.3.13"
_IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
# The environment Litestream must not see: with AWS_CA_BUNDLE set, 0.3.13 fails with "cannot
# load aws config: unable to add custom RootCAs"; a store CA is passed as its own bundle instead.
_DROPPED_ENV = ("AWS_CA_BUNDLE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE")
_DROPPED_ENV_PREFIX = "LITESTREAM_"


class LitestreamError(TradingbotError):
    """Litestream failed, or the archive cannot give what was asked. Never carries a secret."""


def binary(path=None):
    found = shutil.which(path or "litestream")
    if not found:
        raise LitestreamError(f"the litestream binary is not installed ({path or 'litestream'} not found)")
    return found


def replica_config(replica, *, identity=None):
    """The replica's Litestream config entry. ``replica``: database, s3_bucket, s3_path,
    s3_endpoint, s3_region, s3_path_style, s3_access_key_id, s3_secret_access_key, and for the
    service recipients, sync_interval, snapshot_interval, retention.

    ``identity``: the age secret key that reads the replica. The service needs one too: 0.3.13
    reads its last WAL segment back after every restart or failed sync ("cannot determine
    replica position: lz4: bad magic number" without it), so it holds a host key of its own
    and encrypts to both that key and the operator's recipient (docs/replication.md)."""
    entry = {
        "type": "s3",
        "name": "offsite",
        "bucket": replica["s3_bucket"],
        "path": replica["s3_path"],
        "region": replica.get("s3_region") or "us-east-1",
        "force-path-style": bool(replica.get("s3_path_style", True)),
        "access-key-id": replica["s3_access_key_id"],
        "secret-access-key": replica["s3_secret_access_key"],
    }
    if replica.get("s3_endpoint"):
        entry["endpoint"] = replica["s3_endpoint"]
    for key in ("sync_interval", "snapshot_interval", "retention"):
        if replica.get(key):
            entry[key.replace("_", "-")] = replica[key]
    age = {}
    if replica.get("recipients"):
        age["recipients"] = [check_recipient(recipient) for recipient in replica["recipients"]]
    if identity is not None:
        age["identities"] = [check_identity(identity)]
    if age:
        entry["age"] = age
    return entry


def config_text(replica, *, identity=None, local_replica_dir=None):
    replicas = [replica_config(replica, identity=identity)]
    if local_replica_dir:
        replicas.append({"type": "file", "name": "local", "path": local_replica_dir})
    return json.dumps({"dbs": [{"path": replica["database"], "replicas": replicas}]}, indent=2) + "\n"


def check_identity(identity):
    """The one age secret key in ``identity``: the key alone, or an identity file as age-keygen
    writes it (restore_offsite_identity_file), whose ``#`` comment lines are dropped."""
    lines = identity.splitlines() if isinstance(identity, str) else []
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if len(keys) != 1 or not keys[0].startswith(_IDENTITY_PREFIX):
        raise LitestreamError(f"the identity must be one age secret key ({_IDENTITY_PREFIX}...)")
    return keys[0]


@contextlib.contextmanager
def secret_config(text):
    """Yield the path of a 0600 config file holding ``text``; it and its 0700 directory go on exit."""
    directory = tempfile.mkdtemp(prefix="tradingbot-litestream-", dir=_private_tmp())
    try:
        path = os.path.join(directory, "litestream.yml")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def environment(ca_bundle=None):
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV and not k.startswith(_DROPPED_ENV_PREFIX)}
    if ca_bundle:
        env["AWS_CA_BUNDLE"] = ca_bundle
    return env


def run(litestream, command, config_path, database, *args, ca_bundle=None, secrets=()):
    """Run ``litestream COMMAND -config CONFIG [ARGS] DATABASE``; return its stdout.

    Return (its output without log lines, its log lines). 0.3.13's listing commands log a failed
    replica ("level=ERROR") and still exit 0 with no rows: an ERROR line fails the call too.
    ``secrets`` are cut out of any message."""
    argv = [litestream, command, "-no-expand-env", "-config", config_path, *args, database]
    result = subprocess.run(
        argv, capture_output=True, text=True, env=environment(ca_bundle), check=False, stdin=subprocess.DEVNULL
    )
    # 0.3.13 logs to stdout, between the rows of a listing.
    lines = (result.stdout + result.stderr).splitlines()
    log = redact("\n".join(line for line in lines if line.startswith("time=")), secrets)
    output = "\n".join(line for line in result.stdout.splitlines() if not line.startswith("time="))
    if result.returncode != 0 or "level=ERROR" in log:
        errors = [line for line in log.splitlines() if "level=ERROR" in line] or [
            redact(result.stderr.strip(), secrets)
        ]
        raise LitestreamError(f"litestream {command} failed (exit {result.returncode}): {'; '.join(errors)}")
    return output, log


def redact(text, secrets):
    for secret in secrets:
        if secret:
            text = text.replace(secret, "********")
    return text


def parse_table(text):
    """Litestream's tabwriter listing as a list of dicts keyed by its header."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header, rows = lines[0], lines[1:]
    return [dict(zip(header, row, strict=True)) for row in rows]


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def fmt_time(moment):
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def parse_target(target_time):
    """ "latest" (None) or an aware datetime; an ISO time without a zone is refused."""
    if target_time in (None, "", "latest"):
        return None
    try:
        moment = datetime.datetime.fromisoformat(target_time.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise LitestreamError(f'target_time must be "latest" or an ISO time with a zone: {exc}') from None
    if moment.tzinfo is None:
        raise LitestreamError(f'target_time must carry a zone (for example "{target_time}+00:00")')
    return moment


def listing(litestream, config_path, database, **run_args):
    """Every snapshot and WAL segment of the replica, with times, grouped by generation."""
    snapshots = parse_table(run(litestream, "snapshots", config_path, database, **run_args)[0])
    segments = parse_table(run(litestream, "wal", config_path, database, **run_args)[0])
    generations = {}
    for row in snapshots:
        gen = generations.setdefault(row["generation"], {"snapshots": [], "wal": []})
        gen["snapshots"].append({"index": int(row["index"]), "created": parse_time(row["created"])})
    for row in segments:
        gen = generations.setdefault(row["generation"], {"snapshots": [], "wal": []})
        gen["wal"].append(
            {"index": int(row["index"]), "offset": int(row["offset"]), "created": parse_time(row["created"])}
        )
    for gen in generations.values():
        times = [item["created"] for item in gen["snapshots"] + gen["wal"]]
        gen["start"], gen["end"] = min(times), max(times)
    return generations


def reachable(generations):
    """The time ranges a restore can reach, oldest first: a generation needs a snapshot."""
    return sorted(
        (
            {"generation": name, "start": fmt_time(gen["start"]), "end": fmt_time(gen["end"])}
            for name, gen in generations.items()
            if gen["snapshots"]
        ),
        key=lambda item: item["start"],
    )


def describe_ranges(generations):
    ranges = reachable(generations)
    if not ranges:
        return "none (the replica holds no snapshot yet)"
    return ", ".join(f"{r['start']} .. {r['end']} (generation {r['generation']})" for r in ranges)


def plan(generations, target):
    """What ``litestream restore`` will use for ``target`` (None: latest), chosen as 0.3.13 does:
    of the generations whose range holds the target, the one updated last; its newest snapshot
    taken by the target; the WAL segments from that snapshot's index up to the target."""
    candidates = [
        (name, gen)
        for name, gen in generations.items()
        if gen["snapshots"] and (target is None or gen["start"] <= target <= gen["end"])
    ]
    if not candidates:
        what = "the replica" if target is None else f"target_time {fmt_time(target)}"
        raise LitestreamError(f"{what} is outside the reachable range: {describe_ranges(generations)}")
    name, gen = max(candidates, key=lambda item: item[1]["end"])
    snapshot = max(
        (s for s in gen["snapshots"] if target is None or s["created"] <= target),
        key=lambda s: (s["created"], s["index"]),
    )
    wal = [
        w
        for w in sorted(gen["wal"], key=lambda w: (w["index"], w["offset"]))
        if w["index"] >= snapshot["index"] and (target is None or w["created"] <= target)
    ]
    result = {
        "generation": name,
        "generation_range": {"start": fmt_time(gen["start"]), "end": fmt_time(gen["end"])},
        "snapshot": {"index": snapshot["index"], "created": fmt_time(snapshot["created"])},
        "wal": {"segments": len(wal), "first": None, "last": None},
        "restores_to": fmt_time(max([snapshot["created"]] + [w["created"] for w in wal])),
    }
    if wal:
        result["wal"]["first"] = _segment(wal[0])
        result["wal"]["last"] = _segment(wal[-1])
    return result


def _segment(item):
    return {"index": item["index"], "offset": item["offset"], "created": fmt_time(item["created"])}


def integrity_check(path, full=True):
    # immutable: nothing else writes the copy, and no -shm/-wal is left beside it.
    pragma = "integrity_check" if full else "quick_check"
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        rows = [row[0] for row in conn.execute(f"PRAGMA {pragma}")]
    finally:
        conn.close()
    if rows != ["ok"]:
        raise LitestreamError(f"the restored copy fails PRAGMA {pragma}: {'; '.join(rows[:5])}")
    return pragma
