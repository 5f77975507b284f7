"""While the guard keeps answering "stall on", the forwarding loop is seen going round.

A stall holds all output until the slow-consumer guard answers
(docs/architecture.md, "The stall"). Each "stall on" the loop takes is a turn
of the loop: it counts a tick, the watchdog's proof that the loop goes round
(fanoutd/status.py), and publishes its counters with the time held so far. So
a stall the guard keeps holding for longer than WatchdogSec neither gets the
daemon killed by systemd nor freezes /metrics until it ends. A guard that
stops answering still stops the ticks: the loop waits for an answer.

The Forwarder runs in a thread with real sockets: a producer PUB feeds the
collector, a subscriber that never reads fills the publish output over TCP,
and the test plays the guard.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import gevent
import pytest
import zmq

from conftest import wait_for
from fanoutd import status
from fanoutd.dataplane import _forward, zmqlib

pytestmark = pytest.mark.timeout(60)
PUBLISH = _forward.OUTPUTS.index("publish")
STALL_NS = 10_000_000  # the guard is asked after 10 ms, then after twice as long each time up to 1 s
ASK_MAX = 1.0          # the longest the loop waits before taking the guard's next answer (STALL_ASK_MAX_NS)


@dataclass
class Loop:
    """A running forwarding loop whose publish output is stalled on a subscriber that never reads."""

    forwarder: _forward.Forwarder
    thread: threading.Thread
    result: list[str] = field(default_factory=list)
    since: float = 0.0  # when the loop was started: the stall began after

    def counter(self, name: str) -> int:
        return self.forwarder.counters()[name]

    def stall(self) -> int:
        return self.forwarder.stalls()[PUBLISH]

    def hold(self, seconds: float, each: Callable[[], None] = lambda: None) -> int:
        """Play a guard that answers "stall on" to every new stall number for ``seconds``; the last number answered.

        ``each`` runs on every pass; the waits are gevent's, so greenlets (the watchdog) run meanwhile.
        """
        answered = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            number = self.stall()
            assert number, "the stall ended while the guard held it"
            if number != answered:
                self.forwarder.answer_stall(PUBLISH, number, True)
                answered = number
            each()
            gevent.sleep(0.002)
        return answered


@pytest.fixture
def stalled(sockets: Callable[..., zmq.Socket]) -> Iterator[Loop]:
    """The loop with stall_ns 10 ms and a real eventfd, its publish output stalled (no answer given yet)."""
    zmqlib.bind()
    make = sockets  # closed by the sockets fixture, after this one has stopped the loop

    stall_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    loop: Loop | None = None
    try:
        collector = make(zmq.SUB, RCVHWM=10)
        collector.setsockopt(zmq.SUBSCRIBE, b"")
        collector.bind("inproc://collector")
        publish = make(zmq.XPUB, XPUB_NODROP=1, SNDHWM=1, SNDBUF=4096)
        publish.bind("tcp://127.0.0.1:0")
        reader = make(zmq.SUB, RCVHWM=1, RCVBUF=4096)  # subscribes and never reads
        reader.setsockopt(zmq.SUBSCRIBE, b"")
        reader.connect(publish.getsockopt_string(zmq.LAST_ENDPOINT))
        producer = make(zmq.PUB, SNDHWM=10)
        producer.connect("inproc://collector")
        payload = b"x" * 65536
        _fill(publish, payload)
        forwarder = _forward.Forwarder({"collector": collector.underlying, "publish": publish.underlying},
                                       stall_ns=STALL_NS, stall_fd=stall_fd)
        results: list[str] = []
        loop = Loop(forwarder, threading.Thread(target=lambda: results.append(forwarder.run())), results)
        loop.since = time.monotonic()
        loop.thread.start()  # the publish socket passes to the loop's thread (starting it orders the two)
        deadline = loop.since + 10
        while not loop.stall():  # a PUB drops what it cannot queue: offer until the loop has one to send
            assert time.monotonic() < deadline, f"the publish output never stalled: {forwarder.counters()}"
            producer.send(payload)
            time.sleep(0.001)
        assert loop.counter("publish_stalls") == 1
        yield loop
    finally:
        if loop is not None:
            loop.forwarder.stop(True)
            loop.thread.join(10)
            assert not loop.thread.is_alive(), "the loop did not stop"
        os.close(stall_fd)  # only once the loop, its only writer, has returned


def _fill(publish: zmq.Socket, payload: bytes) -> None:
    """Send on the publish output until it stays full (from the test's thread, before the loop has it).

    A refusal alone is not enough: libzmq's I/O thread goes on moving queued
    messages into the kernel's buffers, making room again, until they are
    full too; only then would a stall last until the guard ends it.
    """
    deadline = time.monotonic() + 10
    room = time.monotonic()
    while time.monotonic() - room < 0.5:  # no room made for half a second: the kernel's buffers are full
        assert time.monotonic() < deadline, "the publish output never stayed full"
        try:
            publish.send(payload, zmq.NOBLOCK)
            room = time.monotonic()
        except zmq.Again:
            time.sleep(0.01)


def test_each_stall_on_taken_is_a_turn_with_the_time_held_so_far_and_no_answer_stops_the_turns(stalled):
    ticks, held = stalled.counter("ticks"), stalled.counter("publish_held_ns")
    seen: list[tuple[int, int]] = []
    last = stalled.hold(2.5, lambda: seen.append((stalled.counter("ticks"), stalled.counter("publish_held_ns"))))
    assert stalled.counter("publish_stalls") == 1, "one stall throughout, held by the guard"
    turns = {t for t, _ in seen}
    assert len(turns) >= 5 and max(turns) >= ticks + 5, f"the loop was not seen going round while held: {turns}"
    # The time held shows while the stall lasts, and exactly: at most the time since the stall began.
    grown = stalled.counter("publish_held_ns") - held
    assert 1.0e9 <= grown <= (time.monotonic() - stalled.since) * 1e9, f"held {grown / 1e9:.3f}s in 2.5s of stall"
    assert len({h for _, h in seen}) >= 5, "the time held moved only once or not at all during the stall"

    # The guard stops answering: once the loop has taken the last answer, it waits and the turns stop.
    number = wait_for("the loop to take the last answer", stalled.stall, lambda n: n != last,
                      timeout=ASK_MAX + 1, interval=0.002)
    still = stalled.counter("ticks")
    time.sleep(ASK_MAX + 0.5)  # longer than the loop ever goes between two answers it takes
    assert (stalled.counter("ticks"), stalled.stall()) == (still, number), "turns without an answer from the guard"

    began = time.monotonic()
    stalled.forwarder.stop(True)
    stalled.thread.join(2)
    assert not stalled.thread.is_alive(), "abort did not end the stall"
    assert stalled.result == ["aborted"]
    assert time.monotonic() - began < 1.0


@pytest.fixture
def notify_socket(tmp_path, monkeypatch) -> Iterator[socket.socket]:
    """Where systemd would hear WATCHDOG=1, with WatchdogSec=3s (a ping each 1.5 s while the loop goes round)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def test_the_watchdog_is_fed_while_the_guard_holds_a_stall_longer_than_watchdog_sec(stalled, notify_socket):
    pings: list[float] = []

    def hear() -> None:
        while True:
            try:
                datagram = notify_socket.recv(4096)
            except BlockingIOError:
                return
            if datagram == b"WATCHDOG=1":
                pings.append(time.monotonic())

    began = time.monotonic()
    watchdog = gevent.spawn(status.watchdog, stalled.forwarder.counters)
    try:
        stalled.hold(5.0, hear)
    finally:
        watchdog.kill()
    assert stalled.counter("publish_stalls") == 1, "one stall throughout, held by the guard"
    gaps = [b - a for a, b in zip([began, *pings], [*pings, time.monotonic()])]
    assert len(pings) >= 3 and max(gaps) < 3.0, f"systemd would have killed the daemon: pings {gaps}"
