#!/usr/bin/env python3
"""Memory and connect time per subscriber of a bare libzmq XPUB, per socket option: ``python bench/connmem.py``.

The scale mode shows fanoutd holding about 11 KiB more per subscriber than
the C baseline.  This program takes fanoutd out of the picture: one XPUB
socket of pyzmq's own libzmq (the one fanoutd uses), nothing else, bound on
loopback, with ``--subscribers`` raw ZMTP subscribers from ``msink``
connected; it reports the process's RSS growth per connection, and the
time from the subscribers' start to every handshake done (as the scale
mode times it), for each variant, adding one of fanoutd's socket options
at a time (every variant listens with fanoutd's backlog of 4096):

* ``bare``: no option;
* ``heartbeat``: ZMTP heartbeats (5 s, timeout 15 s), as fanoutd sets;
* ``nodrop``: ``XPUB_NODROP`` and fanoutd's high-water mark;
* ``zap``: a ZAP handler that allows everyone (fanoutd runs one on every
  socket, for access control and to refuse legacy ZMTP peers);
* ``fanoutd``: all of the above.

Each variant runs in a fresh process (``--variant`` runs one, in this
process).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import zmq
import zmq.auth.thread

from fobench.build import build_all
from fobench.procs import Child, free_port, rss_bytes

VARIANTS = ("bare", "heartbeat", "nodrop", "zap", "fanoutd")


def measure(variant: str, subscribers: int) -> tuple[float, float]:
    """RSS growth per connection (KiB) of this process holding one XPUB with ``subscribers``, and ms to connect."""
    bins = build_all()
    ctx = zmq.Context(io_threads=2)
    sock = ctx.socket(zmq.XPUB)
    auth = None
    if variant in ("heartbeat", "fanoutd"):
        sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)
    if variant in ("nodrop", "fanoutd"):
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.setsockopt(zmq.SNDHWM, 250_000)
    if variant in ("zap", "fanoutd"):
        auth = zmq.auth.thread.ThreadAuthenticator(ctx)
        auth.start()
        auth.allow()
        sock.setsockopt(zmq.ZAP_DOMAIN, b"bench")
    sock.setsockopt(zmq.BACKLOG, 4096)
    port = free_port()
    sock.bind(f"tcp://127.0.0.1:{port}")
    time.sleep(0.3)
    before = rss_bytes(os.getpid())
    start = time.monotonic()
    sink = Child([str(bins["msink"]), "-m", "zmtp", "-p", str(port), "-k", str(subscribers), "-L", "100",
                  "-n", "1", "-w", "5000"], "msink")
    try:
        sink.expect("connected", 120)
        connect_ms = (time.monotonic() - start) * 1e3
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # the socket attaches each new pipe when it is used
            try:
                sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                time.sleep(0.01)
        return (rss_bytes(os.getpid()) - before) / subscribers / 1024, connect_ms
    finally:
        sink.stop()
        sock.close(linger=0)
        if auth is not None:
            auth.stop()
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subscribers", type=int, default=2000)
    p.add_argument("--variant", choices=VARIANTS, help="measure one variant in this process")
    args = p.parse_args(argv)
    if args.variant:
        kib, ms = measure(args.variant, args.subscribers)
        print(f"{kib:.1f} | {ms:,.0f}")
        return 0
    print(f"| variant (one XPUB, pyzmq's libzmq {zmq.zmq_version()}) | KiB per connected subscriber "
          f"| ms to connect {args.subscribers:,} |")
    print("|---|---|---|")
    for variant in VARIANTS:
        done = subprocess.run([sys.executable, __file__, "--variant", variant, "--subscribers",
                               str(args.subscribers)], capture_output=True, text=True, timeout=300)
        value = done.stdout.strip() if done.returncode == 0 else f"error: {done.stderr.strip()[-200:]} | "
        print(f"| {variant} | {value} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
