"""Point-in-time restore of a PostgreSQL cluster from its pgBackRest repository.

Plan (pgbackrest_plan) -> refuse an unreachable target before anything is touched -> stop the
server -> move the data directory aside (the safety copy) -> ``pgbackrest restore`` into a fresh
one -> start -> wait for the end of recovery (promotion) -> validate (connect, count rows) ->
on any failure after the move: stop, put the safety copy back, start.

Every command runs as the cluster's OS user with argv that carries no secret: the S3 keys and
the cipher passphrase stay in pgBackRest's configuration files.
"""

from __future__ import annotations

# Stdlib only, like the other engines (tested and run without AnsibleModule); pg_ctl's server
# must inherit no pipe, which run_command cannot express.
# pylint: disable=ansible-bad-function
import contextlib
import datetime
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time

from . import pgbackrest_plan
from .errors import RestoreError

PITR_OPTIONS = {
    "operation": {"type": "str", "choices": ["restore", "rollback"], "default": "restore"},
    "stanza": {"type": "str", "required": True},
    "target_time": {"type": "str"},
    "safety_copy": {"type": "path"},
    "data_dir": {"type": "path", "required": True},
    "database": {"type": "str", "default": "postgres"},
    "validate_tables": {"type": "list", "elements": "str", "default": []},
    "pg_bin_dir": {"type": "path", "default": "/usr/lib/postgresql/15/bin"},
    "pg_port": {"type": "int", "default": 5432},
    "pg_socket_dir": {"type": "path", "default": "/var/run/postgresql"},
    "service": {"type": "str"},
    "os_user": {"type": "str", "default": "postgres"},
    "config_path": {"type": "path", "default": "/etc/pgbackrest"},
    "pgbackrest": {"type": "path", "default": "pgbackrest"},
    "archive_mode": {"type": "str", "choices": ["preserve", "off"], "default": "preserve"},
    "recovery_timeout": {"type": "int", "default": 600},
    "archive_current": {"type": "bool", "default": False},
}
PITR_REQUIRED_IF = [("operation", "restore", ["target_time"]), ("operation", "rollback", ["safety_copy"])]
_COMMIT = re.compile(r"desc: COMMIT (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")
# How far back from the newest archived segment to look for the newest commit.
_COMMIT_SEARCH_SEGMENTS = 32


