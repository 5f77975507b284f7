"""Producer connections by their ZMTP Socket-Type, and one warning per plain PUB (issue #25, Must 4).

A plain PUB producer drops at its own high-water mark while fanoutd holds its producers back, where no fanoutd
counter sees it; fanoutd learns each connection's Socket-Type from the first message it reads from it and shows
it in ``fanoutd_producer_peers{socket,type}`` and ``/peers``, and logs each plain PUB connection once
(fanoutd/senders.py, docs/concepts.md "Which producers can lose messages").
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import zmq

from conftest import connected, wait_for, wait_logged
from fanoutd.dataplane import _forward, zmqlib
from fanoutd_client import Producer

pytestmark = pytest.mark.timeout(60)

WARNING = "is a plain PUB socket"
RECONNECTS = 5  # libzmq often gives a new connection's metadata the address of the last closed one's


def producers(d, socket: str = "collector") -> dict[str, float]:
    """type -> open connections of ``socket``, from fanoutd_producer_peers."""
    return {dict(labels)["type"]: value for (name, labels), value in d.metrics().items()
            if name == "fanoutd_producer_peers" and dict(labels)["socket"] == socket}


def peers_by_type(d) -> dict[str, list[str]]:
    """Socket-Type (None: not heard from) -> peer addresses of the open producer connections, from /peers."""
    status, body = d.get("/peers")
    assert status == 200, body
    out: dict[str, list[str]] = {}
    for conn in json.loads(body)["connected"]:
        if conn["socket"] in ("collector", "ingress"):
            out.setdefault(conn["type"], []).append(conn["peer"])
    return out


def send_until(d, sock: zmq.Socket, socket: str, kind: str, count: float = 1) -> None:
    """Send from ``sock`` until the metric shows ``count`` connections of ``kind``: a PUB's first messages may go
    before the collector's subscription has reached it, and the hub reads the loop's reports every 0.5 s."""
    def seen() -> float:
        sock.send(b"t x")
        return producers(d, socket).get(kind, 0)

    wait_for(f"{count} {kind} producer(s) on {socket}", seen, lambda n: n == count, timeout=15, alive=d.proc)


def test_producers_counted_by_type_and_each_plain_pub_named_once(start_daemon, sockets):
    d = start_daemon("--ingress", "tcp://127.0.0.1:0")
    assert producers(d) == {"PUB": 0, "XPUB": 0, "unknown": 0}
    assert producers(d, "ingress") == {"PUSH": 0, "unknown": 0}
    plain = connected(sockets, zmq.PUB, d.collector)
    with Producer(d.collector, wait=5) as producer:
        push = connected(sockets, zmq.PUSH, d.bound()["ingress"][0])
        # Connected but silent: fanoutd cannot know what they are yet.
        d.wait_value("fanoutd_connected_peers", 2, socket="collector")
        d.wait_value("fanoutd_connected_peers", 1, socket="ingress")
        assert producers(d) == {"PUB": 0, "XPUB": 0, "unknown": 2}
        assert producers(d, "ingress") == {"PUSH": 0, "unknown": 1}

        send_until(d, plain, "collector", "PUB")
        wait_for("the Producer seen as an XPUB", lambda: (producer.send("t", "x"), producers(d))[1],
                 lambda seen: seen.get("XPUB") == 1, timeout=15, alive=d.proc)
        push.send(b"t x")
        d.wait_value("fanoutd_producer_peers", 1, socket="ingress", type="PUSH")
        assert producers(d) == {"PUB": 1, "XPUB": 1, "unknown": 0}
        assert producers(d, "ingress") == {"PUSH": 1, "unknown": 0}

        by_type = peers_by_type(d)
        assert sorted(by_type) == ["PUB", "PUSH", "XPUB"], by_type
        (plain_peer,), (producer_peer,) = by_type["PUB"], by_type["XPUB"]
        line = wait_logged(d, WARNING)
        assert f"collector: producer {plain_peer} {WARNING}" in line, line
        assert "ZMQ_XPUB_NODROP" in line and "Producing while fanoutd holds back" in line, line
        # Many more messages from both: still one line, and none for the Producer (or the PUSH).
        for _ in range(200):
            plain.send(b"t x")
            producer.send("t", "x")
        time.sleep(1.5)  # three of the hub's reads of the loop's reports
        warnings = [line for line in d.log().splitlines() if WARNING in line]
        assert len(warnings) == 1, warnings
        assert producer_peer not in warnings[0], "the Producer was named as a plain PUB"


def test_a_plain_pub_that_reconnects_is_seen_again(start_daemon, sockets):
    """Each new connection is a new producer: counted again once it sends, even when libzmq gives its metadata the
    address the closed one's had (it often does: the hub tells the loop to forget what it saw when a producer
    leaves). Its warning, within 10 s of the last one, is held back and counted into the next line."""
    d = start_daemon()
    seen = []
    for _ in range(RECONNECTS):
        pub = connected(sockets, zmq.PUB, d.collector)
        send_until(d, pub, "collector", "PUB")
        (peer,) = peers_by_type(d)["PUB"]
        seen.append(peer)
        pub.close(linger=0)
        d.wait_value("fanoutd_connected_peers", 0, socket="collector")
        assert producers(d) == {"PUB": 0, "XPUB": 0, "unknown": 0}
    assert len(set(seen)) == RECONNECTS, seen
    warnings = [line for line in d.log().splitlines() if WARNING in line]
    assert len(warnings) == 1 and seen[0] in warnings[0], warnings


def test_the_loop_reports_each_connection_once_and_again_after_a_close(sockets):
    """The real Forwarder in-process: one report per connection however many messages it sends, and a
    connection made after a close is reported even where its metadata reuses the closed one's address."""
    zmqlib.bind()
    sub = sockets(zmq.SUB, subscribe=b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    out = sockets(zmq.XPUB)
    out.bind("tcp://127.0.0.1:*")
    forwarder = _forward.Forwarder({"collector": sub.underlying, "publish": out.underlying})
    loop = threading.Thread(target=forwarder.run)
    loop.start()
    try:
        for _ in range(RECONNECTS * 4):
            pub, xpub = sockets(zmq.PUB), sockets(zmq.XPUB)
            for sock in (pub, xpub):
                sock.connect(f"tcp://127.0.0.1:{port}")
            reports: list[tuple[int, int, bytes]] = []

            def heard() -> list[tuple[int, int, bytes]]:
                pub.send(b"t x")
                xpub.send(b"t x")
                reports.extend(forwarder.senders())
                return reports

            wait_for("both connections reported", heard, lambda r: len(r) >= 2, timeout=10)
            for _ in range(100):  # interleaved messages of known connections: no further report
                pub.send(b"t x")
                xpub.send(b"t x")
            time.sleep(0.1)
            reports.extend(forwarder.senders())
            assert sorted(kind for _, _, kind in reports) == [b"PUB", b"XPUB"], reports
            for fd, inode, _ in reports:
                assert inode == os.fstat(fd).st_ino, "the report's inode is not its connection's"
            for sock in (pub, xpub):
                sock.close(linger=0)
            time.sleep(0.05)
            forwarder.forget_senders()  # what the hub does when the monitor says a producer closed
    finally:
        forwarder.stop(True)
        loop.join(10)
