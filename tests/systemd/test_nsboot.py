"""The nsboot harness, proved with a toy Type=notify service under a real systemd.

Every test boots its own box (about a second) and tears it down; nothing is
shared between tests.  The box needs root, overlayfs and namespaces: where
they are missing the tests fail with the reason, they do not skip.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nsboot import BoxError, SystemdBox, service_paths_dropin

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TOY = "/usr/local/lib/nsboot/toy_notify.py"
TOY_FILES = {TOY: (HERE.joinpath("toy_notify.py").read_text(), 0o644)}
READY_DELAY = 3.0


def toy_unit(ready_delay: float = READY_DELAY, watchdog: str = "2s") -> str:
    return f"""\
[Unit]
Description=nsboot toy Type=notify service

[Service]
Type=notify
NotifyAccess=main
ExecStart={sys.executable} {TOY}
ExecReload=/bin/kill -HUP $MAINPID
WatchdogSec={watchdog}
Restart=on-failure
RestartSec=500ms
TimeoutStartSec=20s
TimeoutStopSec=10s
LimitCORE=0
Environment=TOY_READY_DELAY={ready_delay}
"""


@pytest.fixture
def make_box() -> Iterator[Callable[..., SystemdBox]]:
    """make_box(**SystemdBox kwargs) -> a booted box, torn down at teardown whatever happened."""
    boxes: list[SystemdBox] = []

    def make(**kwargs: object) -> SystemdBox:
        box = SystemdBox(**kwargs)  # type: ignore[arg-type]
        boxes.append(box)
        box.start()
        return box

    yield make
    errors = []
    for box in boxes:
        try:
            box.close()
        except Exception as exc:  # keep tearing the others down
            errors.append(exc)
    assert not errors, errors


def props(box: SystemdBox, unit: str = "toy.service") -> dict[str, str]:
    return box.show(unit, "ActiveState", "SubState", "Result", "MainPID", "NRestarts", "StatusText")


def wait_props(box: SystemdBox, what: str, check: Callable[[dict[str, str]], bool], timeout: float = 30.0,
               unit: str = "toy.service") -> dict[str, str]:
    seen: dict[str, str] = {}

    def ok() -> bool:
        seen.update(props(box, unit))
        return check(seen)

    try:
        box.wait_for(what, ok, timeout=timeout, interval=0.1)
    except BoxError as exc:
        raise AssertionError(f"{exc}; last {seen}\n{box.journal(unit)}") from None
    return seen


@pytest.mark.timeout(120)
def test_box_is_isolated_and_leaves_nothing_behind(make_box: Callable[..., SystemdBox]) -> None:
    # A file of the host that the box sees through the overlay and deletes there.
    with tempfile.NamedTemporaryFile(dir="/var/tmp", prefix="nsboot-sentinel-", delete=False) as f:
        f.write(b"host")
    sentinel = Path(f.name)
    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="nsboot-sentinel-", delete=False) as f:
        f.write(b"host tmp")
    tmp_sentinel = Path(f.name)
    before = (sentinel.stat().st_mtime_ns, tmp_sentinel.stat().st_mtime_ns)
    host_hostname = os.uname().nodename
    try:
        box = make_box()
        assert box.state == "running", box.systemctl("--failed", check=False).stdout
        # Only journald runs: nothing of what the host has enabled.
        running = box.systemctl("list-units", "--type=service", "--state=running", "--no-legend",
                                "--plain").stdout.split()
        services = sorted(w for w in running if w.endswith(".service"))
        assert services == ["systemd-journald.service"], running
        assert box.run(["hostname"]).stdout.strip() == "nsboot"
        links = box.run(["ip", "-o", "link"]).stdout.splitlines()
        assert len(links) == 1 and ": lo:" in links[0] and "UP" in links[0], links
        # The box's /tmp is its own, and writes to host files stay in the box.
        assert box.run(["test", "-e", str(tmp_sentinel)], check=False).returncode == 1
        assert box.run(["cat", str(sentinel)]).stdout == "host"
        box.run(["rm", "-f", str(sentinel)])
        box.run(["sh", "-c", "echo box > /var/tmp/nsboot-from-box"])
        # Host paths bound into the box are read-only there.
        assert box.run(["touch", f"{sys.prefix}/nsboot-probe"], check=False).returncode != 0
        assert box.run(["test", "-e", str(sentinel)], check=False).returncode == 1
        assert sentinel.read_text() == "host"
        assert not Path("/var/tmp/nsboot-from-box").exists()
        # Kernel-global tunables are read-only in the box.
        assert box.run(["sh", "-c", "echo 2000000 > /proc/sys/fs/nr_open"], check=False).returncode != 0

        pid, cgroup, staging = box.pid, box._cgroup, box._dir
        assert pid and cgroup and staging and cgroup.is_dir() and staging.is_dir()
        box.close()
        assert not Path(f"/proc/{pid}").exists(), "the box's PID 1 survived"
        assert not cgroup.exists(), f"{cgroup} left behind"
        assert not staging.exists(), f"{staging} left behind"
        with open("/proc/self/mountinfo") as mi:
            assert "nsboot" not in mi.read(), "a mount of the box is visible on the host"
        assert (sentinel.stat().st_mtime_ns, tmp_sentinel.stat().st_mtime_ns) == before
        assert tmp_sentinel.read_text() == "host tmp"
        assert os.uname().nodename == host_hostname
    finally:
        sentinel.unlink(missing_ok=True)
        tmp_sentinel.unlink(missing_ok=True)


@pytest.mark.timeout(120)
def test_start_returns_only_after_ready(make_box: Callable[..., SystemdBox]) -> None:
    box = make_box(units={"toy.service": toy_unit()}, files=TOY_FILES)
    t0 = time.monotonic()
    box.systemctl("start", "toy.service", timeout=60)
    took = time.monotonic() - t0
    p = props(box)
    assert took >= READY_DELAY - 0.2, f"systemctl start returned after {took:.2f}s, before READY=1"
    assert (p["ActiveState"], p["SubState"]) == ("active", "running"), p
    assert p["StatusText"].startswith("ready uid=0"), p

    # The same without waiting: the unit sits in "activating" until READY=1.
    box.systemctl("stop", "toy.service")
    box.systemctl("start", "--no-block", "toy.service")
    assert props(box)["ActiveState"] == "activating"
    wait_props(box, "READY=1", lambda p: p["ActiveState"] == "active", timeout=READY_DELAY + 10)


@pytest.mark.timeout(120)
def test_enabled_unit_starts_at_boot(make_box: Callable[..., SystemdBox]) -> None:
    box = make_box(units={"toy.service": toy_unit(ready_delay=0)}, enable=["toy.service"], files=TOY_FILES)
    p = props(box)
    assert (p["ActiveState"], p["SubState"]) == ("active", "running"), p


@pytest.mark.timeout(120)
def test_reload_sends_sighup_and_stays_up(make_box: Callable[..., SystemdBox]) -> None:
    box = make_box(units={"toy.service": toy_unit(ready_delay=0)}, files=TOY_FILES)
    box.systemctl("start", "toy.service")
    pid = props(box)["MainPID"]
    box.systemctl("reload", "toy.service")
    # systemd 252 does not wait for RELOADING=1 ... READY=1 after `kill -HUP`
    # (Type=notify-reload, systemd 253, does): poll for the daemon's word.
    p = wait_props(box, "the reload", lambda p: p["StatusText"] == "reloaded 1")
    assert (p["ActiveState"], p["MainPID"]) == ("active", pid), p
    assert "toy: SIGHUP, reload 1" in box.journal("toy.service")


@pytest.mark.timeout(120)
def test_watchdog_restarts_a_hung_service(make_box: Callable[..., SystemdBox]) -> None:
    box = make_box(units={"toy.service": toy_unit(ready_delay=0, watchdog="2s")}, files=TOY_FILES)
    box.systemctl("start", "toy.service")
    first = props(box)
    time.sleep(3)  # pings keep it alive past WatchdogSec
    assert props(box)["MainPID"] == first["MainPID"]
    box.systemctl("kill", "--signal=SIGUSR1", "--kill-whom=main", "toy.service")
    p = wait_props(box, "the watchdog restart",
                   lambda p: p["NRestarts"] == "1" and p["ActiveState"] == "active"
                   and p["MainPID"] not in ("0", first["MainPID"]))
    assert p["StatusText"].startswith("ready"), p
    log = box.journal("toy.service")
    assert "Watchdog timeout" in log, log


@pytest.mark.timeout(120)
def test_stop_sends_sigterm_and_exits_cleanly(make_box: Callable[..., SystemdBox]) -> None:
    box = make_box(units={"toy.service": toy_unit(ready_delay=0)}, files=TOY_FILES)
    box.systemctl("start", "toy.service")
    box.systemctl("stop", "toy.service", timeout=30)
    p = props(box)
    assert (p["ActiveState"], p["Result"], p["NRestarts"]) == ("inactive", "success", "0"), p
    log = box.journal("toy.service")
    assert "toy: SIGTERM, stopping" in log and "toy: stopped" in log, log


@pytest.mark.timeout(120)
def test_toy_runs_under_fanoutd_units_hardening(make_box: Callable[..., SystemdBox]) -> None:
    """systemd/fanoutd.service as shipped, only ExecStart (and the paths a venv needs) changed.

    Shows that a CPython service works under its sandbox (DynamicUser,
    MemoryDenyWriteExecute, the system call filter, ...) and that the
    sandbox is really applied.
    """
    dropin = (f"[Service]\nExecStart=\nExecStart={sys.executable} {TOY}\nWatchdogSec=2s\nRestartSec=500ms\n"
              + service_paths_dropin([sys.prefix, sys.base_prefix]).replace("[Service]\n", ""))
    box = make_box(units={"fanoutd.service": (REPO / "systemd" / "fanoutd.service").read_text(),
                          "fanoutd.service.d/test.conf": dropin}, files=TOY_FILES)
    box.systemctl("start", "fanoutd.service")
    p = props(box, "fanoutd.service")
    assert (p["ActiveState"], p["SubState"]) == ("active", "running"), p
    uid = int(p["StatusText"].split("uid=")[1])
    assert 61184 <= uid <= 65519, f"not a DynamicUser uid: {p}"  # systemd's dynamic range
    status = box.run(["cat", f"/proc/{p['MainPID']}/status"]).stdout
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert fields["NoNewPrivs"].strip() == "1", status
    assert fields["Seccomp"].strip() == "2", status
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0, status
    assert box.run(["test", "-d", "/run/fanoutd"], check=False).returncode == 0

    box.systemctl("reload", "fanoutd.service")
    wait_props(box, "the reload", lambda p: p["StatusText"] == "reloaded 1", unit="fanoutd.service")
    box.systemctl("kill", "--signal=SIGUSR1", "--kill-whom=main", "fanoutd.service")
    wait_props(box, "the watchdog restart", lambda p: p["NRestarts"] == "1" and p["ActiveState"] == "active",
               unit="fanoutd.service")
    box.systemctl("stop", "fanoutd.service")
    p = props(box, "fanoutd.service")
    assert (p["ActiveState"], p["Result"]) == ("inactive", "success"), p
    log = box.journal("fanoutd.service")
    assert "toy: stopped" in log and "Watchdog timeout" in log, log
