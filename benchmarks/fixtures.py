"""What the backup and restore benchmarks share: generated data, a cached PostgreSQL cluster,
and the checkouts ("trees") whose engines they measure.

Data is generated deterministically and cached under /root/.cache/tradingbot-ops/bench-data
(SQLite: a trades table with random order ids, ~100 bytes a row, compresses about 2x;
PostgreSQL: pgbench at a scale proportional to the size, in a cluster kept in the cache and
started for the run, unix socket only, local connections trusted). Needs root (initdb runs via
runuser -u postgres) and PostgreSQL 15 in /usr/lib/postgresql/15/bin.

A tree's engine runs as the hosts run it: ``python3 -m tradingbot_ops.<module>`` with
``tradingbot_ops`` a symlink to the tree's plugins/module_utils, so another checkout (the code
before a change, say) is measured in the same run as this one.
"""

import fcntl
import json
import os
import pwd
import random
import shutil
import sqlite3
import subprocess
from pathlib import Path

import harness

CACHE = Path(os.environ.get("TRADINGBOT_BENCH_CACHE", "/root/.cache/tradingbot-ops/bench-data"))
PG_BIN = os.environ.get("TRADINGBOT_PG_BIN_DIR", "/usr/lib/postgresql/15/bin")
PG_PORT = 55439
# The cluster cannot live under /root: the postgres user cannot traverse it.
PG_CACHE = Path(os.environ.get("TRADINGBOT_BENCH_PG_CACHE", "/var/tmp/tradingbot-ops/bench-data"))  # noqa: S108
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "AVAXUSDT"]
# pgbench at scale 70 is 1054 MB (measured here).
PG_MB_PER_SCALE = 1054 / 70
MIB = 1024 * 1024


def sqlite_db(size_mb):
    """The cached trades database of ``size_mb`` MiB, generated on first use (seed 42)."""
    path = CACHE / f"trades-{size_mb}mb.db"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    harness.log(f"generating {path} (deterministic, seed 42)")
    rows = size_mb * 10_000
    rng = random.Random(42)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute(
        "CREATE TABLE trades (id INTEGER PRIMARY KEY, order_id TEXT, symbol TEXT, side TEXT,"
        " price REAL, qty REAL, fee REAL, ts INTEGER, note TEXT)"
    )

    def generate():
        for i in range(rows):
            yield (
                i,
                f"{rng.getrandbits(64):016x}{rng.getrandbits(32):08x}",
                SYMBOLS[i % len(SYMBOLS)],
                "buy" if rng.random() < 0.5 else "sell",
                round(20000 + rng.random() * 50000, 2),
                round(rng.random() * 3, 6),
                round(rng.random(), 6),
                1_700_000_000_000 + i * 37,
                "strategy=momentum",
            )

    conn.executemany("INSERT INTO trades VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", generate())
    conn.commit()
    conn.execute("CREATE INDEX trades_ts ON trades (ts)")
    conn.commit()
    conn.close()
    tmp.rename(path)
    return path


def warm(path):
    """Read a file once so that every side finds it in the page cache."""
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass


