"""An edge's heads at reconnect, against a scripted hub: what it claims is delivered once, by the repair.

A stand-in hub (an XPUB announcing itself like fanoutd's relay, and a ROUTER
announcing itself like its relay_repair) lets the test order what real
networks order by chance: the heads answer overtaking messages still on their
way over the new link. tests/test_federation_repair.py covers the same path
against a real hub, where the race is rare.
"""

from __future__ import annotations

import errno

import zmq
from fanoutd_client import wire

from conftest import connected, settle, wait_for, wait_ready

EPOCH, STREAM = 99, 1
KEY_LEN = wire.stream_key_length(b"orders 1", 1)
METADATA = f"{wire.RELAY_PROPERTY}:{wire.RELAY_PROPERTY_VALUE}".encode()


def relay(sockets, endpoint: str = "tcp://127.0.0.1:*") -> zmq.Socket:
    """A relay bound at endpoint (the port of one just closed, once libzmq has let go of it)."""
    sock = sockets(zmq.XPUB, xpub_verbose=1)
    sock.setsockopt(zmq.METADATA, METADATA)
    sock.setsockopt(zmq.XPUB_WELCOME_MSG, wire.RELAY_HELLO)

    def bound() -> bool:
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            return False
        return True
    wait_for(f"{endpoint} to be free to bind", bound, bool, timeout=10)
    return sock


def linked(sock: zmq.Socket) -> None:
    """Wait for the edge's data link subscribing to everything (its probes ask for less)."""
    while sock.recv() != b"\x01":
        pass


def message(seq: int) -> list[bytes]:
    return [b"orders %d" % seq, wire.stamp_trailer(EPOCH, STREAM, seq, KEY_LEN, route=(b"hubnode1",))]


def request(router: zmq.Socket, flags: int) -> tuple[bytes, bytes]:
    """The next request of this kind (flags), as (routing id, body after the head); others are skipped."""
    while True:
        peer, req = router.recv_multipart()
        if req[5] == flags:
            return peer, req[wire.HEAD.size:]


def answer(flags: int) -> bytes:
    return wire.HEAD.pack(wire.MAGIC, wire.VERSION, wire.REPAIR_ANSWER | flags)


def test_a_tail_the_heads_claimed_is_delivered_once_by_the_repair_when_the_link_brings_it_too(
        start_daemon, sockets):
    link = relay(sockets)
    endpoint = link.last_endpoint.decode()
    router = sockets(zmq.ROUTER)
    router.setsockopt(zmq.METADATA, METADATA)
    router.bind("tcp://127.0.0.1:*")
    edge = start_daemon("--upstream", endpoint, "--upstream-repair", router.last_endpoint.decode(), "--push", "")
    sub = connected(sockets, zmq.SUB, edge.publish)
    settle(edge, "publish", 1)
    linked(link)
    wait_ready(edge)
    request(router, wire.REPAIR_HEADS)  # the first link's heads: nothing seen yet, left unanswered
    for seq in (1, 2):
        link.send_multipart(message(seq))
    assert [sub.recv() for _ in range(2)] == [b"orders 1", b"orders 2"]

    link.close()  # the link drops; the edge reconnects to a new relay on the same port
    link = relay(sockets, endpoint)
    linked(link)
    peer, body = request(router, wire.REPAIR_HEADS)
    assert body[wire.REPAIR_TAG_LEN:] == b"", "the prefix of its collector_topics"
    heads = body[:wire.REPAIR_TAG_LEN] + EPOCH.to_bytes(8, "big") + (1).to_bytes(2, "big")
    heads += STREAM.to_bytes(8, "big") + (5).to_bytes(8, "big") + bytes((KEY_LEN,)) + b"orders "
    router.send_multipart([peer, answer(wire.REPAIR_HEADS) + heads])  # head 5: 3..5 never seen

    peer, body = request(router, wire.REPAIR_RANGE)
    tag, epoch, stream, first, last = wire.REPAIR_RANGE_BODY.unpack(body)
    assert (epoch, stream, first, last) == (EPOCH, STREAM, 3, 5)
    for seq in (3, 4, 5):  # still on their way over the new link: claimed, so refused
        link.send_multipart(message(seq))
    assert edge.wait_value("fanoutd_upstream_duplicate_messages_total", 3) == 3
    assert sub.poll(300) == 0, "a claimed message is not delivered from the link"
    head = answer(wire.REPAIR_RANGE) + tag.to_bytes(4, "big")
    for seq in (3, 4, 5):
        router.send_multipart([peer, head, *message(seq)])
    router.send_multipart([peer, answer(wire.REPAIR_RANGE | wire.REPAIR_END) + body + b"\x00\x00"])
    link.send_multipart(message(6))  # past the claim: delivered as usual
    got = [sub.recv() for _ in range(4)]  # repaired messages come as they arrive, live ones around them
    assert sorted(got) == [b"orders 3", b"orders 4", b"orders 5", b"orders 6"]
    assert sub.poll(300) == 0, "each message once"
    assert edge.value("fanoutd_upstream_gaps_total") == 3
    assert edge.wait_value("fanoutd_upstream_repaired_messages_total", 3) == 3
    assert edge.value("fanoutd_upstream_unrepaired_messages_total") == 0
