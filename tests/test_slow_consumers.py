"""Slow consumers: a subscriber that stops reading is cut off, counted and named, and the others lose nothing."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time

import zmq

from conftest import connected, ready_producer, settle, wait_for, warm_up
from fanoutd.slowrules import RULES

PAYLOAD = b"x" * 1024


def reader(sock: zmq.Socket, got: list[int], stop: threading.Event, pause: tuple[float, float] | None = None) -> None:
    """Count what arrives; with ``pause`` (after, for) stop reading for a while, as a stalled consumer does."""
    start = time.monotonic()
    paused = False
    while not stop.is_set():
        if pause and not paused and time.monotonic() - start >= pause[0]:
            time.sleep(pause[1])
            paused = True
        if sock.poll(100):
            sock.recv()
            got[0] += 1


def run_paced(prod: zmq.Socket, n: int, rate: float, readers: list[tuple[zmq.Socket, tuple[float, float] | None]],
              wait: float) -> list[int]:
    """Send n messages at ``rate`` while a thread per reader counts; returns the counts once the first reader has
    all (or ``wait`` s passed). A reader's pause (after, for) makes it a stalled consumer for a while."""
    counts, stop = [[0] for _ in readers], threading.Event()
    threads = [threading.Thread(target=reader, args=(sock, got, stop, pause))
               for (sock, pause), got in zip(readers, counts)]
    for t in threads:
        t.start()
    try:
        send_paced(prod, n, rate)
        deadline = time.monotonic() + wait
        while counts[0][0] < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
    return [got[0] for got in counts]


def send_paced(prod: zmq.Socket, n: int, rate: float) -> None:
    t0 = time.monotonic()
    for i in range(n):
        prod.send(b"t %06d " % i + PAYLOAD)
        if i % 200 == 0:
            ahead = i / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)


def test_a_stalled_subscriber_is_cut_off_counted_and_named_while_a_fast_one_gets_everything(start_daemon, sockets):
    """The issue's fault: --publish-hwm 1000, 100,000 x 1 KiB at 20,000/s, one subscriber stops for 4 s."""
    d = start_daemon("--publish-hwm", "1000", "--push", "")
    fast = connected(sockets, zmq.SUB, d.publish)
    slow = connected(sockets, zmq.SUB, d.publish, rcvhwm=1000, rcvbuf=64 * 1024)
    prod = ready_producer(sockets, d.collector)
    probes = warm_up(prod, fast, slow)
    n = 100_000
    got_fast, got_slow = run_paced(prod, n, 20_000, [(fast, None), (slow, (0.2, 4.0))], wait=20)
    assert got_fast == n, (f"the fast subscriber got {got_fast} of {n}, the stalled one {got_slow}",
                              {k: v for k, v in d.metrics().items() if "publish" in str(k) or "slow" in k[0]},
                              [line for line in d.log().splitlines() if "WARNING" in line])
    total = probes + n
    assert d.wait_value("fanoutd_published_messages_total", total) == total
    cut = d.total("fanoutd_slow_consumers_total", socket="publish")
    lossy = d.value("fanoutd_dropped_messages_total", output="publish", reason="hwm")
    assert got_slow == n or cut >= 1, (got_slow, cut, lossy)
    assert cut >= 1, "the stalled subscriber should have been disconnected"
    assert lossy == 0, "at the defaults the guard cuts the stalled subscriber before any message goes lossy"
    # It read nothing while the guard looked at its full queue: the rule is "stopped", in the metric and the log.
    stopped = d.value("fanoutd_slow_consumers_total", socket="publish", rule="stopped")
    assert stopped >= 1, d.metrics()
    assert re.search(r"slow consumer on publish: disconnected 127\.0\.0\.1:\d+ \(rule=stopped\) because ", d.log()), (
        d.log())
    top = subprocess.run([sys.executable, "-m", "fanoutd", "top", "--url", d.http + "/metrics", "--interval",
                          "0.2", "--once"], capture_output=True, text=True, timeout=30)
    assert re.search(r"slow consumers cut off \(newest first\):\n  \d\d:\d\d:\d\d publish 127\.0\.0\.1:\d+ "
                     r"\(rule=stopped\): slow consumer: ", top.stdout), top.stdout
    _, body = d.get("/peers")
    closed = json.loads(body)["closed"]
    named = [c for c in closed if c["socket"] == "publish" and c["rule"] is not None]
    assert len(named) == cut, ("each cut-off is counted once and named once", cut, closed)
    assert all(c["reason"].startswith("slow consumer: ") for c in named), named
    by_rule = {rule: sum(c["rule"] == rule for c in named) for rule in RULES}
    assert by_rule == {rule: d.value("fanoutd_slow_consumers_total", socket="publish", rule=rule) for rule in RULES}, (
        "/peers names each cut by the rule the metric counts it under", by_rule, closed)
    assert d.get("/readyz")[0] == 200


