"""Held bytes on a real daemon: counted exactly (fanoutd_pending_bytes, /peers), and bounded by
slow_consumer_max_pending, so one stalled subscriber costs bounded memory while a fast one gets everything.

The ledger itself, on the Forwarder with real sockets: tests/test_held_bytes.py; the guard's max_pending rule
with made-up readings: tests/test_guard_rules.py.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import zmq

from conftest import connected, settle, wait_for, warm_up
from fanoutd_client import Producer

SIZE = 64 * 1024
MIB = 1024 * 1024

pytestmark = pytest.mark.timeout(120)


def rss(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process from /proc, in bytes (VmRSS now, VmHWM the peak so far)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def peers(d) -> dict:
    status, body = d.get("/peers")
    assert status == 200, body
    return json.loads(body)


class Sending:
    """A Producer that waits when held back (``drop=False``), as warm_up's sender."""

    def __init__(self, endpoint: str) -> None:
        self.producer = Producer(endpoint, wait=5, drop=False, send_timeout=30)

    def send(self, message: bytes) -> None:
        topic, _, payload = message.partition(b" ")
        self.producer.send(topic, payload)


def test_held_bytes_are_shown_exactly_per_output_and_per_connection_and_return_to_zero(start_daemon, sockets):
    """No stall, no timeout, no bound reached: what libzmq holds for a reader that does not read stays, visible."""
    d = start_daemon("--slow-consumer-policy", "cut", "--slow-consumer-stall", "0", "--slow-consumer-timeout", "0",
                     "--push", "")
    fast = connected(sockets, zmq.SUB, d.publish)
    stopped = connected(sockets, zmq.SUB, d.publish, rcvhwm=1, rcvbuf=8192)
    settle(d, "publish", 2)
    sending = Sending(d.collector)
    try:
        warm_up(sending, fast, stopped)
        for i in range(100):
            sending.producer.send(b"t", b"%06d " % i + b"p" * (SIZE - 9))
        for _ in range(100):
            fast.recv()
    finally:
        sending.producer.close()
    frame = len(b"t") + 1 + 7 + SIZE - 9  # the one frame on the wire: "t " + "%06d " + payload
    held = wait_for("the publish output's held bytes to settle", lambda: d.value("fanoutd_pending_bytes",
                    socket="publish"), lambda v: v > 0 and v % frame == 0, timeout=10)
    assert held >= 50 * frame, f"{held} bytes held for a reader 100 x 64 KiB behind"

    def steady() -> tuple[float, dict]:  # /peers read between two equal counts: the fast reader's frames all back
        first = d.value("fanoutd_pending_bytes", socket="publish")
        entries = {e["peer"]: e for e in peers(d)["connected"] if e["socket"] == "publish"}
        return first, entries if d.value("fanoutd_pending_bytes", socket="publish") == first else {}
    held, entries = wait_for("/peers and the held bytes to agree in time", steady, lambda v: bool(v[1]))
    biggest = max(entries.values(), key=lambda e: e["pending_bytes"])
    assert biggest["pending_bytes"] == biggest["queued_bytes"] + held, biggest
    assert sorted(e["pending_bytes"] for e in entries.values())[0] < frame, "the reader that keeps up holds nothing"
    while stopped.poll(2000):
        stopped.recv()
    assert wait_for("the held bytes to return to zero", lambda: d.value("fanoutd_pending_bytes", socket="publish"),
                    lambda v: v == 0, timeout=10) == 0
    assert d.value("fanoutd_max_pending_bytes") == 64 * MIB


