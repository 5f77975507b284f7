"""fanoutd_client.aio.Subscriber repairs by itself, as the blocking one does (tests/test_client_repair.py).

The same daemon as a subprocess, the same producer thread, the same
assertions; only the subscriber awaits. The protocol is shared
(:mod:`fanoutd_client._healing`), so these check the asyncio driver: the
repair DEALER is polled by ``await``, its pauses are ``asyncio.sleep``,
and nothing in it blocks the event loop.
"""

from __future__ import annotations

import asyncio
import struct
import threading

import pytest
import zmq

from fanoutd_client import aio, wire
from fanoutd_client.repair import range_request
from conftest import ready_producer
from test_client_repair import GUARD, STREAMS, by_stream, produce, send_values, wait_cut
from test_clients import await_subscription, bound, nowhere
from test_clients_aio import run

pytestmark = pytest.mark.timeout(120)


async def read_all(sub: aio.Subscriber, n: int, cut: object = None, idle: float = 5.0) -> list[int]:
    """Receive until ``n`` messages or ``idle`` s without one; after the first, stop reading until daemon ``cut``
    has cut a reader off the stamped output (waiting for the state, not for a time: under load the guard
    may take longer to decide)."""
    got: list[int] = []
    while len(got) < n:
        try:
            topic, payload = await sub.recv(idle)
        except TimeoutError:
            break
        assert topic == b"t"
        got.append(int(payload[:6]))
        if len(got) == 1 and cut is not None:
            await asyncio.to_thread(wait_cut, cut)
    return got


def cut_off_and_read(d, sockets, n: int, repair: str | None = None, idle: float = 5.0,
                     **options) -> tuple[list[int], int, int]:
    """The cut-off scenario of tests/test_client_repair.py with the asyncio Subscriber (hwm 1000, repairing from
    ``repair``, the daemon's endpoint by default): n messages at 10,000 a second, the reader stopping after its
    first until the guard has cut it; (what it got, lost, repaired)."""
    async def main() -> tuple[list[int], int, int]:
        async with aio.Subscriber(d.stamped, [b"t"], stamped=True, repair=repair or d.repair, hwm=1000,
                                  **options) as sub:
            await sub.wait_ready()
            producer = produce(sockets, d.collector, n, 10_000)
            got = await read_all(sub, n, cut=d, idle=idle)
            await asyncio.to_thread(producer.join, 30)
            return got, sub.lost, sub.repaired

    return run(main(), 90)


def test_a_cut_off_subscriber_ends_with_every_message_exactly_once(start_daemon, sockets):
    d = start_daemon(*GUARD, "--history-bytes", str(256 << 20))
    n = 40_000
    got, lost, repaired = cut_off_and_read(d, sockets, n)
    assert got == list(range(n)), (len(got), lost, repaired)
    assert lost == 0 and repaired > 0
    assert d.total("fanoutd_slow_consumers_total", socket="stamped") >= 1


def test_a_gap_at_the_end_is_found_through_heads(start_daemon, sockets):
    """No message after the cut shows the gap: only the heads asked on the reconnect's READY do."""
    d = start_daemon(*GUARD, "--history-bytes", str(256 << 20))
    n = 20_000

    async def main() -> tuple[list[int], int, int]:
        async with aio.Subscriber(d.stamped, [b"t"], stamped=True, repair=d.repair, hwm=1000) as sub:
            await sub.wait_ready()
            go = threading.Event()
            producer = produce(sockets, d.collector, n, 20_000, go)
            go.set()
            got = [int((await sub.recv(5))[1][:6])]
            await asyncio.to_thread(producer.join, 30)
            await asyncio.to_thread(wait_cut, d)
            got += await read_all(sub, n - 1)
            return got, sub.lost, sub.repaired

    got, lost, repaired = run(main(), 90)
    assert got == list(range(n)), (len(got), lost, repaired)
    assert lost == 0 and repaired > 0


