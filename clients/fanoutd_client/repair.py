"""fanoutd's repair endpoint from the client side: build requests, parse answers, and one blocking helper.

The endpoint (a ROUTER; clients talk to it with a DEALER) answers a RANGE of
one stream with every message it still holds, each exactly as the stamped
output sent it (behind one answer frame), then an END naming every sequence
it could not supply and why; and HEADS with the last stamp of each stream
under a prefix (LAST: with each one's latest held message first). The
format is in clients/README.md ("Repair") and :mod:`.wire`. A refused
request (malformed, too large, or over the per-peer rate) gets no answer at
all: a caller waits with a timeout and may ask again.

This is the smallest piece the automatic repair of ``Subscriber`` (issue #26)
builds on: the codec (:func:`range_request`, :func:`heads_request`,
:func:`parse_answer`) and :class:`Repairer`, which sends one request and
collects its answers.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import zmq

from ._stamps import Stamp, parse_trailer
from .wire import (GONE_EPOCH, GONE_EVICTED, GONE_FUTURE, GONE_LIMIT, GONE_UNKNOWN, HEAD, MAGIC,
                   REPAIR_ANSWER, REPAIR_END, REPAIR_HEADS, REPAIR_LAST, REPAIR_MORE, REPAIR_RANGE,
                   REPAIR_RANGE_BODY, REPAIR_RUN, REPAIR_TAG_LEN, STREAM_KEY_CAP, VERSION)

#: The daemon's repair endpoint by default (beside the stamped output, 5565).
DEFAULT_REPAIR = "tcp://127.0.0.1:5566"
#: Not a reason on the wire: the client's own, for a run that got no answer in time (Subscriber's repair).
NO_ANSWER = 0
#: An END's reasons by name, for reports.
REASONS = {NO_ANSWER: "no answer", GONE_EVICTED: "evicted", GONE_EPOCH: "epoch", GONE_UNKNOWN: "unknown",
           GONE_LIMIT: "limit", GONE_FUTURE: "future"}
_TAG = struct.Struct(">I")
_HEADS_BODY = struct.Struct(">IQH")   # tag, epoch, count
_HEAD_ENTRY = struct.Struct(">QQB")   # stream, seq, key length


class BadAnswer(ValueError):
    """Frames from the repair endpoint that are not an answer of its protocol."""


def range_request(tag: int, epoch: int, stream: int, first: int, last: int) -> bytes:
    """A RANGE request: every held message of ``stream`` with first <= seq <= last, then an END."""
    return HEAD.pack(MAGIC, VERSION, REPAIR_RANGE) + REPAIR_RANGE_BODY.pack(tag, epoch, stream, first, last)


def heads_request(tag: int, prefix: bytes, last: bool = False) -> bytes:
    """A HEADS request: the last stamp of every stream whose key starts with ``prefix`` (at most 255 bytes).

    ``last``: a LAST request, answered first with each of those streams' message at its head (its last
    value) where the history holds it, then with the HEADS answer.
    """
    if len(prefix) > STREAM_KEY_CAP:
        raise ValueError(f"a prefix longer than a stream key ({STREAM_KEY_CAP} bytes) matches no stream")
    return HEAD.pack(MAGIC, VERSION, REPAIR_LAST if last else REPAIR_HEADS) + _TAG.pack(tag) + prefix


@dataclass(frozen=True)
class Repaired:
    """One message given back: ``frames`` exactly as the stamped output sent them (the trailer last)."""

    tag: int
    frames: list[bytes]

    @property
    def stamp(self) -> Stamp:
        return parse_trailer(self.frames[-1])


@dataclass(frozen=True)
class Gone:
    """A run of sequences the endpoint could not supply, and why (a GONE_* of :mod:`.wire`)."""

    first: int
    last: int
    reason: int

    @property
    def why(self) -> str:
        return REASONS.get(self.reason, str(self.reason))


@dataclass(frozen=True)
class End:
    """The last answer to a RANGE: the request it answers, and every sequence not supplied."""

    tag: int
    epoch: int
    stream: int
    first: int
    last: int
    gone: list[Gone]


@dataclass(frozen=True)
class Heads:
    """The answer to HEADS: (stream, last sequence, key) per stream; ``more``: some were left out."""

    tag: int
    epoch: int
    streams: list[tuple[int, int, bytes]]
    more: bool


def parse_answer(frames: list[bytes]) -> Repaired | End | Heads:
    """One answer as a DEALER receives it; BadAnswer if it is none."""
    head = frames[0] if frames else b""
    if len(head) < HEAD.size + REPAIR_TAG_LEN:
        raise BadAnswer("too short for a repair answer")
    magic, version, flags = HEAD.unpack_from(head)
    if magic != MAGIC or version != VERSION or not flags & REPAIR_ANSWER:
        raise BadAnswer(f"not a repair answer (flags {flags:#x})")
    body = head[HEAD.size:]
    if flags in (REPAIR_ANSWER | REPAIR_RANGE, REPAIR_ANSWER | REPAIR_LAST) and len(body) == REPAIR_TAG_LEN \
            and len(frames) >= 3:
        return Repaired(_TAG.unpack(body)[0], frames[1:])
    if flags == REPAIR_ANSWER | REPAIR_RANGE | REPAIR_END and len(frames) == 1:
        tag, epoch, stream, first, last = REPAIR_RANGE_BODY.unpack_from(body)
        (count,) = struct.unpack_from(">H", body, REPAIR_RANGE_BODY.size)
        at = REPAIR_RANGE_BODY.size + 2
        if len(body) != at + count * REPAIR_RUN.size:
            raise BadAnswer("an END whose length does not match its runs")
        gone = [Gone(*REPAIR_RUN.unpack_from(body, at + i * REPAIR_RUN.size)) for i in range(count)]
        return End(tag, epoch, stream, first, last, gone)
    if flags & ~REPAIR_MORE == REPAIR_ANSWER | REPAIR_HEADS and len(frames) == 1:
        tag, epoch, count = _HEADS_BODY.unpack_from(body)
        at, streams = _HEADS_BODY.size, []
        for _ in range(count):
            stream, seq, length = _HEAD_ENTRY.unpack_from(body, at)
            at += _HEAD_ENTRY.size
            streams.append((stream, seq, body[at:at + length]))
            at += length
        if at != len(body):
            raise BadAnswer("a HEADS answer whose length does not match its streams")
        return Heads(tag, epoch, streams, bool(flags & REPAIR_MORE))
    raise BadAnswer(f"an answer of unknown shape (flags {flags:#x}, {len(frames)} frames)")


class Repairer:
    """A DEALER on the repair endpoint: one request at a time, its answers collected until the last one.

    Blocking; ``TimeoutError`` when the answer does not come in time (a
    refused request is never answered). Answers to an earlier request that
    timed out are recognised by their tag and skipped.
    """

    def __init__(self, endpoint: str = DEFAULT_REPAIR, context: zmq.Context | None = None,
                 options: dict[int, int | bytes] | None = None) -> None:
        """``options``: socket options set before connecting (e.g. the stamped output's CURVE keys)."""
        self._context = context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        for option, value in (options or {}).items():
            self.socket.setsockopt(option, value)
        self.socket.connect(endpoint)
        self._tag = 0

    def close(self) -> None:
        self.socket.close(linger=0)

    def __enter__(self) -> Repairer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_tag(self) -> int:
        self._tag = (self._tag + 1) & 0xFFFFFFFF
        return self._tag

    def _answer(self, tag: int, deadline: float) -> Repaired | End | Heads:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.socket.poll(int(left * 1000) + 1):
                raise TimeoutError("no answer from the repair endpoint (refused, or it is unreachable)")
            answer = parse_answer(self.socket.recv_multipart())
            if answer.tag == tag:
                return answer

    def range(self, epoch: int, stream: int, first: int, last: int,
              timeout: float = 5.0) -> tuple[list[Repaired], End]:
        """The held messages of ``stream`` in first..last, in order, and the END naming the rest."""
        tag = self._next_tag()
        self.socket.send(range_request(tag, epoch, stream, first, last))
        deadline, messages = time.monotonic() + timeout, []
        while True:
            answer = self._answer(tag, deadline)
            if isinstance(answer, End):
                return messages, answer
            if not isinstance(answer, Repaired):
                raise BadAnswer("a HEADS answer to a RANGE request")
            messages.append(answer)

    def heads(self, prefix: bytes = b"", timeout: float = 5.0) -> Heads:
        """The last stamp of every stream whose key starts with ``prefix``."""
        return self.last(prefix, timeout, values=False)[1]

    def last(self, prefix: bytes = b"", timeout: float = 5.0, values: bool = True) -> tuple[list[Repaired], Heads]:
        """The latest held message of every stream whose key starts with ``prefix`` (LAST), and its heads."""
        tag = self._next_tag()
        self.socket.send(heads_request(tag, prefix, last=values))
        deadline, messages = time.monotonic() + timeout, []
        while True:
            answer = self._answer(tag, deadline)
            if isinstance(answer, Heads):
                return messages, answer
            if not values or not isinstance(answer, Repaired):
                raise BadAnswer("a RANGE answer to a HEADS request")
            messages.append(answer)
