"""The blocking producer: sends ``topic payload`` messages to fanoutd's collector.

The protocol (why an XPUB, readiness, framing, the size limit) lives in
:mod:`._protocol`; this module only does the blocking I/O.  The asyncio
twin is :class:`fanoutd_client.aio.Producer`.
"""

from __future__ import annotations

import time
from typing import Any, Unpack

import zmq

from ._base import DEFAULT_COLLECTOR, ClientOptions, Data, Endpoints, run_blocking
from ._producing import MessageTooLarge, ProducerProtocol
from ._protocol import single_frame_topic

__all__ = ["MessageTooLarge", "Producer", "single_frame_topic"]


class Producer(ProducerProtocol):
    """Publishes to fanoutd's collector (an XPUB connected to each endpoint).

    The constructor does not block: call :meth:`wait_ready` (or pass
    ``wait=SECONDS``) before the first send, because a message sent before
    the collector's subscription has arrived is silently dropped.

    By default sends never block: past ``hwm`` queued messages on a
    connection the message is not sent and counted in :attr:`dropped` (with
    a warning at the first and every 10,000th), so a stalled broker cannot
    stall the producer and no loss is silent.  While the broker restarts
    (or the connection is re-made) messages wait in that queue and are
    delivered after the reconnect: nothing is lost up to ``hwm`` messages
    of downtime.  A fanoutd that stops tells its producers first (it
    subscribes to :data:`DRAIN_TOPIC`): they hold what they send, up to
    ``hwm`` messages, until a collector subscribes again, and those go out
    with the next send, :meth:`wait_ready` or :meth:`close`, so nothing is in
    flight to a collector that closes.  With ``drop=False`` a send instead waits for room,
    raising TimeoutError after ``send_timeout`` seconds
    (None: no limit; heartbeats still end a dead connection): right for
    batch senders such as ``fanout pub < file``, where losing lines is worse
    than waiting.  ``close`` waits at most ``linger`` (default 1 s) to flush.

    Held back by fanoutd (under ``slow_consumer_policy = "pace"`` while a
    reader is behind, or while the broker is), the queue fills and ``drop``
    decides.  The default stays ``drop=True`` because a producer in a
    request handler must never stall on a slow reader downstream, and a
    counted drop is not silent (delivered + ``dropped`` = sent); a stream
    that must not lose passes ``drop=False`` and goes at fanoutd's pace, as
    NATS and Redis clients do when the server slows them.  What is still
    queued when ``close`` runs out of ``linger`` is discarded by libzmq
    without a count; ``close`` then warns and sets :attr:`flushed` to False,
    so a producer that may exit while held back gives a longer ``linger``
    or checks ``flushed``.

    A message over the broker's limit (:attr:`max_message_size`, learnt
    from the collector by :meth:`wait_ready`) raises :class:`MessageTooLarge`
    and is not sent: fanoutd would drop it without telling anyone.
    """

    def __init__(self, endpoints: Endpoints = DEFAULT_COLLECTOR, *, wait: float | None = None,
                 drop: bool = True, send_timeout: float | None = None, max_message_size: int | None = None,
                 **options: Unpack[ClientOptions]) -> None:
        super().__init__(endpoints, drop=drop, send_timeout=send_timeout, max_message_size=max_message_size,
                         **options)
        if wait is not None:
            try:
                self.wait_ready(wait)
            except BaseException:
                self.close()
                raise

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Block until every collector has subscribed, or raise TimeoutError after ``timeout`` s."""
        run_blocking(self._socket, self._readiness(timeout))
        self._send(None)  # what was held while a collector drained goes out now

    def send(self, topic: Data, payload: Data) -> None:
        """Send one frame ``topic + b" " + payload`` (the topic may not contain a space)."""
        self._send(self._single(topic, payload))

    def send_multipart(self, topic: Data, *frames: Data) -> None:
        """Send ``[topic, *frames]``; the topic may contain spaces, at least one frame is needed."""
        self._send(self._multipart(topic, frames))

    def send_json(self, topic: Data, obj: Any) -> None:
        """Send ``obj`` as compact UTF-8 JSON in a single frame (NaN and Infinity: ValueError)."""
        self.send(topic, self._json(obj))

    def _send(self, frames: list[bytes] | None) -> None:
        if frames is not None and self._must_wait():
            run_blocking(self._socket, self._until_resumed())
        for message in self._release(frames):
            try:
                self._socket.send_multipart(message, self._send_flags)
            except zmq.Again:  # a collector's queue is full (for send_timeout, with drop=False)
                self._refused()

    def close(self) -> None:
        """Send what is held for a collector that has come back, count the rest as dropped, then close."""
        if self.closed:
            return
        if self._held:
            self._drain()
            self._send(None)
            self._abandon_held()
        started = time.monotonic()
        super().close()
        self._note_flush(time.monotonic() - started)