def test_a_history_too_small_counts_exactly_what_never_arrived(start_daemon, sockets):
    d = start_daemon(*GUARD, "--history-bytes", str(1 << 20))
    n = 30_000
    gaps: list[tuple[bytes, int, int]] = []
    got, lost, repaired = cut_off_and_read(
        d, sockets, n, repair_report=lambda key, repaired, gone: gaps.append((key, repaired, len(gone))))
    assert got == sorted(set(got)) and got[0] == 0
    assert lost > 0 and repaired > 0
    assert lost == n - len(got), (lost, n - len(got), repaired)
    assert gaps and all(key == b"t " for key, _, _ in gaps)


def test_a_repair_endpoint_that_is_down_counts_the_gap_lost(start_daemon, sockets):
    d = start_daemon(*GUARD)
    n = 50_000  # it goes on after the cut: a later message shows the gap
    got, lost, repaired = cut_off_and_read(d, sockets, n, repair=nowhere(), idle=3, repair_timeout=0.5)
    assert repaired == 0 and lost > 0
    assert lost == n - len(got)


def test_waiting_for_the_repair_endpoint_never_blocks_the_event_loop(sockets):
    """A stand-in stamped output sends seq 1 then 5; a stand-in repair endpoint takes the RANGE and never
    answers. The recv that waits for it all repair_timeout lets another task run meanwhile."""
    xpub, stamped = bound(sockets, zmq.XPUB)
    router, repair = bound(sockets, zmq.ROUTER)

    def message(seq: int) -> list[bytes]:
        return [b"t %d" % seq, wire.stamp_trailer(7, 1, seq, 2)]

    async def main() -> tuple[int, int, bytes]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async with aio.Subscriber(stamped, [b"t"], stamped=True, repair=repair, repair_timeout=1.0) as sub:
            await asyncio.to_thread(await_subscription, xpub, b"t")
            xpub.send_multipart([b"t", wire.READY_TRAILER])
            await sub.wait_ready()
            xpub.send_multipart(message(1))
            assert await sub.recv(5) == (b"t", b"1")
            xpub.send_multipart(message(5))
            tick = asyncio.create_task(ticker())
            await asyncio.sleep(0)
            before = ticks
            assert await sub.recv(5) == (b"t", b"5")
            ticked = ticks - before
            tick.cancel()
            request = router.recv_multipart()[1]  # RCVTIMEO bounds it: the RANGE did go out
            return ticked, sub.lost, request

    ticked, lost, request = run(main())
    assert request == range_request(1, 7, 1, 2, 4)
    assert lost == 3
    # Blocking on the answer would hold the loop for all of repair_timeout: not one tick in that recv.
    assert ticked >= 3, ticked


@pytest.mark.parametrize("history", [64 << 20, 0])
def test_last_value_gives_the_latest_of_each_stream_then_the_live_ones(start_daemon, sockets, history):
    """As the blocking one; with the history off there is no last value to give, and live ones still come."""
    d = start_daemon("--history-bytes", str(history))
    producer = ready_producer(sockets, d.collector)
    send_values(producer, range(1, 6))
    d.wait_value("fanoutd_received_messages_total", 20)

    async def main() -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], int]:
        async with aio.Subscriber(d.stamped, [b"prices."], stamped=True, repair=d.repair,
                                  last_value=True) as sub:
            await sub.wait_ready()
            first = [await sub.recv(5) for _ in STREAMS] if history else []
            send_values(producer, range(6, 9))
            live = [await sub.recv(5) for _ in range(3 * len(STREAMS))]
            with pytest.raises(TimeoutError):
                await sub.recv(0.5)
            return first, live, sub.lost

    first, live, lost = run(main())
    assert sorted(first) == ([(topic, b"5") for topic in STREAMS] if history else [])
    assert by_stream(live) == {topic: [6, 7, 8] for topic in STREAMS}
    assert lost == 0


# --- against stand-ins: a bound XPUB as the stamped output, a bound ROUTER as the repair endpoint -----------


def stamped_message(seq: int, epoch: int = 7, stream: int = 1) -> list[bytes]:
    return [b"t %d" % seq, wire.stamp_trailer(epoch, stream, seq, 2)]


def answer(tag: int, flags: int, body: bytes = b"", *frames: bytes) -> list[bytes]:
    """A repair answer as a ROUTER sends it, without the routing id."""
    return [wire.HEAD.pack(wire.MAGIC, wire.VERSION, wire.REPAIR_ANSWER | flags) + struct.pack(">I", tag) + body,
            *frames]


