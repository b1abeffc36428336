"""FileStateStore: breaker state shared by breakers and by separate processes."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils import breaker_store
from ansible_collections.tradingbot.ops.plugins.module_utils.circuit_breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerError,
    FileStateStore,
)
from test_circuit_breaker import copy_breaker_modules  # the same deployed layout

# The deployed module runs under the host's python3 (3.11 on Debian 12).
HOST_PYTHON = shutil.which("python3", path="/usr/bin") or sys.executable


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def refused():
    raise ConnectionError("refused")


def shared_pair(path, clock, **config):
    cfg = CircuitBreakerConfig(**{"failure_threshold": 2, "success_threshold": 1, "timeout": 30.0, **config})
    return tuple(CircuitBreaker("postgres", cfg, clock=clock, store=FileStateStore(path)) for _breaker in range(2))


def test_two_breakers_on_one_file_act_as_one(tmp_path):
    clock = FakeClock()
    first, second = shared_pair(tmp_path / "state.json", clock)
    with pytest.raises(ConnectionError):
        first.call(refused)
    with pytest.raises(ConnectionError):
        second.call(refused)  # the streak is shared: this is failure number two
    assert first.state is OPEN
    with pytest.raises(CircuitBreakerError) as info:
        second.call(lambda: "ok")
    assert info.value.retry_after == 30.0
    clock.advance(30.0)

    def trial():
        # The other breaker sees the trial slot taken.
        with pytest.raises(CircuitBreakerError) as inner:
            first.call(lambda: "ok")
        assert inner.value.state is HALF_OPEN
        return "trial ok"

    assert second.call(trial) == "trial ok"
    assert first.state is CLOSED
    snap = first.snapshot()
    assert snap["shared"] is True
    # The state is shared; statistics and transition counts are each breaker's own.
    assert (snap["failures"], snap["rejections"], snap["transitions"]) == (1, 1, {})
    assert second.snapshot()["transitions"] == {"closed->open": 1, "open->half_open": 1, "half_open->closed": 1}


def test_store_file_is_private_and_written_atomically(tmp_path):
    path = tmp_path / "state.json"
    (breaker,) = shared_pair(path, FakeClock())[:1]
    breaker.call(lambda: None)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.lock"]
    record = json.loads(path.read_text())["postgres"]
    assert (record["format"], record["state"], record["window_seq"]) == (1, "closed", 1)
    assert FileStateStore(path).load() == {"postgres": record}


def test_store_keeps_time_windows(tmp_path):
    clock = FakeClock()
    first, second = shared_pair(
        tmp_path / "state.json",
        clock,
        failure_threshold=100,
        window_size=None,
        window_duration=10.0,
        minimum_calls=2,
        failure_rate_threshold=1.0,
    )
    with pytest.raises(ConnectionError):
        first.call(refused)
    with pytest.raises(ConnectionError):
        second.call(refused)
    assert first.state is OPEN
    assert json.loads((tmp_path / "state.json").read_text())["postgres"]["window"] == [[1000.0, True], [1000.0, True]]


def test_open_period_from_before_a_reboot_counts_as_elapsed(tmp_path):
    path = tmp_path / "state.json"
    cfg = CircuitBreakerConfig(failure_threshold=1, timeout=3600.0)
    before = CircuitBreaker("postgres", cfg, clock=FakeClock(5000.0), store=FileStateStore(path, boot_id="boot-1"))
    with pytest.raises(ConnectionError):
        before.call(refused)
    assert before.state is OPEN
    after = CircuitBreaker("postgres", cfg, clock=FakeClock(3.0), store=FileStateStore(path, boot_id="boot-2"))
    assert after.state is HALF_OPEN
    assert after.call(lambda: "ok") == "ok"


def test_forced_open_survives_a_reboot(tmp_path):
    path = tmp_path / "state.json"
    cfg = CircuitBreakerConfig()
    before = CircuitBreaker("postgres", cfg, clock=FakeClock(), store=FileStateStore(path, boot_id="boot-1"))
    before.force_open()
    after = CircuitBreaker("postgres", cfg, clock=FakeClock(), store=FileStateStore(path, boot_id="boot-2"))
    assert after.state is OPEN
    with pytest.raises(CircuitBreakerError, match="forced open"):
        after.call(lambda: None)


def test_unreadable_store_contents_start_over(tmp_path, caplog):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    (breaker,) = shared_pair(path, FakeClock())[:1]
    assert breaker.call(lambda: 1) == 1
    assert "not valid JSON" in caplog.text
    path.write_text("[1, 2]")
    assert breaker.call(lambda: 2) == 2
    data = json.loads(path.read_text())
    assert list(data) == ["postgres"]
    data["postgres"]["format"] = 99
    data["postgres"]["state"] = "open"
    path.write_text(json.dumps(data))
    assert breaker.state is CLOSED  # a record of an unknown format is replaced, not trusted
    assert json.loads(path.read_text())["postgres"]["format"] == 1


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    store = FileStateStore(tmp_path / "state.json")

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError, match="No space left"):
        store.transact("x", lambda record: ({"v": 1}, None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json.lock"]


def test_delete_and_load(tmp_path):
    store = FileStateStore(str(tmp_path / "state.json"), boot_id="b")
    assert repr(store) == f"<FileStateStore {str(tmp_path / 'state.json')!r}>"
    assert store.load() == {}
    assert store.transact("a", lambda record: ({"n": 1}, "first")) == "first"
    assert store.transact("a", lambda record: (record, record["n"])) == 1
    store.transact("b", lambda record: ({"n": 2}, None))
    store.delete("a")
    store.delete("missing")
    assert store.load() == {"b": {"n": 2}}


def test_boot_id_comes_from_the_kernel(monkeypatch, tmp_path):
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
        assert FileStateStore(tmp_path / "s.json").boot_id == handle.read().strip()
    monkeypatch.setattr(breaker_store, "_BOOT_ID_PATH", str(tmp_path / "missing"))
    assert FileStateStore(tmp_path / "s.json").boot_id == "unknown"


# -- separate processes --------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from tradingbot_ops.circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitBreakerError, FileStateStore

    path, action, offset = sys.argv[1], sys.argv[2], float(sys.argv[3])
    config = CircuitBreakerConfig(failure_threshold=2, success_threshold=1, timeout=600.0)
    breaker = CircuitBreaker(
        "postgres", config, clock=lambda: time.monotonic() + offset, store=FileStateStore(path)
    )

    def refused():
        raise ConnectionError("refused")

    def hold():
        print(json.dumps({"entered": True}), flush=True)
        sys.stdin.readline()
        return "held"

    out = {}
    try:
        if action == "fail":
            try:
                breaker.call(refused)
            except ConnectionError:
                out["result"] = "failed"
        else:
            out["result"] = breaker.call(hold if action == "hold" else (lambda: "ok"))
    except CircuitBreakerError as exc:
        out.update(result="rejected", state=exc.state.value, retry_after=exc.retry_after)
    out["state_after"] = breaker.state.value
    print(json.dumps(out), flush=True)
    """
)


