"""Who is connected to each socket, from ZeroMQ socket-monitor events read on the gevent hub.

The engine's worker thread asks libzmq to publish monitor events of each
data socket on an inproc address; this module reads them in the main thread
through a green context that shadows the same libzmq context.  Each accepted
connection is remembered with its file descriptor, the socket's inode (fds
are reused: acting on one later re-checks the inode) and the peer's address,
read at accept time because by the disconnect the fd is gone.  The push
count is handed back to the native loop so that a refused PUSH send can be
told apart: nobody connected (``no_puller``) or everyone full (``hwm``).
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import gevent
import zmq

from . import green, logs
from .roles import ROLES
from .sockets import monitor_address

log = logging.getLogger(__name__)

_EVENT = struct.Struct("=Hi")
_PEERCRED = struct.Struct("3i")
HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "other",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
}
# A connection closed before its handshake completed with no failure event: what libzmq does to legacy ZMTP
# 1.0/2.0 peers when access control (ZAP) is on, as it always is in fanoutd, and to anything not speaking ZMTP.
INCOMPLETE = "incomplete"
WHY = {
    "protocol": "its ZMTP handshake failed (e.g. a plaintext client at a CURVE socket, or the reverse)",
    "other": "its ZMTP handshake failed",
    INCOMPLETE: "it closed before its ZMTP handshake completed: a legacy ZMTP 1.0/2.0 client (libzmq 3.x era, "
                "JeroMQ 0.3), which fanoutd refuses, or not a ZeroMQ peer at all",
}
CLOSED_KEPT = 100  # closed connections remembered for /peers
EARLY_KEPT = 64  # handshake outcomes kept for connections whose "accepted" event has not arrived yet
SUCCEEDED = ""  # the outcome of a handshake that succeeded (failures are named by HANDSHAKE_FAILURES)
# Bound inputs producers connect to (the upstream link is this node's own, watched by links.py).
PRODUCER_ROLES = frozenset(role.name for role in ROLES if role.is_input and not role.connects)


@dataclass(eq=False)
class Connection:
    """One accepted (or, for upstream links, made) connection of a socket."""

    role: str
    fd: int
    inode: int
    peer: str
    since: float = field(default_factory=time.time)
    closed: float | None = None
    reason: str = ""  # why it closed, where fanoutd knows: "slow consumer: ...", "handshake failed (auth)", ...
    rule: str = ""  # the slow-consumer guard's rule that cut it (fanoutd.slowrules.RULES); "" if not cut by it
    handshaken: bool = False
    failed: str = ""  # the handshake failure libzmq reported for it, if any
    kind: str = ""  # a producer's ZMTP Socket-Type (PUB, XPUB, PUSH) once the loop read from it (fanoutd.senders)

    def still_open(self) -> bool:
        """True while the fd still names this very connection (fds are reused as soon as libzmq closes one)."""
        try:
            return os.fstat(self.fd).st_ino == self.inode
        except OSError:
            return False


def describe_peer(fd: int) -> tuple[int, str]:
    """(inode, peer) of a connected socket fd: ``ip:port``, ``[ip6]:port``, or for ipc the peer's pid and uid."""
    inode = os.fstat(fd).st_ino
    with socket.socket(fileno=os.dup(fd)) as sock:
        if sock.family == socket.AF_UNIX:
            pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
            return inode, f"pid {pid} uid {uid}"
        host, port = sock.getpeername()[:2]
    host = plain_ip(host)
    return inode, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def plain_ip(host: str) -> str:
    """An IPv4 client of a dual-stack socket (``::ffff:a.b.c.d``) as the IPv4 address it is."""
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:
        return host
    return str(mapped) if mapped else host