class Cluster:
    """A PostgreSQL 15 cluster holding pgbench database ``bench``, kept in the cache between runs.

    Used as a context manager: it starts the cluster (loading pgbench the first time) and holds
    a lock on it, so two benchmarks never start or stop the same cluster under each other.
    """

    def __init__(self, size_mb):
        self.scale = max(1, round(size_mb / PG_MB_PER_SCALE))
        self.root = PG_CACHE / f"pg-scale{self.scale}"
        self.data = self.root / "data"
        self.sock = str(self.root / "sock")
        self._lock = None

    def as_postgres(self, argv, **kwargs):
        return subprocess.run(["runuser", "-u", "postgres", "--", *map(str, argv)], check=True, **kwargs)

    def client(self, program, *args):
        """argv of a PostgreSQL client program connected to this cluster as postgres."""
        return [f"{PG_BIN}/{program}", "-h", self.sock, "-p", str(PG_PORT), "-U", "postgres", *args]

    def params(self, database="bench"):
        """Connection options in the db_backup/db_restore option shape."""
        return {
            "database": database,
            "pg_host": self.sock,
            "pg_port": PG_PORT,
            "pg_user": "postgres",
            "pg_bin_dir": PG_BIN,
        }

    def __enter__(self):
        entry = pwd.getpwnam("postgres")
        PG_CACHE.mkdir(parents=True, exist_ok=True)
        self._lock = open(PG_CACHE / f"pg-scale{self.scale}.lock", "w")  # held until __exit__
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            shutil.rmtree(self.root, ignore_errors=True)
            for path in (self.root, self.data, Path(self.sock)):
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chown(path, entry.pw_uid, entry.pw_gid)
            os.chmod(self.root, 0o755)  # noqa: S103 - the postgres user must traverse it
            os.chmod(PG_CACHE, 0o755)  # noqa: S103 - same
            initdb = [f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync"]
            self.as_postgres(initdb, stdout=subprocess.DEVNULL)
            with open(self.data / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
                conf.write(f"listen_addresses = ''\nport = {PG_PORT}\nunix_socket_directories = '{self.sock}'\n")
        pg_ctl = [f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-w", "start"]
        self.as_postgres(pg_ctl, stdout=subprocess.DEVNULL)
        if not (self.root / "loaded").exists():
            harness.log(f"loading pgbench scale {self.scale} (deterministic)")
            self.as_postgres(self.client("createdb", "bench"))
            self.as_postgres(self.client("pgbench", "-i", "-q", "-s", str(self.scale), "bench"), capture_output=True)
            (self.root / "loaded").touch()
        return self

    def __exit__(self, *_exc):
        try:
            self.as_postgres([f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "fast", "stop"], stdout=subprocess.DEVNULL)
        finally:
            self._lock.close()

    def sql(self, statement, database="postgres"):
        return self.as_postgres(self.client("psql", "-X", "-At", "-c", statement, database), capture_output=True).stdout

    def size_mb(self):
        return int(self.sql("SELECT pg_database_size('bench')")) / MIB

    def settle(self):
        """Write back what earlier runs left dirty, in the server's buffers and the page cache."""
        self.sql("CHECKPOINT")
        os.sync()

    def drop(self, database):
        self.as_postgres(self.client("dropdb", "--if-exists", database), capture_output=True)


class Tree:
    """A checkout whose ``plugins/module_utils`` runs as the hosts' ``tradingbot_ops`` package."""

    def __init__(self, path, work, label):
        self.path = Path(path).resolve()
        self.label = label
        module_utils = self.path / "plugins" / "module_utils"
        if not (module_utils / "backup_cli.py").exists():
            raise SystemExit(f"{self.path} is not a checkout of the collection (no plugins/module_utils/backup_cli.py)")
        self.lib = Path(work) / f"lib-{label}"
        self.lib.mkdir()
        (self.lib / "tradingbot_ops").symlink_to(module_utils)

    def env(self):
        """The environment in which ``import tradingbot_ops`` finds this tree's package."""
        # Bytecode goes to the run's own directory: never into a tree, warm after the warm-up round.
        return dict(os.environ, PYTHONPATH=str(self.lib), PYTHONPYCACHEPREFIX=str(self.lib.parent / "pycache"))

    def python(self, module, *args):
        """argv and env that run ``python3 -m tradingbot_ops.<module>`` from this tree."""
        return ["python3", "-m", f"tradingbot_ops.{module}", *map(str, args)], self.env()

    def backup_command(self, config, config_path):
        """argv and env of one backup through the host CLI, with ``config`` written to ``config_path``."""
        Path(config_path).write_text(json.dumps(config), encoding="utf-8")
        return self.python("backup_cli", "--config", config_path)


def describe_trees(trees):
    """Print the interpreter the engines run on, and each tree's path and commit (-dirty: with local edits)."""
    version = subprocess.run(["python3", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    print(f"engines run on {shutil.which('python3')} ({version})")
    for tree in trees:
        head = subprocess.run(
            ["git", "-C", tree.path, "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
        ).stdout.strip()
        print(f"tree {tree.label}: {tree.path} ({head or 'not a git checkout'})")


def add_tree_arguments(parser):
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="PATH",
        help="another checkout to measure in the same run (repeatable), e.g. a `git worktree add /tmp/before f18dd6c`",
    )


def trees(args, work):
    """The checkouts to measure: each --tree in order, then this one, labelled "this" (the targets are its)."""
    paths = [*args.tree, harness.REPO]
    labels = []
    for path in args.tree:
        label = Path(path).resolve().name
        while label in [*labels, "this"]:
            label += "'"
        labels.append(label)
    labels.append("this")
    return [Tree(path, work, label) for path, label in zip(paths, labels, strict=True)]
