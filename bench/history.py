#!/usr/bin/env python3
"""What history and repair cost: ``python bench/history.py --b PYTHON_OF_THE_BUILD_BEFORE_HISTORY``.

Issue #26, Must 6. The forwarding loop runs in-process (the real Forwarder,
its context set up as the Engine sets it up), ``zpub`` feeds the collector
and one ``msink -T`` subscriber reads the stamped output; both are separate
processes, so the figures are the broker's alone: the process's CPU (every
thread: the loop and libzmq's I/O threads, from /proc schedstat) per
stamped message, the stamped messages a second, and the process's peak RSS.
Three cells per size, the same clients for each:

- ``before``: build B (the commit before history landed), stamped output;
- ``off``: build A with ``history_bytes = 0``, the repair endpoint still
  there as the daemon has it by default (must stay within 5 % of
  ``before``);
- ``off, no repair``: the same without a repair endpoint (``repair = []``),
  which tells the endpoint's cost from the history's;
- ``on``: build A with history at its default, 64 MiB.

Each cell is run flat out (throughput) and at a fixed rate (CPU per
delivery, peak RSS), the sides alternating on every repeat; each figure is
the median over the repeats, with its ratio to ``before`` (to ``off``
without a build B) and how far the repeats spread. Only ratios measured
side by side in one run mean anything on a shared machine.

The repair path (build A, history on, after the fixed-rate load): repair
client processes, each a DEALER asking RANGEs of 1,000 messages within the
endpoint's 100 requests a second per peer, for ``--repair-seconds``; the
figure is the messages a second the broker served
(``fanoutd_repaired_messages_total``) and its CPU per repaired message.
Numbers: bench/README.md, "History and repair".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

from fobench.build import build_all
from fobench.inproc import burst, cpu_ns, peak_rss, rig

HISTORY_DEFAULT = 64 << 20  # history_bytes' default (fanoutd/config.py)
FIXED_BYTES_PER_S = 80_000_000  # the fixed rate is at most this many bytes a second
EPOCH = 1


def child(spec: dict) -> dict:
    """One run with this interpreter's fanoutd: the load, then the repair clients if asked."""
    import zmq
    from fanoutd.dataplane import _forward
    ctx, collector, port, stamped, out_port = rig()
    sockets = {"collector": collector.underlying, "stamped": stamped.underlying}
    kwargs = {"epoch": EPOCH, "stall_above": 48 << 20}  # the byte bound of the defaults, as heldcost.py
    repair = None
    if spec["history"] is not None:  # a build with history (the "before" cell passes None)
        kwargs["history_bytes"] = spec["history"]
    if spec["repair"]:  # the repair endpoint, as the daemon has it by default
        repair = ctx.socket(zmq.ROUTER)
        repair.setsockopt(zmq.ROUTER_MANDATORY, 1)
        repair.setsockopt(zmq.SNDHWM, 10_000)
        repair_port = repair.bind_to_random_port("tcp://127.0.0.1")
        sockets["repair"] = repair.underlying
    forwarder = _forward.Forwarder(sockets, **kwargs)
    forwarder.set_stamped_peers(1)  # the hub's count of the stamped output's peers
    loop = threading.Thread(target=forwarder.run)
    loop.start()
    bins, size, count = spec["bins"], spec["size"], spec["count"]
    sink = subprocess.Popen([f"{bins}/msink", "-m", "zmtp", "-T", "-p", str(out_port), "-k", "1", "-L", str(size),
                             "-n", str(count), "-w", "60000", "-i", "20000"], stdout=subprocess.PIPE, text=True)
    pub = [f"{bins}/zpub", "-e", f"tcp://127.0.0.1:{port}", "-s", str(size), "-n", str(count)]
    producer = subprocess.Popen(pub + (["-r", str(spec["rate"])] if spec["rate"] else []),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    counter = lambda name: forwarder.counters()[name]  # noqa: E731
    result: dict = {}
    try:
        while "ready" not in sink.stdout.readline():  # connected, subscribed, and a warm-up message through
            pass
        assert producer.stdout.readline().strip() == "subscribed"
        rate, cpu = burst(lambda: counter("stamped_messages"), producer, count)
        sunk = json.loads(sink.communicate(timeout=60)[0].splitlines()[-1])
        if sunk["bad"] or sunk["received"] < count:
            raise SystemExit(f"history bench: the subscriber got {sunk}")
        result.update(rate=rate, cpu_ns=cpu, rss=peak_rss())
        if spec["repair_peers"] and repair is not None:
            result.update(_serve_repair(spec, counter, f"tcp://127.0.0.1:{repair_port}"))
    finally:
        for proc in (producer, sink):
            proc.kill()
            proc.wait()
        forwarder.stop(True)
        loop.join()
        for sock in (collector, stamped, repair):
            if sock is not None:
                sock.close(0)
        ctx.term()
    return result


def _serve_repair(spec: dict, counter, endpoint: str) -> dict:
    """Repair clients (processes) ask for held ranges for spec["repair_seconds"]: what the loop served."""
    held_from = counter("history_evicted") + 1
    head = counter("stamped_messages")
    argv = [sys.executable, __file__, "--b", "-", "--repair-client", endpoint, str(held_from), str(head),
            str(spec["repair_seconds"])]
    clients = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(spec["repair_peers"])]
    try:
        for c in clients:
            assert c.stdout.readline().strip() == "asking"
        time.sleep(0.2)
        rep0, cpu0, t0 = counter("repaired_messages"), cpu_ns(), time.monotonic()
        time.sleep(spec["repair_seconds"] - 0.4)
        rep1, cpu1, t1 = counter("repaired_messages"), cpu_ns(), time.monotonic()
    finally:
        for c in clients:
            c.kill()
            c.wait()
    if rep1 == rep0:
        raise SystemExit("history bench: no repaired message served")
    return {"repair_rate": (rep1 - rep0) / (t1 - t0), "repair_cpu_ns": (cpu1 - cpu0) / (rep1 - rep0)}


