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
from fanoutd_client.repair import Gone

from conftest import free_port, ready_producer, settle, wait_for
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
        t0 = time.monotonic()
        for i in range(n):
            producer.send(b"t %06d " % i + b"x" * 1024)
            if i % 200 == 0 and (ahead := i / rate - (time.monotonic() - t0)) > 0:
                time.sleep(ahead)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_cut(d) -> None:
    """Until the slow-consumer guard has cut a reader off the stamped output."""
    wait_for("a reader cut off the stamped output",
             lambda: sum(v for (name, labels), v in d.metrics().items()
                         if name == "fanoutd_slow_consumers_total" and ("socket", "stamped") in labels),
             lambda cuts: cuts >= 1, 20, alive=d.proc)


def read_all(sub: Subscriber, n: int, stall: float, stall_after: int = 1, idle: float = 5.0) -> list[int]:
    """Receive until ``n`` messages or ``idle`` s without one; stop reading ``stall`` s after ``stall_after``."""
    got: list[int] = []
    while len(got) < n:
        try:
            topic, payload = sub.recv(idle)
        except TimeoutError:
            break
        assert topic == b"t"
        got.append(int(payload[:6]))
        if len(got) == stall_after:
            time.sleep(stall)
    return got


def cut_off_and_read(d, sockets, n: int, **options) -> tuple[list[int], Subscriber]:
    """The cut-off scenario: a repairing Subscriber (hwm 1000) stops reading 2.5 s after its first message while
    n messages go out at 10,000 a second, long enough for the guard to cut it; what it got, and the closed
    Subscriber (lost, repaired)."""
    with Subscriber(d.stamped, [b"t"], stamped=True, repair=d.repair, hwm=1000, **options) as sub:
        sub.wait_ready()
        producer = produce(sockets, d.collector, n, 10_000)
        got = read_all(sub, n, stall=2.5)
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
        got += read_all(sub, n - 1, stall=0, idle=5)
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
    n, timeout = 50_000, 0.5  # it goes on for twice the stall: a later message shows the gap
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    with Subscriber(d.stamped, [b"t"], stamped=True, repair=nowhere, repair_timeout=timeout, hwm=1000) as sub:
        sub.wait_ready()
        producer = produce(sockets, d.collector, n, 10_000)
        got, longest = [], 0.0
        while len(got) < n:
            t0 = time.monotonic()
            try:
                got.append(int(sub.recv(3)[1][:6]))
            except TimeoutError:
                break
            longest = max(longest, time.monotonic() - t0)
            if len(got) == 1:
                time.sleep(2.5)
        producer.join(30)
        assert sub.repaired == 0 and sub.lost > 0
        assert sub.lost == n - len(got)
        # At most one RANGE and one HEADS (on the reconnect) wait in one recv.
        assert longest < 2 * timeout + 0.5, longest


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
            t0 = time.monotonic()
            for i, frames in enumerate(sent):
                producer.send_multipart(frames)
                if i % 200 == 0 and (ahead := i / 10_000 - (time.monotonic() - t0)) > 0:
                    time.sleep(ahead)

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
