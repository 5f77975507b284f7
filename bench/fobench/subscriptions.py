"""How many subscriptions Redis or NATS holds on the bench channel, asked of the server itself.

The sinks say "ready" once their own subscription is answered; the runner
also asks the server (Redis ``PUBSUB NUMSUB``, NATS ``/connz``) before the
load starts, so a run never measures fewer consumers than it reports.
"""

from __future__ import annotations

import json
import socket
import urllib.request

from .procs import LOOPBACK, ProcError

CHANNEL = "c"  # the channel (Redis) or subject (NATS) rawpub publishes on and msink subscribes to


def count(system: str, port: int, monitor_port: int = 0) -> int:
    """Subscriptions to the bench channel on a Redis (``port``) or NATS (``monitor_port``) server."""
    if system == "nats":
        url = f"http://{LOOPBACK}:{monitor_port}/connz?subs=1&limit=100000"  # the default page is 1,024
        with urllib.request.urlopen(url, timeout=5) as resp:
            conns = json.load(resp).get("connections") or []
        return sum((c.get("subscriptions_list") or []).count(CHANNEL) for c in conns)
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(f"PUBSUB NUMSUB {CHANNEL}\r\n".encode())
        reply = b""
        while reply.count(b"\r\n") < 4:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        # *2 $1 c :N
        lines = reply.split(b"\r\n")
        if len(lines) < 4:
            raise ProcError(f"redis: no answer to PUBSUB NUMSUB (got {reply[:80]!r})")
        return int(lines[3].lstrip(b":"))
