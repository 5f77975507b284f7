"""The load's two ends, the same programs for every system: ``rawpub`` and ``msink``.

Both speak each system's wire protocol over raw TCP from C (ZMTP 3.0 for
fanoutd and the C baseline, RESP for Redis, the NATS protocol for NATS), one
thread, one fd per connection, so what a run measures is the broker and not
its client library: a libzmq client adds an I/O thread and a hand-off per
message on the same two cores the broker runs on (``zpub`` and ``zsink``
took about 0.8 s of CPU for a million 100 B messages where the raw Redis and
NATS clients took 0.1 s; bench/README.md, "The load generators").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from . import servers
from .procs import Child

TOPIC_LEN = 2  # the "t " every ZeroMQ message starts with


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def producer(bins: dict[str, Path], server: servers.Server, size: int, count: int,
             rate: float = 0.0) -> tuple[Child, str]:
    """``rawpub`` to ``server``; returns it and the line it prints once it may be told "go"."""
    if server.is_zmq:
        mode, port, ready = "zmtp", port_of(server.collector), "subscribed"
    else:
        mode, port, ready = server.system, server.port, "connected"
    argv = [str(bins["rawpub"]), "-m", mode, "-p", str(port), "-s", str(size), "-n", str(count)]
    return Child(argv + (["-r", str(rate)] if rate else []), "rawpub", stdin=True), ready


def msink(bins: dict[str, Path], mode: str, port: int, k: int, length: int, count: int, offset: int,
          idle_ms: int, wait_ms: int | None = None, latency: bool = False, extra: Sequence[str] = ()) -> Child:
    """One ``msink`` process holding ``k`` connections (``mode``: zmtp, zmtp-pull, redis, nats).

    ``extra``: more flags, e.g. ``-S`` (every connection stops reading once ready) or ``-b BPS`` (each reads
    at most BPS bytes a second).
    """
    argv = [str(bins["msink"]), "-m", mode, "-p", str(port), "-k", str(k), "-L", str(length),
            "-n", str(count), "-o", str(offset), "-i", str(idle_ms), *extra]
    if wait_ms is not None:
        argv += ["-w", str(wait_ms)]
    return Child(argv + (["-l"] if latency else []), f"msink-{mode}")


def puller(bins: dict[str, Path], server: servers.Server, size: int, count: int, idle_ms: int,
           wait_ms: int | None = None, latency: bool = False) -> Child:
    """One puller on a ZeroMQ system's PUSH output (fanoutd's pullers get the payload without its topic).

    A system without one (the prototype, zmtpd) gets one more subscriber instead: equal work, as for Redis
    and NATS.
    """
    if not server.push:
        return msink(bins, "zmtp", port_of(server.publish), 1, size, count, TOPIC_LEN, idle_ms, wait_ms, latency)
    offset = 0 if server.strip_topic else TOPIC_LEN
    return msink(bins, "zmtp-pull", port_of(server.push), 1, size - TOPIC_LEN + offset, count, offset,
                 idle_ms, wait_ms, latency)
