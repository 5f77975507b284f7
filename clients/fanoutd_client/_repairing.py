"""The stamped subscriber that repairs its gaps by itself, once for the blocking and the asyncio flavour.

:class:`RepairingSubscriber` is :class:`._protocol.SubscriberProtocol` plus a
:class:`._healing.Healer` when it is given ``repair=EP``; the blocking
:class:`fanoutd_client.Subscriber` and :class:`fanoutd_client.aio.Subscriber`
are this class with their own driver. Like the rest of the protocol it never
blocks: the receive loop below is a generator of waits (:data:`._base.Waits`).

When the stamped output confirms a subscription (READY) the prefix is noted,
and the next receive asks the endpoint for its heads before anything else,
so a gap at the end is found (and, on the first READY with ``last_value``,
the latest message of each stream comes first).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from typing import Unpack

from ._base import ClientOptions, Data, Endpoints, Waits, ms, validate_endpoint
from ._healing import Gap, Healer, Report
from ._protocol import SubscriberProtocol


class RepairingSubscriber(SubscriberProtocol):
    """A SUB on fanoutd's PUB or stamped output; with ``stamped=True, repair=EP`` it fills its own gaps.

    Messages then come in sequence order per stream, exactly once;
    ``repaired`` counts those it got back, ``lost`` only those it could not
    (gone from the broker's history, or no answer within ``repair_timeout`` s,
    the longest one repair request waits). ``repair_report`` is called once
    per gap closed with (stream key, messages repaired, runs gone). With
    ``last_value=True`` the first messages are the latest held one of each
    stream under each subscription, then live ones from the next sequence on.
    """

    def __init__(self, endpoints: Endpoints, topics: Data | Iterable[Data] = (b"",), *, stamped: bool = False,
                 repair: str | None = None, repair_timeout: float = 2.0, repair_report: Report | None = None,
                 last_value: bool = False, **options: Unpack[ClientOptions]) -> None:
        if repair is not None and not stamped:
            raise ValueError("repair needs stamped=True: only the stamps say what is missing")
        if last_value and repair is None:
            raise ValueError("last_value needs repair=EP: the last values come from the repair endpoint")
        if repair is not None:
            validate_endpoint(repair)
        if not repair_timeout > 0:
            raise ValueError(f"repair_timeout must be > 0 seconds, not {repair_timeout!r}")
        self._healer: Healer | None = None
        self._heads_due: collections.deque[bytes] = collections.deque()  # READY prefixes not asked about yet
        self._last_value = last_value
        self._valued: set[bytes] = set()  # prefixes whose last values were asked for (once: the first READY)
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
        if self._healer is not None:  # a (re)connect: a gap at the end shows in the heads, asked next
            self._heads_due.append(frames[0])
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
            while self._heads_due:  # dropped only once asked: a cancelled wait asks again
                prefix = self._heads_due[0]
                # Its own subscriptions only: the READY a subscriber gets for another's longer prefix (which
                # its own covers) is a heads question, never a reason to hand out old values.
                if self._last_value and prefix not in self._valued and prefix in self._topics:
                    yield from healer.last_values(prefix)
                    self._valued.add(prefix)
                else:
                    yield from healer.heads(prefix)
                self._heads_due.popleft()
            ready = yield from healer.next()
            if ready is not None:
                self.last_stamp = ready[1]
                return ready[0]
            previous = self.last_stamp
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                frames = yield from super()._message(left)
            except TimeoutError:
                raise self._timed_out(timeout or 0.0) from None
            if not frames:  # a READY came (a reconnect): its heads are asked at the top of the loop
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

    def _close_socket(self) -> bool:
        """The repair socket first: a context is terminated only once all its sockets are closed."""
        if self._healer is not None and not self.closed:
            self._healer.close()
        return super()._close_socket()
