"""The later modes: burst losses, idle CPU, and a stalled subscriber.

* burst: one producer sends BURST_COUNT small messages flat out; every output
  (subscriber, puller) reports how many it lost.
* idle: a started, unconnected server's CPU over IDLE_SECONDS, from
  /proc/PID/stat utime + stime (all threads), as % of one core.
* stall: for STALL_SECONDS under full load, one subscriber connects and never
  reads while another subscriber and a puller keep reading; their rates and
  the server's RSS over time are reported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import servers
from .matrix import Runner
from .procs import CLOCK_TICKS, ProcError, cpu_ticks, rss_bytes
from .trial import TrialResult, TrialSpec

BURST_COUNT = 300_000
BURST_SIZE = 100
IDLE_SECONDS = 10.0
STALL_SECONDS = 30.0
STALL_SIZE = 100


def burst(runner: Runner, systems: Sequence[str], count: int = BURST_COUNT) -> list[TrialResult]:
    """One flat-out burst per system; losses per output are in each result's sinks."""
    return [runner.run(TrialSpec(system, BURST_SIZE, 1, count=count), "[burst]") for system in systems]


@dataclass
class IdleResult:
    system: str
    seconds: float
    cpu_percent: float | None = None  # of one core
    rss: int | None = None            # bytes, at the end
    error: str | None = None


def idle_cpu(bins: dict[str, Path], systems: Sequence[str], seconds: float = IDLE_SECONDS,
             python: str | None = None) -> list[IdleResult]:
    """CPU a server burns doing nothing, measured after it reports ready."""
    results = []
    for system in systems:
        result = IdleResult(system, seconds)
        try:
            server = servers.start(system, bins, python)
        except (ProcError, OSError) as err:
            result.error = f"start: {err}"
            results.append(result)
            continue
        try:
            time.sleep(1.0)  # let start-up work finish
            before, t0 = cpu_ticks(server.pid), time.monotonic()
            time.sleep(seconds)
            ticks, wall = cpu_ticks(server.pid) - before, time.monotonic() - t0
            result.cpu_percent = 100.0 * ticks / CLOCK_TICKS / wall
            result.rss = rss_bytes(server.pid)
        except OSError as err:
            result.error = str(err)
        finally:
            server.stop()
        results.append(result)
    return results


def stall(runner: Runner, systems: Sequence[str], seconds: float = STALL_SECONDS) -> list[TrialResult]:
    """Full load with one subscriber that never reads, per ZeroMQ system."""
    out = []
    for system in systems:
        if system not in servers.ZMQ_SYSTEMS:
            continue
        spec = TrialSpec(system, STALL_SIZE, 1, duration=seconds, stall=seconds, rss_every=1.0)
        out.append(runner.run(spec, "[stall]"))
    return out