def end(tag: int, first: int, last: int, epoch: int = 7, stream: int = 1) -> list[bytes]:
    body = wire.REPAIR_RANGE_BODY.pack(tag, epoch, stream, first, last)[4:] + b"\0\0"
    return answer(tag, wire.REPAIR_RANGE | wire.REPAIR_END, body)


def request(router: zmq.Socket) -> tuple[bytes, int, int, bytes]:
    """The next request the stand-in endpoint got: (routing id, flags, tag, rest of the body)."""
    peer, frame = router.recv_multipart()  # RCVTIMEO bounds it
    return peer, frame[5], struct.unpack_from(">I", frame, 6)[0], frame[10:]


async def ready_subscriber(sockets, **options) -> tuple[aio.Subscriber, zmq.Socket, zmq.Socket]:
    xpub, stamped = bound(sockets, zmq.XPUB)
    router, repair = bound(sockets, zmq.ROUTER)
    sub = aio.Subscriber(stamped, [b"t"], stamped=True, repair=repair, **options)
    await asyncio.to_thread(await_subscription, xpub, b"t")
    xpub.send_multipart([b"t", wire.READY_TRAILER])
    await sub.wait_ready(5)
    return sub, xpub, router


def test_a_recv_cancelled_while_it_waits_for_a_repair_loses_nothing(sockets):
    """Cancelled mid-wait, the gap stays open; the next recv asks again and hands out 2, 3, 4, then 5."""
    async def main() -> tuple[list[bytes], int, int]:
        sub, xpub, router = await ready_subscriber(sockets, repair_timeout=5.0)
        async with sub:
            xpub.send_multipart(stamped_message(1))
            assert await sub.recv(5) == (b"t", b"1")
            xpub.send_multipart(stamped_message(5))
            waiting = asyncio.create_task(sub.recv(5))
            peer, flags, _, body = await asyncio.to_thread(request, router)
            assert flags == wire.REPAIR_RANGE and body[16:] == struct.pack(">QQ", 2, 4)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            again = asyncio.create_task(sub.recv(5))
            peer, flags, tag, body = await asyncio.to_thread(request, router)
            assert flags == wire.REPAIR_RANGE and body[16:] == struct.pack(">QQ", 2, 4)
            for seq in (2, 3, 4):
                router.send_multipart([peer, *answer(tag, wire.REPAIR_RANGE, b"", *stamped_message(seq))])
            router.send_multipart([peer, *end(tag, 2, 4)])
            got = [(await again)[1]] + [(await sub.recv(5))[1] for _ in range(3)]
            return got, sub.lost, sub.repaired

    got, lost, repaired = run(main())
    assert got == [b"2", b"3", b"4", b"5"]
    assert (lost, repaired) == (0, 3)


def test_last_value_is_asked_for_the_subscribers_own_prefixes_only(sockets):
    """LAST for its own READY (the value, then live from the next sequence); the READY another subscriber's
    longer prefix brings it is no reason to ask for values again."""
    async def main() -> list[bytes]:
        sub, xpub, router = await ready_subscriber(sockets, last_value=True)
        async with sub:
            xpub.send_multipart(stamped_message(2))  # live, published before the LAST was answered
            xpub.send_multipart(stamped_message(3))
            first = asyncio.create_task(sub.recv(5))
            peer, flags, tag, prefix = await asyncio.to_thread(request, router)
            assert (flags, prefix) == (wire.REPAIR_LAST, b"t")
            router.send_multipart([peer, *answer(tag, wire.REPAIR_LAST, b"", *stamped_message(2))])
            heads = struct.pack(">QH", 7, 1) + struct.pack(">QQB", 1, 2, 2) + b"t "
            router.send_multipart([peer, *answer(tag, wire.REPAIR_HEADS, heads)])
            got = [(await first)[1], (await sub.recv(5))[1]]
            xpub.send_multipart([b"t.x", wire.READY_TRAILER])  # another subscriber's, which "t" covers
            xpub.send_multipart(stamped_message(4))
            got.append((await sub.recv(5))[1])
            assert not router.poll(300), "a request for another subscriber's prefix"
            assert (sub.lost, sub.repaired) == (0, 0)
            return got

    assert run(main()) == [b"2", b"3", b"4"]
