"""Interop of the ZMTP publisher prototype (bench/zmtp/, issue #28) with real ZeroMQ subscribers.

The prototype serves subscribers with its own ZMTP 3.1 (no libzmq on that
side); these tests prove libzmq's subscribers take it for a PUB: pyzmq's
SUB, the C and Node example subscribers (clients/c, clients/node),
fanoutd_client's ``Subscriber``, and a raw ZMTP 3.0 peer for the 3.0 message
form of subscriptions (libzmq 4.3.5 sends a peer that greets as 3.1, as the
prototype does, SUBSCRIBE and CANCEL commands instead). Every message is checked, single frame and
multipart, with prefix filters, unsubscribes, reconnects and heartbeats
both ways, and the pending-bytes cap that cuts a reader that stopped.
It is compiled with cc like the bench's other C programs (a warning fails).
"""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
from fanoutd_client import Subscriber

from conftest import free_port, wait_for
from test_examples import Proc, c_examples, feed_until_printing, node_examples, run  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from fobench.build import build_zmtpd  # noqa: E402  (the bench's own package, beside the tests)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def zmtpd_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zmtpd(tmp_path_factory.mktemp("zmtpd"))


class Zmtpd:
    """One running prototype: its collector and publish endpoints, and its counters (SIGUSR1)."""

    def __init__(self, binary: Path, *options: str, publish_port: int | None = None) -> None:
        self.collector = f"tcp://127.0.0.1:{free_port()}"
        self.publish = f"tcp://127.0.0.1:{publish_port or free_port()}"
        self.port = int(self.publish.rsplit(":", 1)[1])
        self.proc = subprocess.Popen([str(binary), *options, self.collector, self.publish],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"zmtpd did not start: {line!r} {self.proc.stderr.read() if not line else ''}"

    def stats(self) -> dict[str, int]:
        assert self.proc.stdout is not None and self.proc.poll() is None, "zmtpd exited"
        self.proc.send_signal(signal.SIGUSR1)
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "stats", line
        return {k: int(v) for k, v in (item.split("=") for item in line[1:])}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


@pytest.fixture
def zmtpd(zmtpd_bin: Path) -> Iterator[Callable[..., Zmtpd]]:
    started: list[Zmtpd] = []

    def start(*options: str, publish_port: int | None = None) -> Zmtpd:
        z = Zmtpd(zmtpd_bin, *options, publish_port=publish_port)
        started.append(z)
        return z

    yield start
    for z in started:
        z.stop()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def producer(ctx: zmq.Context, z: Zmtpd) -> zmq.Socket:
    """An XPUB on the collector that has seen the collector's subscription (no slow-joiner loss)."""
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.setsockopt(zmq.RCVTIMEO, 5000)
    pub.connect(z.collector)
    assert pub.recv()[:1] == b"\x01"
    return pub


def sub(ctx: zmq.Context, z: Zmtpd, *topics: bytes, **options: int) -> zmq.Socket:
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        s.setsockopt(getattr(zmq, name.upper()), value)
    for t in topics:
        s.setsockopt(zmq.SUBSCRIBE, t)
    s.connect(z.publish)
    return s


def warm(pub: zmq.Socket, subs: list[zmq.Socket], topic: bytes) -> None:
    """Send probes on ``topic`` (which every one of ``subs`` subscribes to) until each has one, then drain
    them all up to one end marker: every probe was sent before it, on the one path."""
    waiting = set(subs)
    deadline = time.monotonic() + 10
    while waiting:
        assert time.monotonic() < deadline, f"no probe reached {len(waiting)} subscribers"
        pub.send(topic + b" probe")
        waiting = {s for s in waiting if not s.poll(20)}
    pub.send(topic + b" end")
    for s in subs:
        while s.recv() != topic + b" end":
            pass


def test_pyzmq_subscribers_get_every_message_by_prefix_single_and_multipart(ctx, zmtpd):
    z = zmtpd()
    pub = producer(ctx, z)
    # Unbounded receive queues: the test reads one subscriber after another, and a full queue would pace all.
    a, ab, every = (sub(ctx, z, t, rcvhwm=0) for t in (b"a", b"ab", b""))
    warm(pub, [a, ab, every], b"ab")
    sent: list[list[bytes]] = []
    for n in range(3000):
        topic = (b"a", b"ab", b"b")[n % 3]
        size = (10, 300, 70_000)[n % 5 % 3]  # short frames, long (9-byte size) frames, big bodies
        msg = [topic + b" %d " % n + bytes([n % 256]) * size] if n % 4 else [topic, b"%d" % n, b"x" * size]
        pub.send_multipart(msg)
        sent.append(msg)
    for s, prefix in ((a, b"a"), (ab, b"ab"), (every, b"")):
        want = [m for m in sent if m[0].startswith(prefix)]
        got = [s.recv_multipart() for _ in want]
        assert got == want
        assert s.poll(100) == 0, "a message past those it subscribed to"
    st = z.stats()
    assert st["subscribes"] == 3 and st["protocol_errors"] == 0
    assert st["deliveries"] >= sum(len([m for m in sent if m[0].startswith(p)]) for p in (b"a", b"ab", b""))
    assert st["bytes_out"] > 0 and st["writev_calls"] > 0


def test_unsubscribe_and_resubscribe_take_effect(ctx, zmtpd):
    z = zmtpd()
    pub = producer(ctx, z)
    s = sub(ctx, z, b"x", b"y")
    warm(pub, [s], b"x")
    s.setsockopt(zmq.UNSUBSCRIBE, b"x")
    wait_for("the cancel to arrive", lambda: z.stats()["cancels"], lambda n: n == 1)
    pub.send(b"x gone")
    pub.send(b"y kept")
    assert s.recv() == b"y kept"
    s.setsockopt(zmq.SUBSCRIBE, b"x")
    wait_for("the subscription to arrive", lambda: z.stats()["subscribes"], lambda n: n == 3)
    pub.send(b"x back")
    assert s.recv() == b"x back"


def test_subscribers_reconnect_to_a_restarted_publisher_and_after_their_own_close(ctx, zmtpd):
    z = zmtpd()
    pub = producer(ctx, z)
    s = sub(ctx, z, b"", reconnect_ivl=50)
    warm(pub, [s], b"t")
    z.stop()
    z2 = zmtpd(publish_port=z.port)  # same publish port, a new process (and collector)
    pub2 = producer(ctx, z2)
    warm(pub2, [s], b"t")
    pub2.send(b"t after restart")
    assert s.recv() == b"t after restart"
    s.close()
    wait_for("the closed subscriber to be gone", lambda: z2.stats()["connections"], lambda n: n == 0)
    again = sub(ctx, z2, b"t")
    warm(pub2, [again], b"t")
    pub2.send(b"t again")
    assert again.recv() == b"t again"


def test_a_sub_with_heartbeats_stays_connected_through_quiet(ctx, zmtpd):
    # No PINGs of the publisher's own (-H 0): they would count as traffic, and only PONGs must keep the SUB up.
    z = zmtpd("-H", "0")
    pub = producer(ctx, z)
    s = sub(ctx, z, b"", heartbeat_ivl=50, heartbeat_timeout=200, heartbeat_ttl=1000)
    mon = s.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    warm(pub, [s], b"t")
    wait_for("pings both ways", z.stats, lambda st: st["pings_answered"] >= 10, timeout=15)
    assert mon.poll(0) == 0, "the SUB dropped the publisher: its PINGs went unanswered"
    st = z.stats()
    assert st["cut_heartbeat"] == 0 and st["connections"] == 1
    pub.send(b"t still here")
    assert s.recv() == b"t still here"


class RawSub:
    """A subscriber over a raw TCP socket speaking ZMTP 3.0 (the 3.0 message form of subscriptions)."""

    def __init__(self, z: Zmtpd) -> None:
        self.sock = socket.create_connection(("127.0.0.1", z.port), timeout=5)
        # As libzmq does: without it Nagle held a small frame behind an unacknowledged one for up to 44 ms
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\0" * 32)
        meta = b"\x0bSocket-Type" + struct.pack(">I", 3) + b"SUB"
        self.send_frame(b"\x05READY" + meta, command=True)
        self.buf = b""
        greeting = self.read(64)
        assert greeting[0] == 0xFF and greeting[9] == 0x7F and greeting[10] == 3, greeting
        flags, body = self.frame()
        assert flags & 4 and body[:6] == b"\x05READY" and b"Socket-Type\0\0\0\x03PUB" in body, body

    def subscribe_all(self, z: Zmtpd) -> None:
        """Subscribe to everything (the 3.0 message form) and wait until the publisher has counted it: a
        test's messages sent before that would not reach this reader, and it would not hold anyone back."""
        before = z.stats()["subscribes"]
        self.send_frame(b"\x01")
        wait_for("the raw subscription", lambda: z.stats()["subscribes"], lambda n: n == before + 1)

    def stop_reading(self) -> None:
        """Shrink the receive buffer: what the kernel then takes for a reader that never reads is small
        against the tests' bytes."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def send_frame(self, body: bytes, command: bool = False) -> None:
        flags = 4 if command else 0
        head = bytes([flags, len(body)]) if len(body) < 256 else bytes([flags | 2]) + struct.pack(">Q", len(body))
        self.sock.sendall(head + body)

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            assert chunk, "the publisher closed the connection"
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self) -> tuple[int, bytes]:
        flags = self.read(1)[0]
        size = struct.unpack(">Q", self.read(8))[0] if flags & 2 else self.read(1)[0]
        return flags, self.read(size)

    def message(self) -> list[bytes]:
        """The next message, skipping the publisher's commands (PING)."""
        parts: list[bytes] = []
        while True:
            flags, body = self.frame()
            if flags & 4:
                continue
            parts.append(body)
            if not flags & 1:
                return parts


def test_zmtp_3_0_message_form_subscribe_and_cancel(ctx, zmtpd):
    z = zmtpd()
    pub = producer(ctx, z)
    raw = RawSub(z)
    raw.send_frame(b"\x01k")
    wait_for("the 3.0 subscription", lambda: z.stats()["subscribes"], lambda n: n == 1)
    pub.send(b"j not for it")
    pub.send_multipart([b"k1", b"two"])
    assert raw.message() == [b"k1", b"two"]
    raw.send_frame(b"\x00k")
    raw.send_frame(b"\x01m")
    wait_for("the 3.0 cancel", lambda: z.stats()["subscribes"], lambda n: n == 2)
    pub.send(b"k gone")
    pub.send(b"m kept")
    assert raw.message() == [b"m kept"]


def test_a_peer_that_stops_answering_pings_is_dropped(ctx, zmtpd):
    z = zmtpd("-H", "100", "-T", "300")
    producer(ctx, z)
    raw = RawSub(z)  # handshakes, then never sends another byte: no PONG
    wait_for("the silent peer to be cut", lambda: z.stats()["cut_heartbeat"], lambda n: n == 1, timeout=10)
    raw.sock.settimeout(5)
    with pytest.raises(AssertionError, match="closed"):
        while True:
            raw.message()
    assert z.stats()["connections"] == 0


def test_a_reader_that_stopped_is_cut_at_the_pending_cap_and_the_others_get_everything(ctx, zmtpd):
    z = zmtpd("-m", str(1 << 20), "-p", str(4 << 20), "-H", "0")  # the cap below the pace threshold: cut first
    pub = producer(ctx, z)
    stopped = RawSub(z)
    stopped.stop_reading()
    stopped.subscribe_all(z)
    reader = sub(ctx, z, b"")
    warm(pub, [reader], b"t")
    body = b"t " + b"x" * 10_000
    count = 0
    while z.stats()["cut_pending"] == 0:
        for _ in range(50):  # bursts well under the cap: a reader that keeps up is never cut
            pub.send(body + b"%d" % count)
            count += 1
        for n in range(count - 50, count):
            assert reader.recv() == body + b"%d" % n
        assert count < 20_000, "never cut: pending bytes are not capped"
    st = z.stats()
    assert st["connections"] == 1 and st["cut_pending"] == 1 and st["accepted"] == 2  # the reader never reconnected


def test_a_stopped_reader_paces_the_producer_until_it_is_cut_as_stalled_and_nothing_is_lost(ctx, zmtpd):
    """Pacing, fanoutd's default: over the pace threshold the collector is not read (the producer waits), and
    a reader that stays over it for the stall time is cut; the reader that kept reading loses nothing."""
    z = zmtpd("-p", str(64 << 10), "-S", "1000", "-H", "0")
    pub = producer(ctx, z)
    stopped = RawSub(z)
    stopped.stop_reading()
    stopped.subscribe_all(z)
    reader = sub(ctx, z, b"", rcvhwm=0)
    warm(pub, [reader], b"t")
    body = b"t " + b"x" * 10_000
    for n in range(3000):  # 30 MB: far past what the stopped reader's kernel buffers and the threshold hold
        pub.send(body + b"%d" % n)
    paced = z.stats()
    assert paced["paces"] >= 1 and paced["cut_stalled"] == 0, paced
    for n in range(3000):
        assert reader.recv() == body + b"%d" % n
    st = z.stats()
    assert st["cut_stalled"] == 1 and st["cut_pending"] == 0 and st["connections"] == 1, st


def test_fanoutd_client_subscriber(ctx, zmtpd):
    z = zmtpd("-H", "0")  # only its PONGs keep the Subscriber's heartbeats happy
    pub = producer(ctx, z)
    with Subscriber(z.publish, topics=[b"orders"], heartbeat_interval=0.1, heartbeat_timeout=0.5) as s:
        deadline = time.monotonic() + 10
        while True:
            pub.send(b"orders warm")
            if s.socket.poll(20):
                break
            assert time.monotonic() < deadline
        pub.send(b"orders end")
        while s.recv(timeout=5) != (b"orders", b"end"):
            pass
        answered = z.stats()["pings_answered"]  # quiet for several heartbeat timeouts, its PINGs answered:
        wait_for("the Subscriber's pings", lambda: z.stats()["pings_answered"], lambda n: n >= answered + 10)
        pub.send(b"other x")
        pub.send(b"orders hello")
        pub.send_multipart([b"orders", b"part-1", b"part-2"])
        assert s.recv(timeout=5) == (b"orders", b"hello")
        assert s.recv_multipart(timeout=5) == [b"orders", b"part-1", b"part-2"]


@pytest.mark.parametrize("lang", ("c", "node"))
def test_example_subscribers(lang, request, ctx, zmtpd, run):  # noqa: F811  (fixture)
    example = request.getfixturevalue(f"{lang}_examples")
    z = zmtpd()
    pub = producer(ctx, z)
    proc: Proc = run([*example["subscriber"], z.publish, "orders", "12", "10000"])
    lines = feed_until_printing(proc, pub, b"orders warmup")
    for n in range(1, 13):
        pub.send(b"other not-for-me")
        pub.send(b"orders data-%d" % n)
    status, rest, err = proc.finish()
    assert status == 0, err
    lines += rest
    warmups = lines.count("orders warmup")
    assert warmups >= 1
    assert lines == ["orders warmup"] * warmups + [f"orders data-{n}" for n in range(1, 13 - warmups)]
    every = run([*example["subscriber"], z.publish, "", "0", "10000"])
    feed_until_printing(every, pub, b"warmup x")
    pub.send_multipart([b"orders", b"part-1", b"part-2"])
    deadline = time.monotonic() + 10
    line = None
    while line != "orders part-1 part-2" and time.monotonic() < deadline:
        line = every.line(0.5)
    assert line == "orders part-1 part-2"
