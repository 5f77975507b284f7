#!/usr/bin/env python3
"""Measure fanoutd's tuning levers, each against the defaults in paired runs: ``python bench/levers.py``.

For every lever, each repeat runs fanoutd with the defaults (A) and with
the lever (B), in alternating order, on the same cells: flat-out throughput
(100 B x 1 and 1 KiB x 4 subscribers, + the puller), server CPU per delivery
at fixed offered rates (100 B x 4 at 40k/s, 16 KiB x 4 at 10k/s) and the
p99 latency at 10k msg/s.  The table gives the median of each side and
B's change against A, with its sign oriented so that + is better.

The lever is applied by ``bench/levers/sitecustomize.py`` in the broker's
own interpreter (see its docstring), so fanoutd's code is the same on
both sides.  The table goes to stdout and ``--out`` (default
``bench/build/levers.md``); bench/README.md keeps the one it reports.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from fobench import fleet, matrix, report
from fobench.build import BENCH_DIR, BUILD_DIR, build_all
from fobench.trial import TrialSpec

# forward_spin (a bounded spin of the loop before it sleeps) was measured on a build that had it (commit
# da1817e) and reverted: bench/README.md, Levers.
LEVERS = ("io_threads=1", "io_threads=3", "affinity=0", "buffers=4194304", "sockaffinity=1:2")


def _measures(bins: dict[str, Path], python: str, seconds: float,
              cells: list[tuple[int, int]] | None = None) -> list[tuple[str, bool, Callable[[], float | None]]]:
    """The five measures, or with ``cells`` only flat-out throughput at those (size, subscribers)."""
    runner = matrix.Runner(bins, python)

    def tput(size: int, subs: int) -> Callable[[], float | None]:
        def go() -> float | None:
            r = runner.run(TrialSpec("fanoutd", size, subs, count=matrix.count_for(size, subs)), "  tput")
            return r.rate if r.ok else None
        return go

    def cost(size: int, rate: int) -> Callable[[], float | None]:
        def go() -> float | None:
            r = fleet.run(fleet.FleetSpec("fanoutd", size, 4, count=int(rate * seconds), rate=rate), bins, python)
            return r.cpu_us_per_delivery if r.ok else None
        return go

    def p99() -> float | None:
        r = fleet.run(fleet.FleetSpec("fanoutd", 100, 1, count=int(10_000 * seconds), rate=10_000, latency=True),
                      bins, python)
        return r.latency_us.get("p99") if r.ok else None

    if cells:
        return [(f"throughput {size} B x{subs}, msg/s", True, tput(size, subs)) for size, subs in cells]
    return [("throughput 100 B x1, msg/s", True, tput(100, 1)),
            ("throughput 1 KiB x4, msg/s", True, tput(1024, 4)),
            ("CPU 100 B x4 @ 40k/s, µs/delivery", False, cost(100, 40_000)),
            ("CPU 16 KiB x4 @ 10k/s, µs/delivery", False, cost(16384, 10_000)),
            ("latency p99 @ 10k/s, µs", False, p99)]


def _with_lever(lever: str, go: Callable[[], float | None]) -> float | None:
    old = os.environ.get("FOBENCH_LEVER")
    os.environ["FOBENCH_LEVER"] = lever
    try:
        return go()
    finally:
        if old is None:
            os.environ.pop("FOBENCH_LEVER", None)
        else:
            os.environ["FOBENCH_LEVER"] = old


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v / 1e3:,.0f}k" if v >= 1e4 else f"{v:.3g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levers", default=",".join(LEVERS), help=f"comma list (default: {','.join(LEVERS)})")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="length of each fixed-rate run")
    p.add_argument("--throughput", default="",
                   help="only flat-out throughput, at these SIZExSUBS cells (e.g. 100x1,1024x4)")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--out", type=Path, default=BUILD_DIR / "levers.md")
    args = p.parse_args(argv)
    site = str(BENCH_DIR / "levers")
    os.environ["PYTHONPATH"] = site + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    bins = build_all()
    cells = [(int(size), int(subs)) for size, _, subs in (c.partition("x") for c in args.throughput.split(",") if c)]
    measures = _measures(bins, args.python, args.seconds, cells)
    lines = ["| lever | measure | defaults (A) | with the lever (B) | B vs A (+: better) |", "|---|---|---|---|---|"]
    for lever in args.levers.split(","):
        for name, higher_is_better, go in measures:
            a: list[float] = []
            b: list[float] = []
            for rep in range(args.repeats):
                order = ("", lever) if rep % 2 == 0 else (lever, "")
                for side in order:
                    v = _with_lever(side, go)
                    if v is not None:
                        (b if side else a).append(v)
                print(f"{lever:18s} {name}: A {[_fmt(x) for x in a]} B {[_fmt(x) for x in b]}", file=sys.stderr,
                      flush=True)
            ma, mb = (statistics.median(a) if a else None), (statistics.median(b) if b else None)
            change = "n/a" if not ma or not mb else \
                f"{((mb / ma - 1) if higher_is_better else (ma / mb - 1)) * 100:+.1f}%"
            lines.append(f"| `{lever}` | {name} | {_fmt(ma)} | {_fmt(mb)} | {change} |")
    report.write_table(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
