"""Connection tracking from socket-monitor events, driven in-process with the events libzmq sends.

libzmq emits a connection's "accepted" event from the listener's I/O thread
only after it has handed the connection to its engine, which may run on
another I/O thread and report the handshake's outcome first (libzmq
``stream_listener_base_t::create_engine``). These tests send the monitor
events in each order through a real inproc PAIR, with a real connected
socket as the connection.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import gevent
import pytest
import zmq

from fanoutd.peers import PeerTracker
from fanoutd.sockets import monitor_address

pytestmark = pytest.mark.timeout(30)
EVENT = struct.Struct("=Hi")  # libzmq's monitor event frame: event number, value (the fd for accept/disconnect)
ROLE = "push"


@pytest.fixture
def monitor() -> Iterator[tuple[PeerTracker, zmq.Socket, socket.socket]]:
    """A tracker reading the push socket's monitor address; the test's PAIR plays libzmq; a connected socket."""
    context = zmq.Context()
    events = context.socket(zmq.PAIR)
    events.bind(monitor_address(ROLE))
    tracker = PeerTracker(context, (ROLE,))
    crashed: list[gevent.Greenlet] = []
    tracker.start(crashed.append)
    ours, theirs = socket.socketpair()
    try:
        yield tracker, events, ours
    finally:
        assert not crashed, crashed
        events.send_multipart([EVENT.pack(zmq.EVENT_MONITOR_STOPPED, 0), b""])
        tracker.close(timeout=1.0)
        events.close(linger=0)
        ours.close()
        theirs.close()
        context.term()


def send(events: zmq.Socket, event: int, value: int = 0) -> None:
    events.send_multipart([EVENT.pack(event, value), b"tcp://127.0.0.1:5562"])


def settled(tracker: PeerTracker, fd: int) -> None:
    """Let the tracker's greenlet read what was sent, until it knows the connection; fail loudly otherwise."""
    deadline = time.monotonic() + 5
    while fd not in tracker.open[ROLE]:
        assert time.monotonic() < deadline, "the tracker never saw the accepted connection"
        gevent.sleep(0.001)
    gevent.sleep(0.01)  # and whatever followed it on the same PAIR


@pytest.mark.parametrize("outcome_first", [False, True], ids=["accept-first", "outcome-first"])
def test_a_handshake_that_succeeded_is_known_in_either_order(monitor, outcome_first):
    tracker, events, conn = monitor
    order = [(zmq.EVENT_ACCEPTED, conn.fileno()), (zmq.EVENT_HANDSHAKE_SUCCEEDED, 0)]
    for event, value in reversed(order) if outcome_first else order:
        send(events, event, value)
    settled(tracker, conn.fileno())
    assert tracker.open[ROLE][conn.fileno()].handshaken


@pytest.mark.parametrize("outcome_first", [False, True], ids=["accept-first", "outcome-first"])
def test_a_refused_handshake_is_named_in_either_order(monitor, outcome_first):
    tracker, events, conn = monitor
    order = [(zmq.EVENT_ACCEPTED, conn.fileno()), (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 0)]
    for event, value in reversed(order) if outcome_first else order:
        send(events, event, value)
    settled(tracker, conn.fileno())
    tracked = tracker.open[ROLE][conn.fileno()]
    assert not tracked.handshaken and tracked.failed == "auth"
    assert tracker.handshake_failures[(ROLE, "auth")] == 1
    send(events, zmq.EVENT_DISCONNECTED, conn.fileno())
    deadline = time.monotonic() + 5
    while conn.fileno() in tracker.open[ROLE]:
        assert time.monotonic() < deadline, "the disconnect was never seen"
        gevent.sleep(0.001)
    assert tracker.closed[-1].reason == "handshake failed (auth)"