def test_two_stalled_subscribers_are_both_cut_while_output_holds_and_nothing_goes_lossy(start_daemon, sockets):
    """Two subscribers stop reading a moment apart: the guard cuts one, and output holds while that cut is
    under way and the next look finds the other, so no message is sent without either of them."""
    d = start_daemon("--publish-hwm", "1000", "--push", "")
    fast = connected(sockets, zmq.SUB, d.publish)
    slow = [connected(sockets, zmq.SUB, d.publish, rcvhwm=1000, rcvbuf=64 * 1024) for _ in range(2)]
    prod = ready_producer(sockets, d.collector)
    probes = warm_up(prod, fast, *slow)
    n = 60_000
    got_fast, *_ = run_paced(prod, n, 20_000, [(fast, None), (slow[0], (0.2, 4.0)), (slow[1], (0.4, 4.0))],
                             wait=20)
    assert got_fast == n
    assert d.wait_value("fanoutd_published_messages_total", probes + n) == probes + n
    cut = d.total("fanoutd_slow_consumers_total", socket="publish")
    lossy = d.value("fanoutd_dropped_messages_total", output="publish", reason="hwm")
    # Each is cut at least once (a SUB reconnects by itself and, still paused, may fill and be cut again).
    assert cut >= 2 and lossy == 0, (cut, lossy, [line for line in d.log().splitlines() if "WARNING" in line])


def test_with_no_stall_allowed_a_full_subscriber_is_counted_and_still_cut(start_daemon, sockets):
    """slow_consumer_stall = 0: the message that met the full queue goes out at once without that subscriber,
    counted, and the subscriber is disconnected (left connected, libzmq would skip it silently)."""
    d = start_daemon("--publish-hwm", "1000", "--push", "", "--slow-consumer-stall", "0", "--slow-consumer-policy", "cut")
    stalled = connected(sockets, zmq.SUB, d.publish, rcvhwm=100, rcvbuf=16 * 1024)
    live = connected(sockets, zmq.SUB, d.publish, rcvhwm=0)
    prod = ready_producer(sockets, d.collector)
    probes = warm_up(prod, stalled, live)
    # While the window is open libzmq skips every full queue, so the live subscriber must stay within the
    # high-water mark (1,000) of the producer: 2,000 msg/s leaves it half a second of headroom on a loaded
    # machine (at 5,000 msg/s a CI run once lost 488 for it); the stalled one fills in about 1.5 s.
    n = 10_000
    [got] = run_paced(prod, n, 2_000, [(live, None)], wait=10)
    assert got == n
    assert d.wait_value("fanoutd_published_messages_total", probes + n) == probes + n
    assert d.value("fanoutd_dropped_messages_total", output="publish", reason="hwm") >= 1
    assert d.total("fanoutd_slow_consumers_total", socket="publish") >= 1
    assert d.value("fanoutd_output_stalls_total", socket="publish") == 0  # no stall was allowed


def test_a_subscriber_that_reads_nothing_is_cut_after_the_timeout(start_daemon, sockets):
    d = start_daemon("--push", "", "--slow-consumer-timeout", "2")
    stalled = connected(sockets, zmq.SUB, d.publish, rcvhwm=100, rcvbuf=16 * 1024)
    prod = ready_producer(sockets, d.collector)
    warm_up(prod, stalled)
    settle(d, "publish", 1)
    for _ in range(2000):  # 2 MiB: fills the kernel buffers, far below the high-water mark
        prod.send(b"t " + PAYLOAD)
    d.wait_at_least("fanoutd_slow_consumers_total", 1, timeout=15, socket="publish", rule="timeout")
    assert re.search(r"disconnected 127\.0\.0\.1:\d+ \(rule=timeout\) because it read nothing for [2-9]\.\ds",
                     d.log()), d.log()
    closed = wait_for("the cut subscriber among the closed in /peers",
                      lambda: [c for c in json.loads(d.get("/peers")[1])["closed"] if c["socket"] == "publish"], bool)
    assert [c["rule"] for c in closed] == ["timeout"], closed
    assert d.value("fanoutd_dropped_messages_total", output="publish", reason="hwm") == 0


def test_while_nothing_flows_the_guard_looks_only_at_subscribers_with_data_waiting(start_daemon, sockets):
    """Idle subscribers cost the guard nothing (10,000 of them: 1 % of a core, bench/README "Idle CPU").

    Once the loop has read nothing for two passes, a pass looks only at connections that had data
    waiting; traffic brings back passes over every connection. A subscriber that stops reading in the
    quiet is still cut: test_a_subscriber_that_reads_nothing_is_cut_after_the_timeout.
    """
    d = start_daemon("--log-level", "debug", "--push", "")
    subs = [connected(sockets, zmq.SUB, d.publish) for _ in range(5)]
    settle(d, "publish", 5)
    prod = ready_producer(sockets, d.collector)
    warm_up(prod, *subs)

    def passes() -> list[int]:
        return [int(n) for n in re.findall(r"guard pass: looked at (\d+) connections", d.log())]

    after_traffic = len(passes())
    wait_for("a guard pass that looks at nobody", passes, lambda seen: 0 in seen[after_traffic:], interval=0.2)
    assert passes()[after_traffic] == 5, "the first pass after traffic looks at everyone"
    quiet = len(passes())
    prod.send(b"t wake")
    assert all(s.poll(5000) and s.recv() == b"t wake" for s in subs)
    wait_for("a guard pass over all 5 after traffic", passes, lambda seen: 5 in seen[quiet:], interval=0.2)


