"""The marker writer: steady commits of rows that carry their commit time, into the app's database.

    python3 markers.py sqlite PATH ACKS [PER_SECOND]         # as the service user
    python3 markers.py postgresql DATABASE ACKS [PER_SECOND] # as postgres, over the local socket;
                                                             # MARKERS_ROLE: the role that owns the table

converge.yml starts it on each app host as a transient unit. Each row is one transaction; only
after COMMIT has returned is ``ID COMMITTED_AT`` appended to ACKS, in one write(): the commits
acknowledged to the writer, which side_effect.yml reads back from the killed host (podman cp) to
measure the RPO. While ``ACKS.pause`` exists it commits nothing, and ``ACKS.paused`` holds the
last acknowledged id: the quiet moment a restore to T needs.
"""

import os
import sqlite3
import sys
import time

CREATE = "CREATE TABLE IF NOT EXISTS markers (id {key} PRIMARY KEY, committed_at {real} NOT NULL)"


class Sqlite:
    def __init__(self, path):
        # The app writes ticks into the same database: wait for its write lock, never fail on it.
        self.db = sqlite3.connect(path, isolation_level=None, timeout=60)
        self.db.execute(CREATE.format(key="INTEGER", real="REAL"))

    def last(self):
        return self.db.execute("SELECT coalesce(max(id), 0) FROM markers").fetchone()[0]

    def commit(self, marker):
        self.db.execute("BEGIN IMMEDIATE")
        committed_at = time.time()
        self.db.execute("INSERT INTO markers VALUES (?, ?)", (marker, committed_at))
        self.db.execute("COMMIT")
        return committed_at


class Postgresql:
    def __init__(self, database):
        import psycopg2  # noqa: PLC0415 - only the PostgreSQL host has it

        # Owned by the app's role, as its own tables are: its backups (pg_dump) read the table too.
        self.db = psycopg2.connect(dbname=database, options=f"-c role={os.environ['MARKERS_ROLE']}")
        with self.db, self.db.cursor() as cursor:
            cursor.execute(CREATE.format(key="bigint", real="double precision"))

    def last(self):
        with self.db, self.db.cursor() as cursor:
            cursor.execute("SELECT coalesce(max(id), 0) FROM markers")
            return cursor.fetchone()[0]

    def commit(self, marker):
        with self.db.cursor() as cursor:
            committed_at = time.time()
            cursor.execute("INSERT INTO markers VALUES (%s, %s)", (marker, committed_at))
        self.db.commit()
        return committed_at


def main():
    engine, database, acks = sys.argv[1:4]
    per_second = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
    pause, paused = acks + ".pause", acks + ".paused"
    db = {"sqlite": Sqlite, "postgresql": Postgresql}[engine](database)
    last = db.last()
    out = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    while True:
        if os.path.exists(pause):
            if not os.path.exists(paused):
                with open(paused + ".tmp", "w", encoding="ascii") as handle:
                    handle.write(f"{last}\n")
                os.replace(paused + ".tmp", paused)
            time.sleep(0.05)
            continue
        if os.path.exists(paused):
            os.unlink(paused)
        committed_at = db.commit(last + 1)
        last += 1
        os.write(out, f"{last} {committed_at:.6f}\n".encode("ascii"))
        time.sleep(1 / per_second)


if __name__ == "__main__":
    main()
