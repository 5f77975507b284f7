"""The real Forwarder in this process, set up as the Engine sets it up, for benches of the broker's own cost.

bench/heldcost.py and bench/history.py run the loop in-process (a child per build) and read what every
thread of the process spent, so the figure is the broker's alone: the clients are other processes.
"""

from __future__ import annotations

import os
from typing import Any


def cpu_ns() -> int:
    """CPU every thread of this process has run, in ns (/proc schedstat)."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            continue  # a thread that just ended
    return total


def peak_rss() -> int:
    """This process's peak resident set, in bytes (VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def rig() -> tuple[Any, Any, int, Any, int]:
    """(context, collector SUB, its port, output XPUB, its port): the context as this build's Engine sets it
    up (received messages copied, where the build does so), both queues unbounded, the output NODROP."""
    import zmq
    from fanoutd.dataplane import engine, zmqlib
    zmqlib.bind()
    ctx = zmq.Context()
    if hasattr(engine, "_copy_received"):  # what the build's Engine does to its context
        engine._copy_received(ctx)
    collector = ctx.socket(zmq.SUB)
    collector.setsockopt(zmq.SUBSCRIBE, b"")
    collector.setsockopt(zmq.RCVHWM, 0)
    port = collector.bind_to_random_port("tcp://127.0.0.1")
    output = ctx.socket(zmq.XPUB)
    output.setsockopt(zmq.XPUB_NODROP, 1)
    output.setsockopt(zmq.SNDHWM, 0)
    out_port = output.bind_to_random_port("tcp://127.0.0.1")
    return ctx, collector, port, output, out_port
