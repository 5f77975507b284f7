#!/usr/bin/env python3
"""Slow readers and overload, fanoutd side by side with NATS and Redis: ``python bench/overload.py``.

The cells of issue #25 ("Pace, don't cut"), each run on every system in one
session with the same C clients (``rawpub`` writes each system's protocol to
a TCP socket, so a broker that holds its input back slows it and nothing is
dropped at the producer; ``msink`` holds the readers):

* ``flat10``: 10 readers in one process, 300,000 x 1 KiB flat out;
* ``overload``: 1,000 readers, 50,000 x 1 KiB offered at 5,000 msg/s (5 M
  deliveries/s, beyond this machine), fanoutd with ``publish_hwm`` 1000;
* ``stalled``: one reader that stops reading once subscribed and one fast
  reader, 64 KiB at 4,000 msg/s for 12 s (the broker's peak memory; past
  fanoutd's 10 s slow_consumer_timeout);
* ``tenth``: 10 readers and one reading at a tenth of the offered bytes,
  1 KiB at 10,000 msg/s for 20 s (is the slow one cut, the rest unharmed?);
* ``crowd``: 1,000 equal readers, 10,000 x 1 KiB flat out (never cut).

Each row: deliveries to the equal readers (fanoutd's puller or one more
subscriber for NATS and Redis included, as in every fleet mode), what they
lost, the least-served one, the odd reader's count, the slow readers the
broker cut by its own reason (:mod:`fobench.brokerstats`), the producer's
achieved rate, and the broker's peak RSS (``VmHWM``).

fanoutd runs with ``slow_consumer_policy = "pace"`` unless that is already
its default (``--policy``), applied as a lever (``bench/levers``) so the
broker's code is the same in every run.  Until its held bytes are bounded
(``slow_consumer_max_pending``) a full queue is 250,000 messages, so the
``flat10`` and ``tenth`` cells set ``publish_hwm`` 1000 to make the queue
fill (the stand-in is dropped once the broker has that setting).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fobench import fleet, overloadreport, report
from fobench.build import BENCH_DIR, BUILD_DIR, build_all

SYSTEMS = ("fanoutd", "nats", "redis")
HWM_STAND_IN = {"publish_hwm": "1000"}  # until slow_consumer_max_pending bounds a queue in bytes


@dataclass(frozen=True)
class Cell:
    name: str
    what: str
    subs: int                 # equal readers (+1: fanoutd's puller, or one more subscriber)
    count: int
    size: int
    rate: float = 0.0         # msg/s, 0: flat out
    stalled: int = 0          # readers that stop reading once subscribed
    slow_share: float = 0.0   # > 0: one reader at this share of the offered bytes
    fanoutd: dict[str, str] = field(default_factory=dict)  # settings that are part of the cell
    stand_in: bool = False    # publish_hwm 1000 while the broker has no byte bound


CELLS = (
    Cell("flat10", "10 readers, 1 KiB flat out", 10, 300_000, 1024, stand_in=True),
    Cell("overload", "1,000 readers, 1 KiB at 5,000 msg/s", 1000, 50_000, 1024, rate=5000,
         fanoutd={"publish_hwm": "1000"}),
    Cell("stalled", "1 reader + 1 stalled, 64 KiB at 4,000 msg/s", 1, 48_000, 65536, rate=4000, stalled=1),
    Cell("tenth", "10 readers + 1 at a tenth, 1 KiB at 10,000 msg/s", 10, 200_000, 1024, rate=10_000,
         slow_share=0.1, stand_in=True),
    Cell("crowd", "1,000 equal readers, 1 KiB flat out", 1000, 10_000, 1024),
)


def broker_defaults(python: str) -> dict[str, str]:
    """The settings (name -> default) of the fanoutd that ``python -P -m fanoutd`` runs."""
    code = ("import json; from fanoutd.config import SETTINGS; "
            "print(json.dumps({s.name: str(s.default) for s in SETTINGS}))")
    out = subprocess.run([python, "-P", "-c", code], check=True, capture_output=True, text=True, timeout=30)
    parsed: dict[str, str] = json.loads(out.stdout)
    return parsed


def fanoutd_settings(cell: Cell, policy: str, defaults: dict[str, str]) -> dict[str, str]:
    """What the lever sets for one cell: the cell's own settings, the policy, and the stand-in if needed."""
    out = dict(HWM_STAND_IN) if cell.stand_in and "slow_consumer_max_pending" not in defaults else {}
    out.update(cell.fanoutd)
    if policy == "auto":
        policy = "default" if defaults.get("slow_consumer_policy") == "pace" else "pace"
    if policy != "default":
        out["slow_consumer_policy"] = policy
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", default=",".join(c.name for c in CELLS), help="which cells, comma-separated")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="which systems, comma-separated")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every cell's message count (smoke: 0.01)")
    p.add_argument("--max-readers", type=int, default=0,
                   help="at most this many equal readers per cell (0: as defined)")
    p.add_argument("--policy", default="auto", choices=("auto", "pace", "cut", "default"),
                   help="fanoutd's slow_consumer_policy; auto: pace unless that is already its default")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per cell and system, the order rotating; over 1, a table of medians follows")
    p.add_argument("--medians-of", type=Path, nargs="+", metavar="JSON",
                   help="run nothing: the medians table of runs saved before (this script's .json files)")
    p.add_argument("--idle-ms", type=int, default=5000, help="a reader ends after this long without a message")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs 'python -m fanoutd'")
    p.add_argument("--out", type=Path, default=BUILD_DIR / "overload.md", help="the table (and .json beside it)")
    args = p.parse_args(argv)
    if args.medians_of:
        saved = [r for path in args.medians_of for r in json.loads(path.read_text())]
        report.write_table(overloadreport.medians(saved), args.out)
        return 0
    cells = [c for c in CELLS if c.name in args.cells.split(",")]
    systems = [s for s in SYSTEMS if s in args.systems.split(",")]
    site = str(BENCH_DIR / "levers")
    os.environ["PYTHONPATH"] = site + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    bins = build_all()
    defaults = broker_defaults(args.python)
    lines = [*report.environment(), f"- scale {args.scale:g}, policy {args.policy} (fanoutd's default: "
             f"{defaults.get('slow_consumer_policy')}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             *overloadreport.RUN_HEADER]
    results = []
    for cell in cells:
        count = max(100, int(cell.count * args.scale))
        subs = min(cell.subs, args.max_readers) if args.max_readers else cell.subs
        settings = fanoutd_settings(cell, args.policy, defaults)
        slow_bps = cell.slow_share * cell.rate * cell.size
        for rep in range(args.repeats):
            for system in systems[rep % len(systems):] + systems[:rep % len(systems)]:
                os.environ["FOBENCH_LEVER"] = ";".join(f"{k}={v}" for k, v in settings.items())
                spec = fleet.FleetSpec(system, cell.size, subs, count=count, rate=cell.rate, idle_ms=args.idle_ms,
                                       stalled=cell.stalled, slow_bps=slow_bps, budget=300.0)
                r = fleet.run(spec, bins, args.python)
                results.append({"cell": cell.name, **asdict(r), "expected": r.expected, "lost": r.lost})
                lines.append(overloadreport.run_row(results[-1], settings if system == "fanoutd" else {}))
                print(lines[-1], file=sys.stderr, flush=True)
    if args.repeats > 1:
        lines += ["", "Medians, and each run in brackets:", "", *overloadreport.medians(results)]
    report.write_table(lines, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    return 0 if all(not r["error"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
