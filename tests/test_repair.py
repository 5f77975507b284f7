"""History and repair end to end: the daemon as a subprocess, real sockets, the client codec of fanoutd_client.repair.

A subscriber that went away asks the repair endpoint for its gap and gets it
back byte for byte (held against a subscriber that never left); the history
stays within history_bytes and names exactly what it evicted; the endpoint
shares the stamped output's access control; hostile requests are counted and
never answered while forwarding goes on.
"""

from __future__ import annotations

import threading
import time

import pytest
import zmq
from fanoutd_client import wire
from fanoutd_client.repair import Gone, Repairer, heads_request, parse_answer, range_request
from fanoutd_client._stamps import parse_trailer

from conftest import ready_producer, send_paced, wait_for

pytestmark = pytest.mark.timeout(90)


def stamped_sub(make, endpoint: str, prefix: bytes) -> zmq.Socket:
    """A SUB on the stamped output whose subscription is live (its READY answer read)."""
    sock = make(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, prefix)
    sock.connect(endpoint)
    assert sock.recv_multipart() == [prefix, wire.READY_TRAILER]
    return sock


def recv(sock: zmq.Socket) -> list[bytes]:
    """The next stamped message, skipping READY answers to others' subscriptions under the same prefix."""
    while (frames := sock.recv_multipart())[-1] == wire.READY_TRAILER:
        pass
    return frames


@pytest.fixture
def repairers(ctx):
    made: list[Repairer] = []

    def make(endpoint: str) -> Repairer:
        made.append(Repairer(endpoint, ctx))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_a_subscriber_that_went_away_gets_its_gap_back_byte_for_byte(start_daemon, sockets, repairers):
    d = start_daemon()
    watcher, gone = stamped_sub(sockets, d.stamped, b"t"), stamped_sub(sockets, d.stamped, b"t")
    producer = ready_producer(sockets, d.collector)

    def send(first: int, count: int) -> list[list[bytes]]:
        for i in range(first, first + count):
            producer.send_multipart([b"t", b"%d" % i, b"x" * (i % 300)])
        return [recv(watcher) for _ in range(count)]

    seen = send(0, 100)
    assert [recv(gone) for _ in range(100)] == seen
    last = parse_trailer(seen[-1][-1])
    gone.close(linger=0)
    seen += send(100, 100)  # missed by the one that went away
    back = stamped_sub(sockets, d.stamped, b"t")
    seen += send(200, 100)
    after = [recv(back) for _ in range(100)]
    assert after == seen[200:]
    first = parse_trailer(after[0][-1])
    assert (first.epoch, first.stream) == (last.epoch, last.stream) and first.seq == last.seq + 101
    messages, end = repairers(d.repair).range(last.epoch, last.stream, last.seq + 1, first.seq - 1)
    assert [m.frames for m in messages] == seen[100:200]  # exactly what the stamped output sent meanwhile
    assert end.gone == []
    assert d.wait_value("fanoutd_repaired_messages_total", 100) == 100
    assert d.value("fanoutd_repair_requests_total", result="range") == 1


def test_history_bytes_bounds_the_history_and_the_end_names_exactly_what_it_evicted(start_daemon, sockets,
                                                                                  repairers):
    bound = 1 << 20
    d = start_daemon("--history-bytes", str(bound))
    producer = ready_producer(sockets, d.collector)
    for i in range(3000):  # nobody on the stamped output: history records all the same
        producer.send(b"h %06d " % i + b"p" * 1024)
    d.wait_value("fanoutd_stamped_messages_total", 3000)
    held = d.value("fanoutd_history_bytes")
    assert bound * 0.9 < held <= bound
    evicted = d.value("fanoutd_history_evicted_messages_total")
    assert 2000 < evicted < 3000
    repairer = repairers(d.repair)
    heads = repairer.heads(b"h")
    (stream, head, key), = heads.streams
    assert (head, key) == (3000, b"h ")
    messages, end = repairer.range(heads.epoch, stream, 1, 3000)
    assert end.gone == [Gone(1, int(evicted), wire.GONE_EVICTED)]
    assert [m.frames[0][:9] for m in messages] == [b"h %06d " % (seq - 1) for seq in range(int(evicted) + 1, 3001)]


