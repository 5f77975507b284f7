#!/usr/bin/env python3
"""Profile a broker under a fixed load with ``perf``: ``python bench/profile.py SYSTEM SIZE SUBS RATE``.

Runs one cost-mode load (SUBS subscribers + 1 consumer, SIZE bytes at RATE
msg/s) against SYSTEM and records the broker with ``perf record -e
cpu-clock -g`` for ``--seconds``; writes the flat profile (self time per
symbol, top ``--top``) to ``--out`` (default ``bench/build/profile-SYSTEM-SIZE-SUBS.txt``)
and prints it.  With ``--syscalls`` it counts the broker's system calls
instead (``perf stat`` on the syscall tracepoints, little overhead) and
reports them per delivered message: how many writes, reads and waits each
delivery costs, and how many payload bytes each write call carried.  RATE 0
is flat out (the throughput mode's load) for ``--count`` messages.  This is
the evidence bench/README.md cites for where each broker's time goes; run
it on a quiet machine (needs Debian's linux-perf).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from fobench import fleet
from fobench.build import BUILD_DIR, build_all
from fobench.servers import ALL_SYSTEMS, KNOWN_SYSTEMS

SYSCALLS = ("write", "writev", "sendto", "sendmsg", "read", "recvfrom", "recvmsg", "epoll_wait", "poll", "futex",
            "getsockopt", "ioctl", "clock_gettime", "epoll_ctl", "sched_yield", "getpid")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("system", choices=KNOWN_SYSTEMS)
    p.add_argument("size", type=int)
    p.add_argument("subs", type=int)
    p.add_argument("rate", type=float)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--out", type=Path)
    p.add_argument("--syscalls", action="store_true", help="count system calls per delivery instead")
    p.add_argument("--count", type=int, help="messages to send (default: RATE x (seconds + 2)); needed for RATE 0")
    args = p.parse_args(argv)
    count = args.count or int(args.rate * (args.seconds + 2))
    if count <= 0:
        p.error("RATE 0 (flat out) needs --count: enough messages to outlast --seconds")
    kind = "syscalls" if args.syscalls else "profile"
    out = args.out or BUILD_DIR / f"{kind}-{args.system}-{args.size}-{args.subs}.txt"
    data = Path(tempfile.mkdtemp(prefix="fobench-perf-")) / "perf.data"
    counted: dict[str, float] = {}

    def record(pid: int) -> None:
        if args.syscalls:
            events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS) + ",raw_syscalls:sys_enter"
            done = subprocess.run(["perf", "stat", "-x", ",", "-e", events, "-p", str(pid), "--", "sleep",
                                   str(args.seconds)], check=False, capture_output=True, text=True)
            for line in done.stderr.splitlines():
                fields = line.split(",")
                if len(fields) > 2 and fields[0].strip().isdigit():
                    counted[fields[2].split(":")[-1].removeprefix("sys_enter_")] = float(fields[0])
            return
        subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-g", "-o", str(data), "-p", str(pid), "--",
                        "sleep", str(args.seconds)], check=False, capture_output=True)

    spec = fleet.FleetSpec(args.system, args.size, args.subs, count=count, rate=args.rate)
    result = fleet.run(spec, build_all(), args.python, on_load=record)
    if result.error:
        print(f"profile: the run failed: {result.error}", file=sys.stderr)
        return 1
    load = f"{args.rate:,.0f} msg/s" if args.rate else "flat out"
    if args.syscalls:
        per_s = result.deliveries_per_s * args.seconds  # deliveries while perf counted (the run's mean rate)
        rows = [f"{name:16s} {n / per_s:8.3f} per delivery ({n:,.0f} in {args.seconds:g} s)"
                for name, n in sorted(counted.items(), key=lambda kv: -kv[1]) if n]
        writes = sum(counted.get(name, 0) for name in ("write", "writev", "sendto", "sendmsg"))
        if writes:  # libzmq's eventfd signals are writes too: for it, sendto alone is the socket's
            rows.append(f"{'bytes per write':16s} {per_s * args.size / writes:8.0f} payload bytes per write, "
                        "writev, sendto or sendmsg call")
        return _write(out, f"# {args.system}, {args.size} B x {args.subs} subscribers (+1) {load}: system calls "
                           f"per delivered message ({result.deliveries_per_s:,.0f} deliveries/s)", rows)
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--stdio", "--sort",
                             "dso,symbol", "-g", "none", "--percent-limit", "0.5"],
                            check=False, capture_output=True, text=True).stdout
    rows = [line for line in report.splitlines() if line.strip() and not line.startswith("#")][:args.top]
    return _write(out, f"# {args.system}, {args.size} B x {args.subs} subscribers (+1) {load}: "
                       f"{result.cpu_us_per_delivery or 0:.3f} µs CPU per delivery, lost {result.lost}", rows)


def _write(out: Path, head: str, rows: list[str]) -> int:
    """Write the report (a heading line, then its rows) and print it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join([head, *rows]) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
