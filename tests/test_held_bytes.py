"""The held-bytes ledger: the loop knows exactly how many message bytes libzmq holds for an output's readers.

Each frame goes out as a wrapper whose free callback, run when libzmq lets go
of the last copy (on an I/O thread, the loop's thread, or inside
zmq_ctx_term), takes its size off the output's ledger (fanoutd/dataplane/
held.c). The Forwarder runs in a thread with real sockets: a producer PUB
feeds the collector over inproc, subscribers read the publish output over TCP.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import zmq

from conftest import wait_for
from fanoutd.dataplane import _forward, zmqlib

pytestmark = pytest.mark.timeout(60)
PUBLISH = _forward.OUTPUTS.index("publish")
SIZE = 64 * 1024
NEVER = 1 << 40  # a byte bound never reached: frames are counted (only a bound makes the loop count them)
MALLOC_DEBUG = "/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"


@dataclass
class Rig:
    forwarder: _forward.Forwarder
    producer: zmq.Socket
    publish_endpoint: str
    make: Callable[..., zmq.Socket]

    def held(self) -> int:
        return self.forwarder.held_bytes()[PUBLISH]

    def counter(self, name: str) -> int:
        return self.forwarder.counters()[name]

    def reader(self, **options: int) -> zmq.Socket:
        sock = self.make(zmq.SUB, **options)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.publish_endpoint)
        return sock

    def send(self, count: int, *frames: bytes) -> None:
        """Send count messages; the collector's queue is deep enough that none is dropped on the way in."""
        for _ in range(count):
            self.producer.send_multipart(frames)


@pytest.fixture
def rig(sockets: Callable[..., zmq.Socket], request) -> Iterator[Rig]:
    """A running loop (stall_ns 10 ms, a real eventfd; stall_above the test's indirect parameter, else NEVER, or
    (stall_above, resume_below))."""
    zmqlib.bind()
    make = sockets  # closed by the sockets fixture, after this one has stopped the loop

    stall_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    thread = None
    forwarder = None
    try:
        collector = make(zmq.SUB, RCVHWM=100_000)
        collector.setsockopt(zmq.SUBSCRIBE, b"")
        collector.bind("inproc://collector")
        publish = make(zmq.XPUB, XPUB_NODROP=1, SNDHWM=100_000, SNDBUF=8192)
        publish.bind("tcp://127.0.0.1:0")
        producer = make(zmq.PUB, SNDHWM=100_000)
        producer.connect("inproc://collector")
        rig = Rig(None, producer, publish.getsockopt_string(zmq.LAST_ENDPOINT), make)  # type: ignore[arg-type]
        above, below = (lambda p: p if isinstance(p, tuple) else (p, 0))(getattr(request, "param", NEVER))
        forwarder = _forward.Forwarder({"collector": collector.underlying, "publish": publish.underlying},
                                       stall_ns=10_000_000, stall_fd=stall_fd, stall_above=above, resume_below=below)
        rig.forwarder = forwarder
        thread = threading.Thread(target=forwarder.run)
        thread.start()  # the sockets pass to the loop's thread (starting it orders the two)
        yield rig
    finally:
        if forwarder is not None:
            forwarder.stop(True)
        if thread is not None:
            thread.join(10)
            assert not thread.is_alive(), "the loop did not stop"
        os.close(stall_fd)


def _subscribed(rig: Rig, *readers: zmq.Socket) -> None:
    """Wait until every reader's subscription has reached the publish output: a probe message reaches them all."""
    for sock in readers:
        wait_for("a subscriber to be connected", lambda: rig.send(1, b"probe") or sock.poll(50), bool)
    for sock in readers:  # every probe the loop has published is read
        while sock.poll(200):
            sock.recv_multipart()


def test_held_bytes_are_exact_and_come_back_to_zero_when_the_last_reader_has_them(rig):
    fast, stopped = rig.reader(), rig.reader(RCVHWM=1, RCVBUF=8192)
    _subscribed(rig, fast, stopped)
    published = rig.counter("published_messages")
    rig.send(200, b"t" * 10, b"p" * SIZE)  # a short frame (inside libzmq's message: not counted) and a long one
    for _ in range(200):
        assert fast.recv_multipart() == [b"t" * 10, b"p" * SIZE]
    wait_for("the loop to publish all 200", lambda: rig.counter("published_messages"), lambda n: n == published + 200)
    held = wait_for("libzmq to write what the stopped reader's kernel buffers take",
                    rig.held, lambda h: h < 200 * SIZE, timeout=5)
    # The fast reader has everything: what is held is the stopped reader's backlog, whole long frames only.
    assert held % SIZE == 0 and held >= 100 * SIZE, f"{held} bytes held for a reader 200 x 64 KiB behind"
    for _ in range(200):
        assert stopped.recv_multipart() == [b"t" * 10, b"p" * SIZE]
    assert wait_for("the ledger to come back to zero", rig.held, lambda h: h == 0, timeout=5) == 0


def test_a_reader_that_disconnects_gives_back_what_was_held_for_it(rig):
    stopped = rig.reader(RCVHWM=1, RCVBUF=8192)
    _subscribed(rig, stopped)
    rig.send(100, b"p" * SIZE)
    wait_for("bytes held for the stopped reader", rig.held, lambda h: h >= 50 * SIZE)
    stopped.close()
    assert wait_for("the ledger to come back to zero", rig.held, lambda h: h == 0, timeout=5) == 0


