"""Faults: crashes and restarts, stalled and flapping peers, stop under load, dead peers, junk on the wire."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from conftest import connected, ready_producer, settle, wait_for, warm_up


class Sender(threading.Thread):
    """Sends numbered messages at a steady pace until stopped; its own context, closed at the end."""

    def __init__(self, endpoint: str, interval: float = 0.001, payload: bytes = b"") -> None:
        super().__init__(daemon=True)
        self.endpoint, self.interval, self.payload = endpoint, interval, payload
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.sent = 0

    def run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(self.endpoint)
        try:
            if sock.poll(5000):
                sock.recv()
                self.ready.set()
            while not self.stop_event.is_set():
                sock.send(b"seq %d %s" % (self.sent, self.payload))
                self.sent += 1
                if self.interval:
                    time.sleep(self.interval)
        finally:
            sock.close()
            ctx.term()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)
        assert not self.is_alive()


@pytest.fixture
def sender():
    made: list[Sender] = []

    def make(endpoint: str, **kwargs) -> Sender:
        s = Sender(endpoint, **kwargs)
        made.append(s)
        s.start()
        assert s.ready.wait(10), "sender never saw the collector's subscription"
        return s

    yield make
    for s in made:
        s.stop()


def seq(message: bytes) -> int:
    return int(message.split(b" ")[1])


def test_kill_9_and_restart_clients_resume_within_3s(start_daemon, sockets, sender):
    d = start_daemon("--heartbeat-interval", "1", "--heartbeat-timeout", "3", restartable=True)
    sub = connected(sockets, zmq.SUB, d.publish)
    pull = connected(sockets, zmq.PULL, d.push)
    s = sender(d.collector)
    assert sub.poll(5000) and pull.poll(5000)
    d.proc.kill()
    d.proc.wait(timeout=10)
    while sub.poll(100):
        sub.recv()
    while pull.poll(100):
        pull.recv()
    last_before = s.sent
    restarted = start_daemon("--heartbeat-interval", "1", "--heartbeat-timeout", "3", ports=d.ports)
    t0 = time.monotonic()
    for sock in (sub, pull):  # the very same client sockets, never recreated
        while True:
            assert sock.poll(int(max(0.0, 3.0 - (time.monotonic() - t0)) * 1000)), "no message within 3 s"
            msg = sock.recv()
            if seq(msg if sock is sub else b"seq " + msg.split(b" ")[0]) > last_before:
                break
    assert time.monotonic() - t0 < 3.0
    assert restarted.proc.poll() is None


def test_stalled_subscriber_does_not_slow_the_others(start_daemon, sockets):
    d = start_daemon()
    stalled = connected(sockets, zmq.SUB, d.publish, rcvhwm=10)  # connected, never reads
    live = connected(sockets, zmq.SUB, d.publish, rcvhwm=0)
    pull = connected(sockets, zmq.PULL, d.push, rcvhwm=0)
    prod = ready_producer(sockets, d.collector)
    warm_up(prod, live, pull)
    n = 100_000
    payload = b"t " + b"x" * 1000
    got_sub = got_pull = 0
    for i in range(n):
        prod.send(payload)
        if i % 1000 == 999:  # read along, as a live consumer does
            while live.poll(0):
                live.recv()
                got_sub += 1
            while pull.poll(0):
                pull.recv()
                got_pull += 1
    while got_sub < n:
        live.recv()
        got_sub += 1
    while got_pull < n:
        pull.recv()
        got_pull += 1
    assert stalled.poll(0)  # it did get some: it is connected, just not reading
    assert d.proc.poll() is None


def test_pullers_come_and_go_while_messages_flow(start_daemon, sockets, ctx):
    d = start_daemon()
    sub = connected(sockets, zmq.SUB, d.publish, rcvhwm=0)
    prod = ready_producer(sockets, d.collector)
    probes = warm_up(prod, sub)
    n = 30_000
    flapping: list[zmq.Socket] = []
    for i in range(n):
        if i % 2000 == 0:
            if flapping:
                flapping.pop().close(linger=0)
            p = ctx.socket(zmq.PULL)
            p.connect(d.push)
            flapping.append(p)
            if i == 0:  # one puller surely connected while messages flow, however loaded the machine
                settle(d, "push", 1)
        prod.send(b"t %d" % i)
    for i in range(n):
        assert sub.recv() == b"t %d" % i
    for p in flapping:
        p.close(linger=0)
    total = probes + n
    assert d.wait_value("fanoutd_received_messages_total", total) == total
    m = d.metrics()
    pushed = m[("fanoutd_pushed_messages_total", ())]
    drops = sum(v for (name, labels), v in m.items()
                if name == "fanoutd_dropped_messages_total" and ("output", "push") in labels)
    assert pushed + drops == total
    assert pushed > 0 and drops > 0


def test_sigterm_under_load_exits_zero_within_the_bound(start_daemon, sockets, sender):
    d = start_daemon("--drain-timeout", "2")
    sub = connected(sockets, zmq.SUB, d.publish)
    s = sender(d.collector, interval=0)  # flat out, still sending when the signal lands
    assert sub.poll(5000)
    wait_for("20,000 messages sent", lambda: s.sent, lambda sent: sent >= 20_000)
    t0 = time.monotonic()
    assert d.stop(signal.SIGTERM, timeout=20) == 0
    assert time.monotonic() - t0 < 2 + 3
    assert s.is_alive()
    assert "stopped: received" in d.log()


@contextlib.contextmanager
def subscriber_process(d) -> Iterator[subprocess.Popen[str]]:
    """A plain SUB of d's publish output in a process of its own (so it can be frozen), connected; killed after."""
    script = ("import sys, time, zmq\nc = zmq.Context()\ns = c.socket(zmq.SUB)\n"
              "s.setsockopt(zmq.SUBSCRIBE, b'')\ns.connect(sys.argv[1])\nprint('up', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, d.publish], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "up\n"
        settle(d, "publish", 1)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_frozen_subscriber_costs_nothing_until_data_waits_for_it_then_is_cut_and_counted(start_daemon, sockets):
    """Bound sockets send heartbeats with no libzmq timeout (fanoutd.sockets.heartbeat_options).

    A frozen process whose kernel still acknowledges (pings included) stays connected while idle,
    at no cost; once data waits for it, the guard cuts it and counts it. A vanished host is the
    kernel's to drop: tests/test_multihost.py.
    """
    d = start_daemon("--heartbeat-interval", "0.5", "--heartbeat-timeout", "4", "--slow-consumer-timeout", "1",
                     "--push", "")
    with subscriber_process(d) as proc:
        proc.send_signal(signal.SIGSTOP)
        time.sleep(5)  # past interval + timeout: libzmq's own timeout would have dropped it by now
        assert d.value("fanoutd_connected_peers", socket="publish") == 1
        assert d.value("fanoutd_disconnects_total", socket="publish") == 0
        prod = ready_producer(sockets, d.collector)
        for _ in range(400):  # 25 MiB: more than its kernel buffers hold, far below the high-water mark
            prod.send(b"t " + b"x" * 65536)
        assert d.wait_value("fanoutd_slow_consumers_total", 1, timeout=10, socket="publish", rule="timeout") == 1
        assert d.total("fanoutd_slow_consumers_total", socket="publish") == 1, "cut once, by the timeout rule"
        assert d.wait_value("fanoutd_connected_peers", 0, timeout=5, socket="publish") == 0
        assert re.search(r"disconnected 127\.0\.0\.1:\d+ \(rule=timeout\)", d.log()), d.log()


def test_a_heartbeat_timeout_shorter_than_the_interval_keeps_live_peers(start_daemon, sockets):
    """The TTL each PING carries must cover the interval, or every live subscriber would drop the broker
    between two pings (docs/concepts.md, What the guard costs). Dropping a vanished one: tests/test_multihost.py."""
    d = start_daemon("--heartbeat-interval", "1", "--heartbeat-timeout", "0.3")
    with subscriber_process(d):
        time.sleep(3.5)  # three pings, each answered, each TTL honoured by the subscriber's libzmq
        assert d.value("fanoutd_disconnects_total", socket="publish") == 0
        assert d.value("fanoutd_connected_peers", socket="publish") == 1


def test_a_connection_that_never_finishes_its_handshake_is_dropped_after_the_handshake_timeout(start_daemon):
    """fanoutd.sockets.HANDSHAKE_TIMEOUT_MS (10 s, libzmq's default is 30 s) on a bound socket, via TCP."""
    from fanoutd.sockets import HANDSHAKE_TIMEOUT_MS
    d = start_daemon()
    host, port = d.publish.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.settimeout(HANDSHAKE_TIMEOUT_MS / 1000 + 5)
        t0 = time.monotonic()
        while raw.recv(4096):  # the broker's half of the greeting, then nothing until it gives up on us
            pass
        waited = time.monotonic() - t0
    assert HANDSHAKE_TIMEOUT_MS / 1000 - 1 < waited < HANDSHAKE_TIMEOUT_MS / 1000 + 3


def test_junk_on_every_port_leaves_the_daemon_delivering(start_daemon, sockets):
    d = start_daemon()
    greeting = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\0" * 16 + b"\0" + b"\0" * 31
    attacks = [
        b"GET / HTTP/1.0\r\n\r\n",
        bytes(range(256)) * 40,
        greeting[:10],                                      # truncated greeting
        greeting + b"\x04\xff\xff\xff\xff",                 # handshake then nonsense command
        greeting + b"\x02" + b"\xff" * 8 + b"x" * 100,      # a frame claiming 2^64 bytes
        b"",                                                # silent
    ]
    held = []
    for port in d.ports:
        for junk in attacks:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if junk:
                try:
                    s.sendall(junk)
                except OSError:
                    pass  # the daemon may already have closed it: that is a fine answer
            held.append(s)
    try:
        sub = connected(sockets, zmq.SUB, d.publish)
        pull = connected(sockets, zmq.PULL, d.push)
        prod = ready_producer(sockets, d.collector)
        warm_up(prod, sub, pull)
        prod.send(b"orders still flowing")
        assert sub.recv() == b"orders still flowing" and pull.recv() == b"still flowing"
        assert d.get("/healthz")[0] == 200 and d.get("/metrics")[0] == 200
        assert d.proc.poll() is None
    finally:
        for s in held:
            s.close()
