"""asyncio clients: the same Producer, Subscriber and Puller, with coroutines for I/O.

    import asyncio
    from fanoutd_client import aio

    async def main() -> None:
        async with aio.Producer("tcp://127.0.0.1:5560") as producer:
            await producer.wait_ready(5)
            await producer.send("orders", b"hello")
        async with aio.Subscriber("tcp://127.0.0.1:5561", ["orders"]) as sub:
            topic, payload = await sub.recv(timeout=5)
            async for topic, payload in sub:
                ...

Built on ``zmq.asyncio``; this module is the only one that imports it, so
blocking and gevent users never load asyncio.  Options, framing, topic
rules, readiness and the size limit are the blocking clients' own
(:mod:`._protocol`): only the waiting differs, an ``await`` on the socket's
poll instead of a blocking one.  A message is taken off the socket only
after that poll, in one synchronous step, so a timeout or a cancelled task
never loses a message.

Differences from the blocking clients: the constructor cannot wait (no
``wait=``; ``await wait_ready()``), an injected context must be a
``zmq.asyncio.Context``, and ``async with`` closes through :meth:`aclose`,
which lets a private context flush queued messages (up to ``linger``)
without blocking the event loop.  ``close()`` also works, but may block
for ``linger``.  Iteration ends when the client is closed, e.g. by another
task.  A client belongs to one task at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack, cast

import zmq
import zmq.asyncio

from ._base import (DEFAULT_COLLECTOR, DEFAULT_PUBLISH, DEFAULT_PUSH, Client, ClientOptions, Data, Endpoints, Poll,
                    Waits)
from ._healing import Report
from ._producing import MessageTooLarge, ProducerProtocol
from ._protocol import PullerProtocol, parse_json, split_message
from ._repairing import RepairingSubscriber

__all__ = ["MessageTooLarge", "Producer", "Puller", "Subscriber"]

T = TypeVar("T")


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (not merely a future it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _AsyncClient(Client):
    """The asyncio flavour of the hooks in :class:`._base.Client`, and the awaiting driver."""

    def _new_context(self) -> zmq.Context[Any]:
        return zmq.asyncio.Context()

    def _check_context(self, context: zmq.Context[Any]) -> None:
        """Refuse any other context: its sockets block (or, green, block the whole event loop)."""
        if not isinstance(context, zmq.asyncio.Context):
            name = type(self).__name__
            raise TypeError(f"fanoutd_client.aio.{name} needs a zmq.asyncio.Context, not "
                            f"{type(context).__module__}.{type(context).__name__}: use "
                            f"fanoutd_client.{name} for a blocking client")

    def _nonblocking_view(self, sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
        # An asyncio socket returns a Future even for NOBLOCK calls; the protocol's
        # non-blocking reads go through a plain socket object on the same handle.
        return zmq.Socket.shadow(sock.underlying)

    @property
    def _io(self) -> zmq.asyncio.Socket:
        return cast(zmq.asyncio.Socket, self._socket)  # what _new_context/_check_context made sure of

    async def _wait(self, steps: Waits[T]) -> T:
        """Drive a protocol step, awaiting the socket's poll where it would block."""
        try:
            while True:
                wait = next(steps)
                try:
                    if not isinstance(wait, Poll):
                        await self._io.poll(wait)  # POLLIN, the default
                    elif wait.socket is not None:  # a helper socket on this asyncio context (repair)
                        await cast(zmq.asyncio.Socket, wait.socket).poll(wait.timeout)
                    else:
                        await asyncio.sleep(wait.timeout / 1000)
                except asyncio.CancelledError:
                    if self._closed and not _cancelling():
                        self._check_open()  # closed by another task: say so, rather than "cancelled"
                    raise
        except StopIteration as done:
            result: T = done.value
            return result

    async def aclose(self) -> None:
        """Close the socket; terminate a private context in a thread, so the loop runs while it flushes."""
        if self._close_socket() and self._owns_context:
            await asyncio.to_thread(self._terminate_context)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


