"""Shared fixtures: real sockets on loopback, the daemon as a real subprocess.

Every socket a test makes is closed at teardown, every context must
terminate within a bound (a hang fails the test), and every daemon started
is killed at teardown whatever the test did.
"""

from __future__ import annotations

import json
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
RECV_TIMEOUT_MS = 5000
T = TypeVar("T")


_HANDED_OUT: deque[int] = deque(maxlen=1024)  # recent answers: a port is free only until someone binds it


def free_port() -> int:
    """A free loopback TCP port below the ephemeral range, not one handed out lately.

    Only for what must come back on the same port: a daemon a test restarts
    (its clients reconnect to where it was, which port 0 cannot promise: the
    kernel may give the restarted daemon another port), or an endpoint a test
    names before anything listens there. Everything else binds port 0 and
    reads what it got (``start_daemon`` does, through GET /endpoints).
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


def wait_for(what: str, probe: Callable[[], T], done: Callable[[T], bool], timeout: float = 10.0,
             interval: float = 0.05, alive: subprocess.Popen[str] | None = None) -> T:
    """Poll ``probe()`` until ``done`` holds for its value; fail the test on timeout, naming what was awaited
    and the last value seen (and failing at once if the ``alive`` process exits meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if alive is not None and alive.poll() is not None:
            pytest.fail(f"waiting for {what}: the process exited with {alive.returncode}; last seen {value!r}")
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout}s for {what}; last seen {value!r}")
        time.sleep(interval)


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
    """A running ``python -m fanoutd`` on loopback.

    Started on port 0 (the kernel's choice) unless given fixed ``ports``:
    the endpoints it really bound are read from its ready line and
    GET /endpoints on first use, so a test started with ``ready=False`` may
    still use them once the daemon gets that far.
    """

    proc: subprocess.Popen[str]
    log_path: Path
    fixed_ports: list[int] = field(default_factory=list)
    _given: dict[str, str] = field(default_factory=dict)  # the fixed ports' endpoints, known before it is up
    _bound: dict[str, Any] = field(default_factory=dict)
    via: Any = None  # a fanoutd.top.Client (TLS context, credentials) for a port behind metrics_web_config

    def _open(self, url: str) -> Any:
        headers, context = (dict(self.via.headers), self.via.context) if self.via is not None else ({}, None)
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5, context=context)

    def bound(self, timeout: float = 15.0) -> dict[str, Any]:
        """GET /endpoints: each role's endpoints as bound, and ``metrics`` HOST:PORT (waits for the ready line)."""
        if not self._bound:
            line = wait_logged(self, "fanoutd ready: ", timeout)
            url = line.rpartition(" metrics ")[2].strip().removesuffix("/metrics")
            with self._open(url + "/endpoints") as resp:
                self._bound.update(json.loads(resp.read()))
        return self._bound

    @property
    def ports(self) -> list[int]:
        """collector, publish, push, metrics and stamped ports, in the order ``start_daemon(ports=...)`` takes."""
        if self.fixed_ports:
            return self.fixed_ports
        eps = [self.collector, self.publish, self.push, self.http, self.stamped]
        return [int(ep.rpartition(":")[2]) for ep in eps]

    @property
    def collector(self) -> str:
        return self._given.get("collector") or str(self.bound()["collector"][0])

    @property
    def publish(self) -> str:
        return self._given.get("publish") or str(self.bound()["publish"][0])

    @property
    def push(self) -> str:
        return self._given.get("push") or str(self.bound()["push"][0])

    @property
    def stamped(self) -> str:
        return self._given.get("stamped") or str(self.bound()["stamped"][0])

    @property
    def repair(self) -> str:
        """The repair endpoint (always on a port the kernel picks: its default, 5566, would collide)."""
        return str(self.bound()["repair"][0])

    @property
    def http(self) -> str:
        scheme = "https://" if self.via is not None and self.via.context is not None else "http://"
        return scheme + (self._given.get("metrics") or str(self.bound()["metrics"]))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with self._open(self.http + path) as resp:
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

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels`` (e.g. one socket over every rule); a family
        with no such sample fails loudly, as ``value`` does."""
        matched = [value for (n, have), value in self.metrics().items()
                   if n == name and set(labels.items()) <= set(have)]
        if not matched:
            raise KeyError((name, labels))
        return sum(matched)

    def wait_value(self, name: str, expected: float, timeout: float = 10.0, **labels: str) -> float:
        """Poll a metric until it equals ``expected`` (counters are batch-fresh, not instant); fail on timeout."""
        return wait_for(f"{name}{labels or ''} == {expected}", lambda: self.value(name, **labels),
                        lambda value: value == expected, timeout, alive=self.proc)

    def wait_at_least(self, name: str, minimum: float, timeout: float = 10.0, **labels: str) -> float:
        """Poll a metric until it reaches ``minimum`` (a counter that may go on counting); fail on timeout."""
        return wait_for(f"{name}{labels or ''} >= {minimum}", lambda: self.value(name, **labels),
                        lambda value: value >= minimum, timeout, alive=self.proc)

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
    """start_daemon(*flags, env=None, ready=True, ports=None, restartable=False, prefix=(), via=None) -> Daemon.

    It binds port 0 everywhere unless given ``ports`` (collector, publish,
    push, metrics, stamped), or ``restartable``: fixed free ports, which a
    restart passes on (``ports=d.ports``) to come back where it was.
    ``prefix`` runs the daemon under a wrapper command (e.g. setpriv); ``via`` (a fanoutd.top.Client) is how
    the test reaches a metrics port behind metrics_web_config.
    Every daemon started is killed at teardown.
    """
    started: list[Daemon] = []

    def start(*flags: str, env: dict[str, str] | None = None, ready: bool = True,
              ports: list[int] | None = None, restartable: bool = False, prefix: tuple[str, ...] = (),
              via: Any = None) -> Daemon:
        if restartable and not ports:
            ports = [free_port() for _ in range(5)]
        given = [str(p) for p in ports] if ports else ["0"] * 5
        endpoints = [f"tcp://127.0.0.1:{p}" for p in (*given[:3], given[4])]
        log_path = tmp_path / f"fanoutd-{len(started)}.log"
        args = ["--collector", endpoints[0], "--publish", endpoints[1], "--push", endpoints[2],
                "--stamped", endpoints[3], "--repair", "tcp://127.0.0.1:0", "--metrics", f"127.0.0.1:{given[3]}",
                "--log-level", "debug", *flags]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FANOUTD_")}
        environ.update(env or {})
        with open(log_path, "w") as log:
            proc = subprocess.Popen([*prefix, *daemon_command(*args)], stdout=log, stderr=subprocess.STDOUT,
                                    text=True, env=environ, cwd=tmp_path)
        daemon = Daemon(proc, log_path, fixed_ports=list(ports or []), via=via)
        if ports:  # known before it is up: a test may connect first (a restart's clients reconnect)
            daemon._given.update(collector=endpoints[0], publish=endpoints[1], push=endpoints[2],
                                 stamped=endpoints[3], metrics=f"127.0.0.1:{given[3]}")
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
    """Wait for /readyz to answer 200; fail with the daemon's log if it exits or does not get there in time."""
    deadline = time.monotonic() + timeout
    daemon.bound(timeout)
    last = "no answer"
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            pytest.fail(f"fanoutd exited with {daemon.proc.returncode}:\n{daemon.log()}")
        try:
            status, body = daemon.get("/readyz")
            if status == 200:
                return
            last = f"{status} {body.strip()}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.05)
    pytest.fail(f"fanoutd not ready within {timeout}s (/readyz: {last}):\n{daemon.log()}")


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
        if daemon.proc.poll() is not None:
            pytest.fail(f"fanoutd exited with {daemon.proc.returncode} before logging {needle!r}:\n{daemon.log()}")
        if time.monotonic() > deadline:
            pytest.fail(f"fanoutd did not log {needle!r} within {timeout}s:\n{daemon.log()}")
        time.sleep(0.05)
    return next(line for line in daemon.log().splitlines() if needle in line)


