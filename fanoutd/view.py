"""/peers: who is connected to each socket now, with what waiting for them, and why recent connections closed.

Each open connection has ``queued_bytes`` (its kernel send queue, exact) and
``pending_bytes``, an estimate of all that waits for it: libzmq does not say
what it queues per connection, so a connection whose kernel buffer is full
is given its output's whole held bytes (exact for the furthest behind, too
high for the others) and any other only its kernel queue
(docs/concepts.md, "Held bytes").

It shows client addresses on the metrics port, so ``peers_view = false``
turns it off (docs/security.md, the threat model, says so).

Each closed connection has a ``reason`` in prose and a ``rule``: the
slow-consumer guard's stable name for why it cut it (``stopped``,
``furthest_behind``, ``timeout``, ``window``: fanoutd.slowrules.RULES) or the
subscription bound it passed (``subscriptions_per_connection``,
``subscriptions_per_address``, ``subscriptions_per_socket``:
fanoutd.subscriptions), which is what scripts should match; ``null`` for a
connection closed for any other cause (the peer left, a heartbeat, a refused
handshake), so the key is always there. A producer connection (collector, ingress) also has a
``type``: its ZMTP Socket-Type (``PUB``, ``XPUB``, ``PUSH``) once it has
sent a message, ``null`` before (fanoutd.senders). An open connection of an
output (publish, relay, stamped) has ``subscriptions``: the distinct prefixes
the forwarding loop counts for it against the subscription bounds
(dataplane/subs.c).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from .dataplane import kernel
from .peers import PRODUCER_ROLES, Connection, PeerTracker
from .slow import LiveKernel
from .slowrules import Reading, could_be_full, full
from .subscriptions import OUTPUT_ROLES


def _pending(conn: Connection, queued: int, held: Mapping[str, int]) -> int:
    """An upper bound on the bytes waiting for one connection: its kernel queue, plus its output's held bytes
    when its kernel buffer is full (libzmq queues for no other reader); exact for the furthest behind."""
    if not held.get(conn.role) or not could_be_full(queued):
        return queued
    sndbuf = LiveKernel().send_buffer(conn.fd)
    return queued + held[conn.role] if full(Reading(queued, -1, sndbuf)) else queued


def _entry(conn: Connection, state: tuple[int, int] | None = None, live: bool = False,
           held: Mapping[str, int] | None = None,
           subscriptions: Callable[[str, int], int] | None = None) -> dict[str, Any]:
    """One connection; ``state`` is its kernel state (queued, acknowledged), None once its fd is gone."""
    entry: dict[str, Any] = {"socket": conn.role, "peer": conn.peer, "connected_since": round(conn.since, 3)}
    if live:
        entry["handshaken"] = conn.handshaken  # past the ZMTP handshake: messages can reach it
    if conn.role in PRODUCER_ROLES:
        entry["type"] = conn.kind or None  # its ZMTP Socket-Type once it has sent (fanoutd.senders)
    if live and state is not None:
        entry["queued_bytes"], entry["state"] = state[0], "connected"
        entry["pending_bytes"] = _pending(conn, state[0], held or {})
        if subscriptions is not None and conn.role in OUTPUT_ROLES:
            entry["subscriptions"] = subscriptions(conn.role, conn.fd)
    elif live:
        entry["state"] = "closing"
    else:
        entry.update(closed=round(conn.closed or 0.0, 3), reason=conn.reason, rule=conn.rule or None)
    return entry


def peers(tracker: PeerTracker, held: Mapping[str, int] | None = None,
          subscriptions: Callable[[str, int], int] | None = None) -> bytes:
    """The JSON body: open connections (largest kernel queue first) and the last closed ones (newest first).

    ``held``: each fanning-out output's held bytes (Engine.held_bytes), for each connection's ``pending_bytes``;
    ``subscriptions``: (output, fd) -> the loop's count for that connection (Engine.subscriptions_of).
    """
    live = [c for conns in tracker.open.values() for c in list(conns.values())]
    states = kernel.states([c.fd for c in live])  # one call for all, as the guard reads them
    connected = [_entry(c, state, live=True, held=held, subscriptions=subscriptions) for c, state in zip(live, states)]
    connected.sort(key=lambda e: -e.get("queued_bytes", 0))
    closed = [_entry(c) for c in reversed(tracker.closed)]
    return json.dumps({"connected": connected, "closed": closed}, indent=1).encode() + b"\n"
