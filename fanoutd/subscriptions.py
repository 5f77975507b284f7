"""The hub's side of the subscription bounds: which connections closed, and who was refused.

The forwarding loop counts each output's subscriptions per connection, per
peer address and per output, and closes a connection whose subscription
would pass a bound (fanoutd/dataplane/subs.c; docs/concepts.md,
"Subscriptions"). It learns a connection's subscriptions from what libzmq
hands up with its metadata, but not that a connection went: libzmq's
unsubscriptions then carry none. So this module tells the loop of every
output connection the monitors see close, and reads back the loop's
refusals: each refused connection is named in ``/peers`` (its ``rule`` is
the bound's setting) and logged once per peer address, rate-limited.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Protocol

import gevent

from . import logs
from .every import Every
from .peers import Connection, PeerTracker
from .roles import ROLES

log = logging.getLogger(__name__)

POLL_EVERY = 0.5  # how often refusals are read and held-back closes retried
ADDRESSES_KEPT = 4096  # peer addresses already logged, most recent kept: each is logged once while remembered
OUTPUT_ROLES = frozenset(role.name for role in ROLES if role.fans_out)
SETTING = {"connection": "subscriptions_per_connection", "address": "subscriptions_per_address",
           "socket": "subscriptions_per_socket"}


class Loop(Protocol):
    """The loop's side (the Engine)."""

    def subscriber_closed(self, fd: int, inode: int) -> bool: ...
    def subscription_refusals(self) -> list[tuple[str, str, int, int, int, str]]: ...


class Subscriptions:
    """Forwards output connection closes to the loop; names and logs the connections it refused."""

    def __init__(self, loop: Loop, peers: PeerTracker) -> None:
        self._loop = loop
        self._peers = peers
        self._held: collections.deque[tuple[int, int]] = collections.deque()  # closes the loop had no room for
        self._logged: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._sparse = logs.Sparse(log)
        self._every = Every(POLL_EVERY, self.poll)
        peers.on_closed = self.closed

    def start(self, on_crash: Callable[[gevent.Greenlet], None]) -> None:
        self._every.start(on_crash)

    def close(self) -> None:
        self._every.close()

    def closed(self, conn: Connection) -> None:
        """An output's connection closed: its subscriptions stop counting (in order, after any held back)."""
        if conn.role in OUTPUT_ROLES:
            self._held.append((conn.fd, conn.inode))
            self._flush()

    def _flush(self) -> None:
        while self._held and self._loop.subscriber_closed(*self._held[0]):
            self._held.popleft()

    def poll(self) -> None:
        """Retry held-back closes; name and log the connections the loop refused since the last poll."""
        self._flush()
        for role, bound, fd, inode, limit, address in self._loop.subscription_refusals():
            conn = self._find(role, fd, inode)
            setting = SETTING[bound]
            if conn is not None:
                self._peers.mark(conn, f"a subscription over {setting} ({limit})", setting)
            peer = conn.peer if conn is not None else address
            if address in self._logged:
                self._logged.move_to_end(address)
                continue
            self._logged[address] = None
            if len(self._logged) > ADDRESSES_KEPT:
                self._logged.popitem(last=False)
            self._sparse.warning(
                "%s: closed subscriber %s: a subscription would pass %s = %d (counted in "
                "fanoutd_subscriptions_refused_total{bound=\"%s\"}; logged once per peer address)",
                role, peer, setting, limit, bound, held="more refused subscribers not logged")

    def _find(self, role: str, fd: int, inode: int) -> Connection | None:
        """The connection the loop refused: still open, or among the recently closed (it closes at once)."""
        conn = self._peers.open.get(role, {}).get(fd)
        if conn is not None and conn.inode == inode:
            return conn
        return next((c for c in reversed(self._peers.closed) if c.role == role and c.fd == fd and c.inode == inode),
                    None)
