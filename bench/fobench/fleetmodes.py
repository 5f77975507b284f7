"""The cost, scale and latency modes: fleets of subscribers, every system, alternating, repeated.

* cost: the server's CPU per delivered message at fixed offered rates
  (sizes x subscriber counts in :data:`COST_CELLS`); lower is better.
* scale: K = 10 .. 10,000 subscribers, 100 B flat out: deliveries/s, loss,
  memory per connection, connect time, and the CPU of the connected idle
  server (fanoutd's slow-consumer detector included).
* latency: one subscriber (+ one consumer), 100 B at 10k and 100k msg/s:
  p50, p99, p99.9 of send-to-receive time.

As in the throughput matrix, systems alternate inside a cell and the order
rotates on each repeat; a cell's figure is the median over repeats.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .fleet import IDLE_PROBE, IDLE_PROBE_FROM, IDLE_PROBE_SMALL, FleetResult, FleetSpec, run

# (size, subscribers, offered msg/s): moderate rates every system sustains, where CPU per message is the
# difference a user pays for.  16 KiB x 100 at 500/s is already 0.8 GB/s of deliveries.
COST_CELLS = ((100, 4, 40_000), (100, 100, 20_000), (1024, 4, 40_000), (1024, 100, 10_000),
              (16384, 4, 10_000), (16384, 100, 500))
COST_SECONDS = 4.0
SCALE_SUBS = (10, 100, 1_000, 10_000)
SCALE_SIZE = 100
SCALE_DELIVERIES = 2_000_000  # per run: count = this / K (at least 200 messages)
LATENCY_RATES = (10_000, 100_000)
LATENCY_SIZE = 100


@dataclass
class FleetCell:
    system: str
    key: tuple[int, ...]
    runs: list[FleetResult] = field(default_factory=list)

    @property
    def good(self) -> list[FleetResult]:
        return [r for r in self.runs if r.ok]

    def median(self, value: Callable[[FleetResult], float | None]) -> float | None:
        values = [v for v in (value(r) for r in self.good) if v is not None]
        return statistics.median(values) if values else None

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.runs if r.error]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _rotated(systems: Sequence[str], rep: int) -> list[str]:
    k = rep % len(systems)
    return list(systems[k:]) + list(systems[:k])


def _describe(r: FleetResult) -> str:
    if r.error:
        return f"ERROR {r.error}"
    parts = [f"{r.deliveries_per_s / 1e3:,.0f}k deliveries/s", f"cpu {r.cpu_us_per_delivery or 0:.3f} µs/delivery",
             f"lost {r.lost:,}"]
    if r.closed:
        parts.append(f"closed {r.closed}")
    if r.idle_cpu_pct is not None:
        parts.append(f"idle cpu {r.idle_cpu_pct:.1f}%")
    if r.latency_us:
        parts.append("p50/p99/p99.9 " + "/".join(f"{r.latency_us.get(q, 0):.0f}" for q in ("p50", "p99", "p999"))
                     + " µs")
    counted = r.counted_losses()
    if counted:
        parts.append(f"fanoutd counted {counted:,.0f}")
    return ", ".join(parts)


def _matrix(systems: Sequence[str], keys: Sequence[tuple[int, ...]], repeats: int, name: str,
            spec_for: Callable[[str, tuple[int, ...]], FleetSpec], bins: dict[str, Path],
            python: str | None) -> list[FleetCell]:
    cells = {(s, k): FleetCell(s, k) for k in keys for s in systems}
    for rep in range(repeats):
        for key in keys:
            for system in _rotated(systems, rep):
                result = run(spec_for(system, key), bins, python)
                _log(f"  [{name} {rep + 1}/{repeats}] {'/'.join(map(str, key)):>14} {system:8s} {_describe(result)}")
                cells[(system, key)].runs.append(result)
    return list(cells.values())


def cost(bins: dict[str, Path], systems: Sequence[str], repeats: int, seconds: float = COST_SECONDS,
         python: str | None = None, cells: Sequence[tuple[int, int, int]] = COST_CELLS) -> list[FleetCell]:
    def spec(system: str, key: tuple[int, ...]) -> FleetSpec:
        size, subs, rate = key
        return FleetSpec(system, size, subs, count=max(100, int(rate * seconds)), rate=rate)
    return _matrix(systems, cells, repeats, "cost", spec, bins, python)


def scale(bins: dict[str, Path], systems: Sequence[str], repeats: int, python: str | None = None,
          subs: Sequence[int] = SCALE_SUBS, deliveries: int = SCALE_DELIVERIES, size: int = SCALE_SIZE,
          long_idle: bool = True) -> list[FleetCell]:
    """``long_idle`` False: the idle probe is IDLE_PROBE_SMALL everywhere (a second size of one run: its idle
    CPU was measured at the first)."""
    def spec(system: str, key: tuple[int, ...]) -> FleetSpec:
        (k,) = key
        probe = IDLE_PROBE if k >= IDLE_PROBE_FROM and long_idle else IDLE_PROBE_SMALL
        return FleetSpec(system, size, k, count=max(200, deliveries // k), idle_probe=probe, idle_ms=3000)
    return _matrix(systems, [(k,) for k in subs], repeats, "scale", spec, bins, python)


def latency(bins: dict[str, Path], systems: Sequence[str], repeats: int, seconds: float,
            python: str | None = None, rates: Sequence[int] = LATENCY_RATES) -> list[FleetCell]:
    def spec(system: str, key: tuple[int, ...]) -> FleetSpec:
        (rate,) = key
        return FleetSpec(system, LATENCY_SIZE, 1, count=max(100, int(rate * seconds)), rate=rate, latency=True)
    return _matrix(systems, [(r,) for r in rates], repeats, "latency", spec, bins, python)
