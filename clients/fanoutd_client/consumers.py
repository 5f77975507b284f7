"""The blocking consumers: a Subscriber on fanoutd's PUB, a Puller on its PUSH.

Both connect (fanoutd binds), keep ``linger`` at 0 (they never send data,
so there is nothing to flush on close) and bound their receive queue with
``hwm``.  ``recv(timeout)`` raises TimeoutError rather than returning None,
so a missing message can't be mistaken for an empty one; iteration blocks
for the next message and ends only if the context is terminated.

Payloads: a single-frame message's payload is what follows its first
space; a multipart message's payload frames are concatenated.  Use
``recv_multipart`` when the frame boundaries matter.

The protocol lives in :mod:`._protocol`; this module only does the
blocking I/O.  The asyncio twins are in :mod:`fanoutd_client.aio`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Unpack

import zmq

from ._base import DEFAULT_PUBLISH, DEFAULT_PUSH, ClientOptions, Data, Endpoints, run_blocking
from ._healing import Report
from ._protocol import PullerProtocol, parse_json, split_message
from ._repairing import RepairingSubscriber

__all__ = ["Puller", "Subscriber", "split_message"]


class Subscriber(RepairingSubscriber):
    """Receives ``(topic, payload)`` from fanoutd's PUB, filtered by topic prefix.

    ``topics`` are byte prefixes of the message's first frame, as everywhere
    in ZeroMQ; the default ``(b"",)`` is everything.  Subscriptions travel
    to the publisher after the connection is up, so messages published in
    the first moments after construction may not arrive.

    With ``stamped=True`` and ``repair="tcp://..."`` (the broker's repair
    endpoint) it fills every gap in its streams by itself (:mod:`._healing`):
    messages come in sequence order per stream, exactly once; ``repaired``
    counts those it got back, ``lost`` only those it could not (gone from
    the broker's history, or no answer within ``repair_timeout`` s, the
    longest one repair request waits). ``repair_report`` is called once per
    gap closed with (stream key, messages repaired, runs gone).

    ``last_value=True`` (with ``repair``): after the broker confirms a
    subscription, the latest held message of each stream under it comes
    first, then live messages from the next sequence on, with no gap and no
    duplicate between the two (the zguide's Clone pattern, exact by the stamps).
    """

    def __init__(self, endpoints: Endpoints = DEFAULT_PUBLISH, topics: Data | Iterable[Data] = (b"",), *,
                 stamped: bool = False, repair: str | None = None, repair_timeout: float = 2.0,
                 repair_report: Report | None = None, last_value: bool = False,
                 **options: Unpack[ClientOptions]) -> None:
        super().__init__(endpoints, topics, stamped=stamped, repair=repair, repair_timeout=repair_timeout,
                         repair_report=repair_report, last_value=last_value, **options)

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Stamped subscribers: block until the broker confirmed every subscription is live (TimeoutError after
        ``timeout`` s); from then, nothing published for these topics misses this subscriber."""
        run_blocking(self._socket, self._readiness(timeout))

    def recv(self, timeout: float | None = None) -> tuple[bytes, bytes]:
        """The next ``(topic, payload)``; TimeoutError after ``timeout`` s (None: wait forever)."""
        return split_message(run_blocking(self._socket, self._message(timeout)))

    def recv_multipart(self, timeout: float | None = None) -> list[bytes]:
        """The next message's frames exactly as sent (a single-frame message is one frame)."""
        return run_blocking(self._socket, self._message(timeout))

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        try:
            while True:
                yield self.recv()
        except zmq.ContextTerminated:
            return


class Puller(PullerProtocol):
    """Receives payloads (topic already stripped by fanoutd) from its PUSH.

    fanoutd hands each message to one puller; its PUSH never waits, so a
    message is dropped when no puller has room.  A larger ``hwm`` lets this
    puller absorb longer bursts.
    """

    def __init__(self, endpoints: Endpoints = DEFAULT_PUSH, **options: Unpack[ClientOptions]) -> None:
        super().__init__(endpoints, **options)

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Block until the connection to every endpoint is up (TimeoutError after ``timeout`` s): from then on
        fanoutd's PUSH output counts this puller among those it hands messages to."""
        run_blocking(self._socket, self._readiness(timeout))

    def recv(self, timeout: float | None = None) -> bytes:
        """The next payload (its frames concatenated); TimeoutError after ``timeout`` s (None: wait forever)."""
        return b"".join(run_blocking(self._socket, self._frames(timeout)))

    def recv_multipart(self, timeout: float | None = None) -> list[bytes]:
        """The next message's frames exactly as fanoutd sent them."""
        return run_blocking(self._socket, self._frames(timeout))

    def recv_json(self, timeout: float | None = None) -> Any:
        """The next payload parsed as UTF-8 JSON (ValueError if it is not)."""
        return parse_json(self.recv(timeout))

    def __iter__(self) -> Iterator[bytes]:
        try:
            while True:
                yield self.recv()
        except zmq.ContextTerminated:
            return
