"""A throwaway PostgreSQL 15 cluster for functional tests.

``PostgresCluster.start()`` runs initdb (as the ``postgres`` user: initdb refuses root) in a
fresh temp dir, listens on 127.0.0.1 on a free port and on a private unix socket dir, and
requires ``scram-sha-256`` passwords over TCP, so the tests really exercise password handling.
It creates the role ``ROLE`` (LOGIN CREATEDB, password ``PASSWORD``) and the database
``DATABASE`` owned by it. Local (unix socket) connections as ``postgres`` use peer/trust for
the test's own set-up.

``cluster.params(database=None)`` returns the connection params in the db_backup/db_restore
option shape, ready to pass to the engines::

    {"database": "tradingbot", "pg_host": "127.0.0.1", "pg_port": 54321,
     "pg_user": "tradingbot", "pg_password": "...", "pg_bin_dir": "/usr/lib/postgresql/15/bin"}
"""

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

BIN_DIR = os.environ.get("TRADINGBOT_PG_BIN_DIR", "/usr/lib/postgresql/15/bin")
ROLE = "tradingbot"
# Characters that break naive quoting: the tests check this never leaks into results or logs.
PASSWORD = "s3cr3t-'pw\"-$HOME-42"
DATABASE = "tradingbot"


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def available():
    """Return why a cluster cannot start here, or None when it can."""
    if not os.path.exists(os.path.join(BIN_DIR, "initdb")):
        return f"no PostgreSQL binaries in {BIN_DIR}"
    if os.geteuid() != 0:
        return "starting a throwaway cluster needs root (initdb runs via runuser -u postgres)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user"
    return None


class PostgresCluster:
    """One running throwaway cluster; see the module docstring."""

    def __init__(self):
        self.root = None
        self.data_dir = None
        self.socket_dir = None
        self.port = None
        self.bin_dir = BIN_DIR

    def _as_postgres(self, argv, **kwargs):
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, **kwargs)

    def start(self):
        self.root = tempfile.mkdtemp(prefix="tradingbot-pg-")
        os.chmod(self.root, 0o755)  # noqa: S103 - the postgres user must traverse it
        self.data_dir = os.path.join(self.root, "data")
        self.socket_dir = os.path.join(self.root, "sock")
        entry = pwd.getpwnam("postgres")
        for path in (self.data_dir, self.socket_dir):
            os.mkdir(path, 0o700)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self.port = _free_port()
        self._as_postgres(
            [
                os.path.join(BIN_DIR, "initdb"),
                "-D",
                self.data_dir,
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]
        )
        with open(os.path.join(self.data_dir, "postgresql.auto.conf"), "a", encoding="utf-8") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.socket_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "password_encryption = 'scram-sha-256'\n"
            )
        self._as_postgres(
            [
                os.path.join(BIN_DIR, "pg_ctl"),
                "-D",
                self.data_dir,
                "-l",
                os.path.join(self.data_dir, "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        escaped = PASSWORD.replace("'", "''")
        self.psql(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{escaped}'", database="postgres")
        self.psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}", database="postgres")
        return self

    def stop(self):
        if self.data_dir and os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
            with contextlib.suppress(subprocess.CalledProcessError):
                self._as_postgres([os.path.join(BIN_DIR, "pg_ctl"), "-D", self.data_dir, "-m", "immediate", "stop"])
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)

    def params(self, database=DATABASE):
        """Connection params (password auth over TCP) in the db_backup/db_restore option shape."""
        return {
            "database": database,
            "pg_host": "127.0.0.1",
            "pg_port": self.port,
            "pg_user": ROLE,
            "pg_password": PASSWORD,
            "pg_bin_dir": self.bin_dir,
        }

    def psql(self, sql, database=DATABASE):
        """Run SQL as the superuser over the unix socket; return stdout (tuples only, unaligned)."""
        argv = [
            os.path.join(BIN_DIR, "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.socket_dir,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-c",
            sql,
        ]
        return self._as_postgres(argv).stdout.decode()

    def create_database(self, name, owner=ROLE):
        """Create an empty database owned by ``owner`` (default: the test role)."""
        self.psql(f'CREATE DATABASE "{name}" OWNER {owner}', database="postgres")
        return name

    def drop_database(self, name):
        """Drop a database, disconnecting its sessions."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', database="postgres")
