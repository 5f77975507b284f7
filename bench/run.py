#!/usr/bin/env python3
"""Benchmark fanoutd against a C baseline, Redis and NATS: ``python bench/run.py``.

Runs the selected modes (default: the throughput matrix and latency), then
writes ``results.md``, ``results.json``, ``results.png`` (throughput) and
``fleet.png`` (cost, scale, latency) into ``--out`` (default: this
directory; ``--quick`` writes to ``bench/build/quick``).
See ``bench/README.md`` for what each number means.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from fobench import extra, fleetmodes, fleetreport, hops, matrix, report
from fobench.build import BENCH_DIR, BUILD_DIR, build_all
from fobench.servers import ALL_SYSTEMS, KNOWN_SYSTEMS

MODES = ("throughput", "latency", "cost", "scale", "burst", "idle", "stall", "hops")
DEFAULT_MODES = ("throughput", "latency")


def _csv(kind: type, allowed: tuple[str, ...] | None = None):  # type: ignore[no-untyped-def]
    def parse(text: str) -> list:  # type: ignore[type-arg]
        items = [kind(x) for x in text.split(",") if x]
        if allowed is not None:
            bad = [x for x in items if x not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {','.join(allowed)}")
        return items
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny load: 100 B, 1 subscriber, 1 repeat, short latency run (< 60 s)")
    p.add_argument("--modes", type=_csv(str, MODES + ("all",)), default=list(DEFAULT_MODES),
                   help=f"comma list of {','.join(MODES)} or 'all' (default: {','.join(DEFAULT_MODES)})")
    p.add_argument("--systems", type=_csv(str, KNOWN_SYSTEMS), default=list(ALL_SYSTEMS),
                   help="comma list (default: all of fanoutd,cbase,redis,nats; zmtpd, the prototype of issue #28, only when named)")
    p.add_argument("--repeats", type=int, default=3, help="runs per cell (default 3)")
    p.add_argument("--sizes", type=_csv(int), default=list(matrix.SIZES), help="message sizes, bytes")
    p.add_argument("--subs", type=_csv(int), default=list(matrix.SUBS), help="subscriber counts")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the messages per run")
    p.add_argument("--clients", choices=("raw", "libzmq"), default="raw",
                   help="throughput matrix: the same C clients for every system (raw, the default), or "
                        "libzmq's zpub and zsink for fanoutd and the C baseline")
    p.add_argument("--idle-ms", type=int, default=1000,
                   help="a sink is done after this long without a message (default 1000)")
    p.add_argument("--latency-seconds", type=float, default=3.0, help="length of a latency run")
    p.add_argument("--cost-seconds", type=float, default=fleetmodes.COST_SECONDS,
                   help="length of a cost run (at its fixed offered rate)")
    p.add_argument("--scale-subs", type=_csv(int), default=list(fleetmodes.SCALE_SUBS),
                   help="subscriber counts of the scale mode")
    p.add_argument("--scale-sizes", type=_csv(int), default=[fleetmodes.SCALE_SIZE],
                   help="message sizes of the scale mode (default 100); after the first, the idle probe is "
                        "short (idle CPU is measured at the first)")
    p.add_argument("--idle-seconds", type=float, default=extra.IDLE_SECONDS)
    p.add_argument("--stall-seconds", type=float, default=extra.STALL_SECONDS)
    p.add_argument("--python", default=sys.executable, help="interpreter that runs 'python -m fanoutd'")
    p.add_argument("--out", type=Path, default=None, help="where results.* go (default: bench/)")
    args = p.parse_args(argv)
    if "all" in args.modes:
        args.modes = list(MODES)
    if args.quick:
        args.sizes, args.subs, args.repeats = [100], [1], 1
        args.scale = min(args.scale, 0.1)
        args.latency_seconds = min(args.latency_seconds, 0.5)
        args.idle_seconds, args.stall_seconds = min(args.idle_seconds, 2), min(args.stall_seconds, 3)
        args.cost_seconds, args.scale_subs = min(args.cost_seconds, 0.5), [s for s in args.scale_subs if s <= 100]
    args.cost_cells = fleetmodes.COST_CELLS[:1] if args.quick else fleetmodes.COST_CELLS
    if args.out is None:
        args.out = BUILD_DIR / "quick" if args.quick else BENCH_DIR
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    bins = build_all()
    runner = matrix.Runner(bins, args.python, args.idle_ms)
    systems = args.systems
    sections: list[tuple[str, list[str]]] = []
    data: dict[str, object] = {"args": {k: str(v) for k, v in vars(args).items()}}
    tput: list[matrix.Cell] = []
    cost: list[fleetmodes.FleetCell] = []
    scale: list[fleetmodes.FleetCell] = []
    lat: list[fleetmodes.FleetCell] = []

    def save(final: bool = False) -> None:
        """Write what has been measured so far (after every mode: a later failure loses nothing)."""
        done = list(sections)
        unavailable = [f"- {s}: {why}" for s, why in runner.unavailable.items()]
        if unavailable:
            done.append(("Systems that could not run", unavailable))
        elapsed = time.monotonic() - started
        command = " ".join(["python bench/run.py", shlex.join(argv if argv is not None else sys.argv[1:])]).strip()
        generated = (f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}` "
                     f"in {elapsed / 60:.1f} min" + ("." if final else " (still running)."))
        header = [generated, "", *report.environment(), "", "How to read these numbers: see bench/README.md."]
        args.out.mkdir(parents=True, exist_ok=True)
        report.write_markdown(args.out / "results.md", done, header)
        report.write_json(args.out / "results.json", data)
        plots = [name for name, made in (
            ("results.png", bool(tput) and report.write_plot(args.out / "results.png", tput, systems)),
            ("fleet.png", fleetreport.plot(args.out / "fleet.png", cost, scale, lat, systems))) if made]
        if final:
            print(f"wrote {args.out / 'results.md'}" + (f" and {', '.join(plots)}" if plots else
                                                       " (no plot: matplotlib missing or nothing to plot)"))


    if "throughput" in args.modes:
        tput = matrix.throughput(runner, systems, args.sizes, args.subs, args.repeats, args.scale,
                                 args.clients)
        title = f"Throughput: delivered msg/s per subscriber (median of {args.repeats}; ratio to the C baseline)"
        if args.clients == "libzmq":
            title += "; fanoutd's and the C baseline's clients: libzmq's (zpub, zsink)"
        sections.append((title, report.throughput_table(tput, systems)))
        sections.append(("Throughput: every run", report.runs_table(tput)))
        data["throughput"] = tput
        save()
    if "latency" in args.modes:
        lat = fleetmodes.latency(bins, systems, args.repeats, args.latency_seconds, args.python)
        title = (f"Latency: one subscriber (+1 consumer), {fleetmodes.LATENCY_SIZE} B, {args.latency_seconds:g} s "
                 f"per run, send to receive, µs (median of {args.repeats})")
        sections.append((title, fleetreport.latency_table(lat, systems) + fleetreport.errors(lat)))
        data["latency"] = lat
        save()
    if "cost" in args.modes:
        cost = fleetmodes.cost(bins, systems, args.repeats, args.cost_seconds, args.python, args.cost_cells)
        title = (f"Cost: server CPU µs per delivered message at a fixed offered rate, {args.cost_seconds:g} s "
                 f"per run (median of {args.repeats}; lower is better)")
        sections.append((title, fleetreport.cost_table(cost, systems) + fleetreport.errors(cost)))
        data["cost"] = cost
        save()
    if "scale" in args.modes:
        for n, size in enumerate(args.scale_sizes):
            cells = fleetmodes.scale(bins, systems, args.repeats, args.python, args.scale_subs, size=size,
                                     long_idle=n == 0)
            for title, lines in fleetreport.scale_tables(cells, systems):
                sections.append((f"Scale, {size} B flat out: {title} (median of {args.repeats})", lines))
            sections[-1][1].extend(fleetreport.errors(cells))
            data["scale" if n == 0 else f"scale_{size}"] = cells
            scale = scale or cells
            save()
    if "burst" in args.modes:
        count = max(1000, int(extra.BURST_COUNT * args.scale))
        bursts = extra.burst(runner, systems, count)
        sections.append((f"Burst: {count:,} x {extra.BURST_SIZE} B flat out, losses per output",
                         report.burst_table(bursts)))
        data["burst"] = bursts
        save()
    if "idle" in args.modes:
        idle = extra.idle_cpu(bins, systems, args.idle_seconds, args.python)
        sections.append((f"Idle CPU over {args.idle_seconds:g} s", report.idle_table(idle)))
        data["idle"] = idle
        save()
    if "stall" in args.modes:
        stalled = extra.stall(runner, [s for s in systems if s == "fanoutd"] or systems, args.stall_seconds)
        title = f"Stalled subscriber: {args.stall_seconds:g} s of full load, one subscriber never reads"
        sections.append((title, report.stall_lines(stalled)))
        data["stall"] = stalled
        save()

    if "hops" in args.modes and "fanoutd" in systems:
        rows = hops.run(bins, args.repeats, args.latency_seconds, args.python)
        title = (f"Federation: latency through chains of fanoutd nodes, {hops.RATE / 1e3:.0f}k msg/s, "
                 f"{hops.SIZE} B (median of {args.repeats})")
        sections.append((title, hops.table(rows)))
        data["hops"] = rows
        save()

    save(final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
