"""The rsyslog recipe: a real rsyslogd with the shipped systemd/rsyslog-fanoutd.conf, lines sent with logger.

rsyslogd runs in the foreground with a private configuration: its own
Unix socket for logger (not /dev/log), its own work directory, and the
shipped action with only the ingress port replaced by the test daemon's.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import zmq

from conftest import ROOT, connected, settle

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def rsyslogd(tmp_path):
    """start(ingress endpoint) -> the Unix socket to log to; rsyslogd is killed at teardown."""
    binary = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if not shutil.which("logger") or not (ROOT / "systemd" / "rsyslog-fanoutd.conf").exists():
        pytest.fail("the rsyslog recipe test needs rsyslogd, rsyslog-czmq and logger (.ci/system-deps)")
    started: list[subprocess.Popen[bytes]] = []

    def start(ingress: str) -> str:
        recipe = (ROOT / "systemd" / "rsyslog-fanoutd.conf").read_text().replace("tcp://127.0.0.1:5564", ingress)
        sock = tmp_path / "log.sock"
        (tmp_path / "rsyslog.conf").write_text(
            f'global(workDirectory="{tmp_path}")\n'
            'module(load="imuxsock" SysSock.Use="off")\n'
            f'input(type="imuxsock" Socket="{sock}")\n' + recipe)
        proc = subprocess.Popen([binary, "-n", "-f", str(tmp_path / "rsyslog.conf"), "-i", str(tmp_path / "pid")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        started.append(proc)
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
            assert time.monotonic() < deadline, "rsyslogd did not open its socket"
            time.sleep(0.05)
        return str(sock)

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


def test_rsyslog_delivers_every_line_to_subscribers_and_pullers(start_daemon, sockets, rsyslogd):
    d = start_daemon("--ingress", "tcp://127.0.0.1:*")
    ingress = d.bound()["ingress"][0]
    sub = connected(sockets, zmq.SUB, d.publish)
    sub.setsockopt(zmq.UNSUBSCRIBE, b"")
    sub.setsockopt(zmq.SUBSCRIBE, b"syslog ")
    pull = connected(sockets, zmq.PULL, d.push)
    settle(d, "publish", 1)
    settle(d, "push", 1)
    log_socket = rsyslogd(ingress)  # omczmq connects with its first message: PUSH holds lines till then
    n = 50
    for i in range(n):
        subprocess.run(["logger", "-u", log_socket, "-t", "recipe", f"line {i}"], check=True, timeout=10)
    got = [sub.recv().decode() for _ in range(n)]
    assert [line.rsplit(" ", 1)[1] for line in got] == [str(i) for i in range(n)], got
    assert all(line.startswith("syslog ") and " recipe: line " in line for line in got), got
    pulled = [pull.recv().decode() for _ in range(n)]
    assert [line.split(" ", 1)[1] for line in pulled] == [f"recipe: line {i}" for i in range(n)], pulled
    assert d.value("fanoutd_received_messages_total") == n
