"""Reading SQLite databases: signatures, read-only opens, row counts and the content digest."""

import contextlib
import hashlib
import os
import sqlite3

from ..errors import BackupError

SQLITE_HEADER = b"SQLite format 3\x00"
# Files SQLite keeps beside a database; a stale -wal applied to another database corrupts it.
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


def check_sqlite_source(path):
    """Refuse a source that is missing, not a regular file, or not an SQLite database."""
    if not os.path.exists(path):
        raise BackupError(f"SQLite database {path} does not exist")
    if not os.path.isfile(path):
        raise BackupError(f"SQLite database {path} is not a regular file")
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise BackupError(f"cannot read SQLite database {path}: {exc.strerror}") from exc
    if header != SQLITE_HEADER:
        raise BackupError(f"{path} is not a SQLite database (no SQLite header)")


def _sqlite_connect_ro(path):
    if not os.path.isfile(path):
        raise BackupError(f"SQLite database {path} does not exist")
    # A read-only URI connection never creates the file or its -wal/-shm as a side effect.
    return sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True)


def _sqlite_user_tables(conn):
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
    ).fetchall()
    return [row[0] for row in rows]


def quote_ident(name):
    """Quote an SQL identifier (SQLite and PostgreSQL rules agree)."""
    return '"' + name.replace('"', '""') + '"'


def sqlite_table_counts(path):
    """Return ``{table: row count}`` for every user table of a SQLite file (read-only)."""
    conn = _sqlite_connect_ro(path)
    try:
        return {
            table: conn.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchone()[0]  # noqa: S608
            for table in _sqlite_user_tables(conn)
        }
    except sqlite3.Error as exc:
        raise BackupError(f"cannot count rows in {path}: {exc}") from exc
    finally:
        conn.close()


def sqlite_content_digest(path):
    """Return a deterministic SHA-256 over the schema and rows of every user table.

    Rows are ordered by all columns, so the digest depends only on content, not on page
    layout: a restored copy of the same data gives the same digest.
    """
    digest = hashlib.sha256()
    conn = _sqlite_connect_ro(path)
    try:
        for table in _sqlite_user_tables(conn):
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({quote_ident(table)})")]
            digest.update(repr(("table", table, columns)).encode())
            order = ", ".join(str(i + 1) for i in range(len(columns)))
            cursor = conn.execute(f"SELECT * FROM {quote_ident(table)} ORDER BY {order}")  # noqa: S608
            for row in cursor:
                digest.update(repr(row).encode())
                digest.update(b"\n")
    except sqlite3.Error as exc:
        raise BackupError(f"cannot read {path}: {exc}") from exc
    finally:
        conn.close()
    return digest.hexdigest()


def open_immutable(path):
    # immutable: no locks and no -wal/-shm files created; only this process uses the file now.
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)


def integrity_check(path, full):
    pragma = "integrity_check" if full else "quick_check"
    conn = open_immutable(path)
    try:
        rows = [row[0] for row in conn.execute(f"PRAGMA {pragma}").fetchall()]
    except sqlite3.Error as exc:
        rows = [str(exc)]
    finally:
        conn.close()
    return {"ok": rows == ["ok"], "method": pragma, "detail": rows[:5]}


def remove_sidecars(path):
    for suffix in SQLITE_SIDECARS:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
