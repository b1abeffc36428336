"""The one way this package runs PostgreSQL's client tools: psql, pg_dump and pg_restore.

``params`` is a dict with the db_backup/db_restore option names: ``database`` (database name),
``pg_host``, ``pg_port``, ``pg_user``, ``pg_password``, ``pg_passfile``, ``pg_bin_dir``,
``pg_connect_timeout``. Missing keys fall back to libpq's defaults. The password reaches the
tools through the environment (PGPASSWORD or PGPASSFILE), never argv, and is redacted from
every message.
"""

# Runs on hosts too, where AnsibleModule.run_command does not exist.
# pylint: disable=ansible-bad-function

import hashlib
import os
import re
import shutil
import subprocess

from ..errors import BackupError
from ..fsutil import CHUNK_SIZE

# Every psql run: no ~/.psqlrc, quiet, stop at the first error.
_PSQL_BASE = ("-X", "-q", "-v", "ON_ERROR_STOP=1")
# Unaligned, tuples only, tab-separated: output a caller can split.
PSQL_TABULAR = ("-A", "-t", "-F", "\t")

# Ordinary tables (partitions included, partitioned parents excluded so rows count once),
# from pg_catalog: information_schema would hide tables the user has no privilege on.
USER_TABLES_SQL = (
    "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' "
    "ORDER BY 1"
)


def pg_binary(params, name):
    """Return the path of a PostgreSQL client binary (``pg_dump``, ``psql``, ...)."""
    bin_dir = params.get("pg_bin_dir")
    if bin_dir:
        path = os.path.join(bin_dir, name)
        if not os.access(path, os.X_OK):
            raise BackupError(f"{name} not found in pg_bin_dir {bin_dir}")
        return path
    found = shutil.which(name)
    if not found:
        raise BackupError(f"{name} is not installed (apt install postgresql-client)")
    return found


def pg_connection_env(params, base=None):
    """Build the environment for libpq tools from connection params.

    Sets PGHOST/PGPORT/PGUSER/PGDATABASE/PGCONNECT_TIMEOUT, and the password through
    PGPASSWORD (``pg_password``) or PGPASSFILE (``pg_passfile``): never through argv.
    ``base`` defaults to a copy of os.environ without any inherited PG* variables.
    """
    env = dict(os.environ if base is None else base)
    for key in list(env):
        if key.startswith("PG"):
            del env[key]
    mapping = {
        "PGHOST": params.get("pg_host"),
        "PGPORT": params.get("pg_port"),
        "PGUSER": params.get("pg_user"),
        "PGDATABASE": params.get("database"),
        "PGCONNECT_TIMEOUT": params.get("pg_connect_timeout"),
        "PGPASSWORD": params.get("pg_password"),
        "PGPASSFILE": params.get("pg_passfile"),
    }
    for key, value in mapping.items():
        if value not in (None, ""):
            env[key] = str(value)
    env.setdefault("PGAPPNAME", "tradingbot.ops")
    return env


