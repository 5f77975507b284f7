"""/peers: who is connected to each socket now, with what waiting for them, and why recent connections closed.

It shows client addresses on the metrics port, so ``peers_view = false``
turns it off (docs/security.md, the threat model, says so).

Each closed connection has a ``reason`` in prose and a ``rule``: the
slow-consumer guard's stable name for why it cut it (``stopped``,
``furthest_behind``, ``timeout``, ``window``: fanoutd.slowrules.RULES), which
is what scripts should match; ``null`` for a connection closed for any other
cause (the peer left, a heartbeat, a refused handshake), so the key is
always there. A producer connection (collector, ingress) also has a
``type``: its ZMTP Socket-Type (``PUB``, ``XPUB``, ``PUSH``) once it has
sent a message, ``null`` before (fanoutd.senders).
"""

from __future__ import annotations

import json
from typing import Any

from .dataplane import kernel
from .peers import PRODUCER_ROLES, Connection, PeerTracker


def _entry(conn: Connection, state: tuple[int, int] | None = None, live: bool = False) -> dict[str, Any]:
    """One connection; ``state`` is its kernel state (queued, acknowledged), None once its fd is gone."""
    entry: dict[str, Any] = {"socket": conn.role, "peer": conn.peer, "connected_since": round(conn.since, 3)}
    if live:
        entry["handshaken"] = conn.handshaken  # past the ZMTP handshake: messages can reach it
    if conn.role in PRODUCER_ROLES:
        entry["type"] = conn.kind or None  # its ZMTP Socket-Type once it has sent (fanoutd.senders)
    if live and state is not None:
        entry["queued_bytes"], entry["state"] = state[0], "connected"
    elif live:
        entry["state"] = "closing"
    else:
        entry.update(closed=round(conn.closed or 0.0, 3), reason=conn.reason, rule=conn.rule or None)
    return entry


def peers(tracker: PeerTracker) -> bytes:
    """The JSON body: open connections (largest kernel queue first) and the last closed ones (newest first)."""
    live = [c for conns in tracker.open.values() for c in list(conns.values())]
    states = kernel.states([c.fd for c in live])  # one call for all, as the guard reads them
    connected = [_entry(c, state, live=True) for c, state in zip(live, states)]
    connected.sort(key=lambda e: -e.get("queued_bytes", 0))
    closed = [_entry(c) for c in reversed(tracker.closed)]
    return json.dumps({"connected": connected, "closed": closed}, indent=1).encode() + b"\n"