def repair_client(endpoint: str, first: int, last: int, seconds: float) -> None:
    """A DEALER asking RANGEs of 1,000 of the held messages, round and round, two at a time, at most 95 a second
    (the endpoint answers 100 a second per peer), reading every answer."""
    import zmq
    from fanoutd_client.repair import range_request
    from fanoutd_client.wire import REPAIR_END
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    print("asking", flush=True)
    seq, tag, outstanding, sent_at = first, 0, 0, 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = time.monotonic()
        if outstanding < 2 and now - sent_at >= 1 / 95:
            tag += 1
            sock.send(range_request(tag, EPOCH, 1, seq, min(seq + 999, last)))
            seq = seq + 1000 if seq + 1000 <= last else first
            outstanding, sent_at = outstanding + 1, now
        if sock.poll(5):
            while True:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                if parts[0].buffer[5] & REPAIR_END:
                    outstanding -= 1
    sock.close(0)
    ctx.term()


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _spread(results: list[dict], key: str) -> str:
    """(max - min) / median over the repeats: how much one cell moved from run to run (the noise)."""
    values = [r[key] for r in results]
    return f"{(max(values) - min(values)) / statistics.median(values):.0%}"


def _run(python: str, spec: dict) -> dict:
    for attempt in (1, 2):  # a shared machine can stall a run; once more, then give up
        out = subprocess.run([python, __file__, "--b", "-", "--child", json.dumps(spec)], capture_output=True,
                             text=True, timeout=600)
        if out.returncode == 0:
            return json.loads(out.stdout.splitlines()[-1])
        print(f"history bench ({python}), attempt {attempt}: {out.stderr[-2000:]}", file=sys.stderr, flush=True)
    raise SystemExit("history bench: a run failed twice")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default=sys.executable, help="interpreter of build A (default: this one)")
    p.add_argument("--b", required=True, help="interpreter of build B, from before history (or '-' for none)")
    p.add_argument("--sizes", default="100,1024,16384", help="message sizes, bytes")
    p.add_argument("--repeats", type=int, default=3, help="runs per cell (default 3)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the messages per run")
    p.add_argument("--rate", type=int, default=20_000,
                   help="the fixed rate, messages a second (at most 80 MB/s: 4,882/s at 16 KiB)")
    p.add_argument("--repair-peers", type=int, default=4, help="repair client processes (0: no repair run)")
    p.add_argument("--repair-seconds", type=float, default=3.0,
                   help="how long the repair clients ask (at least 1; --repair-peers 0 skips the repair run)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--repair-client", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repair_seconds < 1:
        p.error("--repair-seconds must be at least 1 (use --repair-peers 0 to skip the repair run)")
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.repair_client:
        endpoint, first, last, seconds = args.repair_client
        repair_client(endpoint, int(first), int(last), float(seconds))
        return 0
    bins = str(build_all()["msink"].parent)
    cells = {"before": (args.b, None, False), "off": (args.a, 0, True), "off, no repair": (args.a, 0, False),
             "on": (args.a, HISTORY_DEFAULT, True)}
    if args.b == "-":
        del cells["before"]
    print(f"load average at the start: {_loadavg()}, {os.cpu_count()} cores\n")
    print("| size | load | cell | msg/s | CPU ns/msg | peak RSS MiB | spread of msg/s, CPU |\n"
          "|---|---|---|---|---|---|---|")
    repairs: list[str] = []
    for size in (int(s) for s in args.sizes.split(",")):
        flat = max(1000, int(args.scale * max(100_000, 100_000_000 // size)))
        fixed_rate = min(args.rate, FIXED_BYTES_PER_S // size)  # 16 KiB at 20,000/s is more than a loaded box
        fixed = max(1000, int(args.scale * fixed_rate * 5))
        runs: dict[tuple[str, str], list[dict]] = {}
        for rep in range(args.repeats):
            order = list(cells) if rep % 2 == 0 else list(reversed(cells))
            for load, count, rate in (("flat out", flat, 0), (f"{fixed_rate:,}/s", fixed, fixed_rate)):
                for cell in order:
                    python, history, repair = cells[cell]
                    peers = args.repair_peers if cell == "on" and rate else 0
                    spec = {"bins": bins, "size": size, "count": count, "rate": rate, "history": history,
                            "repair": repair, "repair_peers": peers, "repair_seconds": args.repair_seconds}
                    runs.setdefault((load, cell), []).append(_run(python, spec))
        for (load, cell), results in runs.items():
            med = {k: statistics.median(r[k] for r in results) for k in results[0]}
            base = runs.get((load, "before")) or runs[(load, "off")]
            ratio = {k: med[k] / statistics.median(r[k] for r in base) for k in ("rate", "cpu_ns", "rss")}
            print(f"| {size} B | {load} | {cell} | {med['rate']:,.0f} ({ratio['rate']:.3f}) | "
                  f"{med['cpu_ns']:,.0f} ({ratio['cpu_ns']:.3f}) | {med['rss'] / 2**20:,.0f} ({ratio['rss']:.3f}) | "
                  f"{_spread(results, 'rate')}, {_spread(results, 'cpu_ns')} |", flush=True)
            if "repair_rate" in med:
                repairs.append(f"| {size} B | {args.repair_peers} | {med['repair_rate']:,.0f} | "
                               f"{med['repair_cpu_ns']:,.0f} |")
    print(f"\nload average at the end: {_loadavg()}")
    if repairs:
        print("\n| size | repair peers | repaired msg/s served | CPU ns/repaired msg |\n|---|---|---|---|")
        print("\n".join(repairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
