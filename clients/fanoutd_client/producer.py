"""The producer: sends ``topic payload`` messages to fanoutd's collector.

Why XPUB and not PUB: the collector is a bound SUB, and a PUB that connects
to it drops everything it sends until the collector's subscription has come
back over the new connection (the "slow joiner", libzmq issues 1594/2267).
A PUB cannot tell when that has happened; an XPUB with ``XPUB_VERBOSE``
receives every peer's subscription as a message (first byte 0x01), so
:meth:`Producer.wait_ready` can wait for exactly that and nothing is lost.
On the wire an XPUB is a PUB: fanoutd and any other SUB see no difference.
"""

from __future__ import annotations

import json
import time
from typing import Any, Unpack

import zmq

from ._base import DEFAULT_COLLECTOR, Client, ClientOptions, Data, Endpoints, _ms, log, to_bytes


def single_frame_topic(topic: Data) -> bytes:
    """A topic that can lead a single-frame message: non-empty and without a space."""
    data = to_bytes(topic, "topic")
    if not data:
        raise ValueError("topic must not be empty")
    if b" " in data:
        raise ValueError(f"topic {data!r} contains a space; in a single-frame message the topic "
                         "ends at the first space (use send_multipart for such topics)")
    return data


class Producer(Client):
    """Publishes to fanoutd's collector (an XPUB connected to each endpoint).

    The constructor does not block: call :meth:`wait_ready` (or pass
    ``wait=SECONDS``) before the first send, because a message sent before
    the collector's subscription has arrived is silently dropped.

    By default sends never block: past ``hwm`` queued messages on a
    connection ZeroMQ drops (PUB semantics), so a stalled broker cannot
    stall the producer.  With ``drop=False`` a send instead waits for room
    (XPUB_NODROP), raising TimeoutError after ``send_timeout`` seconds
    (None: no limit; heartbeats still end a dead connection): right for
    batch senders such as ``fanout pub < file``, where losing lines is worse
    than waiting.  ``close`` waits at most ``linger`` (default 1 s) to flush.
    """

    _kind = zmq.XPUB
    _role = "collector"
    _default_linger = 1.0

    def __init__(self, endpoints: Endpoints = DEFAULT_COLLECTOR, *, wait: float | None = None,
                 drop: bool = True, send_timeout: float | None = None,
                 **options: Unpack[ClientOptions]) -> None:
        self._subscriptions = 0
        self._drop = drop
        self._send_timeout_ms = -1 if send_timeout is None else _ms(send_timeout, "send_timeout")
        super().__init__(endpoints, **options)
        if wait is not None:
            try:
                self.wait_ready(wait)
            except BaseException:
                self.close()
                raise

    def _prepare(self, sock: zmq.Socket[Any]) -> None:
        # Verbose: pass on every peer's subscription, not only the first of each
        # topic, so that N collectors subscribing to b"" give N messages.
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        if not self._drop:
            sock.setsockopt(zmq.XPUB_NODROP, 1)
            sock.setsockopt(zmq.SNDTIMEO, self._send_timeout_ms)

    def _drain(self) -> None:
        """Count the subscriptions that have arrived (without waiting)."""
        while True:
            try:
                frame = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame[:1] == b"\x01":
                self._subscriptions += 1
                log.debug("collector subscription %d of %d arrived", self._subscriptions, len(self.endpoints))

    @property
    def ready(self) -> bool:
        """True once as many subscriptions as endpoints have arrived (checked without waiting).

        Subscriptions are counted, not matched to endpoints: a collector that
        reconnects during start-up counts twice.  That is rare and only makes
        readiness early, never late.
        """
        self._check_open()
        self._drain()
        return self._subscriptions >= len(self.endpoints)

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Block until every collector has subscribed, or raise TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + _ms(timeout, "timeout") / 1000
        while not self.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"collector not ready within {timeout:g}s: {self._subscriptions} of "
                    f"{len(self.endpoints)} subscriptions arrived from {', '.join(self.endpoints)} "
                    "(is fanoutd running there?)")
            self._socket.poll(max(1, int(remaining * 1000)), zmq.POLLIN)

    def send(self, topic: Data, payload: Data) -> None:
        """Send one frame ``topic + b" " + payload`` (the topic may not contain a space)."""
        self._check_open()
        self._send([single_frame_topic(topic) + b" " + to_bytes(payload, "payload")])

    def send_multipart(self, topic: Data, *frames: Data) -> None:
        """Send ``[topic, *frames]``; the topic may contain spaces, at least one frame is needed.

        (A lone topic frame would be a single-frame message, split at its first space.)
        """
        self._check_open()
        head = to_bytes(topic, "topic")
        if not head:
            raise ValueError("topic must not be empty")
        if not frames:
            raise ValueError("send_multipart needs at least one payload frame")
        self._send([head, *(to_bytes(f, "frame") for f in frames)])

    def _send(self, frames: list[bytes]) -> None:
        try:
            self._socket.send_multipart(frames)
        except zmq.Again:  # only with drop=False: a collector's queue stayed full
            raise TimeoutError(f"collector at {', '.join(self.endpoints)} took no message for "
                               f"{self._send_timeout_ms / 1000:g}s (its queue is full)") from None

    def send_json(self, topic: Data, obj: Any) -> None:
        """Send ``obj`` as compact UTF-8 JSON in a single frame.

        NaN and Infinity are refused (ValueError): they are not JSON, and
        consumers in other languages would reject the message.
        """
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        self.send(topic, text.encode("utf-8"))
