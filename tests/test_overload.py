"""A broker over its capacity holds its producers back: no reader is cut for it and nothing is lost unseen.

libzmq writes to a subscriber's socket until the kernel refuses more, so its
queue for a subscriber that reads grows only when libzmq's own I/O thread
cannot keep up. Here that thread is starved of CPU on purpose (pinned beside
a busy loop at nice -20) while the forwarding loop, the producer and a fast
subscriber run on the other CPU: the publish queue reaches its high-water
mark with every kernel queue empty. Sending on would have left that
subscriber out of libzmq's distribution with no one to name, and cutting it
would cut a reader that keeps up; the guard must see that no subscriber is
behind and hold output instead.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from conftest import ready_producer

N = 20_000
PAYLOAD = b"x" * 100

SUBSCRIBER = textwrap.dedent("""
    import json, sys, zmq
    endpoint, n = sys.argv[1], int(sys.argv[2])
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.rcvhwm = 0            # its own queue never pushes back: this reader is never behind
    sub.linger = 0
    sub.subscribe(b"")
    sub.connect(endpoint)
    got = ready = 0
    while got < n and sub.poll(10_000):
        msg = sub.recv()
        if msg.startswith(b"w "):
            if not ready:
                ready = 1
                print("ready", flush=True)
        else:
            got += 1
    print(json.dumps({"got": got}), flush=True)
    sub.close()
    ctx.term()
""")


def _pin(pid: int, cpu: set[int], only: str | None = None) -> None:
    """Pin every thread of ``pid`` (or those whose name starts with ``only``) to ``cpu``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            name = f.read().strip()
        if only is None or name.startswith(only):
            os.sched_setaffinity(int(tid), cpu)


@contextmanager
def starved_io_threads(pid: int) -> Iterator[None]:
    """fanoutd's libzmq I/O threads on CPU 0 beside a nice -20 busy loop (about 1 % of it left for them),
    everything else of fanoutd, and this test, on CPU 1."""
    cpus = os.sched_getaffinity(0)
    assert {0, 1} <= cpus, f"this test needs CPUs 0 and 1 (has {sorted(cpus)})"
    me = os.getpid()
    _pin(pid, {1})
    _pin(pid, {0}, only="ZMQbg/IO")
    _pin(me, {1})
    hog = subprocess.Popen([sys.executable, "-c", "import os\nos.nice(-20)\nwhile True: pass"],
                           preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    try:
        yield
    finally:
        hog.kill()
        hog.wait(timeout=10)
        _pin(me, cpus)


@pytest.mark.timeout(90)
def test_a_broker_behind_its_subscribers_holds_producers_back_and_loses_nothing(start_daemon, sockets):
    # The collector's queue must be deeper than the publish queue, or the starved I/O thread, which reads it too,
    # feeds the loop too slowly ever to fill the publish queue: 1 KiB messages at most make the input bound
    # (collector_max_pending, 32 MiB) 32,768 messages deep instead of the 512 it is for 1 MiB ones.
    d = start_daemon("--publish-hwm", "1000", "--push", "", "--max-message-size", "1KiB")
    sub = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, d.publish, str(N)], stdout=subprocess.PIPE,
                           text=True, preexec_fn=lambda: os.sched_setaffinity(0, {1}))
    try:
        prod = ready_producer(sockets, d.collector)
        with starved_io_threads(d.proc.pid):
            assert sub.stdout is not None
            # Warm-ups until the subscriber has one: its subscription is live end to end.
            with selectors.DefaultSelector() as sel:
                sel.register(sub.stdout, selectors.EVENT_READ)
                for _ in range(600):
                    prod.send(b"w " + PAYLOAD)
                    if sel.select(0.05):
                        break
            assert sub.stdout.readline().strip() == "ready"
            for i in range(N):
                prod.send(b"t %06d " % i + PAYLOAD)
            result = sub.stdout.readline()
        got = json.loads(result)["got"] if result else None
    finally:
        sub.kill()
        sub.wait(timeout=10)
    stalls = d.value("fanoutd_output_stalls_total", socket="publish")
    held = d.value("fanoutd_output_held_seconds_total", socket="publish")
    cut = d.total("fanoutd_slow_consumers_total", socket="publish")
    lossy = d.value("fanoutd_dropped_messages_total", output="publish", reason="hwm")
    facts = {"got": got, "stalls": stalls, "held": held, "cut": cut, "lossy": lossy}
    assert stalls >= 1 and held > 0, ("the publish queue never filled: the I/O thread was not starved", facts)
    assert cut == 0, ("a subscriber that keeps up was cut for the broker's own backlog", facts, d.log())
    assert lossy == 0 and got == N, ("every message reaches the subscriber, none dropped", facts)
