"""The slow-consumer guard: finds subscribers that stopped keeping up, cuts them off, counts and names them.

This module is the guard's I/O; its decisions are fanoutd.slowrules. Two
greenlets read the kernel state of every connection of the fanning-out
outputs (publish, relay, stamped) through a KernelView: one wakes when the
forwarding loop stalls an output or sends lossy (the stall protocol:
docs/architecture.md), the other once a second. They hand the readings to
the rules and carry out what the rules decide: answer each stall, cut
connections, close a lossy window once its cut subscriber is gone. Under
``slow_consumer_policy = "pace"`` the answer is always "hold on" and the
cuts are Pacing's (a reader still for STOPPED_AFTER, or past the pace
bound); under "cut", StallLook's (stopped at once, else furthest behind). Cutting
is ``shutdown()`` on libzmq's own fd (never ``close()``, which would abort
libzmq), after re-checking by inode that the fd still is that connection;
libzmq then tears down just that connection, and the subscriber's socket
reconnects.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Protocol

import gevent
import gevent.socket

from . import logs
from .config import Config
from .dataplane import kernel
from .peers import Connection, PeerTracker
from .roles import BY_NAME
from .slowrules import (RULES, Cut, Pacing, Progress, Reading, Readings, StallLook, could_be_full, full, gone,
                        over_max_pending)
from .values import PACE

log = logging.getLogger(__name__)

SAMPLE_EVERY = 1.0
WINDOW_WAIT = 5.0  # how long the guard waits for libzmq to close a cut connection before it stops waiting
STALL_LOOK = 0.004  # how long the guard watches a stalled output for acknowledgements (within the stall bound)
REPORT_EVERY = 10.0  # at most one cut logged per rule this often; the next says how many by that rule were not


class Outputs(Protocol):
    """What the guard reads from the fanning-out outputs and tells their owner (the Engine) about their stalls."""

    stall_fd: int  # an eventfd the forwarding loop writes when it stalls an output or opens a lossy window

    def received(self) -> int: ...  # messages the loop read: while unchanged, nothing was written for a subscriber
    def counters(self) -> Mapping[str, int]: ...  # the loop's counters: "<output>_held_ns", the time it held each
    def stalls(self) -> dict[str, int]: ...  # output -> the number of the stall it is in
    def held_bytes(self) -> Mapping[str, int]: ...  # output -> message bytes libzmq holds for its readers, exactly
    def answer_stall(self, role: str, number: int, stall_on: bool) -> None: ...
    def windows(self) -> dict[str, int]: ...  # output -> the number of the lossy send that opened its window
    def close_window(self, role: str, number: int) -> bool: ...


class KernelView(Protocol):
    """Where the guard reads connections' kernel state: the kernel itself (LiveKernel), or a test's made-up one."""

    def waiting(self, fds: Sequence[int]) -> list[tuple[int, int, int]]:
        """(index into fds, bytes queued, bytes acknowledged or -1) of only the fds with bytes queued."""
        ...

    def send_buffer(self, fd: int) -> int:
        """The fd's send-buffer size (SO_SNDBUF), 0 where it cannot be read."""
        ...


class LiveKernel:
    """The kernel's view: queues read in C for many connections at once, SO_SNDBUF through a dup of the fd."""

    def waiting(self, fds: Sequence[int]) -> list[tuple[int, int, int]]:
        return kernel.waiting(fds)

    def send_buffer(self, fd: int) -> int:
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
        except OSError:
            return 0


