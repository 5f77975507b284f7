"""A stamped subscriber's automatic repair: fill each gap from the repair endpoint, in order, exactly once.

Sans-I/O, for both flavours: the Healer never blocks. Where it has to wait
(for an answer on its DEALER, or to space its requests) it yields a
:class:`._base.Poll`, and the subscriber's driver waits, blocking
(:func:`._base.run_blocking`) or with an ``await`` (:mod:`fanoutd_client.aio`).
Its socket is only read and written with ``NOBLOCK``, through a plain view
of it, so a cancelled asyncio task never loses an answer it had taken.

A stamped subscriber (:mod:`._repairing`, blocking or asyncio) owns one
:class:`Healer` when it is given ``repair=EP``. The subscriber's gap
tracker (:mod:`._stamps`) names each gap instead of counting it; the Healer
asks the endpoint for it (RANGE, :mod:`.repair`) and hands back, in
sequence order, first the messages it got back, then the message that
showed the gap. What the END names as gone
(evicted, another epoch, unknown stream, not stamped yet), or what does not
come within ``timeout``, is added to the tracker's ``lost``, exactly.

Why one gap at a time, in the caller's ``recv``: while a gap is open the
subscriber reads nothing else, so order per stream (and across streams) is
the broker's and no stream needs a queue of its own. Memory stays bounded:
the message that showed the gap is the one held back (per gap, so per
stream), and a gap is fetched one reply at a time, at most the endpoint's
bound of 1,000 messages (4 MiB), as ``recv`` consumes them. Meanwhile the
SUB's own queue (its ``hwm``) holds what arrives live. Each request waits at
most ``timeout``: a repair endpoint that is down or slow delays a ``recv``
by at most that, and the gap is then counted lost.

Last values (``last_value=True``): at the first READY of a prefix, a LAST
request brings the latest held message of each stream under it; each is
handed out first and its stream followed from there (:meth:`Healer.last_values`).

Heads: when the stamped output confirms a subscription again (READY after a
reconnect), the Healer asks HEADS for that prefix; a stream whose head is
past the last message seen has a gap at its end, repaired the same way,
without waiting for a later message. At the first READY nothing is
followed yet, so there is nothing to ask about. Messages of such a gap that
still arrive on the SUB afterwards (from the old connection's queue) are
recognised by their stamps and skipped.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from ._base import Poll, Waits
from ._stamps import GapTracker, Stamp
from .repair import (NO_ANSWER, BadAnswer, End, Gone, Heads, Repaired, Repairer, heads_request, parse_answer,
                     range_request)
from .wire import GONE_LIMIT

log = logging.getLogger("fanoutd_client")

#: The least time between two requests (the endpoint refuses more than 100 a second per connection).
REQUEST_SPACING = 0.012
#: Called once per gap closed: (stream key, messages repaired, runs gone); ``fanout sub`` prints it.
Report = Callable[[bytes, int, list[Gone]], None]


@dataclass
class Gap:
    """One missing range of one stream, and the message that revealed it (None: found by HEADS)."""

    key: bytes
    epoch: int
    stream: int
    next: int          #: the first sequence not yet repaired nor given up
    last: int
    held: tuple[list[bytes], Stamp] | None
    repaired: int = 0
    gone: list[Gone] = field(default_factory=list)


class Healer:
    """The repair side of one subscriber: its DEALER, its open gaps, the messages ready to hand out."""

    def __init__(self, endpoint: str, context: zmq.Context[Any], tracker: GapTracker, timeout: float,
                 report: Report | None = None, options: dict[int, int | bytes] | None = None) -> None:
        self._repairer = Repairer(endpoint, context, options)
        #: The DEALER as the subscriber's context made it (an asyncio socket in aio): what a driver polls.
        self.socket = self._repairer.socket
        self._nowait = zmq.Socket.shadow(self.socket.underlying)  # for the NOBLOCK calls, in either flavour
        self._tracker = tracker
        self._timeout = timeout
        self._report = report
        self._gaps: collections.deque[Gap] = collections.deque()
        self._ready: collections.deque[tuple[list[bytes], Stamp]] = collections.deque()
        self._tag = 0
        self._sent = 0.0
        self.repaired = 0

    def close(self) -> None:
        self._repairer.close()

    def open(self, gap: Gap) -> None:
        self._gaps.append(gap)

    def next(self) -> Waits[tuple[list[bytes], Stamp] | None]:
        """The next message in order (its frames, trailer stripped, and its stamp), or None: read the SUB."""
        while not self._ready and self._gaps:
            yield from self._fetch(self._gaps[0])
        return self._ready.popleft() if self._ready else None

    # --- the requests ----------------------------------------------------------------------

    def _ask(self, request: Callable[[int], bytes]) -> Waits[tuple[int, float] | None]:
        self._tag = (self._tag + 1) & 0xFFFFFFFF
        pause = self._sent + REQUEST_SPACING - time.monotonic()
        if pause > 0:  # the endpoint never answers beyond 100 requests a second from one connection
            yield Poll(None, math.ceil(pause * 1000))
        self._sent = time.monotonic()
        try:
            self._nowait.send(request(self._tag), zmq.NOBLOCK)
        except zmq.Again:  # its queue is full: the endpoint has not taken the earlier ones
            return None
        return self._tag, time.monotonic() + self._timeout

    def _answer(self, tag: int, deadline: float) -> Waits[Repaired | End | Heads | None]:
        """The next answer to ``tag``, None at the deadline (others, late answers to given-up requests, are
        skipped)."""
        while True:
            try:
                answer = parse_answer(self._nowait.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                yield Poll(self.socket, math.ceil(left * 1000))
                continue
            except BadAnswer as exc:
                log.warning("repair endpoint: %s", exc)
                continue
            if answer.tag == tag:
                return answer

    def _fetch(self, gap: Gap) -> Waits[None]:
        """One RANGE request for the rest of ``gap``: its messages to hand out, its gone runs counted."""
        start = gap.next
        asked = yield from self._ask(lambda tag: range_request(tag, gap.epoch, gap.stream, start, gap.last))
        end: End | None = None
        while asked is not None and (answer := (yield from self._answer(*asked))) is not None:
            if isinstance(answer, End):
                end = answer
                break
            if isinstance(answer, Repaired):
                self._take(gap, answer)
        if end is None:  # no answer in time: what is left of the gap is lost
            self._give_up(gap, Gone(gap.next, gap.last, NO_ANSWER))
        else:  # the runs and the messages are disjoint: every sequence from start on is one or the other
            runs = [Gone(max(run.first, start), min(run.last, gap.last), run.reason) for run in end.gone
                    if run.last >= start and run.first <= gap.last]
            retry = [run for run in runs if run.reason == GONE_LIMIT]
            for run in runs:
                if run.reason != GONE_LIMIT:
                    self._give_up(gap, run, close=False)
            if retry:
                gap.next = min(run.first for run in retry)
            else:
                gap.next = gap.last + 1
        if gap.next > gap.last:
            self._close(gap)

    def _take(self, gap: Gap, answer: Repaired) -> None:
        stamp = answer.stamp
        if (stamp.epoch, stamp.stream) != (gap.epoch, gap.stream) or not gap.next <= stamp.seq <= gap.last:
            return  # not what was asked for (or already handed out): never twice
        self._ready.append((answer.frames[:-1], stamp))
        gap.repaired += 1
        self.repaired += 1
        gap.next = stamp.seq + 1

    def _give_up(self, gap: Gap, run: Gone, close: bool = True) -> None:
        self._tracker.lost += run.last - run.first + 1
        gap.gone.append(run)
        if close:
            gap.next = gap.last + 1

    def _close(self, gap: Gap) -> None:
        self._gaps.remove(gap)
        if gap.held is not None:
            self._ready.append(gap.held)
        if self._report is not None:
            self._report(gap.key, gap.repaired, gap.gone)

    def heads(self, prefix: bytes) -> Waits[None]:
        """After a (re)connect: open a gap for every followed stream under ``prefix`` whose head is past it."""
        followed = dict(self._tracker.streams(prefix))
        if not followed:
            return
        asked = yield from self._ask(lambda tag: heads_request(tag, prefix))
        answer = None
        while asked is not None and (answer := (yield from self._answer(*asked))) is not None:
            if isinstance(answer, Heads):
                break
        if not isinstance(answer, Heads):
            log.warning("repair endpoint: no heads for %r in time; a gap at the end shows with the next message",
                        prefix)
            return
        for stream, seq, key in answer.streams:
            if key not in followed or followed[key][0] != answer.epoch:
                continue  # not followed here, or the broker restarted (nothing of the old epoch is offered)
            _, known, last = followed[key]
            first = last + 1 if known == stream else 1
            if known != stream:
                self._tracker.resets += 1
            if seq >= first:
                self._tracker.advance(key, answer.epoch, stream, seq)
                self.open(Gap(key, answer.epoch, stream, first, seq, None))

    def last_values(self, prefix: bytes) -> Waits[None]:
        """On the first READY of ``prefix`` (``last_value``): the latest held message of each stream under it
        not followed yet, handed out first; from there on the stream is followed, so live messages up to
        that sequence are skipped and the next one continues it: no gap, no duplicate."""
        followed = dict(self._tracker.streams(prefix))
        asked = yield from self._ask(lambda tag: heads_request(tag, prefix, last=True))
        values: list[Repaired] = []
        answer = None
        while asked is not None and (answer := (yield from self._answer(*asked))) is not None:
            if isinstance(answer, Heads):
                break
            if isinstance(answer, Repaired):
                values.append(answer)
        if not isinstance(answer, Heads):
            log.warning("repair endpoint: no last values for %r in time; live messages only", prefix)
            return
        if answer.more:
            log.warning("repair endpoint: last values of some streams under %r left out (past a reply's bounds)",
                        prefix)
        for value in values:
            stamp, frames = value.stamp, value.frames[:-1]
            key = frames[0][:stamp.key_length]
            if key in followed or stamp.epoch != answer.epoch:
                continue  # already followed here: its messages come in order from where they are
            self._tracker.observe(frames[0], stamp, count=False)
            if self._tracker.gap is None and not self._tracker.stale:
                self._ready.append((frames, stamp))
