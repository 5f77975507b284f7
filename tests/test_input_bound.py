"""The input side while the broker holds its input back: what a producer connection can make it hold is bounded.

Under ``slow_consumer_policy = "pace"`` the loop reads no input while an output is held, and libzmq keeps reading
each producer connection into the input's queue until its ZMQ_RCVHWM (messages): that queue's depth is
``fanoutd.config.input_hwm`` (docs/concepts.md, "Where the memory goes while held back"). The unit tests check
the depth every input is given; the daemon test checks what it means in bytes, by the daemon's RSS, with a
producer that never drops sending 64 KiB messages flat out into a broker held back by a slow reader.
"""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from conftest import connected, settle, wait_for, warm_up
from fanoutd import config as cfg
from fanoutd.config import INPUT_HWM_FLOOR, MIB, ConfigError
from fanoutd.sockets import describe
from fanoutd_client import Producer

pytestmark = pytest.mark.timeout(60)

INPUTS = ("collector", "ingress", "upstream")
WITH_EVERY_INPUT = {"ingress": "tcp://127.0.0.1:*", "upstream": "tcp://127.0.0.1:5999"}


def rcvhwm(**flags: str) -> dict[str, int]:
    """ZMQ_RCVHWM of each input socket as described for a config loaded from these flags (every input on)."""
    specs = describe(cfg.load({**WITH_EVERY_INPUT, **flags}, environ={}))
    return {s.role: dict(s.options)[zmq.RCVHWM] for s in specs if s.role in INPUTS}


def test_every_input_queues_collector_max_pending_over_max_message_size_messages_never_under_the_floor():
    # The defaults: 32 MiB over 1 MiB is 32 messages, under the floor: 512 (32 MiB at 64 KiB a message).
    assert rcvhwm() == dict.fromkeys(INPUTS, INPUT_HWM_FLOOR) == dict.fromkeys(INPUTS, 512)
    assert rcvhwm(max_message_size="64KiB") == dict.fromkeys(INPUTS, 512)
    assert rcvhwm(max_message_size="16KiB") == dict.fromkeys(INPUTS, 2048)
    assert rcvhwm(max_message_size="1KiB") == dict.fromkeys(INPUTS, 32 * 1024)
    assert rcvhwm(max_message_size="1KiB", collector_max_pending="1024MiB") == dict.fromkeys(INPUTS, 100_000)
    assert rcvhwm(collector_max_pending="1024MiB") == dict.fromkeys(INPUTS, 1024)


def test_a_collector_hwm_under_the_budget_is_the_depth_and_one_over_it_is_refused_in_one_line():
    assert rcvhwm(collector_hwm="10") == dict.fromkeys(INPUTS, 10)
    assert rcvhwm(collector_hwm="512") == dict.fromkeys(INPUTS, 512)
    with pytest.raises(ConfigError) as refused:
        cfg.load({"collector_hwm": "513"}, environ={})
    assert str(refused.value) == (
        "collector_hwm = 513 messages of up to max_message_size (1048576 bytes) per producer connection is more "
        "than collector_max_pending (33554432 bytes) allows (512): lower it, or raise collector_max_pending")
    # The default written out is the default: the depth is left to collector_max_pending.
    assert rcvhwm(collector_hwm="100000") == dict.fromkeys(INPUTS, 512)
    # Where the budget allows it, it stands: 2,000 x 16 KiB is 31.25 MiB.
    assert rcvhwm(collector_hwm="2000", max_message_size="16KiB") == dict.fromkeys(INPUTS, 2000)


def test_the_high_water_mark_gauge_shows_the_depth_the_inputs_get(start_daemon):
    d = start_daemon("--ingress", "tcp://127.0.0.1:*", "--max-message-size", "16KiB")
    assert {role: d.value("fanoutd_high_water_mark_messages", socket=role) for role in ("collector", "ingress")} \
        == {"collector": 2048, "ingress": 2048}
    assert d.value("fanoutd_high_water_mark_messages", socket="publish") == 250_000


def test_the_output_high_water_marks_are_left_as_set():
    specs = describe(cfg.load({"publish_hwm": "100", "push_hwm": "7"}, environ={}))
    hwms = {s.role: dict(s.options)[zmq.SNDHWM] for s in specs if zmq.SNDHWM in dict(s.options)}
    assert hwms == {"publish": 100, "stamped": 100, "push": 7, "repair": 10_000}  # repair: repair_hwm


