"""The slow-consumer guard: finds subscribers that stopped keeping up, cuts them off, counts and names them.

Two triggers. (1) The forwarding loop met a full subscriber queue (its XPUB
refused a message under ZMQ_XPUB_NODROP) and holds all output, writing the
stall eventfd: the guard looks at the kernel state of every publish and
relay connection and cuts off those whose send queue is full, so the loop's
retry goes through and nothing is lost for anyone unseen; then it answers
the hold. If no connection's kernel queue is full, no subscriber is behind:
libzmq's own I/O thread is (the broker is over its capacity), and the guard
asks the loop to hold on, so back-pressure reaches the producers instead of
a drop that nobody could be named for. (2) Once a second it samples the same
connections (while the loop reads nothing, only those that had data
waiting): one that has had data waiting with no byte acknowledged for
``slow_consumer_timeout`` is cut off before its queue ever fills.  (3) If
the guard answers "no" (a full subscriber it could not cut), or
``slow_consumer_stall`` is 0, the loop sends lossy and keeps a *window*
open on that output, counting every message as missed by the full
subscriber (libzmq now skips it without a word); the guard cuts the fullest
connection there if nobody else was, waits until libzmq has closed it, and
closes the window.  Cutting is ``shutdown()`` on
libzmq's own fd (never ``close()``, which would abort libzmq), after
re-checking by inode that the fd still is that connection; libzmq then tears
down just that connection, and the subscriber's socket reconnects.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator
from typing import Protocol

import gevent
import gevent.socket

from . import logs
from .config import Config
from .dataplane import kernel
from .peers import Connection, PeerTracker
from .roles import BY_NAME

log = logging.getLogger(__name__)
Readings = dict[Connection, tuple[int, int]]  # connection -> (bytes queued in the kernel, bytes acknowledged or -1)

SAMPLE_EVERY = 1.0
FULL_BYTES = 16 * 1024  # a send queue at least this full when the loop stalls is a full one (tcp_wmem's default)
WINDOW_WAIT = 5.0  # how long the guard waits for libzmq to close a cut connection before it stops waiting
STALL_LOOK = 0.004  # how long the guard watches a stalled output for acknowledgements (within the stall bound)


def full(fd: int, queued: int) -> bool:
    """Whether a connection's kernel send buffer is (about) full, as it must be before libzmq queues for it.

    libzmq writes to a peer's socket until the kernel refuses more, and only
    then does its own queue toward the high-water mark grow; so only a
    connection whose send buffer is full can be the one that filled up. A
    reader that is merely a few milliseconds behind (a busy thread) has a
    little queued and, for a moment, may acknowledge nothing: its buffer is
    far from full. A quarter of SO_SNDBUF leaves room for the kernel's
    per-packet overhead (measured here: 4.1 MB queued in a 4 MiB buffer).
    """
    if queued < FULL_BYTES:
        return False
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            return queued * 4 >= sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    except OSError:
        return False


class Loop(Protocol):
    """What the guard reads from and tells the forwarding loop (the Engine)."""

    stall_fd: int  # written by the loop when it starts holding output

    def received(self) -> int: ...  # messages read: while unchanged, nothing was written for a subscriber
    def stalls(self) -> dict[str, int]: ...  # output -> the number of the hold it is in
    def answer_stall(self, role: str, number: int, hold_on: bool) -> None: ...
    def windows(self) -> dict[str, int]: ...  # output -> the number of the lossy send that opened its window
    def close_window(self, role: str, number: int) -> bool: ...


class Guard:
    """Watches the fanning-out sockets' connections; ``cut[role]`` counts the consumers it disconnected."""

    def __init__(self, config: Config, peers: PeerTracker, loop: Loop) -> None:
        self._config = config
        self._loop = loop
        self._peers = peers
        self._roles = tuple(role for role in peers.open if BY_NAME[role].fans_out)
        self.cut: Counter[str] = Counter(dict.fromkeys(self._roles, 0))
        self._progress: dict[tuple[int, int], tuple[float, int, int]] = {}  # (fd, inode) -> (since, queued, acked)
        self._greenlets: list[gevent.Greenlet] = []
        self._cuts = logs.Sparse(log)

    def start(self, on_crash: Callable[[gevent.Greenlet], None]) -> None:
        if not self._roles:
            return
        self._greenlets = [gevent.spawn(self._on_stalls), gevent.spawn(self._sample)]
        for greenlet in self._greenlets:
            greenlet.link_exception(on_crash)

    def close(self) -> None:
        gevent.killall(self._greenlets, timeout=1.0)

    def _connections(self) -> Iterator[Connection]:
        for role in self._roles:
            yield from list(self._peers.open[role].values())

    def _on_stalls(self) -> None:
        """The loop holds output (or sent lossy): cut whoever has stopped reading a full queue, at once.

        Two readings a few milliseconds apart tell them apart: while output
        is held, a reader that is merely behind drains its queue and
        acknowledges bytes; one that stopped reading acknowledges nothing.
        """
        while True:
            gevent.socket.wait_read(self._loop.stall_fd)
            os.read(self._loop.stall_fd, 8)
            stalls = self._loop.stalls()    # before looking: a hold begun later wakes us again,
            windows = self._loop.windows()  # and so does a window opened later
            first, _ = self._readings()
            gevent.sleep(STALL_LOOK)
            now, cut = time.monotonic(), []
            readings, _ = self._readings()
            # Only a connection whose kernel buffer is full can be the one with the full queue (libzmq queues
            # for a peer only once its kernel buffer is full; buffers autotune per connection, so the most
            # bytes queued need not be a full one).
            behind = {conn: queued for conn, (queued, _) in readings.items() if full(conn.fd, queued)}
            for conn, queued in behind.items():
                before, acked = first.get(conn), readings[conn][1]
                if before is not None and (acked == before[1] if acked >= 0 else queued >= before[0]):
                    if self._cut(conn, "its queue reached the high-water mark", queued, self._stalled(conn, now)):
                        cut.append(conn)
            if not cut and behind and not self._closing():
                # Nobody stopped outright: the one furthest behind has the full queue. Left connected, libzmq
                # would skip it silently.
                conn = max(behind, key=behind.__getitem__)
                if self._cut(conn, "it fell furthest behind when its queue reached the high-water mark",
                             behind[conn], self._stalled(conn, now)):
                    cut.append(conn)
            for role, number in stalls.items():
                # Hold on while nobody there is behind in the kernel (the broker is), or while a cut is under
                # way (the next look finds the next one, if any). Only a full subscriber that could not be cut
                # means "no": libzmq then skips that one, and the lossy send's window names it (_end_window).
                left = any(conn.role == role and not conn.reason for conn in behind)
                cutting = any(conn.role == role and conn.reason for conn in self._connections())
                self._loop.answer_stall(role, number, not left or cutting)
            for role, number in windows.items():
                self._end_window(role, number, [c for c in cut if c.role == role], readings, behind, now)

    def _end_window(self, role: str, number: int, cut: list[Connection],
                    readings: Readings, behind: dict[Connection, int], now: float) -> None:
        """Make sure the subscriber libzmq skips on ``role`` is cut, wait until it is gone, close the window.

        ``behind``: the connections whose kernel buffer is full, and their bytes queued."""
        if not cut:
            # The lossy send took the fullest subscriber of this output out of the distribution: cut that one
            # (among the full ones if there are any). None with data waiting: the full one has drained since,
            # and if it fills again the loop's send is refused again (the window closes back to
            # XPUB_NODROP), so no skip goes unseen.
            fullest = ([(queued, conn) for conn, queued in behind.items() if conn.role == role]
                       or [(queued, conn) for conn, (queued, _) in readings.items() if conn.role == role])
            if fullest:
                queued, conn = max(fullest, key=lambda item: item[0])
                if self._cut(conn, "its queue was full when a message had to be sent without it", queued,
                             self._stalled(conn, now)):
                    cut.append(conn)
            cut += [conn for conn in self._connections() if conn.role == role and conn.reason]
        deadline = time.monotonic() + WINDOW_WAIT
        while any(self._peers.open[role].get(conn.fd) is conn for conn in cut):
            if time.monotonic() > deadline:
                log.warning("%s: a cut-off subscriber is still connected after %.0fs; messages go on being "
                            "counted as missed by it", role, WINDOW_WAIT)
                return
            gevent.sleep(0.001)
        self._loop.close_window(role, number)

    def _stalled(self, conn: Connection, now: float) -> float:
        """Seconds since the sampler last saw this connection make progress (0 if never sampled)."""
        return now - self._progress.get((conn.fd, conn.inode), (now, 0, 0))[0]

    def _closing(self) -> bool:
        """A connection already cut is still being torn down by libzmq: that frees the full queue."""
        return any(conn.reason for conn in self._connections())

    def _readings(self, among: Collection[tuple[int, int]] | None = None) -> tuple[Readings, int]:
        """(queued, acked) of each open connection not being cut that has bytes waiting in the kernel.

        The others cannot be behind, and leaving them out keeps a pass over 10,000 idle subscribers
        at about 0.5 us each (in C, no Python object per connection). ``among``: only these (fd, inode).
        Also returns how many connections were looked at.
        """
        conns = [conn for conn in self._connections()
                 if not conn.reason and (among is None or (conn.fd, conn.inode) in among)]
        waiting = kernel.waiting([c.fd for c in conns])
        return {conns[i]: (queued, acked) for i, queued, acked in waiting}, len(conns)

    def _sample(self) -> None:
        """Once a second: remember who made progress; cut who has had data waiting unread past the timeout."""
        timeout = self._config.slow_consumer_timeout
        received: deque[float] = deque(maxlen=3)
        while True:
            gevent.sleep(SAMPLE_EVERY)
            now, seen = time.monotonic(), {}
            # Quiet for two passes (the loop read nothing since the pass before last): nothing was written
            # for a subscriber since a pass that found its queue empty, and what libzmq still held then
            # reached the kernel long before the last pass. So only those with data waiting last pass need
            # a look, and 10,000 idle subscribers cost no system call each a second (a heartbeat left
            # unacknowledged is the kernel's to act on: sockets.heartbeat_options).
            received.append(self._loop.received())
            quiet = len(received) == 3 and received[0] == received[2]
            readings, looked = self._readings(self._progress if quiet else None)
            log.debug("guard pass: looked at %d connections, %d with data waiting, in %.1f ms", looked,
                      len(readings), (time.monotonic() - now) * 1000)
            for conn, (queued, acked) in readings.items():
                key = (conn.fd, conn.inode)
                # Not seen last pass: its queue was empty then, so whatever waits now came since (moving).
                since, last_queued, last_acked = self._progress.get(key, (now, -1, -1))
                moving = acked != last_acked if acked >= 0 else queued < last_queued
                seen[key] = (now if moving else since, queued, acked)
                if timeout and not moving and now - since >= timeout:
                    self._cut(conn, f"it read nothing for {now - since:.1f}s", queued, now - since)
            self._progress = seen

    def _cut(self, conn: Connection, why: str, queued: int, stalled: float) -> bool:
        """Disconnect one connection (re-checked by inode), count it and log it, rate-limited."""
        if not conn.still_open() or conn.reason:
            return False
        self._peers.mark(conn, f"slow consumer: {why}")
        try:
            with socket.socket(fileno=os.dup(conn.fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError as exc:
            log.debug("could not cut %s on %s: %s", conn.peer, conn.role, exc)
            return False
        self.cut[conn.role] += 1
        self._cuts.warning("slow consumer on %s: disconnected %s because %s (stalled %.1fs, %d bytes queued in the "
                           "kernel and up to %s messages in fanoutd)", conn.role, conn.peer, why, stalled, queued,
                           f"{getattr(self._config, BY_NAME[conn.role].hwm):,}",
                           held="more disconnected since the last report")
        return True
