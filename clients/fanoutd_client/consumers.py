"""The consumers: a Subscriber on fanoutd's PUB, a Puller on its PUSH.

Both connect (fanoutd binds), keep ``linger`` at 0 (they never send data,
so there is nothing to flush on close) and bound their receive queue with
``hwm``.  ``recv(timeout)`` raises TimeoutError rather than returning None,
so a missing message can't be mistaken for an empty one; iteration blocks
for the next message and ends only if the context is terminated.

Payloads: a single-frame message's payload is what follows its first
space; a multipart message's payload frames are concatenated.  Use
``recv_multipart`` when the frame boundaries matter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, Unpack

import zmq

from ._base import DEFAULT_PUBLISH, DEFAULT_PUSH, Client, ClientOptions, Data, Endpoints, to_bytes


def split_message(frames: list[bytes]) -> tuple[bytes, bytes]:
    """(topic, payload) of a message as fanoutd defines it (see the module docstring)."""
    if len(frames) == 1:
        topic, _, payload = frames[0].partition(b" ")
        return topic, payload
    return frames[0], b"".join(frames[1:])


class Subscriber(Client):
    """Receives ``(topic, payload)`` from fanoutd's PUB, filtered by topic prefix.

    ``topics`` are byte prefixes of the message's first frame, as everywhere
    in ZeroMQ; the default ``(b"",)`` is everything.  Subscriptions travel
    to the publisher after the connection is up, so messages published in
    the first moments after construction may not arrive.
    """

    _kind = zmq.SUB
    _role = "publisher"

    def __init__(self, endpoints: Endpoints = DEFAULT_PUBLISH, topics: Data | Iterable[Data] = (b"",),
                 **options: Unpack[ClientOptions]) -> None:
        items = (topics,) if isinstance(topics, (str, bytes)) else topics
        self._topics = [to_bytes(t, "topic") for t in items]
        super().__init__(endpoints, **options)

    def _prepare(self, sock: zmq.Socket[Any]) -> None:
        # Before connect, so the subscriptions go out with the handshake.
        for topic in self._topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)

    def subscribe(self, topic: Data) -> None:
        """Also receive messages whose first frame starts with ``topic``."""
        self._check_open()
        self._socket.setsockopt(zmq.SUBSCRIBE, to_bytes(topic, "topic"))

    def unsubscribe(self, topic: Data) -> None:
        """Undo one earlier ``subscribe`` of exactly this prefix."""
        self._check_open()
        self._socket.setsockopt(zmq.UNSUBSCRIBE, to_bytes(topic, "topic"))

    def recv(self, timeout: float | None = None) -> tuple[bytes, bytes]:
        """The next ``(topic, payload)``; TimeoutError after ``timeout`` s (None: wait forever)."""
        return split_message(self._recv_frames(timeout))

    def recv_multipart(self, timeout: float | None = None) -> list[bytes]:
        """The next message's frames exactly as sent (a single-frame message is one frame)."""
        return self._recv_frames(timeout)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        try:
            while True:
                yield self.recv()
        except zmq.ContextTerminated:
            return


class Puller(Client):
    """Receives payloads (topic already stripped by fanoutd) from its PUSH.

    fanoutd hands each message to one puller; its PUSH never waits, so a
    message is dropped when no puller has room.  A larger ``hwm`` lets this
    puller absorb longer bursts.
    """

    _kind = zmq.PULL
    _role = "pusher"

    def __init__(self, endpoints: Endpoints = DEFAULT_PUSH, **options: Unpack[ClientOptions]) -> None:
        super().__init__(endpoints, **options)

    def recv(self, timeout: float | None = None) -> bytes:
        """The next payload; TimeoutError after ``timeout`` s (None: wait forever)."""
        return b"".join(self._recv_frames(timeout))

    def recv_multipart(self, timeout: float | None = None) -> list[bytes]:
        """The next message's frames exactly as fanoutd sent them."""
        return self._recv_frames(timeout)

    def recv_json(self, timeout: float | None = None) -> Any:
        """The next payload parsed as UTF-8 JSON (ValueError if it is not)."""
        return json.loads(self.recv(timeout).decode("utf-8"))

    def __iter__(self) -> Iterator[bytes]:
        try:
            while True:
                yield self.recv()
        except zmq.ContextTerminated:
            return