SIZE = 64 * 1024
DEPTH = 512  # the input queue at the defaults, messages per producer connection (the first test checks it)
HELD_FOR = 6.0  # seconds of flat-out sending into a held-back broker: the input queue fills in well under 1 s
# What the daemon may hold besides the input queue (one producer connection: 512 x 64 KiB = 32 MiB): the publish
# queue (--publish-hwm 100: 6.25 MiB), the message the stalled loop retries and the one libzmq's decoder is filling
# (64 KiB each), and glibc's arenas keeping freed 64 KiB chunks of two threads (the I/O thread allocates messages,
# the loop frees them) instead of reusing them at once. Measured here: 37 MiB all told, the two queues' worth. Without
# the bound (the queue at collector_hwm, 100,000) the input queue alone passes this within 0.1 s.
MARGIN = 16 * MIB


def rss(pid: int) -> int:
    """The process's resident set, in bytes, from /proc/PID/status (VmRSS, in kB)."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_a_producer_that_never_drops_holds_at_most_the_input_queue_in_the_daemon_while_it_is_held_back(
        start_daemon, sockets):
    """Pace, a reader at about 200 msg/s that keeps reading (so it is waited for, never cut: pace share 1), and
    Producer(drop=False) sending 64 KiB flat out for 6 s: the daemon's RSS grows by at most the input queue
    (512 x 64 KiB, the default) plus the publish queue and MARGIN, while it is held back most of that time."""
    # No repair history: it keeps the last history_bytes of stamped messages on top (issue #26), not an input.
    d = start_daemon("--history-bytes", "0", "--slow-consumer-policy", "pace", "--slow-consumer-pace-share", "1",
                     "--publish-hwm", "100",
                     "--push", "")
    reader = connected(sockets, zmq.SUB, d.publish, rcvhwm=10, rcvbuf=64 * 1024)
    settle(d, "publish", 1)
    producer = Producer(d.collector, wait=5, drop=False, send_timeout=15)
    payload = b"p" * (SIZE - 2)

    class Sending:
        def send(self, message: bytes) -> None:
            topic, _, rest = message.partition(b" ")
            producer.send(topic, rest)

    stop, closed = threading.Event(), threading.Event()  # the reader reads on until the producer has closed
    sent, read = [0], [0]

    def produce() -> None:
        while not stop.is_set():
            producer.send(b"t", payload)
            sent[0] += 1

    def consume() -> None:
        while not closed.is_set():
            if reader.poll(100):
                reader.recv()
                read[0] += 1
                time.sleep(0.005 if not stop.is_set() else 0)

    threads = [threading.Thread(target=produce, daemon=True), threading.Thread(target=consume, daemon=True)]
    try:
        warm_up(Sending(), reader)
        for _ in range(20):  # the heap has seen messages of this size, both ways, before the baseline
            producer.send(b"t", payload)
        wait_for("the warm-up's 64 KiB messages", lambda: reader.poll(100) and reader.recv(), bool)
        while reader.poll(200):
            reader.recv()
        before = rss(d.proc.pid)
        for t in threads:
            t.start()
        peak = before
        limit = before + DEPTH * SIZE + 100 * SIZE + MARGIN
        deadline = time.monotonic() + HELD_FOR
        while time.monotonic() < deadline and peak <= limit:  # stop at once past it: an unbounded queue eats GiBs
            peak = max(peak, rss(d.proc.pid))
            time.sleep(0.02)
        held = d.value("fanoutd_output_held_seconds_total", socket="publish")
        cut = d.total("fanoutd_slow_consumers_total", socket="publish")
        ahead = sent[0] - read[0]  # messages sent and not yet read: in the daemon, its kernel buffers or ours
    finally:
        stop.set()
        if threads[0].ident is not None:
            threads[0].join(20)
        producer.close()
        closed.set()
        if threads[1].ident is not None:
            threads[1].join(20)
    growth = (peak - before) / MIB
    assert peak <= limit, (f"RSS grew by {growth:.1f} MiB, over the bound of {(limit - before) / MIB:.1f} MiB "
                           f"({sent[0]} sent, {read[0]} read, held {held:.1f} s)")
    # The bound was exercised: the broker was held back most of the time, so its input queue was full.
    assert held > HELD_FOR / 2, (held, sent[0], read[0], growth)
    assert ahead > DEPTH + 100, (ahead, sent[0], read[0])
    assert cut == 0, d.log()  # the reader kept reading: it was waited for, so the hold lasted
