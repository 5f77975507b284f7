"""The daemon end to end: real subprocess, real sockets, free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
import zmq

from conftest import connected, ready_producer, settle, wait_for, wait_logged, warm_up


def test_health_and_readiness(start_daemon):
    d = start_daemon()
    assert d.get("/healthz") == (200, "ok\n")
    assert d.get("/readyz") == (200, "ready\n")
    assert d.get("/nope")[0] == 404


def test_flow_publish_unchanged_push_stripped(start_daemon, sockets):
    d = start_daemon()
    sub = connected(sockets, zmq.SUB, d.publish)
    pull = connected(sockets, zmq.PULL, d.push)
    prod = ready_producer(sockets, d.collector)
    warm_up(prod, sub, pull)
    prod.send(b"orders hello world")
    prod.send_multipart([b"orders", b"part1", b"part2"])
    prod.send(b"nospace")
    prod.send(b"trailing ")
    assert sub.recv_multipart() == [b"orders hello world"]
    assert sub.recv_multipart() == [b"orders", b"part1", b"part2"]
    assert sub.recv_multipart() == [b"nospace"]
    assert sub.recv_multipart() == [b"trailing "]
    assert pull.recv_multipart() == [b"hello world"]
    assert pull.recv_multipart() == [b"part1", b"part2"]
    assert pull.recv_multipart() == [b"nospace"]
    assert pull.recv_multipart() == [b""]


def test_pullers_get_exact_payloads_of_every_size(start_daemon, sockets):
    """The topic is stripped from payloads of a byte to half a megabyte alike (the copy the PUSH output makes,
    and the frame boundaries libzmq's batching crosses); subscribers still get the whole message."""
    d = start_daemon()
    pull = connected(sockets, zmq.PULL, d.push)
    sub = connected(sockets, zmq.SUB, d.publish)
    prod = ready_producer(sockets, d.collector)
    warm_up(prod, pull, sub)
    # A probe that met the puller mid-handshake is dropped and counted; count from after the warm-up.
    before = d.value("fanoutd_pushed_messages_total")  # fresh: warm_up waited past the loop's 100 ms tick
    sizes = (1, 1022, 1023, 1024, 1025, 16384, 500_000)
    for size in sizes:
        payload = bytes(i % 251 for i in range(size))
        prod.send(b"t " + payload)
        assert pull.recv() == payload, size
        assert sub.recv() == b"t " + payload, size
    assert d.wait_value("fanoutd_pushed_messages_total", before + len(sizes)) == before + len(sizes)


def test_push_keeps_whole_messages_when_asked(start_daemon, sockets):
    d = start_daemon("--no-push-strip-topic")
    pull = connected(sockets, zmq.PULL, d.push)
    prod = ready_producer(sockets, d.collector)
    warm_up(prod, pull)
    prod.send(b"orders hello")
    prod.send_multipart([b"orders", b"x"])
    assert pull.recv_multipart() == [b"orders hello"]
    assert pull.recv_multipart() == [b"orders", b"x"]


def test_subscribers_filter_by_topic(start_daemon, sockets):
    d = start_daemon()
    everything = connected(sockets, zmq.SUB, d.publish)
    orders = sockets(zmq.SUB)
    orders.setsockopt(zmq.SUBSCRIBE, b"orders")
    orders.connect(d.publish)
    prod = ready_producer(sockets, d.collector)
    warm_up(prod, everything)
    deadline = time.monotonic() + 10
    while not orders.poll(50):  # the topic subscriber's subscription is live once it gets one
        assert time.monotonic() < deadline
        prod.send(b"orders warm")
    while orders.poll(200):
        orders.recv()
    while everything.poll(200):
        everything.recv()
    prod.send(b"prices 1")
    prod.send(b"orders 2")
    assert everything.recv() == b"prices 1"
    assert everything.recv() == b"orders 2"
    assert orders.recv() == b"orders 2"
    assert not orders.poll(300)


def test_no_puller_never_blocks_publish_and_counts_drops(start_daemon, sockets):
    d = start_daemon()
    sub = connected(sockets, zmq.SUB, d.publish, rcvhwm=0)
    prod = ready_producer(sockets, d.collector)
    probes = warm_up(prod, sub)
    n = 20_000
    for i in range(n):
        prod.send(b"t %d" % i)
    got = [sub.recv() for _ in range(n)]
    assert got[0] == b"t 0" and got[-1] == b"t %d" % (n - 1)
    total = n + probes
    assert d.wait_value("fanoutd_received_messages_total", total) == total
    assert d.wait_value("fanoutd_published_messages_total", total) == total
    assert d.value("fanoutd_pushed_messages_total") == 0
    assert d.value("fanoutd_dropped_messages_total", output="push", reason="no_puller") == total
    assert d.value("fanoutd_dropped_messages_total", output="push", reason="hwm") == 0


def test_a_puller_that_pauses_keeps_its_queue_and_gets_everything(start_daemon, sockets):
    """Pullers are not cut (docs/concepts.md): a pause with its kernel window shut, under heartbeat_timeout, loses nothing.

    5 MiB for a puller holding 10 messages and a 16 KiB receive buffer: most of it waits in the broker
    (libzmq's queue and the kernel's) across three heartbeats, and arrives, in order, once it reads again.
    """
    d = start_daemon("--heartbeat-interval", "1", "--heartbeat-timeout", "8")
    pull = connected(sockets, zmq.PULL, d.push, rcvhwm=10, rcvbuf=16 * 1024)
    prod = ready_producer(sockets, d.collector)
    warm_up(prod, pull)
    settle(d, "push", 1)
    n = 5_000
    for i in range(n):
        prod.send(b"t %d " % i + b"x" * 1024)
    time.sleep(3.5)  # the pause: nothing read for three heartbeats
    got = [pull.recv().split(b" ")[0] for _ in range(n)]
    assert got == [b"%d" % i for i in range(n)]
    assert d.value("fanoutd_disconnects_total", socket="push") == 0
    assert d.value("fanoutd_dropped_messages_total", output="push", reason="hwm") == 0


def test_full_pullers_are_counted_as_hwm_not_no_puller(start_daemon, sockets):
    d = start_daemon("--push-hwm", "10")
    pull = connected(sockets, zmq.PULL, d.push, rcvhwm=10)
    prod = ready_producer(sockets, d.collector)
    warm_up(prod, pull)
    settle(d, "push", 1)
    base = d.value("fanoutd_received_messages_total")
    # A warm-up probe may meet the puller before the hub has seen it connect: no_puller from here on must not move.
    no_puller_before = d.value("fanoutd_dropped_messages_total", output="push", reason="no_puller")
    payload = b"t " + b"x" * 4096
    n = 20_000  # far more than HWMs plus kernel buffers hold: the puller never reads
    for _ in range(n):
        prod.send(payload)
    total = base + n
    assert d.wait_value("fanoutd_received_messages_total", total) == total
    pushed = d.value("fanoutd_pushed_messages_total")
    hwm = d.value("fanoutd_dropped_messages_total", output="push", reason="hwm")
    no_puller = d.value("fanoutd_dropped_messages_total", output="push", reason="no_puller")
    assert hwm > 0
    assert no_puller == no_puller_before
    assert pushed + hwm + no_puller == total


def test_oversize_is_rejected_and_the_next_message_flows(start_daemon, sockets):
    d = start_daemon("--max-message-size", "1KiB")
    sub = connected(sockets, zmq.SUB, d.publish)
    prod = ready_producer(sockets, d.collector)
    warm_up(prod, sub)
    prod.send(b"big " + b"x" * 2000)
    prod.send_multipart([b"big", b"x" * 600, b"y" * 600])  # each frame fits, the sum does not
    prod.send(b"small ok")
    assert sub.recv() == b"small ok"
    assert d.wait_value("fanoutd_rejected_messages_total", 2, reason="oversize") == 2


def test_too_many_frames_is_rejected_and_the_next_message_flows(start_daemon, sockets):
    d = start_daemon("--max-frames", "4")
    sub = connected(sockets, zmq.SUB, d.publish)
    prod = ready_producer(sockets, d.collector)
    warm_up(prod, sub)
    prod.send_multipart([b"t"] + [b"f"] * 9)
    prod.send_multipart([b"t", b"1", b"2", b"3"])
    assert sub.recv_multipart() == [b"t", b"1", b"2", b"3"]
    assert d.wait_value("fanoutd_rejected_messages_total", 1, reason="too_many_frames") == 1


def test_collector_topics_limit_what_is_collected(start_daemon, sockets):
    d = start_daemon("--collector-topics", "keep")
    sub = connected(sockets, zmq.SUB, d.publish)
    prod = ready_producer(sockets, d.collector)
    deadline = time.monotonic() + 10
    while not sub.poll(50):
        assert time.monotonic() < deadline
        prod.send(b"keep warm")
    while sub.poll(200):
        sub.recv()
    prod.send(b"other 1")
    prod.send(b"keep 2")
    assert sub.recv() == b"keep 2"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_flushes_and_exits_zero(start_daemon, sockets, signum):
    d = start_daemon()
    sub = connected(sockets, zmq.SUB, d.publish, rcvhwm=0)
    prod = ready_producer(sockets, d.collector)
    probes = warm_up(prod, sub)
    for i in range(1000):
        prod.send(b"t %d" % i)
    d.wait_value("fanoutd_received_messages_total", probes + 1000)  # all in the daemon before it is stopped
    start = time.monotonic()
    assert d.stop(signum) == 0
    assert time.monotonic() - start < 5 + 3  # drain_timeout plus slack
    got = []
    while sub.poll(500):
        got.append(sub.recv())
    assert len(got) == 1000
    assert "stopped: received" in d.log()


def test_second_signal_aborts(start_daemon, sockets):
    """A drain here would last the whole drain_timeout (30 s): a puller that never reads holds the push
    output's queue, which a drain flushes until the deadline, and a producer that cannot pause keeps the
    collector busy for the loop's read grace (1 s), during which the second signal lands. The abort drops
    both: exit status 1 within seconds, and the abort's own log line."""
    d = start_daemon("--drain-timeout", "30", "--push-hwm", "1000")
    connected(sockets, zmq.PULL, d.push, rcvhwm=1)  # never read
    settle(d, "push", 1)
    prod = ready_producer(sockets, d.collector)
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            prod.send(b"t " + b"x" * 1024)
            time.sleep(0.0005)  # a steady stream, not a burst: the loop keeps reading it while it drains

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        # The push output is full once it drops: a drain would wait on those messages.
        wait_for("the unread puller's queue to be full",
                 lambda: d.value("fanoutd_dropped_messages_total", output="push", reason="hwm"),
                 lambda dropped: dropped > 0, timeout=30)
        d.send_signal(signal.SIGTERM)
        wait_logged(d, "stopping: draining for up to 30.0s")  # the first signal is handled: a second one aborts
        t0 = time.monotonic()
        d.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=20) == 1
        assert time.monotonic() - t0 < 10, "an abort must not wait for the drain"
    finally:
        stop.set()
        producer.join(timeout=5)
    log = d.log()
    assert log.count("received SIGTERM") == 2
    assert "aborting: messages still queued are lost" in log
    assert "the collector did not empty within drain_timeout" not in log


