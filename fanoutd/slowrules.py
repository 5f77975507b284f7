"""The slow-consumer guard's rules: from kernel readings of each connection, whom to cut and how to answer a stall.

Nothing here reads the kernel, sleeps or cuts: fanoutd.slow takes the
readings, hands them to these rules and carries out what they decide, so
each rule can be checked with made-up readings (tests/test_guard_rules.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Mapping
from typing import NamedTuple

from .peers import Connection
from .values import PACE

FULL_BYTES = 16 * 1024  # a send queue at least this full when output stalls is a full one (tcp_wmem's default)
QUIET_PASSES = 3  # the loop read nothing between the first and the last of this many passes: it is quiet

# The rules the guard cuts by, each a stable one-word name: logged as "(rule=NAME)", shown in /peers ("rule") and
# a label of fanoutd_slow_consumers_total. Tests and operators match the name, never the prose, which says it for
# a person after "because" (and, prefixed "slow consumer: ", is the /peers reason). What each means for an
# operator: docs/concepts.md#slow-consumers.
STOPPED = "stopped"  # a full queue whose reader acknowledged nothing while the guard looked
FURTHEST_BEHIND = "furthest_behind"  # none stopped: the fullest is cut, or libzmq would skip it silently
TIMEOUT = "timeout"  # data waiting, nothing read for slow_consumer_timeout
WINDOW = "window"  # the full subscriber a lossy send went out without
PACE_BOUND = "pace_bound"  # under pace: furthest behind for more than its share of the window's held time
MAX_PENDING = "max_pending"  # its output held more bytes than slow_consumer_max_pending: the furthest behind
BECAUSE = {
    STOPPED: "its queue reached the high-water mark and it read nothing while the guard looked",
    FURTHEST_BEHIND: "it fell furthest behind when its queue reached the high-water mark",
    TIMEOUT: "it read nothing for {seconds:.1f}s",
    WINDOW: "its queue was full when a message had to be sent without it",
    PACE_BOUND: "it held the others back for {seconds:.1f}s, more than slow_consumer_pace_share of the window",
    MAX_PENDING: "it was furthest behind when its output held more than slow_consumer_max_pending",
}
RULES = tuple(BECAUSE)

# slow_consumer_policy "cut" cuts a full reader at once (latency first: StallLook); "pace" holds the producers back
# while the full readers make progress (loss-free for live readers: Pacing below). Under pace, how long a full
# connection must show no progress across the guard's looks before it is cut as stopped. On a busy 2-core machine
# a live reader can go unscheduled for tens of milliseconds (a GC pause, the broker and its neighbours sharing the
# cores), and a 4 ms look cannot tell that from a stopped one; half a second is ten times such a pause, yet a
# twentieth of slow_consumer_timeout: about how long a stopped reader freezes the fleet.
STOPPED_AFTER = 0.5

# Under pace, the share of slow_consumer_max_pending at which the loop holds an output (and so the producers)
# back: NATS stalls a producer at 3/4 of a consumer's max_pending, leaving the last quarter for a burst already
# under way; past the whole of it the furthest behind is cut. Under cut, the output stalls only at the whole.
PACE_FROM = 0.75


# Under pace, the share of slow_consumer_max_pending an output held back by its bytes must fall to before it takes
# messages again: a low-water mark, as libzmq's queues have one. Resuming as soon as one message fits held the
# producers back again at the next: at 1 KiB flat out, over a thousand stalls a second, each a look by the guard
# and a 200 us sleep of the loop, Python's share of the two cores taken from the readers (bench/README.md, "Pacing
# in runs"). A quarter of the budget between the marks lets that much through between stalls.
PACE_RESUME = 0.5


def stall_above(policy: str, max_pending: int) -> int:
    """The held bytes past which the loop stalls an output for the guard (0: no byte bound)."""
    return int(max_pending * PACE_FROM) if policy == PACE else max_pending


def resume_below(policy: str, max_pending: int) -> int:
    """The held bytes at which an output stalled by :func:`stall_above` takes messages again.

    Under cut the same as the bound: a cut frees what the reader held, and latency comes first.
    """
    return int(max_pending * PACE_RESUME) if policy == PACE else max_pending


class Reading(NamedTuple):
    """One connection's kernel state at one look."""

    queued: int  # bytes in its kernel send queue
    acked: int  # bytes its peer acknowledged, -1 where the connection is not TCP
    sndbuf: int = 0  # its send-buffer size (SO_SNDBUF); 0 where not read (too little queued to be full)


Readings = dict[Connection, Reading]


class Cut(NamedTuple):
    """A decision to disconnect one connection, and by which rule."""

    conn: Connection
    rule: str  # one of RULES
    queued: int  # bytes queued in the kernel when decided, for the log
    seconds: float = 0.0  # for a rule that says how long (timeout): how long it read nothing

    @property
    def why(self) -> str:
        """The rule in prose, for the log line and /peers."""
        return BECAUSE[self.rule].format(seconds=self.seconds)


def could_be_full(queued: int) -> bool:
    """Whether a queue this long could be a full one: only then is its send-buffer size worth a system call."""
    return queued >= FULL_BYTES