def tool_error(stderr):
    """The line of a PostgreSQL tool's stderr that says what went wrong (the last error line,
    not a trailing DETAIL or HINT), or None."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"\b(error|ERROR|FATAL|fatal):", line)]
    if errors:
        return errors[-1]
    return lines[-1] if lines else None


def pg_redact(text, params):
    """Remove the password from a text (an error message) before it is logged or returned."""
    password = params.get("pg_password")
    if password:
        text = text.replace(str(password), "********")
    return text


class PgRunner:
    """Builds every argv and environment for psql, pg_dump and pg_restore from one ``params``."""

    def __init__(self, params):
        self.params = params

    def argv(self, tool, *args):
        """The argv of ``tool``: never prompts for a password; psql also gets ``_PSQL_BASE``."""
        base = [pg_binary(self.params, tool), "--no-password"]
        if tool == "psql":
            base += _PSQL_BASE
        return [*base, *args]

    def env(self, database=None):
        return pg_connection_env(dict(self.params, database=database or self.params.get("database")))

    def redact(self, text):
        return pg_redact(text, self.params)

    def popen(self, tool, args, database=None, **kwargs):
        """Start ``tool`` with ``args`` connected to ``database`` (default: the job's)."""
        return subprocess.Popen(self.argv(tool, *args), env=self.env(database), **kwargs)

    def run(self, tool, args, database=None, stdin=None):
        """Run ``tool`` to completion; return its stdout as text, or raise BackupError with its
        error line (password redacted)."""
        proc = subprocess.run(
            self.argv(tool, *args), input=stdin, env=self.env(database), capture_output=True, check=False
        )
        if proc.returncode != 0:
            detail = tool_error(proc.stderr) or f"exit {proc.returncode}"
            raise BackupError(self.redact(f"{tool} failed: {detail}"))
        return proc.stdout.decode("utf-8")

    def query(self, sql, database=None, snapshot=None):
        """Run one SQL statement and return its unaligned, tuples-only output.

        With ``snapshot`` (an id from ``pg_export_snapshot()``), the statement sees exactly that
        snapshot, e.g. the one a concurrent pg_dump uses.
        """
        args = [*PSQL_TABULAR, *_snapshot_args(snapshot), "-c", sql]
        if snapshot:
            args += ["-c", "COMMIT"]
        return self.run("psql", args, database)

    def script(self, script, database, variables=None):
        """Run a psql script (stdin) with ``:'var'``/``:"var"`` variables; return its output."""
        args = [*PSQL_TABULAR, "-d", database]
        for key, value in (variables or {}).items():
            args += ["-v", f"{key}={value}"]
        return self.run("psql", args, database, stdin=script.encode())

    def table_counts(self, database=None, snapshot=None):
        """Return ``{schema.table: row count}`` for every user table, counted exactly."""
        return parse_counts(self.query(table_counts_sql(), database, snapshot))

    def content_digest(self, database=None):
        """Return a deterministic SHA-256 over every user table's rows (ordered by their text form).

        Meant for tests and post-restore checks: it reads every row, so it costs a full scan.
        """
        digest = hashlib.sha256()
        tables = [line for line in self.query(USER_TABLES_SQL, database).splitlines() if line]
        for table in tables:
            digest.update(f"table {table}\n".encode())
            sql = f'COPY (SELECT t::text FROM {table} t ORDER BY t::text COLLATE "C") TO STDOUT'  # noqa: S608
            with self.popen("psql", ["-c", sql], database, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
                for chunk in iter(lambda proc=proc: proc.stdout.read(CHUNK_SIZE), b""):
                    digest.update(chunk)
                err = proc.stderr.read()
            if proc.returncode != 0:
                raise BackupError(self.redact(f"psql failed reading {table}: {tool_error(err)}"))
        return digest.hexdigest()


def table_counts_sql(names_sql=USER_TABLES_SQL):
    """SQL counting the rows of each table that ``names_sql`` names (one quoted name a row)."""
    # The names are quoted identifiers (quote_ident, or pg_catalog through it).
    return (
        "SELECT t.name, (xpath('/row/c/text()', query_to_xml('SELECT count(*) AS c FROM ' || t.name,"  # noqa: S608
        " false, true, '')))[1]::text::bigint FROM (" + names_sql + ") AS t(name) ORDER BY 1"
    )


def parse_counts(output):
    """``{name: count}`` from tab-separated ``name, count`` lines."""
    counts = {}
    for line in output.splitlines():
        if line:
            name, count = line.rsplit("\t", 1)
            counts[name] = int(count)
    return counts


def _snapshot_args(snapshot):
    if not snapshot:
        return []
    if not re.fullmatch(r"[0-9A-Fa-f-]+", snapshot):
        raise BackupError(f"invalid snapshot id {snapshot!r}")
    return ["-c", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "-c", f"SET TRANSACTION SNAPSHOT '{snapshot}'"]


def psql_query(params, sql, database=None, snapshot=None):
    """``PgRunner(params).query``: one statement's tuples-only output."""
    return PgRunner(params).query(sql, database, snapshot)


def psql_script(params, script, database, variables=None):
    """``PgRunner(params).script``: a psql script with variables, ON_ERROR_STOP."""
    return PgRunner(params).script(script, database, variables)


def pg_table_counts(params, database=None, snapshot=None):
    """``PgRunner(params).table_counts``: exact row counts of every user table."""
    return PgRunner(params).table_counts(database, snapshot)


def pg_content_digest(params, database=None):
    """``PgRunner(params).content_digest``: a SHA-256 over every user table's rows."""
    return PgRunner(params).content_digest(database)