def test_peers_view_lists_each_connection_and_can_be_turned_off(start_daemon, sockets):
    d = start_daemon()
    sub = connected(sockets, zmq.SUB, d.publish)
    settle(d, "publish", 1)
    status, body = d.get("/peers")
    assert status == 200
    view = json.loads(body)
    subscribers = [c for c in view["connected"] if c["socket"] == "publish"]
    assert len(subscribers) == 1
    entry = subscribers[0]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", entry["peer"]) and entry["state"] == "connected"
    assert entry["queued_bytes"] == 0 and entry["connected_since"] <= time.time()
    sub.close(linger=0)
    closed = wait_for("the closed subscriber in /peers", lambda: json.loads(d.get("/peers")[1])["closed"], bool)
    assert closed[0]["peer"] == entry["peer"]
    assert closed[0]["rule"] is None, "closed by the peer, not cut by the guard: no rule"
    off = start_daemon("--no-peers-view")
    assert off.get("/peers")[0] == 404


def test_messages_libzmq_skips_for_a_full_subscriber_are_counted_until_it_is_cut(start_daemon, sockets):
    """slow_consumer_stall = 0: after the lossy send libzmq leaves the full subscriber out of its distribution
    without refusing anything; every message sent meanwhile is counted as missed by it, none that it got, and
    once it is cut off and gone the counting stops."""
    d = start_daemon("--publish-hwm", "100", "--push", "", "--slow-consumer-stall", "0", "--slow-consumer-policy", "cut")
    stalled = connected(sockets, zmq.SUB, d.publish, rcvhwm=100, rcvbuf=16 * 1024, reconnect_ivl=-1)
    prod = ready_producer(sockets, d.collector)
    probes = warm_up(prod, stalled)
    settle(d, "publish", 1)
    n = 5_000
    for i in range(n):
        prod.send(b"t %06d " % i + PAYLOAD)
        if i % 500 == 0:
            time.sleep(0.01)  # paced, so the guard sees it fall behind rather than one burst
    wait_for("a cut", lambda: d.total("fanoutd_slow_consumers_total", socket="publish"), lambda cut: cut >= 1,
             alive=d.proc)
    assert d.wait_value("fanoutd_connected_peers", 0, socket="publish") == 0
    got = 0
    while stalled.poll(200):
        stalled.recv()
        got += 1
    dropped = d.value("fanoutd_dropped_messages_total", output="publish", reason="hwm")
    assert 1 < dropped <= n - got, (dropped, got)
    for i in range(100):  # nobody is full any more: nothing more is counted
        prod.send(b"t after " + PAYLOAD)
    d.wait_value("fanoutd_received_messages_total", probes + n + 100)  # all read, and sent on
    assert d.value("fanoutd_dropped_messages_total", output="publish", reason="hwm") == dropped


def test_the_guards_kernel_scan_answers_only_for_connections_with_bytes_waiting():
    """``_forward.kernel_waiting``: (index, queued, acked) where the peer has left bytes unread, nothing else.

    Idle connections, closed fds and a peer that has read everything do not appear: the guard's pass
    builds nothing for them. A unix socket has no TCP_INFO: acked is -1 and progress shows in the queue.
    """
    import socket

    from fanoutd.dataplane import _forward

    with socket.create_server(("127.0.0.1", 0)) as srv:
        idle_peer = socket.create_connection(srv.getsockname(), timeout=5)
        idle, _ = srv.accept()
        slow_peer = socket.create_connection(srv.getsockname(), timeout=5)
        busy, _ = srv.accept()
        unix_peer, unix = socket.socketpair()
        gone = socket.socket()
        gone_fd = gone.fileno()
        gone.close()
        with idle_peer, idle, slow_peer, busy, unix_peer, unix:
            for sock in (busy, unix):
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    while True:  # until the kernel refuses more: the peer reads nothing
                        sock.send(b"x" * 65536)
            waiting = _forward.kernel_waiting([idle.fileno(), busy.fileno(), gone_fd, unix.fileno()])
            assert [index for index, _, _ in waiting] == [1, 3]
            (_, queued, acked), (_, unix_queued, unix_acked) = waiting
            assert queued > 0 and acked > 0 and unix_queued > 0 and unix_acked == -1
            slow_peer.setblocking(False)
            deadline = time.monotonic() + 10
            while _forward.kernel_waiting([busy.fileno()]):  # the peer reads it all: nothing waits any more
                assert time.monotonic() < deadline
                try:
                    slow_peer.recv(1 << 20)
                except BlockingIOError:
                    time.sleep(0.01)
