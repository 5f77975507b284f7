"""Producer connections by the kind of socket they are (their ZMTP Socket-Type), and a warning per plain PUB.

While fanoutd holds its producers back (a full output; under
``slow_consumer_policy = "pace"`` whenever a reader is behind), a plain PUB
producer drops messages at its own high-water mark, in its own process,
where no fanoutd counter can see them. Operators must be able to find those
producers: ``fanoutd_producer_peers{socket,type}`` counts the open producer
connections by type, ``/peers`` names each one's, and each plain PUB
connection is logged once (rate-limited) with its address and the fix.

libzmq tells a peer's Socket-Type only with the messages it sends, so the
forwarding loop reports each connection the first time it reads from it
(fanoutd/dataplane/senders.h); this module, on the hub, ties each report to
the monitor's connection by fd and inode, and tells the loop when a producer
connection closed (so a new one at a reused address is reported afresh). A
connection that has sent nothing yet is ``unknown``; one that never sends is
never anything else.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import gevent

from . import logs
from .every import Every
from .peers import PRODUCER_ROLES, Connection, PeerTracker
from .roles import BY_NAME, ROLES

log = logging.getLogger(__name__)

POLL_EVERY = 0.5  # how often the loop's reports are read: the gauge and the warning lag by at most this
PENDING_FOR = 5.0  # how long a report waits for its connection's accept event before it is dropped
UNKNOWN = "unknown"  # a connection not heard from yet
PLAIN_PUB = "PUB"
# The Socket-Types libzmq lets connect to each input's pattern (ZMTP's compatibility rules): each has a
# sample (0 when none is connected), so an alert on type="PUB" needs no series to appear first.
PEER_TYPES = {"SUB": ("PUB", "XPUB"), "PULL": ("PUSH",)}


def types_of(role: str) -> tuple[str, ...]:
    """The ``type`` label values of ``role``'s connections: the Socket-Types that may connect to it, and unknown."""
    return (*PEER_TYPES.get(BY_NAME[role].pattern, ()), UNKNOWN)


class Sightings(Protocol):
    """The loop's side (the Engine): connections seen since the last call, and a producer-closed notice."""

    def senders(self) -> list[tuple[int, int, str]]: ...  # (fd, inode, Socket-Type) per connection seen
    def forget_senders(self) -> None: ...


class Senders:
    """Keeps each open producer connection's Socket-Type (``Connection.kind``) from the loop's reports."""

    def __init__(self, loop: Sightings, peers: PeerTracker) -> None:
        self._loop = loop
        self._peers = peers
        self._roles = tuple(r.name for r in ROLES if r.name in PRODUCER_ROLES and r.name in peers.open)
        self._pending: dict[tuple[int, int], tuple[str, float]] = {}  # (fd, inode) -> (type, dropped after)
        self._closes = self._closed_so_far()
        self._plain = logs.Sparse(log)
        self._every = Every(POLL_EVERY, self.poll)

    def start(self, on_crash: Callable[[gevent.Greenlet], None]) -> None:
        self._every.start(on_crash)

    def close(self) -> None:
        self._every.close()

    def _closed_so_far(self) -> int:
        return sum(self._peers.disconnects[role] for role in self._roles)

    def poll(self) -> None:
        """Read the loop's reports and tie each to its open connection; tell the loop of producers that left."""
        closes = self._closed_so_far()
        if closes != self._closes:
            self._closes = closes
            self._loop.forget_senders()
        now = time.monotonic()
        for fd, inode, kind in self._loop.senders():
            self._pending[(fd, inode)] = (kind, now + PENDING_FOR)
        for (fd, inode), (kind, until) in list(self._pending.items()):
            conn = next((self._peers.open[role][fd] for role in self._roles if fd in self._peers.open[role]), None)
            if conn is not None and conn.inode == inode:
                del self._pending[(fd, inode)]
                self._seen(conn, kind)
            elif until < now:  # its connection closed before the hub heard of it, or a stale fd
                del self._pending[(fd, inode)]

    def _seen(self, conn: Connection, kind: str) -> None:
        if conn.kind == kind:
            return
        conn.kind = kind
        if kind == PLAIN_PUB:
            self._plain.warning(
                "%s: producer %s is a plain PUB socket: unless it sets ZMQ_XPUB_NODROP and sends blocking (options "
                "fanoutd cannot see), it drops messages at its own high-water mark while fanoutd holds producers "
                "back, where no fanoutd counter sees them; the fix, or the PULL ingress: clients/README.md, "
                "\"Producing while fanoutd holds back\"", conn.role, conn.peer,
                held="more plain PUB producer connections not logged (fanoutd_producer_peers{type=\"PUB\"})")

    def counts(self) -> dict[tuple[str, str], int]:
        """(socket, type) -> open connections: every type its pattern admits, and ``unknown``."""
        counts: dict[tuple[str, str], int] = {}
        for role in self._roles:
            kinds = Counter(dict.fromkeys(types_of(role), 0))
            kinds.update(conn.kind or UNKNOWN for conn in list(self._peers.open[role].values()))
            counts.update({(role, kind): n for kind, n in kinds.items()})
        return counts
