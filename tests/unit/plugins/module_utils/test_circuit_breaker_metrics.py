"""Breaker metrics: the Prometheus text the exporter renders and writes, and the demo app
serving it at /metrics with the SIGUSR1/SIGUSR2 drill, run as a real process."""

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils import breaker_metrics
from ansible_collections.tradingbot.ops.plugins.module_utils.breaker_metrics import (
    METRIC_PREFIX,
    render_metrics,
    write_textfile,
)
from ansible_collections.tradingbot.ops.plugins.module_utils.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerError,
    get_circuit_breaker,
    get_registry,
)
from test_circuit_breaker import REPO, FakeClock, copy_breaker_modules

DEMO_SRC = REPO / "roles" / "tradingbot_venv" / "files" / "demo_app" / "src"
HOST_PYTHON = shutil.which("python3", path="/usr/bin") or sys.executable
SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>.*)\} (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """{(metric, ((label, value), ...)): float} of every sample; HELP/TYPE lines checked."""
    samples, typed = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _hash, _type, name, kind = line.split(" ")
            typed[name] = kind
        elif not line.startswith("# HELP "):
            match = SAMPLE.match(line)
            assert match, line
            assert match["name"] in typed, f"{match['name']} has no TYPE line"
            labels = tuple(sorted(LABEL.findall(match["labels"])))
            samples[(match["name"], labels)] = float(match["value"])
    return samples, typed


def value(samples, metric, breaker, **labels):
    return samples[(f"{METRIC_PREFIX}_{metric}", tuple(sorted({"breaker": breaker, **labels}.items())))]


def boom():
    raise OSError("down")


def test_render_reports_state_counters_and_transition_time():
    clock = FakeClock()
    config = CircuitBreakerConfig(failure_threshold=2, timeout=30.0)
    healthy = CircuitBreaker("exchange", config, clock=clock)
    tripped = CircuitBreaker("postgres", config, clock=clock)
    healthy.call(lambda: 1)
    before = time.time()
    for _attempt in range(2):
        with pytest.raises(OSError):
            tripped.call(boom)
    after = time.time()
    for _attempt in range(3):
        with pytest.raises(CircuitBreakerError):
            tripped.call(lambda: 1)

    samples, typed = parse(render_metrics([healthy, tripped]))

    assert {state: value(samples, "state", "exchange", state=state) for state in ("closed", "open", "half_open")} == {
        "closed": 1,
        "open": 0,
        "half_open": 0,
    }
    assert {state: value(samples, "state", "postgres", state=state) for state in ("closed", "open", "half_open")} == {
        "closed": 0,
        "open": 1,
        "half_open": 0,
    }
    assert [value(samples, m, "exchange") for m in ("calls_total", "failures_total", "rejections_total")] == [1, 0, 0]
    assert [value(samples, m, "postgres") for m in ("calls_total", "failures_total", "rejections_total")] == [2, 2, 3]
    assert before - 0.001 <= value(samples, "last_transition_timestamp_seconds", "postgres") <= after + 0.001
    assert value(samples, "last_transition_timestamp_seconds", "exchange") <= before + 0.001  # its creation
    assert value(samples, "last_transition_timestamp_seconds", "postgres") == round(tripped.last_transition_time, 3)
    assert typed == {
        f"{METRIC_PREFIX}_state": "gauge",
        f"{METRIC_PREFIX}_calls_total": "counter",
        f"{METRIC_PREFIX}_failures_total": "counter",
        f"{METRIC_PREFIX}_rejections_total": "counter",
        f"{METRIC_PREFIX}_last_transition_timestamp_seconds": "gauge",
    }
    assert len(samples) == 2 * (3 + 3 + 1)


def test_render_defaults_to_every_registered_breaker():
    names = ["metrics-test-a", "metrics-test-b"]
    try:
        for name in names:
            get_circuit_breaker(name).force_open()
        samples, _typed = parse(render_metrics())
        assert all(value(samples, "state", name, state="open") == 1 for name in names)
    finally:
        for name in names:
            get_registry().remove(name)
    samples, _typed = parse(render_metrics())
    assert not any(dict(labels).get("breaker") in names for _metric, labels in samples)


def test_label_values_are_escaped():
    name = 'odd "name"\\with\nnewline'
    samples, _typed = parse(render_metrics([CircuitBreaker(name)]))
    assert value(samples, "state", 'odd \\"name\\"\\\\with\\nnewline', state="closed") == 1


def test_write_textfile_is_atomic_and_readable(tmp_path):
    breaker = CircuitBreaker("textfile")
    path = tmp_path / "tradingbot_breakers.prom"
    written = write_textfile(path, [breaker])
    assert path.read_text() == written == render_metrics([breaker])
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    breaker.force_open()
    write_textfile(path, [breaker])
    samples, _typed = parse(path.read_text())
    assert value(samples, "state", "textfile", state="open") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tradingbot_breakers.prom"]


def test_write_textfile_failure_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "tradingbot_breakers.prom"
    path.write_text("old\n")

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(breaker_metrics.os, "replace", no_space)
    with pytest.raises(OSError, match="No space"):
        write_textfile(path, [CircuitBreaker("full-disk")])
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tradingbot_breakers.prom"]


def test_promtool_accepts_the_textfile(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        # CI installs promtool (tools/bootstrap.sh): there a missing tool is a failure.
        if os.environ.get("CI"):
            pytest.fail("promtool not found")
        pytest.skip("promtool not found (Debian package prometheus)")
    path = tmp_path / "tradingbot_breakers.prom"
    breaker = CircuitBreaker("promtool")
    breaker.force_open()
    write_textfile(path, [breaker, CircuitBreaker("closed-one")])
    with path.open("rb") as handle:
        proc = subprocess.run(
            [promtool, "check", "metrics"], stdin=handle, capture_output=True, timeout=60, check=False
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the demo app ----------------------------------------------------------------------


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a loopback URL built here
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], ""
    except OSError:
        return None, None, ""


def wait_for(predicate, what, timeout=30.0):
    """Poll for an event; the deadline only bounds a failing run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.fixture
def demo_app(tmp_path):
    """The demo app as deployed: tradingbot_ops from module_utils, run by the host's python3."""
    package = tmp_path / "lib" / "tradingbot_ops"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    copy_breaker_modules(package)
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": f"{tmp_path / 'lib'}:{DEMO_SRC}",
        "TRADINGBOT_LISTEN": f"127.0.0.1:{port}",
        "TRADINGBOT_SQLITE_PATH": str(tmp_path / "tradingbot.db"),
        "TRADINGBOT_DEMO_TICK_SECONDS": "0.05",
        "TRADINGBOT_DEMO_UPSTREAM_FAILURE_RATE": "0",
    }
    proc = subprocess.Popen([HOST_PYTHON, "-m", "tradingbot"], env=env, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: fetch(f"{base}/health")[0] == 200 or proc.poll() is not None, "the demo app to listen")
        assert proc.poll() is None, proc.stderr.read()
        yield proc, base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


def metrics(base):
    status, content_type, body = fetch(f"{base}/metrics")
    assert (status, content_type) == (200, breaker_metrics.CONTENT_TYPE)
    return parse(body)[0]


def metrics_when(base, condition, what):
    """The first /metrics samples for which ``condition(samples)`` holds."""

    def poll():
        samples = metrics(base)
        return samples if condition(samples) else None

    return wait_for(poll, what)


def test_demo_app_serves_metrics_and_the_drill_forces_the_breaker(demo_app):
    proc, base = demo_app
    samples = metrics_when(base, lambda s: value(s, "calls_total", "upstream") > 0, "a tick")
    assert value(samples, "state", "upstream", state="closed") == 1

    proc.send_signal(signal.SIGUSR1)
    opened = metrics_when(base, lambda s: value(s, "rejections_total", "upstream") > 0, "a rejected tick")
    assert [value(opened, "state", "upstream", state=s) for s in ("closed", "open", "half_open")] == [0, 1, 0]
    assert value(opened, "last_transition_timestamp_seconds", "upstream") > value(
        samples, "last_transition_timestamp_seconds", "upstream"
    )
    assert json.loads(fetch(f"{base}/health")[2])["breaker"] == "open"

    proc.send_signal(signal.SIGUSR2)
    closed = wait_for(
        lambda: (s := metrics(base)) and value(s, "state", "upstream", state="closed") == 1 and s, "close"
    )
    rejections = value(closed, "rejections_total", "upstream")
    calls = value(closed, "calls_total", "upstream")
    later = metrics_when(base, lambda s: value(s, "calls_total", "upstream") > calls, "a tick after closing")
    assert value(later, "rejections_total", "upstream") == rejections  # calls run again
    assert proc.poll() is None


def test_demo_app_has_no_other_endpoints(demo_app):
    _proc, base = demo_app
    assert fetch(f"{base}/breakers/upstream/open")[0] == 404
    request = urllib.request.Request(f"{base}/metrics", data=b"", method="POST")  # noqa: S310 - loopback
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)  # noqa: S310 - a loopback URL built here
    assert info.value.code == 501
    info.value.close()
