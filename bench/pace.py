#!/usr/bin/env python3
"""Cut against pace: K subscribers in one process, messages sent flat out: ``python bench/pace.py``.

Runs fanoutd with ``slow_consumer_policy`` "cut" and then "pace" (the rest
of the settings alike, ``publish_hwm`` as given), alternating, with the
bench's own clients: ``rawpub`` writes to the collector's TCP connection,
so the broker holding its input back slows it and loses nothing, and one
``msink`` process holds every subscriber. Each run reports what was
delivered, the least-served subscriber, the cuts by rule and the stalls.
The settings are applied as a lever (``bench/levers/sitecustomize.py``),
so the broker's code is the same in every run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from fobench import fleet, report
from fobench.build import BENCH_DIR, BUILD_DIR, build_all

POLICIES = ("cut", "pace")


def _rule(sample: str) -> str:
    """The rule label of a fanoutd_slow_consumers_total sample name."""
    return sample.partition('rule="')[2].partition('"')[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subs", type=int, default=10, help="subscribers, all in one msink process (default 10)")
    p.add_argument("--count", type=int, default=300_000, help="messages sent flat out (default 300,000)")
    p.add_argument("--size", type=int, default=1024, help="message size, bytes (default 1024)")
    p.add_argument("--publish-hwm", type=int, default=1000, help="the broker's publish_hwm (default 1000)")
    p.add_argument("--repeats", type=int, default=2, help="runs per policy (default 2)")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs 'python -m fanoutd'")
    p.add_argument("--out", type=Path, default=BUILD_DIR / "pace.md")
    args = p.parse_args(argv)
    site = str(BENCH_DIR / "levers")
    os.environ["PYTHONPATH"] = site + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    bins = build_all()
    lines = [f"{args.subs} subscribers x {args.count:,} x {args.size} B flat out, publish_hwm {args.publish_hwm}", "",
             "| policy | delivered | least-served subscriber | cuts by rule | stalls | seconds |",
             "|---|---|---|---|---|---|"]
    expected = args.count * (args.subs + 1)  # the subscribers and the puller
    for rep in range(args.repeats):
        for policy in POLICIES if rep % 2 == 0 else tuple(reversed(POLICIES)):
            os.environ["FOBENCH_LEVER"] = f"slow_consumer_policy={policy};publish_hwm={args.publish_hwm}"
            started = time.monotonic()
            spec = fleet.FleetSpec("fanoutd", args.size, args.subs, count=args.count, rate=0, idle_ms=3000)
            r = fleet.run(spec, bins, args.python)
            seconds = time.monotonic() - started
            if r.error:
                lines.append(f"| {policy} | error: {r.error} | | | | |")
                continue
            cuts = ", ".join(f"{_rule(k)} {v:.0f}" for k, v in sorted(r.counters.items())
                             if k.startswith("fanoutd_slow_consumers_total") and v) or "none"
            stalls = sum(v for k, v in r.counters.items() if k.startswith("fanoutd_output_stalls_total"))
            lines.append(f"| {policy} | {r.received:,} of {expected:,} | {r.received_min:,} | {cuts} | "
                         f"{stalls:,.0f} | {seconds:.1f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    report.write_table(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