class Producer(ProducerProtocol, _AsyncClient):
    """Publishes to fanoutd's collector; :class:`fanoutd_client.Producer` with coroutines.

    ``await wait_ready()`` before the first send: a message sent before the
    collector's subscription has arrived is silently dropped.  Sends do not
    wait (a message a full queue refuses is counted in ``dropped``) unless ``drop=False`` (then up to ``send_timeout`` s for room, as in
    the blocking producer).  A message over :attr:`max_message_size` raises
    :class:`MessageTooLarge` and is not sent.
    """

    def __init__(self, endpoints: Endpoints = DEFAULT_COLLECTOR, *, drop: bool = True,
                 send_timeout: float | None = None, max_message_size: int | None = None,
                 **options: Unpack[ClientOptions]) -> None:
        super().__init__(endpoints, drop=drop, send_timeout=send_timeout, max_message_size=max_message_size,
                         **options)

    async def wait_ready(self, timeout: float = 5.0) -> None:
        """Return once every collector has subscribed; TimeoutError after ``timeout`` s."""
        await self._wait(self._readiness(timeout))
        await self._send(None)  # what was held while a collector drained goes out now

    async def send(self, topic: Data, payload: Data) -> None:
        """Send one frame ``topic + b" " + payload`` (the topic may not contain a space)."""
        await self._send(self._single(topic, payload))

    async def send_multipart(self, topic: Data, *frames: Data) -> None:
        """Send ``[topic, *frames]``; the topic may contain spaces, at least one frame is needed."""
        await self._send(self._multipart(topic, frames))

    async def send_json(self, topic: Data, obj: Any) -> None:
        """Send ``obj`` as compact UTF-8 JSON in a single frame (NaN and Infinity: ValueError)."""
        await self.send(topic, self._json(obj))

    async def _send(self, frames: list[bytes] | None) -> None:
        if frames is not None and self._must_wait():
            await self._wait(self._until_resumed())
        for message in self._release(frames):
            if self._drop:
                try:
                    await self._io.send_multipart(message, zmq.DONTWAIT)
                except zmq.Again:
                    self._refused()
            else:
                await self._send_waiting(message)

    async def _send_waiting(self, message: list[bytes]) -> None:
        """Send, waiting up to send_timeout for room at a full queue by retrying (1 ms, doubling to 20 ms).

        Not ``await send_multipart``: zmq.asyncio decides whether to wait by
        ZMQ_EVENTS, which an XPUB always reports writable (XPUB_NODROP too),
        so a send to a full queue raised Again at once, however long
        send_timeout was, and a producer that fanoutd held back failed instead
        of waiting (tests/test_producers_held_back.py).
        """
        deadline = None if self._send_timeout_ms < 0 else time.monotonic() + self._send_timeout_ms / 1000
        pause = 0.001
        while True:
            try:
                await self._io.send_multipart(message, zmq.DONTWAIT)  # done at once: sent, or Again
                return
            except zmq.Again:
                if deadline is not None and time.monotonic() >= deadline:
                    self._refused()  # raises TimeoutError (drop=False)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)

    async def aclose(self) -> None:
        """Send what is held for a collector that has come back, count the rest as dropped, then close."""
        if self.closed:
            return
        if self._held:
            self._drain()
            await self._send(None)
            self._abandon_held()
        started = time.monotonic()
        await super().aclose()
        self._note_flush(time.monotonic() - started)

    def close(self) -> None:
        """Close at once; messages still held for a draining collector are counted in ``dropped``."""
        if self.closed:
            return
        self._abandon_held()
        started = time.monotonic()
        super().close()
        self._note_flush(time.monotonic() - started)


class Subscriber(RepairingSubscriber, _AsyncClient):
    """Receives ``(topic, payload)`` from fanoutd's PUB; :class:`fanoutd_client.Subscriber` with coroutines.

    ``subscribe``/``unsubscribe`` are plain methods (they only set an option).
    With ``stamped=True, repair=EP`` it repairs its gaps exactly as the
    blocking one does (the same code, :mod:`._healing`), awaiting the repair
    endpoint's answers instead of blocking on them.
    """

    def __init__(self, endpoints: Endpoints = DEFAULT_PUBLISH, topics: Data | Iterable[Data] = (b"",), *,
                 stamped: bool = False, repair: str | None = None, repair_timeout: float = 2.0,
                 repair_report: Report | None = None, last_value: bool = False,
                 **options: Unpack[ClientOptions]) -> None:
        super().__init__(endpoints, topics, stamped=stamped, repair=repair, repair_timeout=repair_timeout,
                         repair_report=repair_report, last_value=last_value, **options)

    async def wait_ready(self, timeout: float = 5.0) -> None:
        """Stamped subscribers: return once the broker confirmed every subscription is live (TimeoutError after
        ``timeout`` s)."""
        await self._wait(self._readiness(timeout))

    async def recv(self, timeout: float | None = None) -> tuple[bytes, bytes]:
        """The next ``(topic, payload)``; TimeoutError after ``timeout`` s (None: wait forever)."""
        return split_message(await self._wait(self._message(timeout)))

    async def recv_multipart(self, timeout: float | None = None) -> list[bytes]:
        """The next message's frames exactly as sent (a single-frame message is one frame)."""
        return await self._wait(self._message(timeout))

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> tuple[bytes, bytes]:
        if self._closed:
            raise StopAsyncIteration
        try:
            return await self.recv()
        except RuntimeError:
            if self._closed:  # closed by another task while this one waited
                raise StopAsyncIteration from None
            raise


class Puller(PullerProtocol, _AsyncClient):
    """Receives payloads from fanoutd's PUSH; :class:`fanoutd_client.Puller` with coroutines."""

    def __init__(self, endpoints: Endpoints = DEFAULT_PUSH, **options: Unpack[ClientOptions]) -> None:
        super().__init__(endpoints, **options)

    async def wait_ready(self, timeout: float = 5.0) -> None:
        """Return once the connection to every endpoint is up (TimeoutError after ``timeout`` s)."""
        await self._wait(self._readiness(timeout))

    async def recv(self, timeout: float | None = None) -> bytes:
        """The next payload (its frames concatenated); TimeoutError after ``timeout`` s (None: wait forever)."""
        return b"".join(await self._wait(self._frames(timeout)))

    async def recv_multipart(self, timeout: float | None = None) -> list[bytes]:
        """The next message's frames exactly as fanoutd sent them."""
        return await self._wait(self._frames(timeout))

    async def recv_json(self, timeout: float | None = None) -> Any:
        """The next payload parsed as UTF-8 JSON (ValueError if it is not)."""
        return parse_json(await self.recv(timeout))

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        try:
            return await self.recv()
        except RuntimeError:
            if self._closed:
                raise StopAsyncIteration from None
            raise
