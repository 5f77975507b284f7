"""Issue #26's "Done when", exactly as it is stated: the daemon as a subprocess, the clients as a user has them.

The daemon runs with ``--publish-hwm 1000 --slow-consumer-timeout 2
--history-bytes N`` and a repair endpoint (start_daemon gives every daemon
one, ``--repair tcp://127.0.0.1:0``, and the stamped output). A stamped
``Subscriber(stamped, topics=["t"], stamped=True, repair=EP)`` calls
``wait_ready()`` and stops reading for 6 s after its first message, while a
``Producer(drop=False)`` sends 100,000 messages of 1 KiB on topic ``t`` at
10,000 a second.

Under the default ``slow_consumer_policy = "pace"`` the producer is held
back while the reader is full, and the guard cuts the reader as
``stopped`` after 2 s without progress: the broker counts it in
``fanoutd_slow_consumers_total{socket="stamped"}``, which the test requires
(a scenario that never cuts would prove nothing about repair). libzmq
reconnects the subscriber, which repairs its gap from the history, and
again each time it falls behind while it repairs, since reading replies
stops it reading the stamped output, that fills, and the producer is paced
again; the loop serves repair during those stalls too. With 256 MiB of
history it ends with every payload in order exactly once, ``lost == 0`` and
``repaired > 0``; with 1 MiB, ``lost`` is exactly what it never received.
"""

from __future__ import annotations

import threading
import time

import pytest
from fanoutd_client import Producer, Subscriber

pytestmark = pytest.mark.timeout(180)
N = 100_000
RATE = 10_000
STALL = 6.0
FLAGS = ("--publish-hwm", "1000", "--slow-consumer-timeout", "2")


def payload(i: int) -> bytes:
    return (b"%06d " % i).ljust(1024, b"x")  # 1 KiB, its number first


def produce(endpoint: str, start: threading.Event, failures: list[BaseException]) -> threading.Thread:
    """A thread that sends N payloads on topic t at RATE a second, waiting for room rather than dropping."""

    def run() -> None:
        try:
            with Producer(endpoint, drop=False) as producer:
                producer.wait_ready(10)
                start.wait(30)
                t0 = time.monotonic()
                for i in range(N):
                    if i % 100 == 0 and (ahead := t0 + i / RATE - time.monotonic()) > 0:
                        time.sleep(ahead)
                    producer.send(b"t", payload(i))
                assert producer.dropped == 0
                producer.close()
                assert producer.flushed
        except BaseException as exc:  # the test thread reports it
            failures.append(exc)
            raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def stop_and_read(history_bytes: int, start_daemon) -> tuple[list[int], Subscriber, object]:
    """Run the scenario; the payload numbers received in order, the closed Subscriber, the daemon."""
    d = start_daemon(*FLAGS, "--history-bytes", str(history_bytes))
    failures: list[BaseException] = []
    go = threading.Event()
    producer = produce(d.collector, go, failures)
    got: list[int] = []
    with Subscriber(d.stamped, topics=["t"], stamped=True, repair=d.repair) as sub:
        sub.wait_ready()
        go.set()
        while len(got) < N:
            try:
                topic, data = sub.recv(10)  # well past the slow-consumer timeout and a repair's
            except TimeoutError:
                break
            assert topic == b"t" and data == payload(int(data[:6]))
            got.append(int(data[:6]))
            if len(got) == 1:
                time.sleep(STALL)
    producer.join(60)
    assert not producer.is_alive() and not failures, failures
    assert d.total("fanoutd_slow_consumers_total", socket="stamped") >= 1, "the scenario never cut the reader"
    return got, sub, d


def test_a_reader_stopped_for_6_s_ends_with_all_100000_in_order_exactly_once(start_daemon):
    got, sub, _ = stop_and_read(256 << 20, start_daemon)
    assert got == list(range(N)), (len(got), sub.lost, sub.repaired)
    assert sub.lost == 0 and sub.repaired > 0, (sub.lost, sub.repaired)


def test_with_1_mib_of_history_lost_is_exactly_what_never_arrived(start_daemon):
    got, sub, _ = stop_and_read(1 << 20, start_daemon)
    assert got == sorted(set(got)) and got[0] == 0, "in order, each once"
    assert 0 < len(got) < N and sub.repaired > 0
    assert sub.lost == N - len(got), (sub.lost, N - len(got), sub.repaired)