@pytest.mark.parametrize("rig", [1024 * 1024], indirect=True)
def test_an_output_past_stall_above_stalls_and_a_no_sends_without_a_drop(rig):
    stopped = rig.reader(RCVHWM=1, RCVBUF=8192)
    _subscribed(rig, stopped)
    rig.send(100, b"p" * SIZE)
    number = wait_for("the publish output to stall on held bytes", lambda: rig.forwarder.stalls()[PUBLISH], bool)
    # Far below the high-water mark (100,000): the bytes stalled it, libzmq holding at most one message past
    # the bound; the ledger also counts the message in the loop's hands, wrapped and waiting.
    assert 1024 * 1024 < rig.held() <= 1024 * 1024 + 2 * SIZE
    assert rig.counter("published_messages") < 100
    rig.forwarder.answer_stall(PUBLISH, number, False)  # the guard gives up on the bound: the message goes anyway
    wait_for("the next stall", lambda: rig.forwarder.stalls()[PUBLISH], lambda n: n > number)
    assert rig.counter("publish_dropped") == 0, "a message held back by the byte bound alone reached everyone"
    assert rig.forwarder.windows()[PUBLISH] == 0, "no lossy window for a bound nobody was refused by"
    # Lifting the bound live ends the stall without the guard.
    rig.forwarder.set_limits(max_message_size=1 << 20, max_frames=16, strip_topic=True, stall_above=0, push_above=0,
                             resume_below=0)
    wait_for("everything to be published", lambda: rig.counter("published_messages"), lambda n: n >= 101)
    for _ in range(100):
        stopped.recv_multipart()
    assert wait_for("the ledger to come back to zero", rig.held, lambda h: h == 0, timeout=5) == 0
    assert rig.counter("publish_dropped") == 0


@pytest.mark.parametrize("rig", [(1024 * 1024, 512 * 1024)], indirect=True)
def test_an_output_held_back_by_its_bytes_takes_messages_again_only_at_the_low_water_mark(rig):
    """A reader catching up lets runs of messages through, not one per stall.

    Offered again as soon as one message fits, the output would be held back again at the next: a stall, and a
    look by the guard, for every message the reader takes (about 185 here). From the low-water mark, (1 MiB -
    512 KiB) / 64 KiB = 8 messages go out between two stalls.
    """
    reader = rig.reader(RCVHWM=1, RCVBUF=8192)
    _subscribed(rig, reader)
    stalls = rig.counter("publish_stalls")
    rig.send(200, b"p" * SIZE)
    wait_for("the publish output to stall on held bytes", lambda: rig.forwarder.stalls()[PUBLISH], bool)
    for _ in range(200):
        assert reader.recv_multipart() == [b"p" * SIZE]
    stalled = rig.counter("publish_stalls") - stalls
    assert 1 <= stalled <= 200 // 8 + 2, f"{stalled} stalls to deliver 200 x 64 KiB past a 1 MiB bound"
    assert rig.counter("publish_dropped") == 0
    assert wait_for("the ledger to come back to zero", rig.held, lambda h: h == 0, timeout=5) == 0


@pytest.mark.parametrize("rig", [0], indirect=True)
def test_without_a_byte_bound_nothing_is_counted(rig):
    """slow_consumer_max_pending = 0: nothing reads the ledger, so the loop spares every frame its wrapper."""
    stopped = rig.reader(RCVHWM=1, RCVBUF=8192)
    _subscribed(rig, stopped)
    published = rig.counter("published_messages")
    rig.send(100, b"p" * SIZE)
    wait_for("the loop to publish all 100", lambda: rig.counter("published_messages"), lambda n: n == published + 100)
    assert rig.held() == 0


def test_frames_libzmq_still_holds_when_the_forwarder_and_context_are_gone_are_released_safely():
    """The free callbacks run inside zmq_ctx_term, after the Forwarder is freed: the ledger outlives it."""
    script = textwrap.dedent(f"""
        import os, threading, time, zmq
        from fanoutd.dataplane import _forward, zmqlib
        zmqlib.bind()
        ctx = zmq.Context()
        collector = ctx.socket(zmq.SUB); collector.subscribe(b""); collector.bind("inproc://c")
        publish = ctx.socket(zmq.XPUB); publish.setsockopt(zmq.XPUB_NODROP, 1); publish.setsockopt(zmq.SNDBUF, 8192)
        publish.bind("tcp://127.0.0.1:0")
        reader = ctx.socket(zmq.SUB); reader.setsockopt(zmq.RCVHWM, 1); reader.setsockopt(zmq.RCVBUF, 8192)
        reader.subscribe(b"")
        reader.connect(publish.getsockopt_string(zmq.LAST_ENDPOINT))
        producer = ctx.socket(zmq.PUB); producer.connect("inproc://c")
        f = _forward.Forwarder({{"collector": collector.underlying, "publish": publish.underlying}},
                               stall_above=1 << 40)
        t = threading.Thread(target=f.run); t.start()
        while True:  # until the reader is subscribed
            producer.send(b"probe")
            if reader.poll(50):
                break
        for _ in range(200):
            producer.send(b"p" * {SIZE})
        while f.counters()["published_messages"] < 201:
            time.sleep(0.01)
        assert f.held_bytes()[0] > 0 and _forward.held_ledgers() == 1
        f.stop(True); t.join()
        del f  # the Forwarder is gone; libzmq still holds frames for the reader that never read
        assert _forward.held_ledgers() == 1, "the ledger must outlive its Forwarder while frames are held"
        publish.close(linger=1000); collector.close(0); producer.close(0); reader.close(0)
        ctx.term()  # their free callbacks run here, or on an I/O thread before
        assert _forward.held_ledgers() == 0, "the last frame released must free the ledger"
        print("released")
    """)
    # glibc's checking allocator and poisoned frees make a use after free likelier to crash than to pass.
    env = dict(os.environ, MALLOC_CHECK_="3", MALLOC_PERTURB_="165")
    if os.path.exists(MALLOC_DEBUG):
        env["LD_PRELOAD"] = MALLOC_DEBUG
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "released", out.stderr[-2000:]

