"""The Python clients against plain pyzmq stand-ins for fanoutd's sockets.

Real sockets on loopback, ports picked by the kernel (bind to ``*`` and read
LAST_ENDPOINT).  The stand-ins: a bound SUB for the collector, read
continuously by its own thread as fanoutd's is (libzmq attaches a new
connection, and so sends the SUB's subscription over it, only when the
socket is used: an idle bound SUB never lets a producer become ready), a bound XPUB
for the publisher (on the wire a PUB, but it lets the test wait until the
subscription has arrived instead of sleeping), a bound PUSH for the push
socket.  Every receive has a timeout, every client is closed at teardown
within a bound, and the shared context must terminate (see conftest).
"""

from __future__ import annotations

import json
import math
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from conftest import free_port
from fanoutd_client import Producer, Puller, Subscriber, split_message, validate_endpoint
from fanoutd_client._base import Client

CLIENTS_DIR = Path(__file__).resolve().parent.parent / "clients"
Make = Callable[..., zmq.Socket]

pytestmark = pytest.mark.timeout(30)


def endpoint(sock: zmq.Socket) -> str:
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def bound(make: Make, kind: int, **options: int) -> tuple[zmq.Socket, str]:
    sock = make(kind, **options)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.bind("tcp://127.0.0.1:*")
    return sock, endpoint(sock)


def nowhere() -> str:
    """An endpoint nobody listens on."""
    return f"tcp://127.0.0.1:{free_port()}"


def close_within(closable: Any, seconds: float = 5.0) -> None:
    """close() (a client) or term() (a context) in a thread; a hang fails the test."""
    action = closable.close if isinstance(closable, Client) else closable.term
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{closable!r} did not close within {seconds}s")


@pytest.fixture
def track(ctx: zmq.Context) -> Iterator[Callable[[Any], Any]]:
    """track(client) -> client, closed (within a bound) before the shared context terminates."""
    made: list[Client] = []

    def add(client: Any) -> Any:
        made.append(client)
        return client

    yield add
    for client in made:
        close_within(client)


class Collector:
    """fanoutd's collector, as far as a producer can tell: a bound SUB that is always reading."""

    def __init__(self, ctx: zmq.Context, hold: bool = False, metadata: bytes | None = None) -> None:
        self.messages: queue.Queue[list[bytes]] = queue.Queue()
        self.endpoint = ""
        self._stop = threading.Event()
        self.reading = threading.Event()  # clear: accept and subscribe, but read nothing (a stall)
        if not hold:
            self.reading.set()
        bound_event = threading.Event()
        self._metadata = metadata  # ZMQ_METADATA, e.g. fanoutd's b"X-Max-Message-Size:1048576"
        self._thread = threading.Thread(target=self._run, args=(ctx, bound_event), daemon=True)
        self._thread.start()
        assert bound_event.wait(5), "collector stand-in did not bind"

    def _run(self, ctx: zmq.Context, bound_event: threading.Event) -> None:
        sock = ctx.socket(zmq.SUB)  # owned by this thread from creation to close
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            if self._metadata is not None:
                sock.setsockopt(zmq.METADATA, self._metadata)
            sock.bind("tcp://127.0.0.1:*")
            self.endpoint = endpoint(sock)
            bound_event.set()
            while not self._stop.is_set():
                if sock.poll(20) and self.reading.is_set():  # poll alone attaches new connections
                    self.messages.put(sock.recv_multipart())
        finally:
            sock.close(linger=0)

    def recv(self, timeout: float = 5.0) -> list[bytes]:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"collector stand-in got nothing within {timeout}s")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        assert not self._thread.is_alive(), "collector stand-in thread did not stop"


@pytest.fixture
def collectors(ctx: zmq.Context) -> Iterator[Callable[..., Collector]]:
    """make(hold=False, metadata=None) -> a running Collector stand-in, stopped at teardown."""
    made: list[Collector] = []

    def make(hold: bool = False, metadata: bytes | None = None) -> Collector:
        made.append(Collector(ctx, hold, metadata))
        return made[-1]

    yield make
    for collector in made:
        collector.stop()


