"""The pace policy on a real daemon: readers that keep reading get everything, the producer is held back instead,
and a reader that stops is still cut. The rules alone, with made-up readings: tests/test_guard_rules.py."""

from __future__ import annotations

import threading
import time

import zmq

from conftest import connected, settle, warm_up
from fanoutd_client import Producer

PAYLOAD = b"x" * 1024
# The slower reader holds the output back for most of a run (5.5 s of 6.5 s at 20,000 here): past the pace bound
# (0.75 of 10 s) it would be cut, which is the bound's job (tested below), not what the first test is about.
N = 10_000


class Sending:
    """A Producer that does not drop when held back (``drop=False``: a send waits for room), as warm_up's sender."""

    def __init__(self, endpoint: str) -> None:
        self.producer = Producer(endpoint, wait=5, drop=False, send_timeout=15)

    def send(self, message: bytes) -> None:
        topic, _, payload = message.partition(b" ")
        self.producer.send(topic, payload)


def read(sock: zmq.Socket, n: int, got: list[int], per_message: float = 0.0) -> None:
    """Count messages until ``n`` arrived or none came for 5 s; ``per_message``: seconds of work after each."""
    while got[0] < n and sock.poll(5000):
        sock.recv()
        got[0] += 1
        if per_message:
            time.sleep(per_message)


def flat_out(sending: Sending, readers: list[tuple[zmq.Socket, float]]) -> list[int]:
    """Send N messages as fast as the broker lets the producer, a thread per reader counting; the counts."""
    counts = [[0] for _ in readers]
    threads = [threading.Thread(target=read, args=(sock, N, got, per_message), daemon=True)
               for (sock, per_message), got in zip(readers, counts)]
    for t in threads:
        t.start()
    for i in range(N):
        sending.producer.send(b"t", b"%06d " % i + PAYLOAD)
    for t in threads:
        t.join(timeout=60)
    return [got[0] for got in counts]


def test_under_pace_a_slower_reader_that_keeps_reading_gets_everything_and_the_producer_is_held_back(
        start_daemon, sockets):
    """Four readers, one of them slower but steady, 10,000 x 1 KiB flat out at --publish-hwm 100: under cut the
    slower one is cut as furthest_behind (4 cuts in each of two runs here; timing decides, so not asserted);
    under pace everyone gets all of them."""
    d = start_daemon("--slow-consumer-policy", "pace", "--publish-hwm", "100", "--push", "")
    subs = [connected(sockets, zmq.SUB, d.publish, rcvhwm=100, rcvbuf=64 * 1024) for _ in range(4)]
    settle(d, "publish", 4)
    sending = Sending(d.collector)
    try:
        warm_up(sending, *subs)
        started = time.monotonic()
        counts = flat_out(sending, [(subs[0], 0.0002), *((sub, 0.0) for sub in subs[1:])])
        took = time.monotonic() - started
    finally:
        sending.producer.close()
    cut = d.total("fanoutd_slow_consumers_total", socket="publish")
    stalls = d.value("fanoutd_output_stalls_total", socket="publish")
    held = d.value("fanoutd_output_held_seconds_total", socket="publish")
    assert counts == [N] * 4 and cut == 0, (counts, cut, stalls, held, took,
                                             [line for line in d.log().splitlines() if "WARNING" in line])
    assert stalls > 0, "the output never stalled: the producer was not held back, so nothing was paced"
    assert d.value("fanoutd_dropped_messages_total", output="publish", reason="hwm") == 0
    assert sending.producer.dropped == 0


def test_under_pace_a_reader_that_stops_is_still_cut_as_stopped_and_the_others_get_everything(
        start_daemon, sockets):
    d = start_daemon("--slow-consumer-policy", "pace", "--publish-hwm", "100", "--push", "")
    readers = [connected(sockets, zmq.SUB, d.publish, rcvhwm=100) for _ in range(2)]
    # It does not come back once cut (a SUB reconnects by itself, and, still not reading, would be cut again).
    stopped = connected(sockets, zmq.SUB, d.publish, rcvhwm=100, rcvbuf=16 * 1024, reconnect_ivl=-1)
    settle(d, "publish", 3)
    sending = Sending(d.collector)
    try:
        warm_up(sending, *readers, stopped)
        counts = flat_out(sending, [(sub, 0.0) for sub in readers])
    finally:
        sending.producer.close()
    assert counts == [N] * 2, (counts, [line for line in d.log().splitlines() if "WARNING" in line])
    assert d.value("fanoutd_slow_consumers_total", socket="publish", rule="stopped") == 1, d.log()
    assert d.total("fanoutd_slow_consumers_total", socket="publish") == 1
    assert d.value("fanoutd_dropped_messages_total", output="publish", reason="hwm") == 0
    assert "(rule=stopped)" in d.log()


def test_under_pace_a_reader_far_slower_than_the_rest_is_cut_by_the_pace_bound_and_the_others_get_everything(
        start_daemon, sockets):
    """A reader at about a tenth of the others' rate would set everyone's pace: once it has been the furthest
    behind for more than half of a 2 s window, it is cut as pace_bound."""
    d = start_daemon("--slow-consumer-policy", "pace", "--publish-hwm", "100", "--push", "",
                     "--slow-consumer-pace-share", "0.5", "--slow-consumer-pace-window", "2")
    readers = [connected(sockets, zmq.SUB, d.publish, rcvhwm=100) for _ in range(3)]
    slowest = connected(sockets, zmq.SUB, d.publish, rcvhwm=100, rcvbuf=64 * 1024, reconnect_ivl=-1)
    settle(d, "publish", 4)
    sending = Sending(d.collector)
    try:
        warm_up(sending, *readers, slowest)
        counts = flat_out(sending, [*((sub, 0.0) for sub in readers), (slowest, 0.001)])
    finally:
        sending.producer.close()
    warnings = [line for line in d.log().splitlines() if "WARNING" in line]
    assert counts[:3] == [N] * 3 and counts[3] < N, (counts, warnings)
    assert d.value("fanoutd_slow_consumers_total", socket="publish", rule="pace_bound") == 1, warnings
    assert d.total("fanoutd_slow_consumers_total", socket="publish") == 1, warnings
    assert d.value("fanoutd_dropped_messages_total", output="publish", reason="hwm") == 0
    assert "(rule=pace_bound) because it held the others back for " in d.log()
