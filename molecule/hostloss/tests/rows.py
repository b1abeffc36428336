"""Row counts and a digest over all rows of every table, as JSON: what "the data" is here.

    python3 rows.py sqlite PATH [MAX_ID]   # MAX_ID: only rows with id <= MAX_ID (the service
                                           # keeps writing after a restore)
    python3 rows.py postgresql DATABASE    # run as the postgres user

Runs on the app hosts (converge.yml copies it there; the tests pass it to python3 -c), with the
host's own python3, sqlite3 module and psql.
"""

import hashlib
import json
import sqlite3
import subprocess
import sys


def sqlite_rows(path, max_id=None):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    tables = {}
    # Not SQLite's own tables, nor Litestream's (_litestream_seq, _litestream_lock): a restored
    # database gets them anew when replication starts on it.
    names = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " AND name NOT LIKE '\\_litestream\\_%' ESCAPE '\\' ORDER BY name"
    )
    for (name,) in names.fetchall():
        columns = [row[1] for row in db.execute(f'PRAGMA table_info("{name}")')]
        where = " WHERE id <= ?" if max_id is not None and "id" in columns else ""
        params = (max_id,) if where else ()
        digest, count = hashlib.sha256(), 0
        # Table names from sqlite_master, quoted: not input.
        for row in db.execute(f'SELECT * FROM "{name}"{where} ORDER BY rowid', params):  # noqa: S608
            digest.update(repr(row).encode() + b"\n")
            count += 1
        tables[name] = {"rows": count, "digest": digest.hexdigest()}
        if "id" in columns:
            last = db.execute(f'SELECT max(id) FROM "{name}"{where}', params)  # noqa: S608
            tables[name]["max_id"] = last.fetchone()[0]
    return tables


def psql(database, sql):
    argv = ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.split("\n")


def postgresql_rows(database):
    tables = {}
    for name in filter(None, psql(database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")):
        # Table names from pg_tables, quoted: not input.
        every_row = "md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), ''))"
        sql = f"SELECT count(*) || ' ' || {every_row} FROM public.\"{name}\" t"  # noqa: S608
        count, digest = psql(database, sql)[0].split()
        tables[name] = {"rows": int(count), "digest": digest}
    return tables


if __name__ == "__main__":
    engine, target, *rest = sys.argv[1:]
    result = sqlite_rows(target, int(rest[0]) if rest else None) if engine == "sqlite" else postgresql_rows(target)
    print(json.dumps(result, sort_keys=True))
