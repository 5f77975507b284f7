"""/peers: who is connected to each socket now, with what waiting for them, and why recent connections closed.

It shows client addresses on the metrics port, so ``peers_view = false``
turns it off (the README's threat model says so).
"""

from __future__ import annotations

import json
from typing import Any

from .peers import Connection, PeerTracker
from .slow import kernel_state


def _entry(conn: Connection, live: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"socket": conn.role, "peer": conn.peer, "connected_since": round(conn.since, 3)}
    if live:
        try:
            entry["queued_bytes"], _ = kernel_state(conn.fd)
            entry["state"] = "connected"
        except OSError:
            entry["state"] = "closing"
    else:
        entry.update(closed=round(conn.closed or 0.0, 3), reason=conn.reason)
    return entry


def peers(tracker: PeerTracker) -> bytes:
    """The JSON body: open connections (largest kernel queue first) and the last closed ones (newest first)."""
    connected = [_entry(c, True) for conns in tracker.open.values() for c in list(conns.values())]
    connected.sort(key=lambda e: -e.get("queued_bytes", 0))
    closed = [_entry(c, False) for c in reversed(tracker.closed)]
    return json.dumps({"connected": connected, "closed": closed}, indent=1).encode() + b"\n"
