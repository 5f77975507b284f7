"""Sequence stamps: a subscriber on the stamped output proves it missed nothing, or says exactly what it missed."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from conftest import connected, free_port, ready_producer, send_paced, settle, warm_up
from fanoutd_client import NotStamped, Subscriber, wire
from fanoutd_client._stamps import GapTracker, Stamp, parse_trailer

PAYLOAD = b"x" * 1024


def warm_stamped(prod: zmq.Socket, *subs: Subscriber, timeout: float = 10.0) -> None:
    """Probe with "orders 1warm" until every stamped subscriber has one (their subscriptions are live), then drain
    up to an end marker; a subscriber that never gets it fails the test (TimeoutError)."""
    pending, deadline = set(subs), time.monotonic() + timeout
    while pending:
        assert time.monotonic() < deadline, "stamped subscribers never got a probe"
        prod.send(b"orders 1warm")
        for sub in list(pending):
            try:
                sub.recv(timeout=0.05)
                pending.discard(sub)
            except TimeoutError:
                pass
    prod.send(b"orders 1end")  # after every probe on the one path to each subscriber: drained once it arrives
    for sub in subs:
        while sub.recv(timeout=max(0.0, deadline - time.monotonic()) + 1.0) != (b"orders", b"1end"):
            pass


def stamped_daemon(start_daemon, *flags: str, **kwargs):
    return start_daemon("--push", "", *flags, **kwargs)


# -- the tracker alone: the rules that make gaps exact -------------------------------------------------------

def stamp(seq: int, stream: int = 1, epoch: int = 7, key: int = 7) -> Stamp:
    return Stamp(epoch, stream, seq, key)


def test_a_jump_in_one_stream_is_exactly_the_missed_messages():
    t = GapTracker([b""])
    assert [t.observe(b"orders x", stamp(s)) for s in (1, 2, 5, 6, 10)] == [0, 0, 2, 0, 3]
    assert (t.lost, t.restarts, t.resets, t.untracked) == (5, 0, 0, 0)


def test_streams_are_counted_apart_and_the_first_message_seen_is_the_baseline():
    t = GapTracker([b""])
    t.observe(b"orders x", stamp(40, stream=1))
    t.observe(b"trades x", stamp(900, stream=2))
    t.observe(b"orders x", stamp(41, stream=1))
    t.observe(b"trades x", stamp(901, stream=2))
    assert t.lost == 0


def test_a_new_epoch_is_a_restart_and_a_new_stream_id_a_reset_never_a_gap():
    t = GapTracker([b""])
    t.observe(b"orders x", stamp(50, epoch=1))
    t.observe(b"orders x", stamp(3, epoch=2))          # the broker restarted
    assert (t.lost, t.restarts) == (0, 1)
    t.observe(b"orders x", stamp(1, epoch=2, stream=9))  # the broker forgot the stream and began a new one
    assert (t.lost, t.resets) == (0, 1)
    t.observe(b"orders x", stamp(3, epoch=2, stream=9))
    assert t.lost == 1


def test_a_subscription_longer_than_the_topic_is_untracked_not_a_gap():
    t = GapTracker([b"orders 1"])
    t.observe(b"orders 17", stamp(1))
    t.observe(b"orders 19", stamp(3))   # "orders 18" went to others: not this subscriber's gap
    assert (t.lost, t.untracked) == (0, 2)


def test_a_trailer_is_recognised_by_its_magic_and_version_only():
    good = wire.stamp_trailer(7, 1, 3, 7)
    assert parse_trailer(good) == Stamp(7, 1, 3, 7)
    other_version = wire.HEAD.pack(wire.MAGIC, wire.VERSION + 1, wire.STAMP) + good[wire.HEAD.size:]
    for bad in (b"12345678", good[:-1], other_version, wire.RELAY_HELLO, wire.READY_TRAILER):
        with pytest.raises(NotStamped):
            parse_trailer(bad)


# -- against the real daemon ----------------------------------------------------------------------------------

def test_stamps_are_exact_per_topic_with_prefix_filters_single_and_multipart(start_daemon, sockets):
    d = stamped_daemon(start_daemon)
    plain = connected(sockets, zmq.SUB, d.publish)
    with Subscriber(d.stamped, ["orders "], stamped=True) as orders, \
            Subscriber(d.stamped, [""], stamped=True) as everything, \
            Subscriber(d.stamped, ["orders 1"], stamped=True) as narrow:
        settle(d, "stamped", 3)
        prod = ready_producer(sockets, d.collector)
        warm_up(prod, plain)
        warm_stamped(prod, orders, everything, narrow)
        narrow_warm = narrow.untracked  # its probes were untracked too
        while plain.poll(100):
            plain.recv_multipart()
        base = orders.last_stamp.seq
        messages = []
        for i in range(30):
            messages += [[b"orders %d" % i], [b"orders", b"m%d" % i], [b"orders ", b"n%d" % i], [b"trades %d" % i]]
        for m in messages:
            prod.send_multipart(m)
        got_orders = [orders.recv_multipart(timeout=5) for _ in range(60)]
        got_all = [everything.recv_multipart(timeout=5) for _ in range(len(messages))]
        got_narrow = [narrow.recv_multipart(timeout=5) for _ in range(11)]  # orders 1, 10..19
        assert got_orders == [m for m in messages if m[0].startswith(b"orders ")]
        assert got_narrow == [[b"orders 1"]] + [[b"orders %d" % i] for i in range(10, 20)]
        assert got_all == messages  # frames exactly as sent: the trailer is stripped
        assert orders.lost == everything.lost == narrow.lost == 0
        assert narrow.untracked == 11 + narrow_warm and orders.untracked == 0
        assert orders.last_stamp is not None and orders.last_stamp.key_length == len(b"orders ")
        assert orders.last_stamp.seq == base + 60  # "orders x" and ["orders ", ...] share the stream "orders "
        plain_got = [plain.recv_multipart() for _ in range(len(messages))]
        assert plain_got == messages, "the plain publish output must stay unchanged"
        assert plain.poll(200) == 0
    assert d.value("fanoutd_stamped_messages_total") == d.value("fanoutd_published_messages_total")


def test_a_plain_endpoint_is_refused_by_a_stamped_subscriber(start_daemon, sockets):
    d = start_daemon("--push", "")
    with Subscriber(d.publish, stamped=True) as sub:
        settle(d, "publish", 1)
        prod = ready_producer(sockets, d.collector)
        prod.send_multipart([b"orders", b"12345678"])
        with pytest.raises(NotStamped, match="stamped output"):
            sub.recv(timeout=5)


def test_a_cut_off_subscriber_knows_exactly_what_it_missed(start_daemon, sockets):
    """The issue's fault on the stamped output: one subscriber stalls 2 s at --publish-hwm 1000, is cut off,
    reconnects by itself; its ``lost`` equals the messages it did not receive, counted from the producer's own
    numbering, while the fast subscriber gets everything and loses nothing."""
    d = stamped_daemon(start_daemon, "--publish-hwm", "1000")
    with Subscriber(d.stamped, stamped=True) as fast, Subscriber(d.stamped, stamped=True, hwm=1000) as slow:
        settle(d, "stamped", 2)
        prod = ready_producer(sockets, d.collector)
        first = {}
        received = {"fast": [], "slow": []}
        stop = threading.Event()

        def read(name: str, sub: Subscriber, pause: float) -> None:
            paused = False
            while not stop.is_set():
                try:
                    topic, payload = sub.recv(timeout=0.1)
                except TimeoutError:
                    continue
                if topic == b"t":
                    received[name].append(int(payload[:6]))
                    first.setdefault(name, int(payload[:6]))
                    if pause and not paused:
                        time.sleep(pause)
                        paused = True

        threads = [threading.Thread(target=read, args=("fast", fast, 0)),
                   threading.Thread(target=read, args=("slow", slow, 2.0))]
        for t in threads:
            t.start()
        try:
            n = send_paced(prod.send, (b"t %06d " % i + PAYLOAD for i in range(60_000)), 20_000)
            # Keep sending until the cut-off subscriber is back and has the latest message: its last gap counts then.
            deadline = time.monotonic() + 20
            i = n
            while not (received["slow"] and received["slow"][-1] >= n and received["fast"]
                       and received["fast"][-1] == i - 1):
                assert time.monotonic() < deadline, (len(received["slow"]), d.log()[-2000:])
                prod.send(b"t %06d " % i + PAYLOAD)
                i += 1
                time.sleep(0.01)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=5)
        assert received["fast"] == list(range(received["fast"][0], i)) and fast.lost == 0, (
            fast.lost, [line for line in d.log().splitlines() if "WARNING" in line or "slow" in line])
        got = received["slow"]
        expected_missed = (got[-1] - got[0] + 1) - len(got)
        assert expected_missed > 0, "the stalled subscriber should have missed messages while it was cut off"
        assert slow.lost == expected_missed, (slow.lost, expected_missed)
        assert slow.restarts == slow.resets == 0
    assert d.total("fanoutd_slow_consumers_total", socket="stamped") >= 1


def test_a_broker_restart_is_reported_as_a_restart_not_as_lost_messages(start_daemon, sockets):
    d = stamped_daemon(start_daemon, restartable=True)
    with Subscriber(d.stamped, stamped=True) as sub:
        settle(d, "stamped", 1)
        prod = ready_producer(sockets, d.collector)
        for i in range(5):
            prod.send(b"t %d" % i)
        for _ in range(5):
            sub.recv(timeout=5)
        assert d.stop() == 0
        prod.close(linger=0)
        d2 = stamped_daemon(start_daemon, ports=d.ports)
        settle(d2, "stamped", 1)
        prod = ready_producer(sockets, d2.collector)
        deadline = time.monotonic() + 10
        while sub.restarts == 0:
            assert time.monotonic() < deadline
            prod.send(b"t again")
            try:
                sub.recv(timeout=0.2)
            except TimeoutError:
                pass
        assert sub.restarts == 1 and sub.lost == 0


def test_a_forgotten_stream_is_a_reset_not_a_gap(start_daemon, sockets):
    d = stamped_daemon(start_daemon, "--stamp-streams", "2")
    with Subscriber(d.stamped, stamped=True) as sub:
        settle(d, "stamped", 1)
        prod = ready_producer(sockets, d.collector)
        warm_up(prod)
        for i in range(30):
            prod.send(b"%s %d" % (b"abc"[i % 3:i % 3 + 1], i))
        for _ in range(30):
            sub.recv(timeout=5)
        assert sub.lost == 0 and sub.resets > 0
    assert d.value("fanoutd_stamp_stream_evictions_total") > 0


def test_a_stamped_subscriber_knows_when_its_subscription_is_live(start_daemon, sockets):
    """The stamped output answers each subscription, so wait_ready() is real readiness: a message sent right
    after it returns is received, every time, with no sleep; other subscribers never see the answers."""
    d = stamped_daemon(start_daemon)
    prod = ready_producer(sockets, d.collector)
    with Subscriber(d.stamped, [""], stamped=True) as watcher:
        watcher.wait_ready(5)
        for i in range(20):
            with Subscriber(d.stamped, [b"orders %d " % i, b"other"], stamped=True) as sub:
                sub.wait_ready(5)
                prod.send(b"orders %d hello" % i)
                assert sub.recv(timeout=5) == (b"orders", b"%d hello" % i)
        got = [watcher.recv_multipart(timeout=5) for _ in range(20)]
        assert got == [[b"orders %d hello" % i] for i in range(20)]  # data only: the answers are control
        assert watcher.lost == 0


def test_only_a_stamped_subscriber_can_wait_for_readiness(start_daemon):
    d = start_daemon("--push", "")
    with Subscriber(d.publish) as plain:
        with pytest.raises(RuntimeError, match="only a stamped subscriber"):
            plain.wait_ready(1)


def test_with_no_stamped_subscriber_the_loop_skips_that_output_yet_a_newcomer_misses_nothing(start_daemon, sockets):
    """While nobody is connected to the stamped output the loop spares itself its sends (a third of its work
    at 100 B), counting them as libzmq would (stamped, reaching no one); a subscriber that arrives gets every
    message from its READY on, at once, before the hub has even counted its connection."""
    d = stamped_daemon(start_daemon)
    prod = ready_producer(sockets, d.collector)
    sent = 0
    for round_ in range(3):
        for i in range(200):  # nobody on the stamped output: sent to no one, and counted
            prod.send(b"orders idle %d" % i)
        sent += 200
        assert d.wait_value("fanoutd_stamped_messages_total", sent) == sent
        assert d.value("fanoutd_connected_peers", socket="stamped") == 0
        time.sleep(2.2)  # past the loop's memory of the last subscription: only the hub's count says "someone"
        with Subscriber(d.stamped, ["orders"], stamped=True) as sub:
            sub.wait_ready(5)
            for i in range(100):  # at once: the hub's count may still be 0
                prod.send(b"orders %d %d" % (round_, i))
            sent += 100
            got = [sub.recv(timeout=5) for _ in range(100)]
            assert got == [(b"orders", b"%d %d" % (round_, i)) for i in range(100)], round_
            assert sub.lost == 0 and sub.resets == 0, (sub.lost, sub.resets)
        assert d.wait_value("fanoutd_stamped_messages_total", sent) == sent