class Guard:
    """Watches the fanning-out sockets' connections; ``cut[role, rule]`` counts the consumers it disconnected.

    Every cut is counted, a reader that reconnects and is cut again each
    time. The log has at most one line per rule every REPORT_EVERY seconds,
    each saying how many that rule cut since its last line: a storm of
    reconnecting readers stays readable, and which rule cut them is not lost.
    """

    def __init__(self, config: Config, peers: PeerTracker, outputs: Outputs, view: KernelView | None = None) -> None:
        self._config = config
        self._outputs = outputs
        self._peers = peers
        self._view: KernelView = view or LiveKernel()
        self._roles = tuple(role for role in peers.open if BY_NAME[role].fans_out)
        self.cut: Counter[tuple[str, str]] = Counter(
            dict.fromkeys(((role, rule) for role in self._roles for rule in RULES), 0))
        self._progress = Progress()
        self._pacing = Pacing(config.slow_consumer_pace_share, config.slow_consumer_pace_window)
        self._greenlets: list[gevent.Greenlet] = []
        self._cuts = {rule: logs.Sparse(log, REPORT_EVERY) for rule in RULES}

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
        while True:
            gevent.socket.wait_read(self._outputs.stall_fd)
            os.read(self._outputs.stall_fd, 8)
            self.look()

    def look(self) -> None:
        """An output stalled (or sent lossy): cut by the policy's rules, answer, end the windows."""
        stalls = self._outputs.stalls()    # before looking: a stall begun later wakes us again,
        windows = self._outputs.windows()  # and so does a window opened later
        first, _ = self._readings()
        gevent.sleep(STALL_LOOK)
        now = time.monotonic()
        look = StallLook(first, self._readings(sized=True)[0])
        if self._config.slow_consumer_policy == PACE:  # hold on while they read; Pacing bounds the waiting
            decided = self._pacing.decide(now, look, self._held())
            cut = [one.conn for one in decided if self._cut(one, now)]
            cut += self._cut_over_max_pending(look.behind, now)
        else:
            cut = [decided.conn for decided in look.stopped() if self._cut(decided, now)]
            cut += self._cut_over_max_pending(look.behind, now)
            furthest = look.furthest_behind(self._connections())
            if furthest is not None and self._cut(furthest, now):
                cut.append(furthest.conn)
        for role, number in stalls.items():
            stall_on = self._config.slow_consumer_policy == PACE or look.stall_on(role, self._connections())
            self._outputs.answer_stall(role, number, stall_on)
        for role, number in windows.items():
            self._end_window(role, number, [conn for conn in cut if conn.role == role], look, now)

    def _over_max_pending(self) -> list[str]:
        """The outputs holding more message bytes for their readers than slow_consumer_max_pending."""
        limit = self._config.slow_consumer_max_pending
        held = self._outputs.held_bytes()
        return [role for role in self._roles if limit and held.get(role, 0) > limit]

    def _cut_over_max_pending(self, behind: Mapping[Connection, int], now: float) -> list[Connection]:
        """Cut the furthest behind of each output past slow_consumer_max_pending (rule max_pending)."""
        cut = []
        for role in self._over_max_pending():
            decided = over_max_pending(behind, role, self._connections())
            if decided is not None and self._cut(decided, now):
                cut.append(decided.conn)
        return cut

    def _held(self) -> dict[str, float]:
        """Each fanning-out output's seconds held so far, as the loop counts them."""
        counters = self._outputs.counters()
        return {role: counters[f"{role}_held_ns"] / 1e9 for role in self._roles}

    def _end_window(self, role: str, number: int, cut: list[Connection], look: StallLook, now: float) -> None:
        """Make sure the subscriber libzmq skips on ``role`` is cut, wait until it is gone, close the window."""
        if not cut:
            fullest = look.fullest(role)
            if fullest is not None and self._cut(fullest, now):
                cut.append(fullest.conn)
            cut += [conn for conn in self._connections() if conn.role == role and conn.reason]
        deadline = time.monotonic() + WINDOW_WAIT
        while not gone(cut, self._peers.open[role]):
            if time.monotonic() > deadline:
                log.warning("%s: a cut-off subscriber is still connected after %.0fs; messages go on being "
                            "counted as missed by it", role, WINDOW_WAIT)
                return
            gevent.sleep(0.001)
        self._outputs.close_window(role, number)

    def _readings(self, among: Collection[tuple[int, int]] | None = None, sized: bool = False) -> tuple[Readings, int]:
        """Readings of each open connection not being cut that has bytes waiting in the kernel.

        The others cannot be behind, and leaving them out keeps a pass over 10,000 idle subscribers
        at about 0.5 us each (in C, no Python object per connection). ``among``: only these (fd, inode).
        ``sized``: with the send-buffer size of each that could be full. Also returns how many
        connections were looked at.
        """
        conns = [conn for conn in self._connections()
                 if not conn.reason and (among is None or (conn.fd, conn.inode) in among)]
        readings = {}
        for i, queued, acked in self._view.waiting([c.fd for c in conns]):
            sndbuf = self._view.send_buffer(conns[i].fd) if sized and could_be_full(queued) else 0
            readings[conns[i]] = Reading(queued, acked, sndbuf)
        return readings, len(conns)

    def _sample(self) -> None:
        while True:
            gevent.sleep(SAMPLE_EVERY)
            self.sample()

    def sample(self) -> None:
        """One pass of the sampler: remember who made progress; cut who has had data waiting unread too long."""
        now = time.monotonic()
        readings, looked = self._readings(self._progress.among(self._outputs.received()))
        log.debug("guard pass: looked at %d connections, %d with data waiting, in %.1f ms", looked,
                  len(readings), (time.monotonic() - now) * 1000)
        for decided in self._progress.update(now, readings, self._config.slow_consumer_timeout):
            self._cut(decided, now)
        if self._over_max_pending():  # past the bound outside a stall (slow_consumer_stall = 0, or one huge message)
            sized, _ = self._readings(sized=True)
            self._cut_over_max_pending({conn: r.queued for conn, r in sized.items() if full(r)}, now)

    def _cut(self, decided: Cut, now: float) -> bool:
        """Disconnect one connection (re-checked by inode), count it and log it, rate-limited per rule."""
        conn = decided.conn
        if not conn.still_open() or conn.reason:
            return False
        self._peers.mark(conn, f"slow consumer: {decided.why}", decided.rule)
        try:
            with socket.socket(fileno=os.dup(conn.fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError as exc:
            log.debug("could not cut %s on %s: %s", conn.peer, conn.role, exc)
            return False
        self.cut[conn.role, decided.rule] += 1
        self._cuts[decided.rule].warning(
            "slow consumer on %s: disconnected %s (rule=%s) because %s (stalled %.1fs, %d bytes queued in the kernel; "
            "%s held by fanoutd for %s's readers)", conn.role, conn.peer, decided.rule, decided.why,
            self._progress.stalled(conn, now), decided.queued,
            f"{self._outputs.held_bytes().get(conn.role, 0):,} bytes", conn.role,
            held=f"more disconnected by rule={decided.rule} since its last report")
        return True
