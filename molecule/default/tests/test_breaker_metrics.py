"""Breaker metrics on a converged host: the demo app serves /metrics on its health port, and
the drill (SIGUSR1 to the unit) forces its breaker open until SIGUSR2."""

import re
import shlex
from urllib.parse import urlsplit, urlunsplit

import pytest
from test_default import HEALTH_URL, UNIT, wait_for

METRICS_URL = urlunsplit(urlsplit(HEALTH_URL)._replace(path="/metrics"))
STATE = 'tradingbot_circuit_breaker_state{{breaker="upstream",state="{}"}} 1'
REJECTIONS = re.compile(r'^tradingbot_circuit_breaker_rejections_total\{breaker="upstream"\} (\d+)$', re.M)


def metrics(host):
    code = f"import urllib.request; print(urllib.request.urlopen({METRICS_URL!r}, timeout=5).read().decode())"
    out = host.run(f"python3 -c {shlex.quote(code)}")
    return out.stdout if out.rc == 0 else ""


def drill(host, signal):
    host.check_output(f"systemctl kill --signal={signal} {UNIT}")


@pytest.fixture
def released(host):
    yield
    drill(host, "SIGUSR2")  # never leave the breaker forced open for the other tests


def test_forced_open_breaker_shows_in_the_metrics(host, released):
    # The demo's upstream fails one call in ten, so the breaker may have opened by itself (three
    # failures): start from the drill's closed state, not from whatever the ticks left.
    drill(host, "SIGUSR2")
    assert wait_for(lambda: STATE.format("closed") in metrics(host), "the breaker closed by the drill")
    drill(host, "SIGUSR1")
    # Open, and a tick (every 5 s) has been rejected.
    text = wait_for(
        lambda: (t := metrics(host)) and STATE.format("open") in t and int(REJECTIONS.search(t)[1]) > 0 and t,
        "the forced-open breaker in /metrics",
    )
    assert STATE.format("closed") not in text
    drill(host, "SIGUSR2")
    assert wait_for(lambda: STATE.format("closed") in metrics(host), "the breaker closed again")
