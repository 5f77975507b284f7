"""The stamped Subscriber repairs by itself: the daemon as a subprocess, real sockets, the client as a user has it.

A subscriber that stops reading at a small --publish-hwm is cut off by the
slow-consumer guard and reconnects (libzmq does); with ``repair=`` it ends
with every message exactly once, in order, ``lost == 0`` and ``repaired > 0``;
with a history too small, ``lost`` is exactly what never arrived; a gap at
the end is found through HEADS; a repair endpoint that is down delays a recv
by a bounded time and the gap is counted lost; ``fanout sub --repair`` says
what it got back and what is gone; a broker restart is a restart (nothing of
the old epoch is offered); prefix filters and multipart messages are
repaired exactly. Issue #26's Done-when scenario is tests/test_repair_done.py.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time

import pytest
import zmq
import zmq.auth
from fanoutd_client import Subscriber, load_curve_keys, wire
from fanoutd_client.repair import Gone, range_request

from conftest import free_port, ready_producer, send_paced, settle, wait_for
from test_clients import await_subscription, bound, close_within
from test_repair import repairers  # noqa: F401 (a fixture)
from test_tool import command, tool_env

pytestmark = pytest.mark.timeout(120)
GUARD = ("--push", "", "--publish-hwm", "1000", "--slow-consumer-timeout", "1")


def produce(sockets, endpoint: str, n: int, rate: int, start: threading.Event | None = None) -> threading.Thread:
    """A thread that sends ``t NNNNNN xxx...`` (1 KiB payloads) n times at ``rate`` a second, never dropping."""
    producer = ready_producer(sockets, endpoint)

    def run() -> None:
        if start is not None:
            start.wait(30)
        send_paced(producer.send, (b"t %06d " % i + b"x" * 1024 for i in range(n)), rate)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_cut(d) -> None:
    """Until the slow-consumer guard has cut a reader off the stamped output."""
    wait_for("a reader cut off the stamped output",
             lambda: sum(v for (name, labels), v in d.metrics().items()
                         if name == "fanoutd_slow_consumers_total" and ("socket", "stamped") in labels),
             lambda cuts: cuts >= 1, 20, alive=d.proc)


def read_all(sub: Subscriber, n: int, cut: object = None, idle: float = 5.0) -> list[int]:
    """Receive until ``n`` messages or ``idle`` s without one; after the first, stop reading until daemon ``cut``
    has cut a reader off the stamped output (the state, not a time: under load the guard may take longer)."""
    got: list[int] = []
    while len(got) < n:
        try:
            topic, payload = sub.recv(idle)
        except TimeoutError:
            break
        assert topic == b"t"
        got.append(int(payload[:6]))
        if len(got) == 1 and cut is not None:
            wait_cut(cut)
    return got


def cut_off_and_read(d, sockets, n: int, **options) -> tuple[list[int], Subscriber]:
    """The cut-off scenario: a repairing Subscriber (hwm 1000) stops reading 2.5 s after its first message while
    n messages go out at 10,000 a second, long enough for the guard to cut it; what it got, and the closed
    Subscriber (lost, repaired)."""
    with Subscriber(d.stamped, [b"t"], stamped=True, repair=d.repair, hwm=1000, **options) as sub:
        sub.wait_ready()
        producer = produce(sockets, d.collector, n, 10_000)
        got = read_all(sub, n, cut=d)
        producer.join(30)
    assert d.total("fanoutd_slow_consumers_total", socket="stamped") >= 1, "the scenario never cut the reader"
    return got, sub


def test_a_cut_off_subscriber_ends_with_every_message_exactly_once(start_daemon, sockets):
    d = start_daemon(*GUARD, "--history-bytes", str(256 << 20))
    n = 40_000
    got, sub = cut_off_and_read(d, sockets, n)
    assert got == list(range(n)), (len(got), sub.lost, sub.repaired)
    assert sub.lost == 0 and sub.repaired > 0


def test_with_curve_the_repair_socket_uses_the_subscribers_keys(start_daemon, sockets, tmp_path):
    """The repair endpoint has the stamped output's access control: the subscriber's CURVE keys open both."""
    for name in ("server", "me"):
        zmq.auth.create_certificates(tmp_path, name)
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "me.key").write_bytes((tmp_path / "me.key").read_bytes())
    d = start_daemon(*GUARD, "--curve-secret-key", str(tmp_path / "server.key_secret"),
                     "--publish-curve", "--publish-clients", str(tmp_path / "allowed"))
    keys = load_curve_keys(str(tmp_path / "me.key_secret"), str(tmp_path / "server.key"))
    n = 40_000
    got, sub = cut_off_and_read(d, sockets, n, **keys)
    assert got == list(range(n)), (len(got), sub.lost, sub.repaired)
    assert sub.lost == 0 and sub.repaired > 0


def test_a_gap_at_the_end_is_found_through_heads(start_daemon, sockets):
    """The subscriber stalls until the producer is done: no later message shows the gap, only the heads."""
    d = start_daemon(*GUARD, "--history-bytes", str(256 << 20))
    n = 20_000
    with Subscriber(d.stamped, [b"t"], stamped=True, repair=d.repair, hwm=1000) as sub:
        sub.wait_ready()
        go = threading.Event()
        producer = produce(sockets, d.collector, n, 20_000, go)
        go.set()
        got = [int(sub.recv(5)[1][:6])]
        producer.join(30)
        wait_cut(d)
        got += read_all(sub, n - 1, idle=5)
        assert got == list(range(n)), (len(got), sub.lost, sub.repaired)
        assert sub.lost == 0 and sub.repaired > 0


def test_a_history_too_small_counts_exactly_what_never_arrived(start_daemon, sockets):
    d = start_daemon(*GUARD, "--history-bytes", str(1 << 20))
    n = 30_000
    got, sub = cut_off_and_read(d, sockets, n)
    assert got == sorted(set(got)) and got[0] == 0
    assert sub.lost > 0 and sub.repaired > 0
    assert sub.lost == n - len(got), (sub.lost, n - len(got), sub.repaired)


def test_a_repair_endpoint_that_is_down_bounds_recv_and_counts_the_gap_lost(start_daemon, sockets):
    d = start_daemon(*GUARD)
    n, timeout = 50_000, 0.5  # it goes on after the cut: a later message shows the gap
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    with Subscriber(d.stamped, [b"t"], stamped=True, repair=nowhere, repair_timeout=timeout, hwm=1000) as sub:
        sub.wait_ready()
        producer = produce(sockets, d.collector, n, 10_000)
        got, longest = [], 0.0
        while len(got) < n:
            t0 = time.monotonic()
            try:
                got.append(int(sub.recv(5)[1][:6]))
            except TimeoutError:
                break
            longest = max(longest, time.monotonic() - t0)
            if len(got) == 1:
                wait_cut(d)
        producer.join(30)
        assert sub.repaired == 0 and sub.lost > 0
        assert sub.lost == n - len(got)
        # At most one RANGE and one HEADS (on the reconnect) wait in one recv: less than the recv's own 5 s,
        # with room for a loaded machine's scheduling.
        assert longest < 2 * timeout + 2.0, longest


def test_fanout_sub_repair_says_what_it_got_back_and_what_is_gone(start_daemon, sockets):
    d = start_daemon(*GUARD, "--history-bytes", str(1 << 20))
    proc = subprocess.Popen(command("sub", "--stamped", "-e", d.stamped, "--timeout", "5", "t"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=tool_env({"FANOUT_REPAIR": d.repair}))
    try:
        n = 30_000
        producer = ready_producer(sockets, d.collector)
        assert proc.stdout is not None
        while True:  # until the tool is subscribed and prints
            producer.send(b"t %06d " % 0 + b"x" * 1024)
            if select.select([proc.stdout], [], [], 0.1)[0]:
                proc.stdout.readline()
                break
        os.kill(proc.pid, signal.SIGSTOP)
        for i in range(1, n):
            producer.send(b"t %06d " % i + b"x" * 1024)
            if i % 200 == 0:
                time.sleep(0.02)
        wait_cut(d)
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.decode().splitlines()
    assert any(line.startswith("fanout sub: repaired ") for line in lines), lines
    assert any(line.startswith("fanout sub: gone ") and "(evicted)" in line for line in lines), lines
    assert proc.returncode == 0, lines


STREAMS = (b"prices.a", b"prices.b", b"prices.c", b"prices.m")  # prices.m is sent multipart


def send_values(producer, values: range, streams=STREAMS) -> None:
    for v in values:
        for topic in streams:
            if topic.endswith(b".m"):
                producer.send_multipart([topic, b"%d" % v])
            else:
                producer.send(topic + b" %d" % v)


def by_stream(received: list[tuple[bytes, bytes]]) -> dict[bytes, list[int]]:
    out: dict[bytes, list[int]] = {}
    for topic, payload in received:
        out.setdefault(topic, []).append(int(payload))
    return out


def test_last_value_gives_the_latest_of_each_stream_then_the_live_ones_without_gap_or_duplicate(start_daemon,
                                                                                                   sockets):
    """Values sent before the subscriber exists; it gets the latest of each stream under its prefix (single-
    and multipart, not the stream outside it), then every live one. Then a second subscriber joins while
    values flow: per stream one contiguous run, no gap and no duplicate where last value meets live."""
    d = start_daemon()
    producer = ready_producer(sockets, d.collector)
    send_values(producer, range(1, 6))
    producer.send(b"other 1")
    d.wait_value("fanoutd_received_messages_total", 21)
    with Subscriber(d.stamped, [b"prices."], stamped=True, repair=d.repair, last_value=True) as sub:
        sub.wait_ready()
        first = [sub.recv(5) for _ in STREAMS]
        assert sorted(first) == [(topic, b"5") for topic in STREAMS]
        send_values(producer, range(6, 9))
        live = [sub.recv(5) for _ in range(3 * len(STREAMS))]
        assert by_stream(live) == {topic: [6, 7, 8] for topic in STREAMS}
        with pytest.raises(TimeoutError):
            sub.recv(0.5)
        assert (sub.lost, sub.repaired) == (0, 0)

    stop = threading.Event()

    def flow() -> None:
        v = 9
        while not stop.is_set() and v < 2000:
            send_values(producer, range(v, v + 1))
            v += 1
            time.sleep(0.002)
        send_values(producer, range(v, v + 1))
        sent.append(v)

    sent: list[int] = []
    thread = threading.Thread(target=flow, daemon=True)
    thread.start()
    try:
        with Subscriber(d.stamped, [b"prices."], stamped=True, repair=d.repair, last_value=True) as sub:
            sub.wait_ready()
            received = [sub.recv(5) for _ in range(len(STREAMS) * 20)]
            stop.set()
            thread.join(10)
            last = sent[0]
            while True:
                try:
                    received.append(sub.recv(2))
                except TimeoutError:
                    break
            assert sub.lost == 0
    finally:
        stop.set()
    runs = by_stream(received)
    assert set(runs) == set(STREAMS)
    for topic, values in runs.items():
        assert values == list(range(values[0], last + 1)), (topic, values[:5], values[-5:])
        assert values[0] >= 8, (topic, values[0])  # the latest when it joined, never an older one


def test_fanout_sub_last_value_prints_the_latest_of_each_stream_first(start_daemon, sockets):
    d = start_daemon()
    producer = ready_producer(sockets, d.collector)
    send_values(producer, range(1, 4))
    d.wait_value("fanoutd_received_messages_total", 12)
    result = subprocess.run(command("sub", "--stamped", "-e", d.stamped, "--repair", d.repair, "--last-value",
                                    "--count", "4", "--timeout", "5", "prices."),
                            capture_output=True, timeout=30, env=tool_env({}))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.decode().splitlines()) == [f"{t.decode()} 3" for t in STREAMS]


def test_under_gevent_waiting_for_the_repair_endpoint_lets_other_greenlets_run(sockets):
    """A green context: the repair DEALER is green too, so the recv that waits all repair_timeout for an answer
    that never comes (a stand-in endpoint that only takes the RANGE) yields to the hub."""
    import gevent
    import zmq.green

    xpub, stamped = bound(sockets, zmq.XPUB)
    router, repair = bound(sockets, zmq.ROUTER)
    green = zmq.green.Context()
    ticks = 0

    def ticker() -> None:
        nonlocal ticks
        while True:
            gevent.sleep(0.01)
            ticks += 1

    def message(seq: int) -> list[bytes]:
        return [b"t %d" % seq, wire.stamp_trailer(7, 1, seq, 2)]

    try:
        with Subscriber(stamped, [b"t"], stamped=True, repair=repair, repair_timeout=1.0, context=green) as sub:
            await_subscription(xpub, b"t")
            xpub.send_multipart([b"t", wire.READY_TRAILER])
            sub.wait_ready(5)
            xpub.send_multipart(message(1))
            assert sub.recv(5) == (b"t", b"1")
            xpub.send_multipart(message(5))
            tick = gevent.spawn(ticker)
            gevent.sleep(0)
            before = ticks
            assert sub.recv(5) == (b"t", b"5")
            ticked = ticks - before
            tick.kill()
            assert router.recv_multipart()[1] == range_request(1, 7, 1, 2, 4)
            assert sub.lost == 3
        # A blocking wait would hold the hub for all of repair_timeout: not one tick in that recv.
        assert ticked >= 3, ticked
    finally:
        close_within(green)


def test_a_broker_restart_is_a_restart_nothing_of_the_old_epoch_is_offered(start_daemon, sockets, repairers):
    """A repairing subscriber across a restart: the new broker's heads and messages are of a new epoch, counted
    as a restart, never as a gap to repair; asked for the old epoch, the new broker answers "epoch", nothing."""
    repair = f"tcp://127.0.0.1:{free_port()}"  # where the restarted broker comes back too (beside port 0's)
    d = start_daemon(*GUARD, "--repair", repair, restartable=True)
    with Subscriber(d.stamped, [b"t"], stamped=True, repair=repair, hwm=1000) as sub:
        sub.wait_ready()
        producer = ready_producer(sockets, d.collector)
        for i in range(100):
            producer.send(b"t %06d old" % i)
        got = [sub.recv(5)[1] for _ in range(100)]
        old = sub.last_stamp
        assert d.stop() == 0
        producer.close(linger=0)
        d2 = start_daemon(*GUARD, "--repair", repair, ports=d.ports)
        settle(d2, "stamped", 1)
        producer = ready_producer(sockets, d2.collector)
        deadline = time.monotonic() + 10
        while True:  # until the resubscription is live: what went out before it was never this subscriber's
            assert time.monotonic() < deadline, "the subscriber never came back"
            producer.send(b"t probe")
            with contextlib.suppress(TimeoutError):
                if sub.recv(0.2) == (b"t", b"probe"):
                    break
        for i in range(100):
            producer.send(b"t %06d new" % i)
        while len(got) < 200:
            if (payload := sub.recv(5)[1]) != b"probe":
                got.append(payload)
        assert got == [b"%06d old" % i for i in range(100)] + [b"%06d new" % i for i in range(100)]
        assert (sub.restarts, sub.lost) == (1, 0)
        assert sub.last_stamp.epoch != old.epoch
    messages, end = repairers(repair).range(old.epoch, old.stream, 1, old.seq)
    assert messages == [] and end.gone == [Gone(1, old.seq, wire.GONE_EPOCH)]


def test_prefix_filters_and_multipart_messages_are_repaired_exactly(start_daemon, sockets):
    """Two streams under the subscriber's prefix, one outside it, multipart: after the cut every message of the
    two comes back once, in order per stream, frame for frame; none of the other."""
    d = start_daemon(*GUARD, "--history-bytes", str(256 << 20))
    n, topics = 30_000, (b"a.x", b"a.y", b"b")
    sent = [[topics[i % 3], b"%06d" % i, b"m" * (1000 + i % 50)] for i in range(n)]
    want = {topic: [m for m in sent if m[0] == topic] for topic in topics[:2]}
    with Subscriber(d.stamped, [b"a."], stamped=True, repair=d.repair, hwm=1000) as sub:
        sub.wait_ready()
        producer = ready_producer(sockets, d.collector)

        def run() -> None:
            send_paced(producer.send_multipart, sent, 10_000)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        got: dict[bytes, list[list[bytes]]] = {topic: [] for topic in topics}
        while sum(map(len, got.values())) < sum(map(len, want.values())):
            try:
                frames = sub.recv_multipart(5)
            except TimeoutError:
                break
            got[frames[0]].append(frames)
            if sum(map(len, got.values())) == 1:
                time.sleep(2.5)
        thread.join(30)
        assert got[b"b"] == []
        for topic in topics[:2]:
            assert got[topic] == want[topic], (topic, len(got[topic]), sub.lost, sub.repaired)
        assert sub.lost == 0 and sub.repaired > 0
    assert d.total("fanoutd_slow_consumers_total", socket="stamped") >= 1