def full(reading: Reading) -> bool:
    """Whether a connection's kernel send buffer is (about) full, as it must be before libzmq queues for it.

    libzmq writes to a peer's socket until the kernel refuses more, and only
    then does its own queue toward the high-water mark grow; so only a
    connection whose send buffer is full can be the one that filled up. A
    reader that is merely a few milliseconds behind (a busy thread) has a
    little queued and, for a moment, may acknowledge nothing: its buffer is
    far from full. A quarter of SO_SNDBUF leaves room for the kernel's
    per-packet overhead (measured here: 4.1 MB queued in a 4 MiB buffer).
    """
    return could_be_full(reading.queued) and 0 < reading.sndbuf <= reading.queued * 4


def progressed(before: Reading, after: Reading) -> bool:
    """Whether the peer read anything between two readings: bytes acknowledged (TCP), or else a shorter queue."""
    return after.acked != before.acked if after.acked >= 0 else after.queued < before.queued


def being_cut(role: str, conns: Iterable[Connection]) -> bool:
    """Whether a connection of ``role`` is already cut and still being torn down by libzmq (its reason is set)."""
    return any(conn.role == role and conn.reason for conn in conns)


class StallLook:
    """Two readings of the connections a few milliseconds apart while output is stalled, and what they decide.

    While output is stalled, a reader that is merely behind drains its queue
    and acknowledges bytes; one that stopped reading acknowledges nothing.
    Only a connection whose kernel buffer is full can be the one with the
    full queue (libzmq queues for a peer only once its kernel buffer is full;
    buffers autotune per connection, so the most bytes queued need not be a
    full one): those are ``behind``.
    """

    def __init__(self, first: Readings, second: Readings) -> None:
        self.first = first
        self.second = second
        self.behind = {conn: reading.queued for conn, reading in second.items() if full(reading)}

    def stopped(self) -> list[Cut]:
        """Full connections that read nothing between the two readings: cut at once."""
        return [Cut(conn, STOPPED, queued) for conn, queued in self.behind.items()
                if conn in self.first and not progressed(self.first[conn], self.second[conn])]

    def furthest_behind(self, conns: Iterable[Connection]) -> Cut | None:
        """When none stopped outright, the full connection with the most queued: it has the full queue.

        Left connected, libzmq would skip it silently. None while any of
        ``conns`` (the open connections) is being cut: its teardown frees
        the full queue, and a cut made at this look counts as one.
        """
        if not self.behind or any(conn.reason for conn in conns):
            return None
        conn = max(self.behind, key=self.behind.__getitem__)
        return Cut(conn, FURTHEST_BEHIND, self.behind[conn])

    def stall_on(self, role: str, conns: Iterable[Connection]) -> bool:
        """The answer to ``role``'s stall, once this look's cuts are made: True to hold on, False to send lossy.

        Hold on while no connection there is full in the kernel (no
        subscriber is behind: the broker is, and back-pressure should reach
        the producers), or while a cut there is under way (the next look
        finds the next one, if any). Only a full subscriber that could not
        be cut means "no": libzmq then skips that one, and the lossy send's
        window names it.
        """
        left = any(conn.role == role and not conn.reason for conn in self.behind)
        return not left or being_cut(role, conns)

    def fullest(self, role: str) -> Cut | None:
        """The connection of ``role`` that a lossy send left out of the distribution, to cut when nobody there was.

        The fullest among the full ones if there are any, else among those
        with data waiting. None with data waiting: the full one has drained
        since, and if it fills again the loop's send is refused again (the
        window closes back to XPUB_NODROP), so no skip goes unseen.
        """
        candidates = ([(queued, conn) for conn, queued in self.behind.items() if conn.role == role]
                      or [(reading.queued, conn) for conn, reading in self.second.items() if conn.role == role])
        if not candidates:
            return None
        queued, conn = max(candidates, key=lambda item: item[0])
        return Cut(conn, WINDOW, queued)


def over_max_pending(behind: Mapping[Connection, int], role: str, conns: Iterable[Connection]) -> Cut | None:
    """Whom to cut when ``role``'s output holds more bytes than slow_consumer_max_pending, if anyone.

    ``behind``: the connections whose kernel send buffer is full, with their
    bytes queued. libzmq queues for a reader only once its kernel buffer is
    full, so the bytes held are the full ones' backlog, and the fullest has
    the oldest of them. None while a connection of ``role`` is being cut (its
    teardown gives its bytes back) or none is full (libzmq's own I/O threads
    are behind: holding the producers back is the answer).
    """
    if being_cut(role, conns):
        return None
    candidates = {conn: queued for conn, queued in behind.items() if conn.role == role}
    if not candidates:
        return None
    conn = max(candidates, key=candidates.__getitem__)
    return Cut(conn, MAX_PENDING, candidates[conn])


def gone(waited: Iterable[Connection], open_now: Mapping[int, Connection]) -> bool:
    """Whether libzmq has closed every connection a window waits for (fds are reused: identity, not fd, decides)."""
    return not any(open_now.get(conn.fd) is conn for conn in waited)