@pytest.fixture
def collector(collectors: Callable[..., Collector]) -> Collector:
    return collectors()


@pytest.fixture
def publisher(sockets: Make) -> tuple[zmq.Socket, str]:
    return bound(sockets, zmq.XPUB)


def await_subscription(xpub: zmq.Socket, *topics: bytes, flag: bytes = b"\x01") -> None:
    got = {xpub.recv() for _ in topics}  # RCVTIMEO bounds each wait
    assert got == {flag + t for t in topics}


# --- Producer -----------------------------------------------------------------------------------


def test_producer_waits_for_the_collector_then_sends_a_single_frame(collector, track):
    producer = track(Producer(collector.endpoint))
    producer.wait_ready(5)
    assert producer.ready
    producer.send("orders", b"hello")
    producer.send(b"orders", "w\u00f6rld")
    assert collector.recv() == [b"orders hello"]
    assert collector.recv() == [b"orders w\xc3\xb6rld"]


def test_wait_in_the_constructor(collector, track):
    producer = track(Producer(collector.endpoint, wait=5))
    assert producer.ready
    producer.send("t", "x")
    assert collector.recv() == [b"t x"]


def test_multipart_arrives_as_frames(collector, track):
    producer = track(Producer(collector.endpoint, wait=5))
    producer.send_multipart("orders", b"a", "b", b"")
    producer.send_multipart(b"with space", b"p")  # spaces are fine in a multipart topic
    assert collector.recv() == [b"orders", b"a", b"b", b""]
    assert collector.recv() == [b"with space", b"p"]


def test_send_json_is_compact_utf8_in_one_frame(collector, track):
    producer = track(Producer(collector.endpoint, wait=5))
    producer.send_json("orders", {"id": 1, "name": "\u00e9", "tags": [1, 2]})
    assert collector.recv() == [b'orders {"id":1,"name":"\xc3\xa9","tags":[1,2]}']
    with pytest.raises(ValueError):
        producer.send_json("orders", {"x": math.nan})


def test_every_collector_must_subscribe_before_ready(collectors, track):
    one, two = collectors(), collectors()
    producer = track(Producer([one.endpoint, two.endpoint]))
    producer.wait_ready(5)
    producer.send("t", "both")
    assert one.recv() == two.recv() == [b"t both"]

    half = track(Producer([one.endpoint, nowhere()]))
    with pytest.raises(TimeoutError, match="1 of 2 subscriptions"):
        half.wait_ready(0.5)
    assert not half.ready


def test_drop_false_waits_for_room_then_times_out(sockets, track):
    stalled, ep = bound(sockets, zmq.SUB, rcvhwm=1, rcvbuf=4096)
    producer = track(Producer(ep, drop=False, send_timeout=0.2, hwm=1, linger=0))
    while not producer.ready:  # let the stand-in attach the connection (see Collector), then stop reading
        stalled.poll(20)
    payload = b"x" * 65536
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="took no message for 0.2s"):
        for _ in range(100_000):  # kernel buffers fill first; then the send waits 0.2 s and gives up
            producer.send("t", payload)
    assert time.monotonic() - started < 10


def test_wait_ready_times_out_clearly_when_nothing_listens(track):
    ep = nowhere()
    producer = track(Producer(ep))
    assert not producer.ready
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"collector not ready within 0.3s.*{ep}"):
        producer.wait_ready(0.3)
    assert time.monotonic() - started < 3


def test_a_failed_constructor_wait_leaves_nothing_open(ctx):
    # Injected context: the ctx fixture's term() would hang if the socket were left open.
    with pytest.raises(TimeoutError):
        Producer(nowhere(), wait=0.2, context=ctx)


@pytest.mark.parametrize(("topic", "message"), [
    ("has space", "contains a space"),
    (b"", "must not be empty"),
    ("", "must not be empty"),
])
def test_bad_single_frame_topics_are_refused(track, topic, message):
    producer = track(Producer(nowhere()))
    with pytest.raises(ValueError, match=message):
        producer.send(topic, b"x")


