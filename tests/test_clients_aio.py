"""fanoutd_client.aio: the asyncio clients, against stand-ins and through the real daemon.

The stand-ins are test_clients' (a continuously read bound SUB for the
collector, a bound XPUB for the publisher, a bound PUSH).  Each test runs
its coroutine with ``asyncio.run`` under an overall bound (:func:`run`),
and every receive inside has its own timeout, so a lost message fails
within seconds instead of hanging.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import zmq
import zmq.asyncio
import zmq.green

from fanoutd_client import aio
from test_clients import (Collector, Make, await_subscription, bound, close_within, collector, collectors, nowhere,
                          publisher)

__all__ = ["collector", "collectors", "publisher"]  # fixtures shared with test_clients

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """asyncio.run with an overall bound: a hang fails the test with TimeoutError."""
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(bounded())


async def drain(client: aio.Subscriber | aio.Puller) -> None:
    """Receive until 0.3 s pass without a message."""
    while True:
        try:
            await client.recv(timeout=0.3)
        except TimeoutError:
            return


# --- against stand-ins ---------------------------------------------------------------------------


def test_producer_waits_then_sends_every_shape(collector: Collector):
    async def main() -> None:
        async with aio.Producer(collector.endpoint) as producer:
            assert not producer.closed
            await producer.wait_ready(5)
            assert producer.ready
            await producer.send("orders", b"hello")
            await producer.send_multipart("with space", b"a", "b")
            await producer.send_json("orders", {"id": 1, "name": "\u00e9"})
            with pytest.raises(ValueError, match="contains a space"):
                await producer.send("has space", b"x")
        assert producer.closed and producer.context.closed
    run(main())
    assert collector.recv() == [b"orders hello"]
    assert collector.recv() == [b"with space", b"a", b"b"]
    assert collector.recv() == [b'orders {"id":1,"name":"\xc3\xa9"}']


def test_wait_ready_times_out_clearly():
    async def main() -> None:
        ep = nowhere()
        async with aio.Producer(ep) as producer:
            started = time.monotonic()
            with pytest.raises(TimeoutError, match=f"collector not ready within 0.3s.*{ep}"):
                await producer.wait_ready(0.3)
            assert time.monotonic() - started < 3
    run(main())


def test_subscriber_recv_multipart_timeout_and_iteration(sockets: Make):
    (pub1, ep1), (pub2, ep2) = bound(sockets, zmq.XPUB), bound(sockets, zmq.XPUB)

    async def main() -> None:
        async with aio.Subscriber([ep1, ep2], ["orders"]) as sub:
            await_subscription(pub1, b"orders")
            await_subscription(pub2, b"orders")
            pub1.send(b"orders one two")
            pub1.send(b"other no")
            pub1.send_multipart([b"orders", b"x", b"y"])
            pub1.send_multipart([b"orders", b"x", b"y"])
            assert await sub.recv(timeout=5) == (b"orders", b"one two")
            assert await sub.recv(timeout=5) == (b"orders", b"xy")
            assert await sub.recv_multipart(timeout=5) == [b"orders", b"x", b"y"]
            started = time.monotonic()
            with pytest.raises(TimeoutError, match="no message from publisher .* within 0.2s"):
                await sub.recv(timeout=0.2)
            assert 0.15 < time.monotonic() - started < 2
            pub1.send(b"orders 1")
            pub2.send(b"orders 2")
            received = []
            async with asyncio.timeout(5):
                async for message in sub:
                    received.append(message)
                    if len(received) == 2:
                        break
            assert sorted(received) == [(b"orders", b"1"), (b"orders", b"2")]
    run(main())


def test_puller_recv_json_multipart_and_timeout(sockets: Make):
    push, ep = bound(sockets, zmq.PUSH)

    async def main() -> None:
        async with aio.Puller(ep) as puller:
            push.send(b"hello")  # waits (SNDTIMEO-bounded) until the puller is connected
            push.send(b'{"id": 1}')
            push.send_multipart([b"a", b"b"])
            push.send_multipart([b"a", b"b"])
            push.send(b"not json")
            assert await puller.recv(timeout=5) == b"hello"
            assert await puller.recv_json(timeout=5) == {"id": 1}
            assert await puller.recv(timeout=5) == b"ab"
            assert await puller.recv_multipart(timeout=5) == [b"a", b"b"]
            with pytest.raises(json.JSONDecodeError):
                await puller.recv_json(timeout=5)
            with pytest.raises(TimeoutError, match="no message from pusher"):
                await puller.recv(timeout=0.2)
            push.send(b"queued")
            while not puller._socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # until it is in the socket (run bounds it)
                await asyncio.sleep(0.01)
            assert await puller.recv(timeout=0) == b"queued"  # already here: no wait needed
    run(main())


def test_a_cancelled_receive_loses_no_message(sockets: Make):
    """Messages are only taken off the socket after the poll, so cancelling the wait cannot eat one."""
    push, ep = bound(sockets, zmq.PUSH)

    async def main() -> None:
        async with aio.Puller(ep) as puller:
            push.send(b"first")
            assert await puller.recv(timeout=5) == b"first"
            for i in range(24):
                waiting = asyncio.create_task(puller.recv())
                await asyncio.sleep(0.01)  # the task is waiting on the socket (the race under test needs it there)
                push.send(b"%d" % i)
                time.sleep(0.02)  # the message is in the socket; the loop has not seen it yet
                for _ in range(i % 4):  # let the loop get more or less far with it before the cancel
                    await asyncio.sleep(0)
                waiting.cancel()
                try:
                    got = [await waiting]  # it won the race: it has the message
                except asyncio.CancelledError:
                    got = []
                if not got:
                    got = [await puller.recv(timeout=5)]
                assert got == [b"%d" % i]
    run(main())


def test_iteration_ends_when_another_task_closes_the_client(publisher):
    pub, ep = publisher

    async def main() -> None:
        sub = aio.Subscriber(ep)
        await_subscription(pub, b"")
        pub.send(b"t 1")

        got: list[tuple[bytes, bytes]] = []

        async def consume() -> None:
            async for message in sub:
                got.append(message)

        task = asyncio.create_task(consume())
        while not got:  # the loop is iterating: closing must end it (run bounds this wait)
            await asyncio.sleep(0.01)
        await sub.aclose()
        await asyncio.wait_for(task, 5)
        assert got == [(b"t", b"1")]
        with pytest.raises(RuntimeError, match="Subscriber is closed"):
            await sub.recv(timeout=1)
    run(main())


def test_drop_false_waits_for_room_then_times_out(sockets: Make):
    stalled, ep = bound(sockets, zmq.SUB, rcvhwm=1, rcvbuf=4096)

    async def main() -> None:
        async with aio.Producer(ep, drop=False, send_timeout=0.2, hwm=1, linger=0) as producer:
            while not producer.ready:  # let the stand-in attach the connection, then stop reading
                stalled.poll(20)
                await asyncio.sleep(0)
            payload = b"x" * 65536
            with pytest.raises(TimeoutError, match="took no message for 0.2s"):
                for _ in range(100_000):
                    started = time.monotonic()
                    await producer.send("t", payload)
            # The failing send waited for room first (zmq.asyncio's own wait never does for an XPUB).
            assert time.monotonic() - started >= 0.2
    run(main())


def test_the_same_protective_options_as_the_blocking_clients():
    async def main() -> None:
        clients = [aio.Producer(nowhere()), aio.Subscriber(nowhere(), hwm=5, linger=0.25),
                   aio.Puller(nowhere(), heartbeat_interval=1, heartbeat_timeout=3)]
        try:
            producer, sub, puller = (client.socket for client in clients)
            assert isinstance(producer, zmq.asyncio.Socket) and producer.type == zmq.XPUB
            assert (producer.getsockopt(zmq.HEARTBEAT_IVL), producer.getsockopt(zmq.HEARTBEAT_TIMEOUT),
                    producer.getsockopt(zmq.SNDHWM), producer.getsockopt(zmq.LINGER)) == (30_000, 15_000, 10_000, 1000)
            assert (sub.getsockopt(zmq.RCVHWM), sub.getsockopt(zmq.LINGER)) == (5, 250)
            assert (puller.getsockopt(zmq.HEARTBEAT_IVL), puller.getsockopt(zmq.HEARTBEAT_TIMEOUT)) == (1000, 3000)
        finally:
            for client in clients:
                await client.aclose()
        with pytest.raises(ValueError, match="bad endpoint"):
            aio.Puller("localhost:5562")
        with pytest.raises(ValueError, match="missing curve_publickey"):
            aio.Producer(nowhere(), curve_serverkey=b"x" * 40)
    run(main())


@pytest.mark.parametrize("make_context", [zmq.Context, zmq.green.Context])
def test_a_blocking_context_is_refused(make_context):
    context = make_context()
    try:
        with pytest.raises(TypeError, match="needs a zmq.asyncio.Context.*use fanoutd_client.Subscriber"):
            aio.Subscriber(nowhere(), context=context)
    finally:
        close_within(context)


def test_an_injected_context_is_left_open_and_close_is_idempotent(collector: Collector):
    async def main() -> None:
        context = zmq.asyncio.Context()
        producer = aio.Producer(collector.endpoint, context=context)
        await producer.wait_ready(5)
        await producer.send("t", "injected")
        await producer.aclose()
        await producer.aclose()
        producer.close()
        assert producer.closed and not context.closed
        with pytest.raises(RuntimeError, match="Producer is closed"):
            await producer.send("t", "x")
        private = aio.Puller(nowhere())
        private.close()  # the blocking close works too
        assert private.context.closed
        close_within(context)
    run(main())
    assert collector.recv() == [b"t injected"]


# --- through the real daemon ---------------------------------------------------------------------


def test_subscriber_and_puller_receive_from_a_producer_through_the_daemon(start_daemon):
    d = start_daemon()

    async def main() -> None:
        async with aio.Subscriber(d.publish, ["orders"]) as sub, aio.Puller(d.push) as pull, \
                aio.Producer(d.collector) as prod:
            await prod.wait_ready(5)
            deadline = time.monotonic() + 10
            while True:  # the subscriber's own subscription needs a moment to reach the daemon
                await prod.send("orders", b"warm")
                try:
                    await sub.recv(timeout=0.1)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, "the subscriber never got a warm-up message"
            await drain(sub)
            await drain(pull)
            await prod.send("orders", b"hello")
            await prod.send_json("orders", {"id": 7})
            await prod.send_multipart("orders", b"a", b"b")
            await prod.send("prices", b"not for this subscriber")
            assert await sub.recv(timeout=5) == (b"orders", b"hello")
            assert await sub.recv(timeout=5) == (b"orders", b'{"id":7}')
            assert await sub.recv_multipart(timeout=5) == [b"orders", b"a", b"b"]
            with pytest.raises(TimeoutError):
                await sub.recv(timeout=0.3)
            assert await pull.recv(timeout=5) == b"hello"
            assert await pull.recv_json(timeout=5) == {"id": 7}
            assert await pull.recv_multipart(timeout=5) == [b"a", b"b"]
            assert await pull.recv(timeout=5) == b"not for this subscriber"
            with pytest.raises(TimeoutError, match="no message from pusher"):
                await pull.recv(timeout=0.3)

            for i in range(100):
                await prod.send("orders", b"%d" % i)
            subscribed: list[bytes] = []
            pulled: list[bytes] = []
            async with asyncio.timeout(10):
                async for _, payload in sub:
                    subscribed.append(payload)
                    if len(subscribed) == 100:
                        break
                async for payload in pull:
                    pulled.append(payload)
                    if len(pulled) == 100:
                        break
            assert subscribed == pulled == [b"%d" % i for i in range(100)]
    run(main(), timeout=40)