class Progress:
    """The sampler's memory between passes: when each connection with data waiting last read, and the loop's intake.

    A connection that has had data waiting with no byte acknowledged for
    the timeout is cut before its queue ever fills.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[int, int], tuple[float, int, int]] = {}  # (fd, inode) -> (since, queued, acked)
        self._received: deque[int] = deque(maxlen=QUIET_PASSES)

    def among(self, received: int) -> Collection[tuple[int, int]] | None:
        """The (fd, inode) this pass must read, given the loop's count of messages read so far; None: all.

        Quiet for two passes (the loop read nothing since the pass before
        last): nothing was written for a subscriber since a pass that found
        its queue empty, and what libzmq still held then reached the kernel
        long before the last pass. So only those with data waiting last pass
        need a look, and 10,000 idle subscribers cost no system call each a
        second (a heartbeat left unacknowledged is the kernel's to act on:
        sockets.heartbeat_options).
        """
        self._received.append(received)
        quiet = len(self._received) == QUIET_PASSES and self._received[0] == self._received[-1]
        return set(self._seen) if quiet else None

    def stalled(self, conn: Connection, now: float) -> float:
        """Seconds since a pass last saw this connection make progress (0 if it had nothing waiting last pass)."""
        return now - self._seen.get((conn.fd, conn.inode), (now, 0, 0))[0]

    def update(self, now: float, readings: Readings, timeout: float) -> list[Cut]:
        """Remember who made progress by ``now``; the ones to cut: data waiting, no progress for ``timeout`` (0: never).

        Only the connections in ``readings`` (those with data waiting) are
        remembered: one not seen last pass had an empty queue then, so
        whatever waits now came since, and its clock starts now.
        """
        seen, cuts = {}, []
        for conn, reading in readings.items():
            key = (conn.fd, conn.inode)
            last = self._seen.get(key)
            moving = last is None or progressed(Reading(last[1], last[2]), reading)
            since = now if moving else last[0]
            seen[key] = (since, reading.queued, reading.acked)
            if timeout and not moving and now - since >= timeout:
                cuts.append(Cut(conn, TIMEOUT, reading.queued, now - since))
        self._seen = seen
        return cuts


class Pacing:
    """The pace policy's memory across the guard's looks, per connection by (fd, inode), and what it decides.

    A stall's looks come every slow_consumer_stall, doubling up to 1 s, so
    a full reader is judged over several of them: since when it has shown
    no progress (cut as stopped after STOPPED_AFTER), and how long its
    output was held while it was the furthest behind among the full ones
    (cut as pace_bound past ``share`` of ``window``: one slow reader must
    not set the fleet's pace forever, while equal readers that take turns
    being furthest behind never reach it). Everyone else is waited for:
    the answer under pace is always "hold on".
    """

    def __init__(self, share: float, window: float) -> None:
        self._share = share
        self._window = window
        self._still: dict[tuple[int, int], tuple[float, Reading]] = {}  # since when no progress, last reading
        self._held: dict[tuple[int, int], deque[tuple[float, float]]] = {}  # (when, seconds held) as furthest
        self._outputs_held: dict[str, float] = {}  # output -> its held seconds at the last look

    def decide(self, now: float, look: StallLook, held: Mapping[str, float]) -> list[Cut]:
        """The cuts at this look: full connections still for STOPPED_AFTER, then past the pace bound.

        ``held``: each output's seconds held so far (the loop's counter); what
        it grew since the last look is charged to that output's furthest
        behind at this look.
        """
        cuts, still = [], {}
        for conn in look.behind:
            key, reading = (conn.fd, conn.inode), look.second[conn]
            last = self._still.get(key)
            moving = (last is None or conn not in look.first or progressed(look.first[conn], reading)
                      or progressed(last[1], reading))
            since = now if moving else last[0]
            still[key] = (since, reading)
            if now - since >= STOPPED_AFTER:
                cuts.append(Cut(conn, STOPPED, reading.queued, now - since))
        self._still = still  # one not full at this look drained: whatever it does next starts afresh
        for role, seconds in held.items():
            grown = seconds - self._outputs_held.get(role, seconds)
            self._outputs_held[role] = seconds
            left = {conn: queued for conn, queued in look.behind.items()
                    if conn.role == role and all(cut.conn is not conn for cut in cuts)}
            if not left:
                continue
            conn = max(left, key=left.__getitem__)
            charged = self._charge((conn.fd, conn.inode), now, grown)
            if self._share < 1 and charged > self._share * self._window:
                cuts.append(Cut(conn, PACE_BOUND, left[conn], charged))
        for key in [key for key, spans in self._held.items() if not spans or spans[-1][0] <= now - self._window]:
            del self._held[key]
        return cuts

    def _charge(self, key: tuple[int, int], now: float, seconds: float) -> float:
        """Charge ``seconds`` held to one connection; what it was charged within the window."""
        spans = self._held.setdefault(key, deque())
        if seconds > 0:
            spans.append((now, seconds))
        while spans and spans[0][0] <= now - self._window:  # charged at t: held in the span just before t
            spans.popleft()
        return sum(seconds for _, seconds in spans)