def settle(daemon: Daemon, socket_name: str, count: int, timeout: float = 5.0) -> None:
    """Wait until the daemon has ``count`` peers on a socket, each past its handshake (so messages reach them).

    The count comes from /metrics; the handshake, which completes just after
    the accept that the count shows, from /peers (``handshaken``).
    """
    daemon.wait_value("fanoutd_connected_peers", count, timeout, socket=socket_name)

    def handshaken() -> list[bool]:
        status, body = daemon.get("/peers")
        assert status == 200, f"settle needs /peers (peers_view): {status} {body}"
        return [c.get("handshaken", False) for c in json.loads(body)["connected"] if c["socket"] == socket_name]

    wait_for(f"{count} handshaken peer(s) on {socket_name}", handshaken,
             lambda seen: len(seen) == count and all(seen), timeout, alive=daemon.proc)


PROBE, PROBE_END = b"_probe x", b"_probe end"


def send_paced(send: Callable[[Any], object], messages: Iterable[Any], rate: float) -> int:
    """Send each message at about ``rate`` a second (the clock looked at every 200); returns how many.

    A producer of a test that must not outrun its readers on purpose: flat out, a loaded machine decides
    what a reader keeps up with, and the test would measure the machine.
    """
    t0 = time.monotonic()
    count = 0
    for i, message in enumerate(messages):
        send(message)
        count += 1
        if i % 200 == 0 and (ahead := i / rate - (time.monotonic() - t0)) > 0:
            time.sleep(ahead)
    return count


def warm_up(producer: zmq.Socket, *receivers: zmq.Socket, timeout: float = 10.0) -> int:
    """Send probes until every receiver has one, then drain them; returns probes sent, the end marker included.

    A SUB's subscription and a PULL's pipe become live a moment after the
    TCP connect; probing end to end is the only wait that cannot be too short.
    Draining ends at an end marker sent after the last probe, which each
    receiver gets after every probe sent to it (one producer, one path, in
    order), so no probe is left in flight to surprise the test. Give it at
    most one PULL per push output: the marker reaches one puller only.
    """
    pending = set(receivers)
    sent = 0
    deadline = time.monotonic() + timeout
    poller = zmq.Poller()
    for sock in receivers:
        poller.register(sock, zmq.POLLIN)
    while pending:
        if time.monotonic() > deadline:
            pytest.fail(f"{len(pending)} of {len(receivers)} receivers never got a probe in {timeout}s "
                        f"({sent} sent)")
        producer.send(PROBE)
        sent += 1
        for sock, _ in poller.poll(50):
            if sock in pending:
                pending.discard(sock)
                # Left registered, it would make every later poll return at once: probes flat out for the
                # receivers still waiting, enough to fill a small queue and lose the end marker to it.
                poller.unregister(sock)
    producer.send(PROBE_END)
    for sock in receivers:
        while True:
            if not sock.poll(max(0, int((deadline - time.monotonic()) * 1000)) + 1000):
                pytest.fail(f"a receiver (type {sock.socket_type}) never got the probes' end marker "
                            "(more than one puller on a push output?)")
            if sock.recv_multipart()[0].endswith(b"end"):  # with push_strip_topic, just "end"
                break
    return sent + 1
