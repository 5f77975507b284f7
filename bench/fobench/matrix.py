"""The side-by-side matrix: every system on every cell, alternating, repeated.

Systems run one after another inside each cell and the order rotates on each
repeat, so slow drifts of a shared, noisy machine spread over all systems
instead of landing on one.  Each cell's figure is the median over repeats.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .trial import TrialResult, TrialSpec, run_trial

SIZES = (100, 1024, 16384)
SUBS = (1, 4)
# Messages per throughput run with one subscriber, sized so one run lasts
# about 1-3 s on a 2-core machine; runs with more subscribers send half.
COUNTS = {100: 1_000_000, 1024: 500_000, 16384: 40_000}


def count_for(size: int, subs: int, scale: float = 1.0) -> int:
    """Messages to send for one throughput run of this cell."""
    base = COUNTS.get(size) or max(10_000, int(100_000_000 / max(size, 100)))
    return max(1_000, int(base * scale / (2 if subs > 1 else 1)))


@dataclass
class Cell:
    """All trials of one system on one cell, and their medians."""

    system: str
    size: int
    subs: int
    trials: list[TrialResult] = field(default_factory=list)

    @property
    def good(self) -> list[TrialResult]:
        return [t for t in self.trials if t.ok]

    @property
    def errors(self) -> list[str]:
        return [t.error for t in self.trials if t.error]

    def median(self, value: Callable[[TrialResult], float | None]) -> float | None:
        values = [v for v in (value(t) for t in self.good) if v is not None]
        return statistics.median(values) if values else None

    @property
    def rate(self) -> float | None:
        return self.median(lambda t: t.rate)

    @property
    def lost(self) -> float | None:
        return self.median(lambda t: float(t.lost))


def _rotated(systems: Sequence[str], rep: int) -> list[str]:
    k = rep % len(systems)
    return list(systems[k:]) + list(systems[:k])


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _describe(t: TrialResult) -> str:
    if t.error:
        return f"ERROR {t.error}"
    outs = ", ".join(f"{s.output} {s.rate / 1e3:,.0f}k/s" for s in t.measured())
    gap = max((s.max_gap_ms for s in t.measured()), default=0.0)
    drops = "".join(f", {k} {v:,.0f}" for k, v in t.drops().items())
    return f"{t.rate / 1e3:,.0f}k msg/s, lost {t.lost}, max gap {gap:.0f} ms ({outs}){drops}"


MAX_START_FAILURES = 2  # failed starts in a row before a system is skipped for the rest of the run


class Runner:
    """Runs trials, skipping a system for the rest of the run once it repeatedly fails to start."""

    def __init__(self, bins: dict[str, Path], python: str | None, idle_ms: int = 1000) -> None:
        self.bins = bins
        self.python = python
        self.idle_ms = idle_ms
        self.unavailable: dict[str, str] = {}
        self._start_failures: dict[str, int] = {}

    def run(self, spec: TrialSpec, label: str) -> TrialResult:
        if spec.system in self.unavailable:
            return TrialResult(spec, error=f"unavailable: {self.unavailable[spec.system]}")
        result = run_trial(dataclasses.replace(spec, idle_ms=self.idle_ms), self.bins, self.python)
        if result.error and result.error.startswith("start:"):
            failures = self._start_failures[spec.system] = self._start_failures.get(spec.system, 0) + 1
            if failures >= MAX_START_FAILURES:
                self.unavailable[spec.system] = result.error
        else:
            self._start_failures[spec.system] = 0
        _log(f"  {label} {spec.system:8s} {_describe(result)}")
        return result


def throughput(runner: Runner, systems: Sequence[str], sizes: Sequence[int], subs: Sequence[int],
               repeats: int, scale: float = 1.0, clients: str = "raw") -> list[Cell]:
    """Flat-out delivery rate for every system x size x subscriber count (``clients``: see TrialSpec)."""
    cells = {(sy, si, su): Cell(sy, si, su) for si in sizes for su in subs for sy in systems}
    for rep in range(repeats):
        for size in sizes:
            for n in subs:
                label = f"[throughput {rep + 1}/{repeats}] {size:>5} B x{n}"
                for system in _rotated(systems, rep):
                    spec = TrialSpec(system, size, n, count=count_for(size, n, scale), clients=clients)
                    cells[(system, size, n)].trials.append(runner.run(spec, label))
    return list(cells.values())