class PeerTracker:
    """Keeps the open connections of every socket, and the last closed ones with their reason."""

    def __init__(self, context: zmq.Context, roles: Iterable[str],
                 on_change: Callable[[str, int], None] | None = None) -> None:
        self._hub = green.plain(context)
        self._roles = tuple(roles)
        self.open: dict[str, dict[int, Connection]] = {role: {} for role in self._roles}
        self.closed: collections.deque[Connection] = collections.deque(maxlen=CLOSED_KEPT)
        self.handshake_failures: Counter[tuple[str, str]] = Counter(dict.fromkeys(
            ((role, reason) for role in self._roles for reason in (*HANDSHAKE_FAILURES.values(), INCOMPLETE)), 0))
        # Handshake outcome events (succeeded, failed) carry no fd, only an error code: each is matched to
        # the oldest connection still waiting for one. Concurrent handshakes may swap which peer is named;
        # the counts stay exact, and a connection that closes with no outcome at all is "incomplete".
        self._pending: dict[str, collections.deque[Connection]] = {role: collections.deque() for role in self._roles}
        # libzmq emits "accepted" from the listener's I/O thread after it has handed the connection to its
        # engine, which may run on another I/O thread and report the handshake's outcome first: an outcome
        # with nobody waiting is kept (bounded) for the next connection accepted.
        self._early: dict[str, collections.deque[str]] = {
            role: collections.deque(maxlen=EARLY_KEPT) for role in self._roles}
        self._refused = logs.Sparse(log)
        self._producer_left = logs.Sparse(log)
        self.disconnects: Counter[str] = Counter(dict.fromkeys(self._roles, 0))
        self._on_change = on_change
        # Hooks for the upstream link (this node's own outgoing connections): refused, and linked.
        self.on_refused: Callable[[str, str], None] | None = None
        self.on_linked: Callable[[str], None] | None = None
        # Hook for every connection that closes (fanoutd.subscriptions forgets what it subscribed).
        self.on_closed: Callable[[Connection], None] | None = None
        self._sockets: list[zmq.Socket] = []
        self._greenlets: list[gevent.Greenlet] = []

    def counts(self) -> dict[str, int]:
        return {role: len(conns) for role, conns in self.open.items()}

    def start(self, on_crash: Callable[[gevent.Greenlet], None]) -> None:
        """Start reading every monitor; ``on_crash`` hears of an unexpected failure."""
        for role in self._roles:
            sock = self._hub.socket(zmq.PAIR)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(monitor_address(role))
            self._sockets.append(sock)
            greenlet = gevent.spawn(self._read, role, sock)
            greenlet.link_exception(on_crash)
            self._greenlets.append(greenlet)

    def mark(self, conn: Connection, reason: str, rule: str = "") -> None:
        """Say why a connection is about to close (fanoutd closed it) and, if the guard cut it, by which rule."""
        conn.reason, conn.rule = reason, rule

    def _read(self, role: str, sock: zmq.Socket) -> None:
        conns = self.open[role]
        for frames in green.messages(sock):
            if len(frames) != 2 or len(frames[0]) != _EVENT.size:
                log.warning("ignoring a malformed monitor event on %s", role)
                continue
            event, value = _EVENT.unpack(frames[0])
            if event == zmq.EVENT_MONITOR_STOPPED:
                return
            if event in HANDSHAKE_FAILURES:
                self.handshake_failures[(role, HANDSHAKE_FAILURES[event])] += 1
                self._outcome(role, HANDSHAKE_FAILURES[event])
                continue
            before = len(conns)
            if event in (zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED):
                conns[value] = self._accepted(role, value, frames[1])
                self._pending[role].append(conns[value])
                if self._early[role]:
                    self._outcome(role, self._early[role].popleft())
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._outcome(role, SUCCEEDED)
            elif event == zmq.EVENT_DISCONNECTED:
                conn = conns.pop(value, None)
                if conn is not None:
                    self._closed(conn)
                    if self.on_closed is not None:
                        self.on_closed(conn)
                self.disconnects[role] += 1
            if len(conns) != before:
                log.debug("%s: %d peer(s) connected on %s", role, len(conns), frames[1].decode(errors="replace"))
                if self._on_change is not None:
                    self._on_change(role, len(conns))

    def _outcome(self, role: str, outcome: str) -> None:
        """A handshake's outcome (SUCCEEDED or a failure reason) for the oldest connection waiting for one."""
        if not self._pending[role]:
            log.debug("%s: a handshake outcome came before its connection's accept event", role)
            self._early[role].append(outcome)
            return
        conn = self._pending[role].popleft()
        if outcome != SUCCEEDED:
            conn.failed = outcome
            return
        conn.handshaken = True
        if role == "upstream" and self.on_linked is not None:
            self.on_linked(conn.peer)

    def _closed(self, conn: Connection) -> None:
        """Remember why it closed; a refused handshake is named with the peer (auth refusals ZAP logs itself)."""
        conn.closed = time.time()
        pending = self._pending[conn.role]
        if conn in pending:
            pending.remove(conn)
        if not conn.handshaken and not conn.reason:
            why = conn.failed or INCOMPLETE
            if why == INCOMPLETE:
                self.handshake_failures[(conn.role, INCOMPLETE)] += 1
            conn.reason = f"handshake failed ({why})"
            if conn.role == "upstream":  # this node's own link was refused: the upstream watch says why
                if self.on_refused is not None:
                    self.on_refused(conn.peer, why)
            elif why in WHY:
                self._refused.warning("%s: refused a connection from %s: %s", conn.role, conn.peer, WHY[why],
                                      held="more refused handshakes not logged")
        elif conn.role in PRODUCER_ROLES and not conn.reason:
            # libzmq closes a producer that sends a frame over the collector's MAXMSGSIZE with no event but
            # this disconnect, indistinguishable from the producer leaving: say both, so the message that
            # vanished has a clue in the log.
            self._producer_left.info(
                "%s: producer %s disconnected after %.1f s: it left, left a heartbeat unacknowledged, or sent a "
                "frame over twice max_message_size (+64 KiB), which libzmq refuses by closing the connection "
                "without a reason (counted in fanoutd_disconnects_total)", conn.role, conn.peer,
                conn.closed - conn.since, held="more producer disconnects not logged")
        conn.reason = conn.reason or "closed (peer left or heartbeat unacknowledged)"
        self.closed.append(conn)

    @staticmethod
    def _accepted(role: str, fd: int, endpoint: bytes) -> Connection:
        try:
            inode, peer = describe_peer(fd)
        except OSError:  # already closed by libzmq before the hub read the event: nothing to act on later
            inode, peer = -1, "a peer gone before its address could be read"
        if role == "upstream":
            peer = endpoint.decode(errors="replace")
        return Connection(role, fd, inode, peer)

    def close(self, timeout: float = 1.0) -> None:
        """Wait briefly for the monitors to report they stopped, then close the sockets."""
        gevent.joinall(self._greenlets, timeout=timeout)
        gevent.killall(self._greenlets, timeout=timeout)
        for sock in self._sockets:
            sock.close(linger=0)
        self._sockets.clear()
        self._greenlets.clear()
