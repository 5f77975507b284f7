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

import time
from collections.abc import Iterable, Iterator
from typing import Any, Unpack

import zmq

from ._base import (DEFAULT_PUBLISH, DEFAULT_PUSH, ClientOptions, Data, Endpoints, Waits, ms, run_blocking,
                    validate_endpoint)
from ._healing import Gap, Healer, Report
from ._protocol import PullerProtocol, SubscriberProtocol, parse_json, split_message

__all__ = ["Puller", "Subscriber", "split_message"]


class Subscriber(SubscriberProtocol):
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
    """

    def __init__(self, endpoints: Endpoints = DEFAULT_PUBLISH, topics: Data | Iterable[Data] = (b"",), *,
                 stamped: bool = False, repair: str | None = None, repair_timeout: float = 2.0,
                 repair_report: Report | None = None, **options: Unpack[ClientOptions]) -> None:
        if repair is not None and not stamped:
            raise ValueError("repair needs stamped=True: only the stamps say what is missing")
        if repair is not None:
            validate_endpoint(repair)
        if not repair_timeout > 0:
            raise ValueError(f"repair_timeout must be > 0 seconds, not {repair_timeout!r}")
        self._healer: Healer | None = None
        super().__init__(endpoints, topics, stamped=stamped, **options)
        if repair is not None:
            try:
                self._healer = Healer(repair, self._context, self._tracker(), repair_timeout, repair_report,
                                      self._curve)  # the repair endpoint has the stamped output's access
            except BaseException:
                self.close()
                raise
            self._repairing = True

    @property
    def repaired(self) -> int:
        """Messages got back from the repair endpoint (0 without ``repair``)."""
        return self._healer.repaired if self._healer is not None else 0

    def _control(self, frames: list[bytes]) -> bool:
        if not super()._control(frames):
            return False
        if self._healer is not None:  # a (re)connect: a gap at the end shows in the heads
            self._healer.heads(frames[0])
        return True

    def _message(self, timeout: float | None) -> Waits[list[bytes]]:
        """The next message; with repair, in order per stream, the gaps filled (or counted lost) first."""
        healer = self._healer
        if healer is None:
            return (yield from super()._message(timeout))
        # One timeout for the call, however many messages it skips as already handed out.
        deadline = None if timeout is None else time.monotonic() + ms(timeout, "timeout") / 1000
        while True:
            self._check_open()
            ready = healer.next()
            if ready is not None:
                self.last_stamp = ready[1]
                return ready[0]
            previous = self.last_stamp
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                frames = yield from super()._message(left)
            except TimeoutError:
                raise self._timed_out(timeout or 0.0) from None
            if not frames:  # a READY came (a reconnect): heads asked, a gap at the end may be open
                continue
            gaps = self._tracker()
            if gaps.stale:  # already handed out (repaired, or sent twice): never twice
                self.last_stamp = previous
                continue
            if gaps.gap is None:
                return frames
            assert self.last_stamp is not None
            key, epoch, stream, first, last = gaps.gap
            healer.open(Gap(key, epoch, stream, first, last, (frames, self.last_stamp)))

    def close(self) -> None:
        """Close the repair socket, then the subscription's (and a private context). Idempotent."""
        if self._healer is not None:
            self._healer.close()
        super().close()

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
