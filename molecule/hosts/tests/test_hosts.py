"""The test hosts are real systemd hosts whose sandboxing and limits are in force.

Each probe has a control run without the restriction, so a host that enforced nothing,
or a probe that could never succeed, fails the test.
"""

import shlex

PROBE_WRITE_USR = "touch /usr/.tradingbot-probe && rm -f /usr/.tradingbot-probe"
# Writes every page, so the memory is resident and counts against MemoryMax=.
PROBE_HOG_128M = "python3 -c \"b = b'x' * (128 * 1024 * 1024); print(len(b))\""


def run_transient_unit(host, properties, command):
    props = " ".join(f"-p {shlex.quote(p)}" for p in properties)
    return host.run(f"systemd-run --wait --quiet --collect --pipe {props} /bin/sh -c {shlex.quote(command)}")


def test_systemd_is_pid_one(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"


def test_system_is_running_without_failed_units(host):
    state = host.run("systemctl is-system-running --wait")
    failed = host.run("systemctl --failed --no-legend --plain")
    assert state.stdout.strip() == "running", failed.stdout
    assert failed.stdout.strip() == ""


def test_protect_system_strict_makes_usr_read_only(host):
    control = run_transient_unit(host, [], PROBE_WRITE_USR)
    assert control.rc == 0, control.stderr

    confined = run_transient_unit(host, ["ProtectSystem=strict"], PROBE_WRITE_USR)
    assert confined.rc != 0
    assert "Read-only file system" in confined.stderr


def test_memory_max_kills_a_memory_hog(host):
    control = run_transient_unit(host, ["MemoryMax=512M"], PROBE_HOG_128M)
    assert control.rc == 0, control.stderr

    limited = run_transient_unit(host, ["MemoryMax=32M", "MemorySwapMax=0"], PROBE_HOG_128M)
    # The shell reports its child killed by SIGKILL, the OOM killer's signal, as 128 + 9.
    assert limited.rc == 137, (limited.rc, limited.stderr)
    assert str(128 * 1024 * 1024) not in limited.stdout
