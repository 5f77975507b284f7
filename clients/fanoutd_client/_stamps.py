"""fanoutd's trailing frame as a subscriber reads it: parse the sequence stamp, count gaps per stream exactly.

The trailer's layout and flags are defined in :mod:`.wire` (described in
clients/README.md, "Trailing frame").  The stamped output adds a stamp to
every message.  The broker keeps one sequence per *stream*: the message's
first frame up to ``key length`` bytes (:func:`.wire.stream_key_length`: a
multipart message's whole topic frame; a single frame's topic with the space
that ends it).  Every message of a stream starts with its key, so a
subscription that is a prefix of the key receives all of that stream or none
of it, and a jump in its sequence is exactly what this subscriber missed.
A subscription longer than a key (say ``b"orders 12"`` against key
``b"orders "``) receives only part of that stream: such messages are
delivered but counted as ``untracked``, never as a gap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .wire import HEAD, MAGIC, READY_TRAILER, ROUTE, STAMP, STAMP_BODY, VERSION


class NotStamped(ValueError):
    """A message without a stamp reached a subscriber that expects stamps: it is not on a stamped endpoint."""


@dataclass(frozen=True)
class Stamp:
    """What the broker stamped on one message."""

    epoch: int       #: the broker's run (new at every start): a change is a restart, not a gap
    stream: int      #: the stream's id within the epoch: a change for one key is a reset
    seq: int         #: 1, 2, 3, ... within the stream
    key_length: int  #: how many bytes of the first frame name the stream


def parse_trailer(frame: bytes) -> Stamp:
    """The stamp in a trailer frame; NotStamped if the frame is not a trailer with a stamp."""
    if len(frame) < HEAD.size:
        raise NotStamped("the last frame is too short to be fanoutd's trailer")
    magic, version, flags = HEAD.unpack_from(frame)
    if magic != MAGIC:
        raise NotStamped("the last frame does not start with fanoutd's trailer magic")
    if version != VERSION:
        raise NotStamped(f"trailer version {version}; this client reads version {VERSION}")
    if not flags & STAMP or flags & ~(STAMP | ROUTE):
        raise NotStamped(f"the trailer carries no stamp (flags {flags:#x})")
    if len(frame) < HEAD.size + STAMP_BODY.size:
        raise NotStamped("the trailer is too short for its stamp")
    return Stamp(*STAMP_BODY.unpack_from(frame, HEAD.size))


def is_ready(frame: bytes) -> bool:
    """Whether a last frame is the broker's answer to a subscription (a trailer flagged READY, nothing else)."""
    return frame == READY_TRAILER


class GapTracker:
    """Counts, per stream, the messages a subscriber never received.

    ``lost``: messages missed within streams this subscriber covers (a cut-off
    and reconnect, a drop counted by the broker, a queue full here);
    ``restarts``: broker runs seen after the first (a restart is not a gap:
    messages published while it was down were never stamped);
    ``resets``: streams whose history was forgotten (by the broker's bounded
    table, or this tracker's), where what came between cannot be known;
    ``untracked``: messages whose stream the subscriptions cover only in part.
    Gaps are counted from the first message seen in each stream.
    """

    def __init__(self, prefixes: Iterable[bytes] = (b"",), max_streams: int = 100_000) -> None:
        self._prefixes: list[bytes] = list(prefixes)
        self._max_streams = max_streams
        self._streams: dict[bytes, tuple[int, int, int]] = {}  # key -> (epoch, stream, last seq)
        self._epochs: set[int] = set()
        self.lost = 0
        self.restarts = 0
        self.resets = 0
        self.untracked = 0
        #: Set by :meth:`observe` when repairing (``count=False``): the range just missed, as
        #: (key, epoch, stream, first, last), or None; ``stale``: the message was already seen.
        self.gap: tuple[bytes, int, int, int, int] | None = None
        self.stale = False

    def streams(self, prefix: bytes) -> list[tuple[bytes, tuple[int, int, int]]]:
        """The streams followed under ``prefix``: (key, (epoch, stream, last seq))."""
        return [(k, v) for k, v in self._streams.items() if k.startswith(prefix)]

    def advance(self, key: bytes, epoch: int, stream: int, seq: int) -> None:
        """Take ``seq`` as the last seen of ``key`` (a gap at the end, found by asking for heads)."""
        self._streams[key] = (epoch, stream, seq)

    def subscriptions_changed(self, prefixes: Iterable[bytes]) -> None:
        """New subscriptions: start every stream afresh (what arrived in between is not knowable)."""
        self._prefixes = list(prefixes)
        self._streams.clear()

    def _covered(self, key: bytes) -> bool:
        return any(len(p) <= len(key) and key.startswith(p) for p in self._prefixes)

    def observe(self, first_frame: bytes, stamp: Stamp, count: bool = True) -> int:
        """Account for one received message; returns how many were missed just before it.

        ``count=False`` (a repairing subscriber): the gap goes to ``gap`` instead of ``lost``.
        """
        key = first_frame[:stamp.key_length]
        self.gap, self.stale = None, False
        if len(key) < stamp.key_length or not self._covered(key):
            self.untracked += 1
            return 0
        if stamp.epoch not in self._epochs:
            if self._epochs:
                self.restarts += 1
            self._epochs.add(stamp.epoch)
        missed = 0
        previous = self._streams.pop(key, None)
        if previous is not None and previous[0] == stamp.epoch:
            _, stream, last = previous
            if stream != stamp.stream:
                self.resets += 1
                missed = stamp.seq - 1  # the new stream's start, sent while this subscriber covered it
            elif stamp.seq > last:
                missed = stamp.seq - last - 1
            else:  # an old or repeated stamp (the same broker reached twice): nothing new
                self._streams[key] = previous
                self.stale = True
                return 0
        elif len(self._streams) >= self._max_streams:
            del self._streams[next(iter(self._streams))]  # the least recently seen
            self.resets += 1
        self._streams[key] = (stamp.epoch, stamp.stream, stamp.seq)
        if count:
            self.lost += missed
        elif missed:
            self.gap = (key, stamp.epoch, stamp.stream, stamp.seq - missed, stamp.seq - 1)
        return missed
