"""The loop skips the stamped output's sends while nobody is connected there, and never silently.

The Forwarder is driven directly, without the hub, so the hub's count of
stamped connections stays 0 throughout: what a subscriber gets comes from the
loop's own memory of the subscriptions it read (a subscription reaches
libzmq's trie and the loop in the same call). Past that memory, with the count
still 0, the loop skips; a stamped subscriber then sees the skipped messages as
a gap in its sequence, which is the promise that stands behind the skip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from conftest import wait_for
from fanoutd.dataplane import _forward, zmqlib
from fanoutd_client._stamps import GapTracker, is_ready, parse_trailer


@pytest.fixture
def loop(ctx: zmq.Context) -> Iterator[tuple[zmq.Socket, zmq.Socket, _forward.Forwarder]]:
    """A running loop: (producer, stamped subscriber, forwarder); collector and outputs on inproc."""
    zmqlib.bind()
    collector, publish, stamped = ctx.socket(zmq.SUB), ctx.socket(zmq.XPUB), ctx.socket(zmq.XPUB)
    collector.setsockopt(zmq.SUBSCRIBE, b"")
    for out in (publish, stamped):
        out.setsockopt(zmq.XPUB_NODROP, 1)
    stamped.setsockopt(zmq.XPUB_VERBOSER, 1)  # as the daemon's (fanoutd/sockets.py)
    collector.bind("inproc://collector")
    publish.bind("inproc://publish")
    stamped.bind("inproc://stamped")
    producer, sub = ctx.socket(zmq.XPUB), ctx.socket(zmq.SUB)
    producer.connect("inproc://collector")
    forwarder = _forward.Forwarder(
        {"collector": collector.underlying, "publish": publish.underlying, "stamped": stamped.underlying}, epoch=7)
    thread = threading.Thread(target=forwarder.run)
    thread.start()
    try:
        # A PUB drops what no subscription covers yet: wait until the collector's has arrived (the loop's
        # calls on the collector are what attach it).
        assert producer.poll(5000) and producer.recv() == b"\x01", "no subscription from the collector"
        yield producer, sub, forwarder
    finally:
        forwarder.stop(True)
        thread.join(10)
        assert not thread.is_alive(), "the loop did not stop"
        for sock in (collector, publish, stamped, producer, sub):
            sock.close(linger=0)


def _ready(producer: zmq.Socket, sub: zmq.Socket) -> None:
    """Subscribe to "orders" and wait for the loop's READY answer."""
    sub.setsockopt(zmq.SUBSCRIBE, b"orders")
    sub.connect("inproc://stamped")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        producer.send(b"warm up")  # another topic: counted, reaches no one
        if sub.poll(20):
            frames = sub.recv_multipart()
            assert is_ready(frames[-1]), frames
            return
    raise AssertionError("no READY from the loop")


def _receive(sub: zmq.Socket, tracker: GapTracker, until: bytes) -> list[bytes]:
    got = []
    while sub.poll(5000):
        first, trailer = sub.recv_multipart()
        tracker.observe(first, parse_trailer(trailer))
        got.append(first)
        if first == until:
            return got
    raise AssertionError(f"no {until!r}; got {len(got)} messages")


def test_a_subscription_the_loop_has_read_is_served_though_the_hub_counted_no_one(loop):
    producer, sub, forwarder = loop
    _ready(producer, sub)
    tracker = GapTracker([b"orders"])
    for i in range(500):
        producer.send(b"orders %d" % i)
    assert _receive(sub, tracker, b"orders 499") == [b"orders %d" % i for i in range(500)]
    assert tracker.lost == 0


def test_past_the_loops_memory_with_no_count_the_skip_shows_as_a_gap_not_silently(loop):
    producer, sub, forwarder = loop
    _ready(producer, sub)
    tracker = GapTracker([b"orders"])
    producer.send(b"orders first")
    _receive(sub, tracker, b"orders first")
    time.sleep(2.3)  # past STAMPED_HEARD_NS; the hub's count (never set here) says nobody is connected
    before = forwarder.counters()["stamped_messages"]
    for i in range(10):
        producer.send(b"orders skipped %d" % i)
    wait_for("the skipped messages counted though sent to no one", lambda: forwarder.counters()["stamped_messages"],
             lambda n: n >= before + 10, timeout=5, interval=0.01)
    forwarder.set_stamped_peers(1)  # the count the hub would have kept: sends resume
    producer.send(b"orders after")
    got = _receive(sub, tracker, b"orders after")
    assert got == [b"orders after"], got
    assert tracker.lost == 10, "each skipped message is a gap the subscriber counts"
