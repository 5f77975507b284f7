#!/usr/bin/env python3
"""What counting held bytes costs: ``python bench/heldcost.py --b OTHER_PYTHON``.

The forwarding loop runs in-process (the real Forwarder, a collector SUB with
an unbounded queue in both builds, a publish XPUB), ``zpub`` sends flat out
and one ``msink`` subscriber reads; the figure is the process's CPU (every
thread: the loop and libzmq's I/O threads, where the wrappers' free callbacks
run) per message, from /proc; each build's context is set up as its Engine
sets it up (received messages copied, where the build does so). Builds A (this interpreter's fanoutd, by
default) and B alternate on every repeat; only their ratio in one run means
anything on a shared machine. Numbers: bench/README.md, "What counting held
bytes costs".
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time

from fobench.build import build_all
from fobench.inproc import burst, rig


def child(bins: str, size: int, count: int) -> None:
    """One measurement with this interpreter's fanoutd; prints ns of CPU per message."""
    from fanoutd.dataplane import _forward
    ctx, collector, port, publish, out_port = rig()
    sockets = {"collector": collector.underlying, "publish": publish.underlying}
    try:  # the byte bound of the defaults (3/4 of 64 MiB), with which frames are counted
        forwarder = _forward.Forwarder(sockets, stall_above=48 << 20)
    except TypeError:  # a build from before held bytes were counted
        forwarder = _forward.Forwarder(sockets)
    loop = threading.Thread(target=forwarder.run)
    loop.start()
    sink = subprocess.Popen([f"{bins}/msink", "-m", "zmtp", "-p", str(out_port), "-k", "1", "-L", str(size),
                             "-n", str(count), "-w", "60000"], stdout=subprocess.PIPE, text=True)
    producer = subprocess.Popen([f"{bins}/zpub", "-e", f"tcp://127.0.0.1:{port}", "-s", str(size), "-n", str(count)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        while "connected" not in sink.stdout.readline():
            pass
        assert producer.stdout.readline().strip() == "subscribed"
        time.sleep(0.3)
        published = lambda: forwarder.counters()["published_messages"]  # noqa: E731
        print(burst(published, producer, count)[1])
    finally:
        producer.kill()
        sink.kill()
        forwarder.stop(True)
        loop.join()
        collector.close(0)
        publish.close(0)
        ctx.term()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default=sys.executable, help="interpreter of build A (default: this one)")
    p.add_argument("--b", required=True, help="interpreter of build B")
    p.add_argument("--sizes", default="100,512,1024,16384", help="message sizes, bytes")
    p.add_argument("--repeats", type=int, default=3, help="runs per size and build (default 3)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the message counts (the tests run 0.01)")
    p.add_argument("--child", nargs=3, metavar=("BINS", "SIZE", "COUNT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return 0
    bins = build_all()["msink"].parent
    print("| size | A ns/msg | B ns/msg | B/A |\n|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        count = max(1000, int(args.scale * max(100_000, 100_000_000 // max(size, 100))))
        runs: dict[str, list[float]] = {"a": [], "b": []}
        for rep in range(args.repeats):
            for side in ("a", "b") if rep % 2 == 0 else ("b", "a"):
                out = subprocess.run([getattr(args, side), __file__, "--b", "-", "--child", str(bins), str(size),
                                      str(count)], capture_output=True, text=True, timeout=300)
                if out.returncode != 0:
                    raise SystemExit(f"build {side.upper()} failed: {out.stderr[-1000:]}")
                runs[side].append(float(out.stdout.split()[-1]))
        a, b = statistics.median(runs["a"]), statistics.median(runs["b"])
        print(f"| {size} B | {a:,.0f} | {b:,.0f} | {b / a:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