def test_bad_arguments_to_send(track):
    producer = track(Producer(nowhere()))
    with pytest.raises(TypeError, match="payload must be str or bytes, not int"):
        producer.send("t", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one payload frame"):
        producer.send_multipart("t")
    with pytest.raises(ValueError, match="must not be empty"):
        producer.send_multipart("", b"x")


# --- endpoints, options, lifetime --------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    "127.0.0.1:5560", "tcp://127.0.0.1", "tcp://127.0.0.1:0", "tcp://127.0.0.1:70000",
    "tcp://*:5560", "udp://127.0.0.1:5560", "tcp://bad host:5560", "tcp://", "ipc://", "",
    "tcp://127.0.0.1:55x",
])
def test_bad_endpoints_are_refused_with_a_clear_message(bad):
    with pytest.raises(ValueError, match="bad endpoint"):
        validate_endpoint(bad)
    with pytest.raises(ValueError, match="bad endpoint"):
        Producer(bad)


@pytest.mark.parametrize("good", [
    "tcp://127.0.0.1:5560", "tcp://localhost:1", "tcp://[::1]:5560", "tcp://my-host.example:65535",
    "tcp://127.0.0.1:0;127.0.0.1:5560", "ipc:///tmp/fanoutd.sock", "inproc://collector",
])
def test_good_endpoints_are_accepted(good):
    assert validate_endpoint(good) == good


def test_endpoint_lists():
    with pytest.raises(ValueError, match="at least one endpoint"):
        Subscriber([])
    with pytest.raises(ValueError, match="duplicate endpoint"):
        Puller(["tcp://127.0.0.1:5562", "tcp://127.0.0.1:5562"])
    with pytest.raises(TypeError):
        Puller([5562])  # type: ignore[list-item]


def test_protective_defaults(track):
    producer = track(Producer(nowhere()))
    subscriber = track(Subscriber(nowhere()))
    puller = track(Puller(nowhere()))
    for client in (producer, subscriber, puller):
        sock = client.socket
        assert sock.getsockopt(zmq.HEARTBEAT_IVL) == 30_000  # fanoutd's own, see heartbeat_options
        assert sock.getsockopt(zmq.HEARTBEAT_TIMEOUT) == 15_000
        assert sock.getsockopt(zmq.HEARTBEAT_TTL) == 0  # the broker times clients out itself
        assert sock.getsockopt(zmq.SNDHWM) == sock.getsockopt(zmq.RCVHWM) == 10_000
    assert producer.socket.getsockopt(zmq.LINGER) == 1000
    assert subscriber.socket.getsockopt(zmq.LINGER) == 0
    assert puller.socket.getsockopt(zmq.LINGER) == 0
    assert producer.socket.type == zmq.XPUB


def test_options_are_configurable(track):
    client = track(Subscriber(nowhere(), hwm=5, linger=0.25, heartbeat_interval=1, heartbeat_timeout=3,
                              heartbeat_ttl=2, reconnect_interval=0.1, reconnect_interval_max=2))
    sock = client.socket
    assert sock.getsockopt(zmq.RCVHWM) == 5
    assert sock.getsockopt(zmq.LINGER) == 250
    assert (sock.getsockopt(zmq.HEARTBEAT_IVL), sock.getsockopt(zmq.HEARTBEAT_TIMEOUT),
            sock.getsockopt(zmq.HEARTBEAT_TTL)) == (1000, 3000, 2000)
    assert (sock.getsockopt(zmq.RECONNECT_IVL), sock.getsockopt(zmq.RECONNECT_IVL_MAX)) == (100, 2000)
    off = track(Puller(nowhere(), heartbeat_interval=0))
    assert off.socket.getsockopt(zmq.HEARTBEAT_IVL) == 0


