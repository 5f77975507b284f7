"""sd_notify over a real unix datagram socket, and journald-style logging, without systemd."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from fanoutd import systemd


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(10)
    yield path, sock
    sock.close()


def datagrams(sock: socket.socket, until: str, timeout: float = 15) -> list[str]:
    """Every state line received until one equals ``until``."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while until not in lines:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        lines += sock.recv(4096).decode().split("\n")
    return lines


def test_notify_sends_one_datagram_with_all_states(notify_socket):
    path, sock = notify_socket
    assert systemd.notify("READY=1", "STATUS=up", environ={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_abstract_namespace():
    name = f"fanoutd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert systemd.notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"WATCHDOG=1"


def test_notify_without_systemd_or_with_a_dead_socket(tmp_path):
    assert systemd.notify("READY=1", environ={}) is False
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "nobody")}) is False


def test_watchdog_interval_is_half_and_only_for_us():
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}) == 5.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_daemon_speaks_the_protocol(start_daemon, notify_socket):
    path, sock = notify_socket
    d = start_daemon(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    lines = datagrams(sock, "READY=1")
    assert any(line.startswith("STATUS=received 0") for line in lines)
    assert d.get("/readyz")[0] == 200  # READY came after the sockets were bound and served
    assert "WATCHDOG=1" in datagrams(sock, "WATCHDOG=1")
    assert "WATCHDOG=1" in datagrams(sock, "WATCHDOG=1")  # it keeps pinging while the loop runs
    d.send_signal(signal.SIGHUP)
    assert "RELOADING=1" in datagrams(sock, "RELOADING=1")
    d.send_signal(signal.SIGTERM)
    assert "STOPPING=1" in datagrams(sock, "STOPPING=1")
    assert d.proc.wait(timeout=15) == 0


def test_logs_carry_syslog_priorities_and_no_timestamp_under_journald(tmp_path):
    import subprocess
    import sys
    log = tmp_path / "log"
    code = ("import os, logging, sys\n"
            "st = os.fstat(2); os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'\n"
            "from fanoutd import logs\nlogs.configure(logging.DEBUG)\n"
            "logging.getLogger('x').warning('careful %s', 1)\nlogging.getLogger('x').debug('detail')\n")
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-c", code], stderr=fh, timeout=30, check=True)
    assert log.read_text().splitlines() == ["<4>x: careful 1", "<7>x: detail"]
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-c", code.replace("os.environ['JOURNAL_STREAM']", "_")], stderr=fh,
                       timeout=30, check=True)
    first = log.read_text().splitlines()[0]
    assert first.endswith("WARNING x: careful 1") and first[:4].isdigit()
