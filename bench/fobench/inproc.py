"""The real Forwarder in this process, set up as the Engine sets it up, for benches of the broker's own cost.

bench/heldcost.py and bench/history.py run the loop in-process (a child per build) and read what every
thread of the process spent, so the figure is the broker's alone: the clients are other processes.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, Callable


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


def burst(counter: Callable[[], int], producer: subprocess.Popen, count: int) -> tuple[float, float]:
    """Tell a waiting ``zpub`` to send and wait until ``counter`` has advanced by ``count``: (messages a second,
    CPU ns per message) over exactly that window.

    Timed from the go, not from the first message seen, and polled every
    millisecond: a burst of 10,000 small messages passes in about 10 ms, so a
    window opened at the first message seen and closed on a 10 ms poll could
    hold one message (the rate read 96 msg/s, the CPU 3 ms a message).
    """
    start = counter()
    cpu0, t0 = cpu_ns(), time.monotonic()
    producer.stdin.write("go\n")
    producer.stdin.flush()
    while (done := counter()) < start + count:
        time.sleep(0.001)
    return (done - start) / (time.monotonic() - t0), (cpu_ns() - cpu0) / (done - start)


def rig() -> tuple[Any, Any, int, Any, int]:
    """(context, collector SUB, its port, output XPUB, its port): the context as this build's Engine sets it
    up (received messages copied, where the build does so), both queues unbounded, the output NODROP."""
    import zmq
    from fanoutd.dataplane import engine, zmqlib
    zmqlib.bind()
    ctx = zmq.Context()
    if hasattr(engine, "_receive_buffers"):  # what the build's Engine does to its context, by default
        engine._receive_buffers(ctx, copy=True)
    elif hasattr(engine, "_copy_received"):  # builds from affe4c2 to before receive_copy was a setting
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