@pytest.mark.parametrize("role", ["collector", "push"])
def test_port_in_use_is_one_clear_line(start_daemon, role):
    """The first socket or a later one: every socket already opened is closed again, nothing hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        d = start_daemon(f"--{role}", f"tcp://127.0.0.1:{port}", ready=False)
        assert d.proc.wait(timeout=15) == 2
    out = d.log().strip().splitlines()
    assert out[-1] == f"fanoutd: cannot start: cannot bind {role} to tcp://127.0.0.1:{port}: Address already in use"
    assert "Traceback" not in d.log()


def test_metrics_port_in_use_is_one_clear_line(start_daemon):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        d = start_daemon("--metrics", f"127.0.0.1:{port}", ready=False)
        assert d.proc.wait(timeout=15) == 2
    assert d.log().strip().splitlines()[-1] == (
        f"fanoutd: cannot start: cannot serve metrics on 127.0.0.1:{port}: Address already in use")
    assert "Traceback" not in d.log()


def test_sighup_reloads_live_settings_from_the_file(start_daemon, sockets, tmp_path):
    conf = tmp_path / "fanoutd.toml"
    conf.write_text("max_message_size = 100000\n")
    d = start_daemon("--config", str(conf))
    assert d.value("fanoutd_max_message_size_bytes") == 100000
    sub = connected(sockets, zmq.SUB, d.publish)
    prod = ready_producer(sockets, d.collector)
    warm_up(prod, sub)
    conf.write_text('max_message_size = 1000\npublish_hwm = 5\nlog_level = "info"\n')
    d.send_signal(signal.SIGHUP)
    assert d.wait_value("fanoutd_max_message_size_bytes", 1000) == 1000
    prod.send(b"t " + b"x" * 2000)
    prod.send(b"t ok")
    assert sub.recv() == b"t ok"
    assert d.wait_value("fanoutd_rejected_messages_total", 1, reason="oversize") == 1
    log = d.log()
    assert "publish_hwm changed but need a restart" in log
    conf.write_text("max_message_size = -1\n")
    d.send_signal(signal.SIGHUP)
    wait_logged(d, "reload failed, keeping the running configuration", 5)
    assert d.get("/readyz")[0] == 200


def test_pull_ingress_forwards_and_pushes_back_instead_of_dropping(start_daemon, sockets):
    d = start_daemon("--ingress", "tcp://127.0.0.1:*", "--collector-hwm", "10")
    ingress = d.bound()["ingress"][0]
    sub = connected(sockets, zmq.SUB, d.publish, rcvhwm=0)
    pull = connected(sockets, zmq.PULL, d.push, rcvhwm=0)
    producer = sockets(zmq.PUSH, sndhwm=10, sndtimeo=300)
    producer.connect(ingress)
    deadline = time.monotonic() + 10
    while not sub.poll(50):  # the subscriber's subscription needs a moment
        assert time.monotonic() < deadline
        producer.send(b"warm up")
    while sub.poll(200):
        sub.recv()
    while pull.poll(200):
        pull.recv()
    producer.send_multipart([b"orders", b"1"])
    producer.send(b"orders 2")
    assert sub.recv_multipart() == [b"orders", b"1"] and sub.recv() == b"orders 2"
    assert pull.recv_multipart() == [b"1"] and pull.recv() == b"2"
    # Freeze the daemon: a PUB producer would keep "sending" into the void; a PUSH one is held back.
    d.send_signal(signal.SIGSTOP)
    try:
        sent = 0
        with pytest.raises(zmq.Again):
            for sent in range(1_000_000):
                producer.send(b"t %d" % sent)
        assert sent < 1_000_000
    finally:
        d.send_signal(signal.SIGCONT)
    got = [sub.recv() for _ in range(sent)]
    assert got == [b"t %d" % i for i in range(sent)], "everything accepted was delivered, in order"
    assert d.value("fanoutd_connected_peers", socket="ingress") == 1


def test_every_bound_socket_listens_with_a_deep_backlog(start_daemon):
    """libzmq's default listen backlog (100) drops SYNs when a crowd reconnects at once; the kernel shows ours."""
    import subprocess as sp
    from pathlib import Path
    d = start_daemon()
    cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
    for endpoint in (d.collector, d.publish, d.push, d.stamped):
        port = endpoint.rsplit(":", 1)[1]
        out = sp.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
        send_q = [int(line.split()[2]) for line in out.splitlines() if line.strip()]
        assert send_q == [min(4096, cap)], (endpoint, out)


def test_the_hub_sleeps_between_connections(start_daemon, sockets):
    """The hub reads ZAP requests and monitor events off libzmq's FDs (fanoutd/green.py): no busy-spin.

    A missed or never-reset FD signal shows as a hub spinning at a whole core; an idle daemon that has
    just admitted and lost peers uses next to nothing (a threshold far from both, for a noisy machine).
    """
    d = start_daemon()
    for _ in range(3):
        subs = [connected(sockets, zmq.SUB, d.publish) for _ in range(20)]
        settle(d, "publish", 20)
        for sub in subs:
            sub.close(linger=0)
        settle(d, "publish", 0)
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds() -> float:
        with open(f"/proc/{d.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    before, t0 = cpu_seconds(), time.monotonic()
    time.sleep(3)  # the measurement window itself: CPU used while idle
    share = (cpu_seconds() - before) / (time.monotonic() - t0)
    assert share < 0.25, f"the idle daemon used {share:.0%} of a core"