@pytest.mark.parametrize(("options", "message"), [
    ({"hwm": -1}, "hwm"),
    ({"linger": -1}, "linger"),
    ({"heartbeat_interval": 10, "heartbeat_timeout": 0}, "heartbeat_timeout must be more than 0"),
    ({"reconnect_interval": "soon"}, "reconnect_interval"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        Puller(nowhere(), **options)


def test_curve_keys_come_all_three_or_none():
    with pytest.raises(ValueError, match="missing curve_publickey, curve_secretkey"):
        Producer(nowhere(), curve_serverkey=b"x" * 40)
    with pytest.raises(ValueError, match="40-character Z85"):
        Puller(nowhere(), curve_serverkey=b"x", curve_publickey=b"y" * 40, curve_secretkey=b"z" * 40)


def test_an_injected_context_is_left_alone(ctx, track):
    client = Puller(nowhere(), context=ctx)
    assert client.context is ctx
    client.close()
    assert client.closed and not ctx.closed
    ctx.socket(zmq.PAIR).close()  # still usable; the ctx fixture terminates it


def test_a_private_context_is_terminated_on_close():
    with Producer(nowhere()) as producer:
        assert not producer.context.closed
    assert producer.closed and producer.context.closed
    producer.close()  # idempotent
    with pytest.raises(RuntimeError, match="Producer is closed"):
        producer.send("t", "x")
    assert "closed" in repr(producer)


# --- Subscriber ---------------------------------------------------------------------------------


def test_subscriber_gets_only_its_topic_prefixes(publisher, track):
    pub, ep = publisher
    subscriber = track(Subscriber(ep, ["orders", b"audit"]))
    await_subscription(pub, b"orders", b"audit")
    for message in [b"orders a", b"other b", b"orders.eu c", b"audit d", b"x orders"]:
        pub.send(message)
    assert [subscriber.recv(5) for _ in range(3)] == [(b"orders", b"a"), (b"orders.eu", b"c"), (b"audit", b"d")]
    with pytest.raises(TimeoutError, match="no message from publisher"):
        subscriber.recv(0.2)


def test_subscriber_splits_messages(publisher, track):
    pub, ep = publisher
    subscriber = track(Subscriber(ep))  # default: everything
    await_subscription(pub, b"")
    pub.send(b"t one two")
    pub.send(b"bare")
    pub.send(b"t ")
    pub.send_multipart([b"t", b"x", b"y"])
    pub.send_multipart([b"t", b"x", b"y"])
    assert subscriber.recv(5) == (b"t", b"one two")
    assert subscriber.recv(5) == (b"bare", b"")
    assert subscriber.recv(5) == (b"t", b"")
    assert subscriber.recv(5) == (b"t", b"xy")
    assert subscriber.recv_multipart(5) == [b"t", b"x", b"y"]


def test_subscribe_and_unsubscribe_later(publisher, track):
    pub, ep = publisher
    subscriber = track(Subscriber(ep, "a"))  # one str is one topic, not its characters
    await_subscription(pub, b"a")
    subscriber.subscribe("b")
    await_subscription(pub, b"b")
    subscriber.unsubscribe(b"a")
    await_subscription(pub, b"a", flag=b"\x00")
    pub.send(b"a 1")
    pub.send(b"b 2")
    assert subscriber.recv(5) == (b"b", b"2")
    with pytest.raises(TimeoutError):
        subscriber.recv(0.2)


def test_subscriber_iterates_and_reads_every_endpoint(sockets, track):
    (pub1, ep1), (pub2, ep2) = bound(sockets, zmq.XPUB), bound(sockets, zmq.XPUB)
    subscriber = track(Subscriber([ep1, ep2], "t"))
    await_subscription(pub1, b"t")
    await_subscription(pub2, b"t")
    pub1.send(b"t 1")
    pub2.send(b"t 2")
    received = []
    for message in subscriber:
        received.append(message)
        if len(received) == 2:
            break
    assert sorted(received) == [(b"t", b"1"), (b"t", b"2")]


def test_recv_timeout_is_prompt(track):
    subscriber = track(Subscriber(nowhere()))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        subscriber.recv(0.1)
    assert time.monotonic() - started < 2
    with pytest.raises(ValueError):
        subscriber.recv(-1)


# --- Puller -------------------------------------------------------------------------------------


def test_puller_gets_payloads(sockets, track):
    push, ep = bound(sockets, zmq.PUSH)
    puller = track(Puller(ep))
    push.send(b"hello")  # a PUSH waits (SNDTIMEO-bounded) until the puller is connected
    push.send(b'{"id": 1}')
    push.send(b"not json")
    push.send_multipart([b"a", b"b"])
    push.send_multipart([b"a", b"b"])
    assert puller.recv(5) == b"hello"
    assert puller.recv_json(5) == {"id": 1}
    with pytest.raises(ValueError):
        puller.recv_json(5)
    assert puller.recv(5) == b"ab"
    assert puller.recv_multipart(5) == [b"a", b"b"]
    with pytest.raises(TimeoutError, match="no message from pusher"):
        puller.recv(0.2)


def test_puller_iterates_over_every_endpoint(sockets, track):
    (push1, ep1), (push2, ep2) = bound(sockets, zmq.PUSH), bound(sockets, zmq.PUSH)
    puller = track(Puller([ep1, ep2]))
    push1.send(b"1")
    push2.send(b"2")
    received = []
    for payload in puller:
        received.append(payload)
        if len(received) == 2:
            break
    assert sorted(received) == [b"1", b"2"]


# --- gevent, without requiring it ---------------------------------------------------------------


def test_importable_without_gevent():
    code = ("import sys; sys.modules['gevent'] = None\n"  # any `import gevent` would now fail
            "import fanoutd_client, fanoutd_client.tool\n"
            "assert not any(m == 'zmq.green' or m.startswith('gevent') for m in sys.modules if sys.modules[m])\n")
    result = subprocess.run([sys.executable, "-c", code], check=False, env={"PYTHONPATH": str(CLIENTS_DIR)},
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr


def test_importable_without_asyncio():
    """Blocking and gevent users never load asyncio: only fanoutd_client.aio imports zmq.asyncio."""
    code = ("import sys\n"
            "import fanoutd_client, fanoutd_client.tool\n"
            "assert 'asyncio' not in sys.modules and 'zmq.asyncio' not in sys.modules, 'asyncio was imported'\n"
            "import fanoutd_client.aio\n"
            "assert 'zmq.asyncio' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], check=False, env={"PYTHONPATH": str(CLIENTS_DIR)},
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("client", [Producer, Subscriber, Puller])
def test_an_asyncio_context_is_refused_at_construction(client):
    """Its sockets return Futures, which a blocking client would mistake for messages much later."""
    import zmq.asyncio

    context = zmq.asyncio.Context()
    try:
        with pytest.raises(TypeError, match=f"zmq.asyncio.Context: use fanoutd_client.aio.{client.__name__}"):
            client(nowhere(), context=context)
        assert not context.closed  # the caller's: refused, not terminated
    finally:
        close_within(context)  # would hang if a socket had been left open


def test_an_injected_green_context_works(collector, publisher):
    import zmq.green

    pub, publish_ep = publisher
    green = zmq.green.Context()
    try:
        with Producer(collector.endpoint, context=green, wait=5) as producer:
            producer.send("t", "green")
        assert collector.recv() == [b"t green"]
        with Subscriber(publish_ep, "t", context=green) as subscriber:
            await_subscription(pub, b"t")
            pub.send(b"t back")
            assert subscriber.recv(5) == (b"t", b"back")
            with pytest.raises(TimeoutError):
                subscriber.recv(0.1)
        assert not green.closed
    finally:
        close_within(green)


# --- framing property ---------------------------------------------------------------------------


@given(topic=st.binary(min_size=1).filter(lambda t: b" " not in t), payload=st.binary())
def test_single_frame_split_inverts_send(topic, payload):
    assert split_message([topic + b" " + payload]) == (topic, payload)


@given(frames=st.lists(st.binary(), min_size=2, max_size=5))
def test_multipart_split_keeps_the_first_frame_as_topic(frames):
    assert split_message(frames) == (frames[0], b"".join(frames[1:]))


def test_send_json_round_trips_through_split(collector, track):
    producer = track(Producer(collector.endpoint, wait=5))
    value = {"a": [1, "\u2603", None]}
    producer.send_json("t", value)
    topic, payload = split_message(collector.recv())
    assert topic == b"t" and json.loads(payload) == value
