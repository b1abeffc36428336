"""The replication benchmark's app: commits marker rows at a steady rate and acknowledges each one.

    python3 benchmarks/replication_writer.py sqlite DB RATE
    python3 benchmarks/replication_writer.py postgresql PSQL SOCKET_DIR PORT DATABASE RATE

Each commit inserts one marker row; once the commit has returned, the writer prints
``ID UNIX_TIME`` on stdout and flushes it: that line is the acknowledgement the benchmark
compares the restored data against. It runs until it is killed (the benchmark kills it with
SIGKILL, with the replication, as a lost host would).

SQLite: the ``markers`` table of tests/functional/test_litestream.py, through the sqlite3 module,
in WAL mode as the app opens it. PostgreSQL: the ``marks`` table of test_pgbackrest.py, through
one psql session (autocommit: each INSERT is a commit), as the ``postgres`` user over the socket.
"""

import sqlite3
import subprocess
import sys
import time


def paced(rate):
    """Yield at ``rate`` per second on a fixed schedule, so a slow commit does not lower the rate."""
    started = time.monotonic()
    count = 0
    while True:
        delay = started + count / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield count
        count += 1


def ack(marker, moment):
    sys.stdout.write(f"{marker} {moment:.6f}\n")
    sys.stdout.flush()


def sqlite(database, rate):
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=10000")
    marker = conn.execute("SELECT coalesce(max(id), -1) FROM markers").fetchone()[0]
    for _tick in paced(rate):
        marker += 1
        now = time.time()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO markers VALUES (?, ?)", (marker, now))
        conn.execute("COMMIT")
        ack(marker, time.time())


def postgresql(psql_binary, socket_dir, port, database, rate):
    argv = ["runuser", "-u", "postgres", "--", psql_binary]
    argv += ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", socket_dir, "-p", port, "-d", database]
    psql = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    for _tick in paced(rate):
        psql.stdin.write("INSERT INTO marks (note) VALUES ('load') RETURNING id;\n")
        psql.stdin.flush()
        line = psql.stdout.readline()
        if not line:
            raise SystemExit(f"psql exited ({psql.wait()})")
        ack(int(line), time.time())


def main(argv):
    if argv[1] == "sqlite":
        sqlite(argv[2], float(argv[3]))
    else:
        postgresql(argv[2], argv[3], argv[4], argv[5], float(argv[6]))


if __name__ == "__main__":
    main(sys.argv)