def test_the_repair_endpoint_has_the_stamped_outputs_access_control(start_daemon, repairers):
    d = start_daemon("--publish-deny", "127.0.0.0/8")
    with pytest.raises(TimeoutError):
        repairers(d.repair).heads(b"", timeout=1)
    wait_for("the refusal counted", lambda: d.total("fanoutd_auth_denied_total", socket="repair"), bool)


def test_hostile_requests_are_counted_never_answered_and_forwarding_goes_on(start_daemon, sockets, repairers):
    d = start_daemon()
    sub = stamped_sub(sockets, d.stamped, b"live")
    producer = ready_producer(sockets, d.collector)
    hostile = sockets(zmq.DEALER, sndhwm=0)
    hostile.connect(d.repair)
    hostile.send(b"not a request")
    hostile.send_multipart([heads_request(1, b""), b"extra"])
    hostile.send(heads_request(2, b"") + b"y" * 300)
    d.wait_value("fanoutd_repair_requests_total", 2, result="malformed")
    d.wait_value("fanoutd_repair_requests_total", 1, result="oversize")
    assert not hostile.poll(300)
    for tag in range(3000):
        hostile.send(range_request(tag, 1, 1, 1, 10 ** 9))
    for i in range(500):  # forwarding goes on while the flood is read
        producer.send(b"live %d" % i)
        assert recv(sub)[0] == b"live %d" % i
    answered = wait_for("the flood read", lambda: (d.value("fanoutd_repair_requests_total", result="flood"),
                                                   d.value("fanoutd_repair_requests_total", result="range")),
                        lambda n: sum(n) == 3000, timeout=30)[1]
    assert answered < 600 and answered + d.value("fanoutd_repair_requests_total", result="flood") == 3000
    assert d.get("/healthz")[0] == 200 and d.proc.poll() is None
    assert repairers(d.repair).heads(b"live").streams  # another peer is still served


def test_a_reply_the_peer_cannot_take_is_counted_unsent(start_daemon, sockets):
    """The daemon's ROUTER has ZMQ_ROUTER_MANDATORY: a full peer's reply is abandoned and counted, not dropped unseen."""
    d = start_daemon("--repair-hwm", "50")
    producer = ready_producer(sockets, d.collector)
    for i in range(1000):
        producer.send(b"big %d " % i + b"z" * 4096)
    d.wait_value("fanoutd_stamped_messages_total", 1000)
    reader = sockets(zmq.DEALER, rcvhwm=1, rcvbuf=4096)
    reader.connect(d.repair)
    reader.send(heads_request(1, b"big"))
    heads = parse_answer(reader.recv_multipart())
    (stream, _, _), = heads.streams
    reader.send(range_request(2, heads.epoch, stream, 1, 1000))  # and never read
    d.wait_value("fanoutd_repair_requests_total", 1, result="unsent")
    assert d.value("fanoutd_repair_requests_total", result="range") == 0
    assert 0 < d.value("fanoutd_repaired_messages_total") < 1000


