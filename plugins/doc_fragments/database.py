"""Options shared by tradingbot.ops.db_backup and tradingbot.ops.db_restore.

Their argument spec is ``COMMON_OPTIONS`` in plugins/module_utils/options.py.
"""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  engine:
    description:
      - The database engine.
    type: str
    required: true
    choices: [sqlite, postgresql]
    version_added: 0.1.0
  database:
    description:
      - For O(engine=sqlite), the path of the SQLite database file.
      - For O(engine=postgresql), the name of the database.
    type: str
    required: true
    version_added: 0.1.0
  backup_dir:
    description:
      - The directory that holds the backups and their C(.manifest.json) sidecar files.
      - Only files named like C(sqlite_backup_YYYYMMDD_HHMMSS.db.gz) or
        C(postgres_backup_YYYYMMDD_HHMMSS.sql.gz) that have a manifest written by this collection
        are ever listed, restored or deleted.
    type: path
    required: true
    version_added: 0.1.0
  pg_host:
    description:
      - PostgreSQL host name, IP address or unix socket directory.
      - When unset, libpq's default (the local unix socket) is used.
    type: str
    version_added: 0.1.0
  pg_port:
    description:
      - PostgreSQL port.
    type: int
    default: 5432
    version_added: 0.1.0
  pg_user:
    description:
      - PostgreSQL role to connect as. When unset, libpq's default (the OS user name) is used.
    type: str
    version_added: 0.1.0
  pg_password:
    description:
      - Password of O(pg_user).
      - It is passed to the PostgreSQL tools through the C(PGPASSWORD) environment variable only,
        never on a command line, and never appears in results or logs.
    type: str
    version_added: 0.1.0
  pg_passfile:
    description:
      - Path of a libpq password file (C(PGPASSFILE)), an alternative to O(pg_password).
    type: path
    version_added: 0.1.0
  pg_bin_dir:
    description:
      - Directory holding C(pg_dump), C(pg_restore) and C(psql), for example C(/usr/lib/postgresql/15/bin).
      - When unset, they are looked up on E(PATH).
    type: path
    version_added: 0.1.0
  pg_connect_timeout:
    description:
      - Seconds to wait for a PostgreSQL connection (C(PGCONNECT_TIMEOUT)).
    type: int
    default: 10
    version_added: 0.1.0
"""
