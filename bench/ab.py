#!/usr/bin/env python3
"""Compare two builds of fanoutd on the throughput matrix, side by side: ``python bench/ab.py --b PYTHON``.

A change to the data path must keep every throughput cell within a few
per cent of the code before it. This runs each cell with build A (by
default the interpreter running this script, so the working tree) and
build B (another checkout's venv interpreter, e.g. a worktree of the
commit before the change), in alternating order on every repeat, with the
same C clients for both, and prints each side's median and B's ratio to A.
Flat-out rates drift with whatever else the machine runs, so it also
measures the broker's CPU per delivery at fixed offered rates (the cost
cells of bench/README.md), which drifts less, and, for each flat-out cell,
the CPU per message of the forwarding loop's thread and of libzmq's I/O
threads (from /proc, over the run): a change that makes one of them dearer
shows there even when the rate hides it behind the other. Only ratios from
one run mean anything on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from fobench import fleet, fleetmodes, matrix, report
from fobench.build import BUILD_DIR, build_all
from fobench.procs import CLOCK_TICKS
from fobench.trial import TrialResult, TrialSpec


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _rate(v: float | None) -> str:
    return "n/a" if v is None else f"{v / 1e3:,.0f}k"


def _cpu(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _ns(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _thread_ns(result: TrialResult) -> tuple[float, float] | None:
    """CPU per message sent of the loop's thread and of libzmq's I/O threads together, in ns."""
    loop = result.threads.get("fanoutd-fwd")
    io = sum(t for name, t in result.threads.items() if name.startswith("ZMQbg/IO"))
    if loop is None or not result.sent:
        return None
    tick_ns = 1e9 / CLOCK_TICKS
    return loop * tick_ns / result.sent, io * tick_ns / result.sent


def _ratio(a: float | None, b: float | None) -> str:
    return f"{b / a:.3f}" if a and b else "n/a"


def _sides(runs: dict[int, dict[str, float]]) -> tuple[float | None, float | None]:
    """The median of each side over the repeats where it ran."""
    return _median([r["A"] for r in runs.values() if "A" in r]), _median([r["B"] for r in runs.values() if "B" in r])


def _pairs(runs: dict[int, dict[str, float]]) -> str:
    """The median and range of B / A over the repeats where both sides ran: the ratio of the sides' medians
    can sit far from every pair when runs of one build spread widely, as they do on a shared machine."""
    ratios = sorted(r["B"] / r["A"] for r in runs.values() if r.get("A") and r.get("B"))
    return f"{statistics.median(ratios):.3f} ({ratios[0]:.2f}-{ratios[-1]:.2f})" if ratios else "n/a"


def origin(python: str) -> str:
    """Where the fanoutd that ``python -P -m fanoutd`` runs comes from (the bench starts it that way)."""
    r = subprocess.run([python, "-P", "-c", "import fanoutd; print(fanoutd.__file__)"], capture_output=True,
                       text=True, timeout=60, cwd="/")
    if r.returncode != 0:
        sys.exit(f"ab: {python} cannot import fanoutd: {r.stderr.strip().splitlines()[-1:]}")
    return r.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default=sys.executable, help="interpreter whose `python -m fanoutd` is build A")
    p.add_argument("--b", required=True, help="interpreter whose `python -m fanoutd` is build B")
    p.add_argument("--repeats", type=int, default=3, help="runs per cell and build (default 3)")
    p.add_argument("--sizes", default=",".join(map(str, matrix.SIZES)), help="message sizes, bytes")
    p.add_argument("--subs", default=",".join(map(str, matrix.SUBS)), help="subscriber counts")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the messages per run")
    p.add_argument("--cost-seconds", type=float, default=fleetmodes.COST_SECONDS,
                   help="length of each fixed-rate CPU run (0: no CPU runs)")
    p.add_argument("--cost-cells", type=int, default=len(fleetmodes.COST_CELLS),
                   help="how many of the cost cells to run, in bench/README.md's order (default: all)")
    p.add_argument("--out", type=Path, default=BUILD_DIR / "ab.md")
    args = p.parse_args(argv)
    origins = {"A": origin(args.a), "B": origin(args.b)}
    if args.a != args.b and origins["A"] == origins["B"]:
        sys.exit(f"ab: A and B run the same fanoutd ({origins['A']}): give B the interpreter of another checkout")
    bins = build_all()
    runners = {"A": matrix.Runner(bins, args.a), "B": matrix.Runner(bins, args.b)}
    cells = [(size, subs) for size in map(int, args.sizes.split(",")) for subs in map(int, args.subs.split(","))]
    rate_runs: dict[tuple[int, int], dict[int, dict[str, float]]] = {}
    threads: dict[tuple[int, int, str], list[tuple[float, float]]] = {}
    for rep in range(args.repeats):
        for size, subs in cells:
            for side in ("A", "B") if rep % 2 == 0 else ("B", "A"):
                spec = TrialSpec("fanoutd", size, subs, count=matrix.count_for(size, subs, args.scale))
                result = runners[side].run(spec, f"[{rep + 1}/{args.repeats}] {size:>5} B x{subs} {side}")
                if result.ok:
                    rate_runs.setdefault((size, subs), {}).setdefault(rep, {})[side] = result.rate
                    if (split := _thread_ns(result)) is not None:
                        threads.setdefault((size, subs, side), []).append(split)
    cost_runs: dict[tuple[int, int, int], dict[int, dict[str, float]]] = {}
    if args.cost_seconds > 0:
        for rep in range(args.repeats):
            for size, subs, rate in fleetmodes.COST_CELLS[:args.cost_cells]:
                for side in ("A", "B") if rep % 2 == 0 else ("B", "A"):
                    python = args.a if side == "A" else args.b
                    spec = fleet.FleetSpec("fanoutd", size, subs, count=int(rate * args.cost_seconds), rate=rate)
                    r = fleet.run(spec, bins, python)
                    cpu = r.cpu_us_per_delivery if r.ok else None
                    print(f"  [{rep + 1}/{args.repeats}] cost {size:>5} B x{subs} @ {rate:,}/s {side} "
                          f"{'failed' if cpu is None else f'{cpu:.3f} µs/delivery'}", file=sys.stderr, flush=True)
                    if cpu is not None:
                        cost_runs.setdefault((size, subs, rate), {}).setdefault(rep, {})[side] = cpu
    lines = [f"A: `{origins['A']}`, B: `{origins['B']}`, {args.repeats} alternating repeats, medians", "",
             "| cell | A | B | B / A | B / A per pair: median (range) |", "|---|---|---|---|---|"]
    for size, subs in cells:
        a, b = _sides(rate_runs.get((size, subs), {}))
        lines.append(f"| {size} B x{subs}, msg/s | {_rate(a)} | {_rate(b)} | {_ratio(a, b)} | "
                     f"{_pairs(rate_runs.get((size, subs), {}))} |")
    for size, subs in cells:
        for i, name in enumerate(("loop", "I/O threads")):
            a, b = (_median([t[i] for t in threads.get((size, subs, side), [])]) for side in "AB")
            lines.append(f"| {size} B x{subs}, {name} CPU, ns/msg | {_ns(a)} | {_ns(b)} | {_ratio(a, b)} | |")
    for size, subs, rate in fleetmodes.COST_CELLS[:args.cost_cells] if cost_runs else ():
        a, b = _sides(cost_runs.get((size, subs, rate), {}))
        lines.append(f"| CPU {size} B x{subs} @ {rate:,}/s, µs/delivery | {_cpu(a)} | {_cpu(b)} | {_ratio(a, b)} | "
                     f"{_pairs(cost_runs.get((size, subs, rate), {}))} |")
    report.write_table(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
