"""Demo tradingbot service: health and metrics endpoints, sd_notify watchdog, SQLite writes,
SIGHUP log reopen, SIGUSR1/SIGUSR2 breaker drill."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import random
import signal
import socket
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tradingbot_ops.breaker_metrics import CONTENT_TYPE, render_metrics
from tradingbot_ops.circuit_breaker import (
    CircuitBreakerConfig,
    CircuitBreakerError,
    get_circuit_breaker,
    get_registry,
)

LOG = logging.getLogger("tradingbot")
# Reported by /health, so that a rollout (and its tests) can see which version serves.
try:
    VERSION = importlib.metadata.version("tradingbot-demo")
except importlib.metadata.PackageNotFoundError:
    VERSION = "unknown"


def sd_notify(message):
    """Send one datagram to systemd; a no-op outside a Type=notify unit."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


class ReopenableFileHandler(logging.FileHandler):
    """A file handler whose stream is reopened by reopen(), after logrotate moved the file."""

    def reopen(self):
        with self.lock:
            if self.stream:
                self.stream.close()
            self.stream = self._open()


class UpstreamError(Exception):
    """The simulated exchange did not answer."""


class Upstream:
    """A simulated exchange API that fails at a configurable rate."""

    def __init__(self, failure_rate):
        self.failure_rate = failure_rate
        self._random = random.Random()  # noqa: S311 - simulated failures, not security

    def fetch_price(self):
        if self._random.random() < self.failure_rate:
            raise UpstreamError("simulated upstream failure")
        return round(100 + self._random.uniform(-1, 1), 4)


class App:
    def __init__(self, env):
        self.db_path = env.get("TRADINGBOT_SQLITE_PATH", "tradingbot.db")
        host, port = env.get("TRADINGBOT_LISTEN", "127.0.0.1:8000").rsplit(":", 1)
        self.address = (host or "127.0.0.1", int(port))
        self.tick_seconds = float(env.get("TRADINGBOT_DEMO_TICK_SECONDS", "5"))
        self.upstream = Upstream(float(env.get("TRADINGBOT_DEMO_UPSTREAM_FAILURE_RATE", "0.1")))
        # Registered, so that /metrics shows it.
        self.breaker = get_circuit_breaker("upstream", CircuitBreakerConfig(failure_threshold=3, timeout=30.0))
        self.stop = threading.Event()
        self.ticks = 0
        self.rejected = 0
        self._db_lock = threading.Lock()
        self.db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS ticks"
            " (id INTEGER PRIMARY KEY, at REAL NOT NULL, price REAL, source TEXT NOT NULL)"
        )

    def tick(self):
        try:
            price, source = self.breaker.call(self.upstream.fetch_price), "upstream"
        except UpstreamError as exc:
            price, source = None, "failed"
            LOG.warning("upstream call failed: %s", exc)
        except CircuitBreakerError:
            price, source = None, "breaker-open"
            self.rejected += 1
        with self._db_lock:
            self.db.execute("INSERT INTO ticks (at, price, source) VALUES (?, ?, ?)", (time.time(), price, source))
        self.ticks += 1

    def health(self):
        with self._db_lock:
            rows = self.db.execute("SELECT count(*) FROM ticks").fetchone()[0]
        return {
            "status": "ok",
            "version": VERSION,
            "ticks": self.ticks,
            "rows": rows,
            "breaker": self.breaker.state.value,
        }

    @staticmethod
    def force_breakers(opened):
        """The breaker drill: force every registered breaker open, or back to closed."""
        for breaker in get_registry().breakers():
            if opened:
                breaker.force_open()
            else:
                breaker.force_closed()
        LOG.warning("breaker drill: every breaker forced %s", "open" if opened else "closed")

    def run_ticks(self):
        while not self.stop.is_set():
            try:
                self.tick()
            except sqlite3.Error:
                LOG.exception("database write failed")
            self.stop.wait(self.tick_seconds)


def make_handler(app):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/metrics":
                self.reply(200, CONTENT_TYPE, render_metrics().encode())
                return
            if self.path != "/health":
                self.send_error(404)
                return
            try:
                status, body = 200, app.health()
            except sqlite3.Error as exc:
                status, body = 503, {"status": "error", "error": str(exc)}
            self.reply(status, "application/json", json.dumps(body).encode())

        def reply(self, status, content_type, data):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            LOG.debug("%s %s", self.address_string(), fmt % args)

    return Handler


def watchdog_interval():
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return None
    return int(usec) / 2e6


def main():
    env = os.environ
    handler = ReopenableFileHandler(env["TRADINGBOT_LOG_FILE"]) if env.get("TRADINGBOT_LOG_FILE") else None
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[handler or logging.StreamHandler(sys.stderr)],
    )
    app = App(env)
    server = ThreadingHTTPServer(app.address, make_handler(app))
    server.daemon_threads = True

    def reopen_logs(_signum, _frame):
        if handler:
            handler.reopen()
        LOG.info("log file reopened")

    def shut_down(_signum, _frame):
        app.stop.set()

    # Signals, not an HTTP endpoint: only root or the service user on the host can send
    # them, whatever address the server listens on. The handlers run on the main thread,
    # which never holds a breaker's lock.
    def drill_open(_signum, _frame):
        app.force_breakers(opened=True)

    def drill_close(_signum, _frame):
        app.force_breakers(opened=False)

    handlers = {
        signal.SIGHUP: reopen_logs,
        signal.SIGTERM: shut_down,
        signal.SIGINT: shut_down,
        signal.SIGUSR1: drill_open,
        signal.SIGUSR2: drill_close,
    }
    for signum, handler_fn in handlers.items():
        signal.signal(signum, handler_fn)
    # The kernel may deliver a signal to any thread that does not block it, and then the
    # main thread's wait below is not interrupted: its handler would wait for the next
    # watchdog ping (or an hour). Threads inherit the mask, so block them while starting
    # the workers, leaving the main thread as the only receiver.
    signal.pthread_sigmask(signal.SIG_BLOCK, handlers)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    threading.Thread(target=app.run_ticks, name="ticks", daemon=True).start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, handlers)
    LOG.info("listening on http://%s:%d/health and /metrics, database %s", *app.address, app.db_path)
    sd_notify("READY=1\nSTATUS=serving /health and /metrics")

    # The watchdog ping comes from the main thread: a hung process stops pinging.
    interval = watchdog_interval()
    while not app.stop.wait(interval or 3600):
        if interval:
            sd_notify("WATCHDOG=1")
    sd_notify("STOPPING=1")
    server.shutdown()
    LOG.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