@pytest.fixture
def child(tmp_path):
    """Start the deployed module (tradingbot_ops.circuit_breaker) in a fresh process."""
    package = tmp_path / "lib" / "tradingbot_ops"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    copy_breaker_modules(package)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    store = tmp_path / "state.json"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "lib")}
    started = []

    def start(action, offset=0.0):
        proc = subprocess.Popen(
            [HOST_PYTHON, str(script), str(store), action, str(offset)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        started.append(proc)
        return proc

    def run(action, offset=0.0):
        out, _err = start(action, offset).communicate(timeout=60)
        return json.loads(out)

    yield start, run, store
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_processes_share_one_breaker_through_the_file(child):
    _start, run, store = child
    assert run("fail") == {"result": "failed", "state_after": "closed"}
    assert run("fail") == {"result": "failed", "state_after": "open"}
    rejected = run("ok")
    assert (rejected["result"], rejected["state"]) == ("rejected", "open")
    assert 0 < rejected["retry_after"] <= 600.0
    # A later run (its clock 600 s on) finds the open period over and makes the trial call.
    assert run("ok", offset=600.0) == {"result": "ok", "state_after": "closed"}
    assert FileStateStore(store).load()["postgres"]["state"] == "closed"


def test_half_open_trial_slot_is_shared_and_freed_when_its_process_dies(child):
    start, run, store = child
    run("fail")
    run("fail")
    holder = start("hold", offset=600.0)
    assert json.loads(holder.stdout.readline()) == {"entered": True}
    rejected = run("ok", offset=600.0)
    assert (rejected["result"], rejected["state"], rejected["retry_after"]) == ("rejected", "half_open", None)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    # The dead process's lease no longer counts: the next caller (this process) gets the trial.
    config = CircuitBreakerConfig(failure_threshold=2, success_threshold=1, timeout=600.0)
    breaker = CircuitBreaker("postgres", config, clock=lambda: time.monotonic() + 600.0, store=FileStateStore(store))
    assert breaker.call(lambda: "ok") == "ok"
    assert breaker.state is CLOSED