class Cluster:
    """Commands against one cluster and its stanza, as the cluster's OS user."""

    def __init__(self, params):
        self.params = params
        self.prefix = [] if _is_user(params["os_user"]) else ["runuser", "-u", params["os_user"], "--"]

    def run(self, argv, check=True, timeout=None):
        env = dict(os.environ, TZ="UTC", LC_ALL="C")
        result = subprocess.run(
            [*self.prefix, *argv],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RestoreError(f"{argv[0]} {argv[-1]} failed ({result.returncode}): {_last_lines(result.stderr)}")
        return result

    def pgbackrest(self, *arguments, check=True):
        params = self.params
        argv = [params["pgbackrest"], f"--config-path={params['config_path']}", f"--stanza={params['stanza']}"]
        return self.run([*argv, *arguments], check=check)

    def psql(self, sql, check=True):
        params = self.params
        argv = [
            os.path.join(params["pg_bin_dir"], "psql"),
            *("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
            *("-h", params["pg_socket_dir"], "-p", str(params["pg_port"]), "-d", params["database"]),
            *("-c", sql),
        ]
        return self.run(argv, check=check, timeout=60)

    def running(self):
        return self.psql("SELECT 1", check=False).returncode == 0

    def server(self, action):
        params = self.params
        if params["service"]:
            argv = ["systemctl", action, params["service"]]
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
        else:
            mode = ["-m", "fast"] if action == "stop" else ["-l", os.path.join(params["data_dir"], "pg_ctl.log")]
            argv = [os.path.join(params["pg_bin_dir"], "pg_ctl"), "-D", params["data_dir"], "-w", "-t", "120"]
            # The server inherits pg_ctl's stdout and stderr: a pipe would never close, so its log
            # goes to a file in the data directory.
            result = subprocess.run(
                [*self.prefix, *argv, *mode, action],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            result.stderr = _log_tail(os.path.join(params["data_dir"], "pg_ctl.log"))
        if result.returncode != 0:
            raise RestoreError(f"{action} of the PostgreSQL server failed: {_last_lines(result.stderr)}")


def _is_user(name):
    return pwd.getpwuid(os.geteuid()).pw_name == name


def _log_tail(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()[-2000:]
    except OSError:
        return ""


def _last_lines(text, count=3):
    fatal = [line.strip() for line in text.splitlines() if "FATAL:" in line or "PANIC:" in line]
    if fatal:
        return " | ".join(fatal[-count:])
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:]) or "no message"


def read_info(cluster):
    result = cluster.pgbackrest("--output=json", "info")
    return pgbackrest_plan.stanza_info(json.loads(result.stdout), cluster.params["stanza"])


def _archive_get(cluster, name, directory):
    """Fetch one archived file (a segment or a history file) into ``directory``; None when absent."""
    destination = os.path.join(directory, name)
    if cluster.pgbackrest("archive-get", name, destination, check=False).returncode != 0:
        return None
    return destination


def timeline_history(cluster, timeline, directory):
    if timeline == 1:
        return {}
    path = _archive_get(cluster, f"{timeline:08X}.history", directory)
    if path is None:
        raise RestoreError(f"the archive has no history file for its newest timeline {timeline}")
    with open(path, encoding="utf-8") as handle:
        return pgbackrest_plan.parse_history(handle.read())


def newest_commit(cluster, newest_segment, history, directory):
    """The newest commit time on the history to ``newest_segment``, read with pg_waldump from its
    last segments (on the parent timelines before their switch points)."""
    waldump = os.path.join(cluster.params["pg_bin_dir"], "pg_waldump")
    segment = newest_segment
    for _attempt in range(_COMMIT_SEARCH_SEGMENTS):
        if segment is None:
            return None
        path = _archive_get(cluster, segment, directory)
        if path is not None:
            dump = cluster.run([waldump, path], check=False)
            os.unlink(path)
            commits = _COMMIT.findall(dump.stdout)
            if commits:
                return datetime.datetime.fromisoformat(commits[-1]).replace(tzinfo=pgbackrest_plan.UTC)
        segment = pgbackrest_plan.previous_segment_on_history(segment, history)
    return None


def live_segment(cluster, entry, db_id):
    """The running cluster's current WAL segment, when it is the stanza's database; else None.

    After a rollback the live cluster is on an older timeline than the one the abandoned restore
    archived: its history, not the newest timeline's, is the one to follow. A cluster with another
    system identifier (a new host's fresh one) says nothing about the archive.
    """
    if not cluster.running():
        return None
    row = cluster.psql(
        "SELECT system_identifier, pg_is_in_recovery(), "
        "CASE WHEN pg_is_in_recovery() THEN '' ELSE pg_walfile_name(pg_current_wal_lsn()) END "
        "FROM pg_control_system()",
        check=False,
    )
    fields = row.stdout.strip().split("|")
    if row.returncode != 0 or len(fields) != 3 or fields[1] != "f":
        return None
    system_ids = {str(db.get("system-id")) for db in entry.get("db", []) if db["id"] == db_id}
    return fields[2] if fields[0] in system_ids else None


def plan_restore(cluster, target):
    entry = read_info(cluster)
    db_id, archive = pgbackrest_plan.current_archive(entry)
    newest = archive["max"]
    live = live_segment(cluster, entry, db_id)
    if live and pgbackrest_plan.segment_timeline(live) != pgbackrest_plan.segment_timeline(newest):
        newest = pgbackrest_plan.previous_segment(live) or live  # the current one is not archived yet
    timeline = pgbackrest_plan.segment_timeline(newest)
    directory = tempfile.mkdtemp(prefix="pg-pitr-")
    try:
        shutil.chown(directory, cluster.params["os_user"])
        history = timeline_history(cluster, timeline, directory)
        last_commit = newest_commit(cluster, newest, history, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return pgbackrest_plan.make_plan(entry, target, last_commit, history, newest_segment=newest)


def restore_arguments(plan, params):
    arguments = ["--delta", f"--set={plan['backup']}", f"--target-timeline={plan['target_timeline']}"]
    if plan["target_time"] == "latest":
        arguments.append("--type=default")
    else:
        arguments += ["--type=time", f"--target={plan['target_time']}", "--target-action=promote"]
    if params["archive_mode"] == "off":
        arguments.append("--archive-mode=off")
    return [*arguments, "restore"]


def wait_for_promotion(cluster, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = cluster.psql("SELECT pg_is_in_recovery()", check=False)
        if result.returncode == 0 and result.stdout.strip() == "f":
            return
        time.sleep(1)
    raise RestoreError(f"the restored server was still in recovery (or down) after {timeout} s")


def validate(cluster, tables):
    """Connect and count every table's rows; a table named in ``tables`` must exist."""
    listed = cluster.psql(
        "SELECT quote_ident(schemaname) || '.' || quote_ident(relname) FROM pg_stat_user_tables ORDER BY 1"
    ).stdout.split()
    missing = [table for table in tables if table not in listed and f"public.{table}" not in listed]
    if missing:
        raise RestoreError(f"the restored database lacks the tables {', '.join(missing)}")
    counts = {}
    for table in listed:
        counts[table] = int(cluster.psql(f"SELECT count(*) FROM {table}").stdout.strip())  # noqa: S608 - quote_ident
    return counts


def _stamp():
    return datetime.datetime.now(pgbackrest_plan.UTC).strftime("%Y%m%dT%H%M%SZ")


def _fresh_data_dir(path, owner):
    os.mkdir(path, 0o700)
    shutil.chown(path, owner, owner)


def run_pitr(params, check_mode=False):
    cluster = Cluster(params)
    target = pgbackrest_plan.parse_target(params["target_time"])
    data_dir = params["data_dir"].rstrip("/")
    if not os.path.isdir(data_dir):
        raise RestoreError(f"data_dir {data_dir} is not a directory")
    if (not check_mode or params["archive_current"]) and cluster.running():
        # Archive what the server has written so far (check switches WAL and waits for it).
        cluster.pgbackrest("check", check=False)
    plan = plan_restore(cluster, target)
    result = {"changed": True, "plan": plan, "restore_arguments": restore_arguments(plan, params)}
    if check_mode:
        result["not_predicted"] = ["the restore itself", "the recovery and the validation of the restored cluster"]
        return result

    safety_copy = f"{data_dir}.pre-pitr-{_stamp()}"
    result["safety_copy"] = safety_copy
    if cluster.running():
        cluster.server("stop")
    os.rename(data_dir, safety_copy)
    try:
        _fresh_data_dir(data_dir, params["os_user"])
        cluster.pgbackrest(*result["restore_arguments"])
        cluster.server("start")
        wait_for_promotion(cluster, params["recovery_timeout"])
        result["row_counts"] = validate(cluster, params["validate_tables"])
        result["timeline"] = int(cluster.psql("SELECT timeline_id FROM pg_control_checkpoint()").stdout.strip())
    except (RestoreError, OSError, subprocess.SubprocessError) as exc:
        result["rolled_back"] = rollback(cluster, data_dir, safety_copy)
        result["changed"] = False
        raise RestoreError(f"point-in-time restore failed and was rolled back: {exc}", result) from exc
    return result


def run_rollback(params, check_mode=False):
    """Put back the safety copy of an earlier, successful restore (its service failed after it).

    The restored data directory is kept beside it as ``<data_dir>.failed-pitr-<stamp>``.
    """
    cluster = Cluster(params)
    data_dir = params["data_dir"].rstrip("/")
    safety_copy = params["safety_copy"].rstrip("/")
    if os.path.dirname(safety_copy) != os.path.dirname(data_dir) or not os.path.basename(safety_copy).startswith(
        os.path.basename(data_dir) + ".pre-pitr-"
    ):
        raise RestoreError(f"safety_copy {safety_copy} is not a <data_dir>.pre-pitr-<stamp> of {data_dir}")
    if not os.path.isdir(safety_copy):
        raise RestoreError(f"safety_copy {safety_copy} is not a directory; nothing was touched")
    result = {"changed": True, "safety_copy": safety_copy, "failed_restore": _failed_name(safety_copy)}
    if check_mode:
        return result
    rollback(cluster, data_dir, safety_copy)
    wait_for_promotion(cluster, params["recovery_timeout"])
    result["rolled_back"] = True
    return result


def _failed_name(safety_copy):
    return safety_copy.replace(".pre-pitr-", ".failed-pitr-")


def rollback(cluster, data_dir, safety_copy):
    """Put the safety copy back in place and start it; the failed restore is kept beside it."""
    with contextlib.suppress(RestoreError):  # not running
        cluster.server("stop")
    if os.path.exists(data_dir):
        os.rename(data_dir, _failed_name(safety_copy))
    os.rename(safety_copy, data_dir)
    cluster.server("start")
    return True
