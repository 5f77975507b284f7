"""The repair history and endpoint in the loop (history.c, repair.c), with the real Forwarder in-process.

A producer PUB feeds the collector over inproc; the stamped output and the
repair ROUTER (ZMQ_ROUTER_MANDATORY, as the daemon makes it) are on TCP; the
client side is fanoutd_client.repair. Every answer is checked exactly: the
messages byte for byte against what the stamped output sent, and each END's
runs against what the test knows is gone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import zmq
from fanoutd_client import wire
from fanoutd_client.repair import End, Gone, Repairer, heads_request, range_request

from zmq.utils.monitor import recv_monitor_message

from conftest import wait_for
from fanoutd.dataplane import _forward, zmqlib

pytestmark = pytest.mark.timeout(60)
EPOCH = 7


@dataclass
class Rig:
    forwarder: _forward.Forwarder
    producer: zmq.Socket
    stamped: str
    repair: str
    make: Callable[..., zmq.Socket]
    context: zmq.Context

    def counter(self, name: str) -> int:
        return self.forwarder.counters()[name]

    def send(self, *messages: list[bytes]) -> None:
        """Send messages and wait until the loop has stamped them all (recorded in history by then)."""
        before = self.counter("stamped_messages")
        for frames in messages:
            self.producer.send_multipart(frames)
        wait_for(f"the loop to stamp {len(messages)}", lambda: self.counter("stamped_messages"),
                 lambda n: n >= before + len(messages))

    def subscriber(self, prefix: bytes = b"") -> zmq.Socket:
        """A SUB on the stamped output whose subscription is live (the READY answer read)."""
        sock = self.make(zmq.SUB, RCVTIMEO=5000)
        sock.setsockopt(zmq.SUBSCRIBE, prefix)
        sock.connect(self.stamped)
        assert sock.recv_multipart() == [prefix, wire.READY_TRAILER]
        return sock

    def repairer(self) -> Repairer:
        r = Repairer(self.repair, self.context)
        self.make_closed.append(r)
        return r

    make_closed: list[Repairer]


PEER_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED


def _wait_peers_gone(monitor: zmq.Socket, timeout: float = 10.0) -> None:
    """Read a bound socket's monitor until every connection it accepted is gone, failing the test past timeout.

    Closing a bound socket while a peer's close is still on its way can abort the process: a connection whose
    engine has begun a multipart message and then sees the peer go cleans its pipe, finds the rest of the
    message gone with the closing socket, and libzmq 4.3.5 asserts (session_base.cpp, zeromq/libzmq#3442). So
    the peers close first, and the bound sockets only once libzmq has let go of every connection.
    """
    open_, deadline = 0, time.monotonic() + timeout
    while True:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            open_ += 1 if event == zmq.EVENT_ACCEPTED else -1
        if open_ <= 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{open_} connections to a bound socket still open {timeout:.0f}s after their peers closed")
        monitor.poll(100)


@pytest.fixture
def rig(ctx: zmq.Context, sockets: Callable[..., zmq.Socket]) -> Iterator[Callable[..., Rig]]:
    """rig(history_bytes, history_ns=0) -> a running loop with a stamped output and a repair endpoint."""
    zmqlib.bind()
    running: list[tuple[_forward.Forwarder, threading.Thread]] = []
    repairers: list[Repairer] = []
    peers: list[zmq.Socket] = []  # what the tests make: closed first, at teardown
    monitors: list[zmq.Socket] = []

    make = sockets  # the rig's own sockets, closed by the sockets fixture after this one has stopped the loop

    def make_peer(kind: int, **options: int) -> zmq.Socket:
        sock = make(kind, **options)
        peers.append(sock)
        return sock

    def start(history_bytes: int, history_ns: int = 0, repair_hwm: int = 10_000, stamped_hwm: int = 100_000) -> Rig:
        collector = make(zmq.SUB, RCVHWM=100_000)
        collector.setsockopt(zmq.SUBSCRIBE, b"")
        collector.bind(f"inproc://collector-{len(running)}")
        stamped = make(zmq.XPUB, XPUB_NODROP=1, XPUB_VERBOSE=1, SNDHWM=stamped_hwm, SNDBUF=4096)
        stamped.bind("tcp://127.0.0.1:0")
        repair = make(zmq.ROUTER, ROUTER_MANDATORY=1, SNDHWM=repair_hwm)
        repair.bind("tcp://127.0.0.1:0")
        monitors.extend(sock.get_monitor_socket(PEER_EVENTS) for sock in (stamped, repair))
        producer = make(zmq.XPUB, SNDHWM=100_000, RCVTIMEO=5000)
        producer.connect(f"inproc://collector-{len(running)}")
        forwarder = _forward.Forwarder({"collector": collector.underlying, "stamped": stamped.underlying,
                                        "repair": repair.underlying}, epoch=EPOCH, node_id=b"N" * 8,
                                       history_bytes=history_bytes, history_ns=history_ns, stall_ns=10_000_000)
        thread = threading.Thread(target=forwarder.run)
        thread.start()
        running.append((forwarder, thread))
        assert producer.recv() == b"\x01", "the collector's subscription: from here nothing sent is lost"
        rig = Rig(forwarder, producer, stamped.getsockopt_string(zmq.LAST_ENDPOINT),
                  repair.getsockopt_string(zmq.LAST_ENDPOINT), make_peer, ctx, repairers)
        # The inproc PUB's subscription arrives at once; a probe proves it (and is stream 1 of key "_probe ").
        return rig

    yield start
    for forwarder, thread in running:
        forwarder.stop(True)
        thread.join(10)
        assert not thread.is_alive(), "the loop did not stop"
    for r in repairers:
        r.close()
    for sock in peers:
        sock.close(linger=0)
    for monitor in monitors:
        _wait_peers_gone(monitor)
        monitor.close(linger=0)


def heads(rig: Rig, prefix: bytes) -> dict[bytes, tuple[int, int]]:
    answer = rig.repairer().heads(prefix)
    assert answer.epoch == EPOCH and not answer.more
    return {key: (stream, seq) for stream, seq, key in answer.streams}


def test_a_range_is_exactly_what_the_stamped_output_sent(rig):
    r = rig(64 << 20)
    sub = r.subscriber(b"orders")
    sent = [[b"orders", b"%d" % i, b"x" * (i * 37)] for i in range(40)]  # multipart; short and shared frames
    r.send(*sent)
    received = [sub.recv_multipart() for _ in sent]
    assert [m[:-1] for m in received] == sent
    stream, head = heads(r, b"orders")[b"orders"]
    assert head == 40
    messages, end = r.repairer().range(EPOCH, stream, 1, 40)
    assert [m.frames for m in messages] == received  # byte for byte, the trailer included
    assert end == End(end.tag, EPOCH, stream, 1, 40, [])
    assert r.counter("repaired_messages") == 40 and r.counter("repair_range") == 1


def test_history_records_while_nobody_is_on_the_stamped_output(rig):
    r = rig(64 << 20)
    r.send(*([b"alone %d" % i] for i in range(10)))  # nobody subscribed: the stamped output skips its sends
    stream, head = heads(r, b"alone")[b"alone "]
    messages, end = r.repairer().range(EPOCH, stream, 1, head)
    assert [m.frames[:-1] for m in messages] == [[b"alone %d" % i] for i in range(10)]
    assert [m.stamp.seq for m in messages] == list(range(1, 11)) and not end.gone


def test_a_partly_evicted_range_gets_the_rest_and_names_exactly_what_is_gone(rig):
    bound = 256 * 1024
    r = rig(bound)
    r.send(*([b"t ", b"%06d" % i + b"p" * 1024] for i in range(1000)))
    held, pinned = r.forwarder.history_held()
    assert 0 < held <= bound and 0 < pinned <= held
    evicted = r.counter("history_evicted")
    stream, head = heads(r, b"t")[b"t "]
    assert head == 1000 and 700 < evicted < 1000  # 1 KiB each: about 200 fit
    messages, end = r.repairer().range(EPOCH, stream, 1, 1000)
    assert [m.stamp.seq for m in messages] == list(range(evicted + 1, 1001))
    assert [m.frames[1][:6] for m in messages] == [b"%06d" % (seq - 1) for seq in range(evicted + 1, 1001)]
    assert end.gone == [Gone(1, evicted, wire.GONE_EVICTED)]


def test_another_epoch_an_unknown_stream_the_future_and_the_reply_bound_are_answered_exactly(rig):
    r = rig(64 << 20)
    r.send(*([b"k %d" % i] for i in range(1200)))
    stream, head = heads(r, b"k")[b"k "]
    repairer = r.repairer()
    assert repairer.range(EPOCH + 1, stream, 3, 9) == ([], End(repairer._tag, EPOCH + 1, stream, 3, 9,
                                                              [Gone(3, 9, wire.GONE_EPOCH)]))
    assert repairer.range(EPOCH, 999, 1, 2)[1].gone == [Gone(1, 2, wire.GONE_UNKNOWN)]
    messages, end = repairer.range(EPOCH, stream, 1195, 1300)
    assert [m.stamp.seq for m in messages] == list(range(1195, 1201))
    assert end.gone == [Gone(1201, 1300, wire.GONE_FUTURE)]
    messages, end = repairer.range(EPOCH, stream, 1, 1200)  # past 1,000 messages a reply stops
    assert len(messages) == 1000 and end.gone == [Gone(1001, 1200, wire.GONE_LIMIT)]


def test_with_history_off_every_range_is_gone_and_heads_still_answer(rig):
    r = rig(0)
    r.send([b"off 1"], [b"off 2"])
    stream, head = heads(r, b"off")[b"off "]
    assert head == 2
    assert r.repairer().range(EPOCH, stream, 1, 4)[1].gone == [Gone(1, 2, wire.GONE_EVICTED),
                                                               Gone(3, 4, wire.GONE_FUTURE)]
    assert r.forwarder.history_held() == (0, 0)


def test_heads_lists_every_stream_under_the_prefix(rig):
    r = rig(64 << 20)
    r.send([b"ab 1"], [b"a 1"], [b"ab 2"], [b"b 1"], [b"abc", b"multi"])
    seen = heads(r, b"a")
    assert {key: seq for key, (_, seq) in seen.items()} == {b"ab ": 2, b"a ": 1, b"abc": 1}
    assert len({stream for stream, _ in seen.values()}) == 3
    assert set(heads(r, b"")) == {b"ab ", b"a ", b"abc", b"b "}


def test_a_request_wakes_an_idle_loop(rig):
    """The loop waits for its inputs and, through the endpoint's fd, for repair requests: an idle loop answers
    at once, not at its next 100 ms tick (50 requests one after another would then take about 2.5 s)."""
    r = rig(64 << 20)
    r.send([b"w x"])
    repairer = r.repairer()
    t0 = time.monotonic()
    for _ in range(50):
        assert repairer.heads(b"w").streams
    assert time.monotonic() - t0 < 1.0, "repair requests waited for the loop's tick"


def test_history_seconds_forgets_old_messages_even_when_idle(rig):
    r = rig(64 << 20, history_ns=200_000_000)
    r.send(*([b"old %d" % i] for i in range(50)))
    wait_for("the history to forget them all", lambda: r.counter("history_evicted"),
             lambda n: n == r.counter("stamped_messages"))
    stream, _ = heads(r, b"old")[b"old "]
    assert r.repairer().range(EPOCH, stream, 1, 50) == ([], End(r.make_closed[-1]._tag, EPOCH, stream, 1, 50,
                                                                [Gone(1, 50, wire.GONE_EVICTED)]))


def _silent(sock: zmq.Socket, ms: int = 300) -> bool:
    return not sock.poll(ms)


def test_malformed_and_oversize_requests_are_counted_and_never_answered(rig):
    r = rig(64 << 20)
    dealer = r.make(zmq.DEALER)
    dealer.connect(r.repair)
    bad = [
        [b"garbage"],
        [range_request(1, EPOCH, 1, 5, 2)],                        # first after last
        [range_request(1, EPOCH, 1, 0, 2)],                        # sequences start at 1
        [range_request(1, EPOCH, 1, 1, 2)[:-1]],                   # one byte short
        [wire.HEAD.pack(wire.MAGIC, wire.VERSION, wire.REPAIR_RANGE | wire.REPAIR_END) + b"\0" * 36],  # no such kind
        [wire.HEAD.pack(wire.MAGIC, 2, wire.REPAIR_HEADS) + b"\0" * 4],
        [heads_request(1, b""), b"a second frame"],
    ]
    for frames in bad:
        dealer.send_multipart(frames)
    dealer.send(heads_request(2, b"") + b"x" * 256)  # one byte over the longest prefix
    wait_for("every bad request counted", lambda: (r.counter("repair_malformed"), r.counter("repair_oversize")),
             lambda n: n == (len(bad), 1))
    assert _silent(dealer)
    dealer.send(heads_request(3, b""))  # the same peer, asking properly, is answered
    assert dealer.poll(5000)


def test_a_flood_from_one_peer_is_refused_and_counted_while_forwarding_goes_on(rig):
    r = rig(64 << 20)
    sub = r.subscriber(b"live")
    flooder, polite = r.make(zmq.DEALER, SNDHWM=0), r.repairer()
    flooder.connect(r.repair)
    for tag in range(2000):
        flooder.send(heads_request(tag, b""))
    answered = 0
    for i in range(200):  # messages keep flowing meanwhile
        r.producer.send(b"live %d" % i)
        assert sub.recv_multipart()[0] == b"live %d" % i
    assert polite.heads(b"live").streams  # another peer is served
    refused = wait_for("the flood counted", lambda: r.counter("repair_flood") + r.counter("repair_heads"),
                       lambda n: n == 2001)
    while flooder.poll(200):
        flooder.recv_multipart()
        answered += 1
    assert answered == r.counter("repair_heads") - 1 and 100 <= answered < 300, answered
    assert r.counter("repair_flood") == 2000 - answered and refused == 2001


def test_a_reply_that_cannot_be_sent_is_abandoned_and_counted(rig):
    """ZMQ_ROUTER_MANDATORY: a reply to a full peer fails (EAGAIN) where a plain ROUTER would drop it unseen."""
    r = rig(64 << 20, repair_hwm=50)
    r.send(*([b"big ", b"%d" % i + b"z" * 4096] for i in range(1000)))
    stream, _ = heads(r, b"big")[b"big "]
    reader = r.make(zmq.DEALER, RCVHWM=1, RCVBUF=4096)
    reader.connect(r.repair)
    reader.send(range_request(9, EPOCH, stream, 1, 1000))  # and never read
    wait_for("the reply abandoned", lambda: r.counter("repair_unsent"), lambda n: n == 1)
    assert r.counter("repair_range") == 0 and 0 < r.counter("repaired_messages") < 1000


def test_the_history_lets_go_of_its_frames_and_its_ledger_with_the_forwarder(ctx):
    """The history's ledger is one more held-bytes ledger (held.c): alive while its Forwarder is, freed with it."""
    zmqlib.bind()
    before = _forward.held_ledgers()
    collector, stamped, producer = ctx.socket(zmq.SUB), ctx.socket(zmq.XPUB), ctx.socket(zmq.XPUB)
    try:
        collector.setsockopt(zmq.SUBSCRIBE, b"")
        collector.bind("inproc://ledger-collector")
        stamped.bind("tcp://127.0.0.1:0")
        producer.connect("inproc://ledger-collector")
        forwarder = _forward.Forwarder({"collector": collector.underlying, "stamped": stamped.underlying},
                                       epoch=EPOCH, history_bytes=1 << 20)
        assert _forward.held_ledgers() == before + 2  # the stamped output's and the history's
        thread = threading.Thread(target=forwarder.run)
        thread.start()
        producer.setsockopt(zmq.RCVTIMEO, 5000)
        assert producer.recv() == b"\x01"
        for i in range(100):
            producer.send(b"l %d " % i + b"y" * 300)  # over HELD_WRAP_MIN (256): wrapped, counted
        wait_for("the loop to stamp them", lambda: forwarder.counters()["stamped_messages"], lambda n: n == 100)
        forwarder.stop(True)
        thread.join(10)
        held, pinned = forwarder.history_held()
        assert pinned == sum(len(b"l %d " % i) + 300 for i in range(100)) and held > pinned  # frames, + overhead
        del forwarder
        assert _forward.held_ledgers() == before
    finally:
        for sock in (collector, stamped, producer):
            sock.close(linger=0)


def test_heads_past_its_bound_says_more(rig):
    r = rig(64 << 20)
    r.send(*([b"s%04d x" % i] for i in range(1001)))
    answer = r.repairer().heads(b"s")
    assert answer.more and len(answer.streams) == 1000
    assert all(seq == 1 and key.startswith(b"s") for _, seq, key in answer.streams)
    assert not r.repairer().heads(b"s1").more  # a longer prefix lists the rest


def test_last_gives_each_streams_latest_held_message_then_its_heads(rig):
    """LAST: per stream under the prefix its message at the head, byte for byte as sent, then the HEADS answer,
    which also lists a stream whose latest is evicted (with no message)."""
    r = rig(2 << 20)
    sub = r.subscriber(b"p.")
    r.send([b"e.a 1"], [b"p.a 1"], [b"p.a 2"], [b"p.b", b"1"], [b"q 1"])
    sent = [sub.recv_multipart() for _ in range(3)]
    values, answer = r.repairer().last(b"p.")
    assert [v.frames for v in values] == [sent[1], sent[2]]  # p.a's 2 and p.b's 1, with their trailers
    assert (answer.epoch, answer.more) == (EPOCH, False)
    assert {key: seq for _, seq, key in answer.streams} == {b"p.a ": 2, b"p.b": 1}

    r.send(*[[b"e.b %d " % i + b"x" * 100_000] for i in range(30)])  # 3 MB: e.a's only message is evicted
    values, answer = r.repairer().last(b"e.")
    assert [v.stamp.seq for v in values] == [30] and values[0].frames[0].startswith(b"e.b 29 ")
    assert {key: seq for _, seq, key in answer.streams} == {b"e.a ": 1, b"e.b ": 30}



def test_last_stops_at_a_replys_bytes_and_says_more(rig):
    r = rig(64 << 20)
    r.send(*[[b"big.%d" % i, b"y" * 1_000_000] for i in range(8)])  # 1 MB each; a reply carries 4 MiB
    values, answer = r.repairer().last(b"big.")
    taken = [b"big.%d" % i for i in range(4)]
    assert [v.frames[0] for v in values] == taken
    assert answer.more and [key for _, _, key in answer.streams] == taken
    wait_for("the values counted as repaired", lambda: r.counter("repaired_messages"), lambda n: n == 4)
def test_repair_is_served_while_the_stamped_output_is_stalled(rig):
    """A stall holds all output and reads no input until the guard answers (here it never does); the repair
    endpoint is served meanwhile, so a subscriber cut off while the producers are held back gets its gap."""
    r = rig(64 << 20, stamped_hwm=1)
    r.send(*([b"r %d" % i] for i in range(10)))
    r.forwarder.set_stamped_peers(1)  # the hub's count: the loop sends on the stamped output from here on
    reader = r.make(zmq.SUB, RCVHWM=1, RCVBUF=4096)  # subscribes and never reads again
    reader.setsockopt(zmq.SUBSCRIBE, b"fill")
    reader.connect(r.stamped)
    assert reader.recv_multipart() == [b"fill", wire.READY_TRAILER]
    stamped = _forward.OUTPUTS.index("stamped")
    deadline = time.monotonic() + 20
    while not (stall := r.forwarder.stalls()[stamped]):
        assert time.monotonic() < deadline, f"the stamped output never stalled: {r.forwarder.counters()}"
        r.producer.send(b"fill " + b"f" * 65536)
        time.sleep(0.001)
    repairer = r.repairer()
    stream, head = heads(r, b"r")[b"r "]
    messages, end = repairer.range(EPOCH, stream, 1, head)
    assert [m.frames[:-1] for m in messages] == [[b"r %d" % i] for i in range(10)] and not end.gone
    assert r.forwarder.stalls()[stamped] == stall, "served within that one stall, the guard never answering"


def test_the_hugest_range_gets_at_most_4_mib_and_the_rest_is_named_limit(rig):
    r = rig(64 << 20)
    r.send(*([b"huge ", b"%06d" % i + b"h" * 65536] for i in range(100)))
    stream, head = heads(r, b"huge")[b"huge "]
    messages, end = r.repairer().range(EPOCH, stream, 1, 2 ** 64 - 1)
    fit = (4 << 20) // (6 + 65536 + 5)  # frame bytes per reply: at most 4 MiB
    assert [m.stamp.seq for m in messages] == list(range(1, fit + 1))
    assert end.gone == [Gone(fit + 1, 2 ** 64 - 1, wire.GONE_LIMIT)]


def test_huge_ranges_flooding_from_one_peer_are_bounded_counted_by_result_and_forwarding_goes_on(rig):
    """A peer that asks for everything, thousands of times, and never reads: each reply stops at 1,000 messages,
    replies it cannot take are abandoned, requests past its rate refused; all counted, live messages unharmed."""
    r = rig(64 << 20)
    r.send(*([b"h ", b"%06d" % i + b"p" * 1024] for i in range(3000)))
    stream, _ = heads(r, b"h")[b"h "]
    sub = r.subscriber(b"live")
    flooder = r.make(zmq.DEALER, SNDHWM=0, RCVHWM=1000, RCVBUF=65536)
    flooder.connect(r.repair)
    requests, t0 = 3000, time.monotonic()
    for tag in range(requests):
        flooder.send(range_request(tag, EPOCH, stream, 1, 2 ** 64 - 1))
    for i in range(300):
        r.producer.send(b"live %d" % i)
        assert sub.recv_multipart()[0] == b"live %d" % i
    results = ("repair_range", "repair_unsent", "repair_flood")
    counted = wait_for("every request counted", lambda: {name: r.counter(name) for name in results},
                       lambda n: sum(n.values()) == requests, timeout=30)
    answered = counted["repair_range"] + counted["repair_unsent"]
    rate_bound = 100 + 100 * (time.monotonic() - t0 + 0.1)  # the burst, then 100 a second (REPAIR_RATE)
    assert counted["repair_flood"] > 0 and counted["repair_unsent"] > 0 and 100 <= answered <= rate_bound, counted
    assert r.counter("repaired_messages") <= 1000 * answered
    assert not r.counter("repair_malformed") and not r.counter("repair_oversize")
