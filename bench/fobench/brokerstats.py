"""What each broker says it cut, and how much memory it peaked at: the slow-consumer cells' two broker-side facts.

Each system counts its own disconnections of slow readers, in its own terms:

* fanoutd: ``fanoutd_slow_consumers_total{rule=...}`` on ``/metrics``, by rule
  (``stopped``, ``timeout``, ``pace_bound``, ``furthest_behind``, ...);
* NATS: ``slow_consumers`` in ``/varz`` (a connection whose pending bytes
  passed ``max_pending``, or whose writes made no progress for
  ``write_deadline``);
* Redis: clients closed past ``client-output-buffer-limit``: the count
  ``client_output_buffer_limit_disconnections`` of ``INFO stats`` where it
  exists (Redis 7.2 and later), else the server's own log line for each
  ("scheduled to be closed ASAP for overcoming of output buffer limits",
  a warning, so logged at the default level; Redis 7.0 has no counter).

A reader's own view (its connection closed) cannot stand in for these: a
reader that stopped reading never sees a close that waits behind a full
receive window.  The peak is ``VmHWM`` of ``/proc/PID/status``, the kernel's
own high-water mark of the process's resident set, so no sampling interval
can miss a short peak.
"""

from __future__ import annotations

import json
import queue
import socket
import urllib.request

from .procs import LOOPBACK, ProcError, prometheus_counters
from .servers import Server


def peak_rss(pid: int) -> int:
    """The highest resident set size the process has had, in bytes (``VmHWM``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise ProcError(f"no VmHWM in /proc/{pid}/status")


def _rule(sample: str) -> str:
    """The rule label of a fanoutd_slow_consumers_total sample name."""
    return sample.partition('rule="')[2].partition('"')[0] or "?"


def _redis_info(port: int) -> dict[str, str]:
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(b"INFO stats\r\n")
        reply = sock.recv(65536)
        head, _, rest = reply.partition(b"\r\n")  # $LEN, then the bulk string
        want = int(head.lstrip(b"$")) + 2
        while len(rest) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    pairs = (line.split(":", 1) for line in rest.decode().splitlines() if ":" in line)
    return {k: v for k, v in pairs}


def _redis_log_cuts(server: Server) -> int:
    """Output-buffer-limit closes in the Redis log so far (its stdout, which nothing else reads after start)."""
    n = 0
    while True:
        try:
            line = server.child.lines.get_nowait()
        except queue.Empty:
            return n
        if line is not None and "overcoming of output buffer limits" in line:
            n += 1


def cuts(server: Server) -> dict[str, int]:
    """Slow readers the broker disconnected, by its own reason; {} when it cut none."""
    if server.system == "fanoutd":
        counters = prometheus_counters(f"http://{server.extras['metrics']}/metrics", "fanoutd_slow_consumers_total")
        out: dict[str, int] = {}
        for name, value in counters.items():
            if value:
                out[_rule(name)] = out.get(_rule(name), 0) + int(value)
        return out
    if server.system == "nats":
        with urllib.request.urlopen(f"http://{LOOPBACK}:{server.monitor_port}/varz", timeout=5) as resp:
            n = int(json.load(resp).get("slow_consumers", 0))
        return {"slow_consumer": n} if n else {}
    if server.system == "redis":
        logged = _redis_log_cuts(server)
        counted = _redis_info(server.port).get("client_output_buffer_limit_disconnections")
        n = int(counted) if counted is not None else logged
        return {"output_buffer_limit": n} if n else {}
    return {}