def test_a_cut_off_subscriber_gets_every_message_it_missed_back(start_daemon, sockets, repairers):
    """The issue's fault: a stamped subscriber stalls 2 s at --publish-hwm 1000, is cut off and reconnects (libzmq
    does); each gap in its stamps, asked for, comes back byte for byte as the subscriber that kept up got it."""
    d = start_daemon("--push", "", "--publish-hwm", "1000", "--history-bytes", str(256 << 20))
    fast, slow = stamped_sub(sockets, d.stamped, b"t"), stamped_sub(sockets, d.stamped, b"t")
    slow.setsockopt(zmq.RCVHWM, 1000)
    producer = ready_producer(sockets, d.collector)
    got: dict[str, dict[int, list[bytes]]] = {"fast": {}, "slow": {}}
    stop = threading.Event()

    def read(name: str, sock: zmq.Socket, pause: float) -> None:
        while not stop.is_set():
            if not sock.poll(100):
                continue
            frames = sock.recv_multipart()
            if frames[-1] != wire.READY_TRAILER:
                got[name][parse_trailer(frames[-1]).seq] = frames
                if pause and len(got[name]) == 1:
                    time.sleep(pause)

    threads = [threading.Thread(target=read, args=("fast", fast, 0)),
               threading.Thread(target=read, args=("slow", slow, 2.0))]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        n = send_paced(producer.send, (b"t %06d " % i + b"x" * 1024 for i in range(60_000)), 20_000)
        i = n  # until the cut-off subscriber is back and has the latest message
        while not (got["slow"] and max(got["slow"]) == i and len(got["fast"]) == i):
            assert time.monotonic() < deadline, (len(got["slow"]), len(got["fast"]))
            producer.send(b"t %06d " % i + b"x" * 1024)
            i += 1
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
    assert d.total("fanoutd_slow_consumers_total", socket="stamped") >= 1
    stamp = parse_trailer(got["fast"][1][-1])
    seen = sorted(got["slow"])
    missed = [seq for seq in range(seen[0], seen[-1]) if seq not in got["slow"]]
    assert missed, "the stalled subscriber should have missed messages while it was cut off"
    repairer = repairers(d.repair)
    repaired = {}
    for first in range(missed[0], missed[-1] + 1, 1000):  # a reply brings at most 1,000
        messages, end = repairer.range(stamp.epoch, stamp.stream, first, min(first + 999, missed[-1]))
        repaired.update((m.stamp.seq, m.frames) for m in messages)
        assert end.gone == []
    assert {seq: repaired[seq] for seq in missed} == {seq: got["fast"][seq] for seq in missed}


def test_the_clients_default_repair_endpoint_is_the_daemons():
    from fanoutd.roles import BY_NAME
    from fanoutd_client.repair import DEFAULT_REPAIR
    assert (DEFAULT_REPAIR,) == BY_NAME["repair"].default


def test_repair_is_answered_while_a_slow_reader_paces_the_producers(start_daemon, sockets, repairers):
    """Under pace a reader that keeps reading, slowly, holds the stamped output back message by message: each one
    waits in a stall until the reader makes room, and the loop reads up to 512 of them (at 50 a second, ten
    seconds) before a pass of its own. A repair asked meanwhile is answered at once, served at the stalls' retries;
    the reader is never cut."""
    d = start_daemon("--push", "", "--publish-hwm", "100")
    slow = sockets(zmq.SUB, rcvhwm=1, rcvbuf=4096)
    slow.setsockopt(zmq.SUBSCRIBE, b"t")
    slow.connect(d.stamped)
    assert slow.recv_multipart() == [b"t", wire.READY_TRAILER]
    stop = threading.Event()

    def read_slowly() -> None:
        while not stop.wait(0.02):
            if slow.poll(0):
                slow.recv_multipart()

    reader = threading.Thread(target=read_slowly)
    reader.start()
    try:
        producer = ready_producer(sockets, d.collector)
        sent = 20_000  # 20 MB: more than the kernel's buffers take
        for i in range(sent):
            producer.send(b"t %06d " % i + b"x" * 1024)
        wait_for("a stall", lambda: d.total("fanoutd_output_stalls_total", socket="stamped"), bool)
        held = d.total("fanoutd_output_held_seconds_total", socket="stamped")
        repairer = repairers(d.repair)
        heads = repairer.heads(b"t", timeout=2)
        (stream, head, _), = heads.streams
        messages, end = repairer.range(heads.epoch, stream, 1, 10, timeout=2)
        assert [m.frames[0][:8] for m in messages] == [b"t %06d" % n for n in range(10)] and end.gone == []
        assert head < sent, "the producers were still held back"
        assert d.total("fanoutd_slow_consumers_total", socket="stamped") == 0
        wait_for("the output held meanwhile", lambda: d.total("fanoutd_output_held_seconds_total", socket="stamped"),
                 lambda seconds: seconds > held)
    finally:
        stop.set()
        reader.join(5)