def test_one_stalled_subscriber_costs_at_most_max_pending_and_a_fast_one_gets_everything(start_daemon, sockets):
    """At the defaults (pace, slow_consumer_max_pending 64 MiB): 4,000 x 64 KiB flat out from a producer that
    waits when held back; the stalled subscriber is cut, the fast one gets all 4,000 in order, and fanoutd's
    resident memory grows by at most slow_consumer_max_pending + 64 MiB (the issue's bound)."""
    count = 4000
    d = start_daemon("--push", "")
    fast = connected(sockets, zmq.SUB, d.publish, rcvhwm=100_000)
    stalled = connected(sockets, zmq.SUB, d.publish, rcvhwm=1, rcvbuf=16 * 1024, reconnect_ivl=-1)
    settle(d, "publish", 2)
    sending = Sending(d.collector)
    got: list[int] = []
    pending: list[float] = []

    def read() -> None:
        while len(got) < count and fast.poll(10_000):
            got.append(int(fast.recv()[2:8]))

    def watch() -> None:
        while len(got) < count and reader.is_alive():
            pending.append(d.value("fanoutd_pending_bytes", socket="publish"))
            time.sleep(0.05)

    try:
        warm_up(sending, fast, stalled)
        before = rss(d.proc.pid)
        reader, watcher = threading.Thread(target=read), threading.Thread(target=watch)
        reader.start()
        watcher.start()
        payload = b"p" * (SIZE - 9)
        for i in range(count):
            sending.producer.send(b"t", b"%06d " % i + payload)
        reader.join(60)
        watcher.join(10)
    finally:
        sending.producer.close()
    grown = rss(d.proc.pid, "VmHWM") - before
    warnings = [line for line in d.log().splitlines() if "WARNING" in line]
    assert got == list(range(count)), (len(got), warnings)
    assert d.total("fanoutd_slow_consumers_total", socket="publish") == 1, warnings
    assert d.value("fanoutd_dropped_messages_total", output="publish", reason="hwm") == 0
    assert max(pending) <= 64 * MIB, f"held {max(pending) / MIB:.1f} MiB"
    assert grown <= 128 * MIB, f"fanoutd grew by {grown / MIB:.0f} MiB (held at most {max(pending) / MIB:.1f} MiB)"


@pytest.mark.parametrize("bound", ["4MiB", "0"])
def test_a_puller_that_stops_reading_holds_at_most_max_pending_and_the_rest_is_dropped_and_counted(
        start_daemon, sockets, bound):
    """The PUSH output never holds anything back, so its byte bound drops: with a puller that takes nothing,
    300 x 64 KiB (18.75 MiB) leave the pullers' queues holding at most slow_consumer_max_pending (4 MiB) plus
    the one message that found it under the bound, and the rest are counted as push max_pending drops. Every
    message is accounted for, the count returns to 0 once the puller has read, and with the bound off (0) no
    message is dropped for it (push_hwm alone bounds the queue, in messages)."""
    count, limit = 300, 4 * MIB
    d = start_daemon("--slow-consumer-max-pending", bound)
    puller = connected(sockets, zmq.PULL, d.push, rcvhwm=1, rcvbuf=16 * 1024)
    settle(d, "push", 1)
    sending = Sending(d.collector)
    with sending.producer as producer:
        warm_up(sending, puller)
        before = {reason: d.value("fanoutd_dropped_messages_total", output="push", reason=reason)
                  for reason in ("hwm", "no_puller", "max_pending")}
        pushed_before = d.value("fanoutd_pushed_messages_total")
        payload = b"p" * (SIZE - 2)
        for _ in range(count):
            producer.send(b"t", payload)
        received = wait_for("the loop to take every message", lambda: d.value("fanoutd_received_messages_total"),
                            lambda v: v >= pushed_before + count, timeout=30)
        held = d.value("fanoutd_pending_bytes", socket="push")
    dropped = {reason: d.value("fanoutd_dropped_messages_total", output="push", reason=reason) - n
               for reason, n in before.items()}
    pushed = d.value("fanoutd_pushed_messages_total") - pushed_before
    assert pushed + sum(dropped.values()) == count, (pushed, dropped, received)
    if bound == "0":
        assert dropped["max_pending"] == 0 and held == 0, (dropped, held)  # nothing counted, nothing dropped for it
    else:
        assert 0 < held <= limit + SIZE, held
        assert pushed * SIZE >= limit, pushed  # it took what the bound allows before dropping
        assert dropped["max_pending"] > 0, dropped
    got = 0
    while puller.poll(2000):
        puller.recv()
        got += 1
    assert got == pushed, (got, pushed)
    wait_for("the push output's held bytes to return to 0", lambda: d.value("fanoutd_pending_bytes", socket="push"),
             lambda v: v == 0)
