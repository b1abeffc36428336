"""The marker writer: steady commits of rows that carry their commit time, into the app's database.

    python3 markers.py DATABASE ACKS [PER_SECOND]

Runs on the SQLite host as the service user (converge.yml starts it as a transient unit). Each
row is one transaction; only after COMMIT has returned is ``ID COMMITTED_AT`` appended to ACKS,
in one write(): the commits acknowledged to the writer, which side_effect.yml reads back from the
killed host (podman cp) to measure the RPO. While ``ACKS.pause`` exists it commits nothing, and
``ACKS.paused`` holds the last acknowledged id: the quiet moment a restore to T needs.
"""

import os
import sqlite3
import sys
import time


def main():
    database, acks = sys.argv[1], sys.argv[2]
    per_second = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    pause, paused = acks + ".pause", acks + ".paused"
    # The app writes ticks into the same database: wait for its write lock, never fail on it.
    db = sqlite3.connect(database, isolation_level=None, timeout=60)
    db.execute("CREATE TABLE IF NOT EXISTS markers (id INTEGER PRIMARY KEY, committed_at REAL NOT NULL)")
    last = db.execute("SELECT coalesce(max(id), 0) FROM markers").fetchone()[0]
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
        db.execute("BEGIN IMMEDIATE")
        committed_at = time.time()
        db.execute("INSERT INTO markers VALUES (?, ?)", (last + 1, committed_at))
        db.execute("COMMIT")
        last += 1
        os.write(out, f"{last} {committed_at:.6f}\n".encode("ascii"))
        time.sleep(1 / per_second)


if __name__ == "__main__":
    main()
