"""Shared fixtures: real sockets on loopback, the daemon as a real subprocess.

Every socket a test makes is closed at teardown, every context must
terminate within a bound (a hang fails the test), and every daemon started
is killed at teardown whatever the test did.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
RECV_TIMEOUT_MS = 5000


_HANDED_OUT: deque[int] = deque(maxlen=1024)  # recent answers: a port is free only until someone binds it


def free_port() -> int:
    """A free loopback TCP port below the ephemeral range, not one handed out lately.

    Ports the kernel hands out for bind(0) are ephemeral ones, which outgoing
    connections also use as source ports: a client reconnecting to a killed
    daemon could then hold the very port the restarted daemon needs, or even
    connect to itself. Random ports under 32768 avoid both. A port stays free
    until the daemon binds it, so the five a daemon gets could otherwise
    repeat one (CI once got its collector's port again for publish).
    """
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(200):
        port = random.randrange(20000, min(low, 32768))
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.append(port)
        return port
    raise RuntimeError("no free port found")


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A private context; fails the test if it does not terminate within 5 s."""
    context = zmq.Context()
    yield context
    done = threading.Event()
    threading.Thread(target=lambda: (context.term(), done.set()), daemon=True).start()
    if not done.wait(5):
        pytest.fail("zmq context did not terminate: a socket was left open")


@pytest.fixture
def sockets(ctx: zmq.Context) -> Iterator[Callable[..., zmq.Socket]]:
    """make(kind, **options) -> a socket with a receive timeout, closed at teardown."""
    made: list[zmq.Socket] = []

    def make(kind: int, **options: int) -> zmq.Socket:
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
        sock.setsockopt(zmq.SNDTIMEO, RECV_TIMEOUT_MS)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name.upper()), value)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close(linger=0)


@dataclass
class Daemon:
    """A running ``python -m fanoutd`` on free loopback ports."""

    proc: subprocess.Popen[str]
    collector: str
    publish: str
    push: str
    http: str
    stamped: str
    log_path: Path
    ports: list[int] = field(default_factory=list)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.http + path, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Samples of /metrics keyed by (name, sorted labels)."""
        _, text = self.get("/metrics")
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def value(self, name: str, **labels: str) -> float:
        return self.metrics()[(name, tuple(sorted(labels.items())))]

    def wait_value(self, name: str, expected: float, timeout: float = 10.0, **labels: str) -> float:
        """Poll a metric until it equals ``expected`` (counters are batch-fresh, not instant)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.value(name, **labels)
            if value == expected or time.monotonic() > deadline:
                return value
            time.sleep(0.05)

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text()


def daemon_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fanoutd", *args]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """start_daemon(*flags, env=None, ready=True, prefix=()) -> Daemon on fresh ports; killed at teardown.

    ``prefix`` runs the daemon under a wrapper command (e.g. setpriv).
    """
    started: list[Daemon] = []

    def start(*flags: str, env: dict[str, str] | None = None, ready: bool = True,
              ports: list[int] | None = None, prefix: tuple[str, ...] = ()) -> Daemon:
        ports = ports or [free_port() for _ in range(5)]
        endpoints = [f"tcp://127.0.0.1:{p}" for p in (*ports[:3], ports[4])]
        log_path = tmp_path / f"fanoutd-{len(started)}.log"
        args = ["--collector", endpoints[0], "--publish", endpoints[1], "--push", endpoints[2],
                "--stamped", endpoints[3], "--metrics", f"127.0.0.1:{ports[3]}", "--log-level", "debug", *flags]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FANOUTD_")}
        environ.update(env or {})
        with open(log_path, "w") as log:
            proc = subprocess.Popen([*prefix, *daemon_command(*args)], stdout=log, stderr=subprocess.STDOUT,
                                    text=True, env=environ, cwd=tmp_path)
        daemon = Daemon(proc, *endpoints[:3], f"http://127.0.0.1:{ports[3]}", endpoints[3], log_path, ports=ports)
        started.append(daemon)
        if ready:
            wait_ready(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(timeout=10)


def wait_ready(daemon: Daemon, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            pytest.fail(f"fanoutd exited with {daemon.proc.returncode}:\n{daemon.log()}")
        try:
            if daemon.get("/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"fanoutd not ready within {timeout}s:\n{daemon.log()}")


def ready_producer(make: Callable[..., zmq.Socket], endpoint: str) -> zmq.Socket:
    """An XPUB connected to the collector that has seen its subscription arrive (no slow-joiner loss)."""
    sock = make(zmq.XPUB, xpub_verbose=1, sndhwm=0)
    sock.connect(endpoint)
    assert sock.recv()[:1] == b"\x01", "expected the collector's subscription"
    return sock


def connected(make: Callable[..., zmq.Socket], kind: int, endpoint: str, **options: int) -> zmq.Socket:
    sock = make(kind, **options)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


def wait_logged(daemon: Daemon, needle: str, timeout: float = 10.0) -> str:
    """The first log line of the daemon that contains ``needle``, waiting for it (and failing if it exits)."""
    deadline = time.monotonic() + timeout
    while needle not in daemon.log():
        assert time.monotonic() < deadline and daemon.proc.poll() is None, daemon.log()
        time.sleep(0.05)
    return next(line for line in daemon.log().splitlines() if needle in line)


def settle(daemon: Daemon, socket_name: str, count: int, timeout: float = 5.0) -> None:
    """Wait until the daemon has seen ``count`` peers on a socket (so messages will reach them)."""
    got = daemon.wait_value("fanoutd_connected_peers", count, timeout, socket=socket_name)
    assert got == count, f"{socket_name}: expected {count} peers, saw {got}"
    time.sleep(0.1)  # the handshake completes just after the accept event


def warm_up(producer: zmq.Socket, *receivers: zmq.Socket, timeout: float = 10.0) -> int:
    """Send probes until every receiver has one, then drain them; returns probes sent.

    A SUB's subscription and a PULL's pipe become live a moment after the
    TCP connect; probing end to end is the only wait that cannot be too short.
    """
    pending = set(receivers)
    sent = 0
    deadline = time.monotonic() + timeout
    poller = zmq.Poller()
    for sock in receivers:
        poller.register(sock, zmq.POLLIN)
    while pending:
        assert time.monotonic() < deadline, "receivers never got a probe"
        producer.send(b"_probe x")
        sent += 1
        for sock, _ in poller.poll(50):
            if sock in pending:
                pending.discard(sock)
    time.sleep(0.2)
    for sock in receivers:
        while sock.poll(100):
            sock.recv_multipart()
    return sent
