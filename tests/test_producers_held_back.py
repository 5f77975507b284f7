"""Producers while fanoutd holds its input back, per kind: every message is delivered or counted by the producer.

fanoutd holds back (the collector stops reading) while an output is full; under ``--slow-consumer-policy pace``
for as long as its readers keep reading. Here one reader reads slowly at first, so the daemon is held back and
the producer's own queue and the kernel's buffers fill: what each kind of producer does then is what is tested.
Messages are 4,000 bytes (the C example's buffer is 4 KiB) and N x 4,000 bytes is 100 MB, more than every
buffer on the way can hold (the kernel's on loopback: tcp_rmem up to 32 MiB plus tcp_wmem up to 4 MiB per hop,
and the HWMs below), so a producer that sends flat out is certainly refused or made to wait, and a plain PUB
certainly drops. docs/concepts.md "Producers when the broker holds back" says what each kind does.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import pytest
import zmq

from conftest import connected, ready_producer, settle, wait_for, warm_up
from fanoutd_client import Producer
from test_examples import c_examples, node_examples, run  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(180)

N = 25_000
PAYLOAD = "p" * 3_980  # with the topic and the number: about 4,000 bytes, under the C example's 4 KiB buffer
SLOW = 2_000  # the reader sleeps after each of its first SLOW messages: the daemon is held back meanwhile
HELD_BACK = ("--slow-consumer-policy", "pace", "--slow-consumer-pace-share", "1", "--publish-hwm", "100",
             "--collector-hwm", "100", "--push", "")
NUMBER = re.compile(rb"-(\d+)$")


class Reader:
    """A SUB on the publish output in a thread: slow for its first SLOW messages (or until ``fast`` is set), then
    flat out; stops after ``n`` messages or 5 s of silence and keeps every message's number, in order."""

    def __init__(self, sock: zmq.Socket, n: int, fast: threading.Event | None = None) -> None:
        self.sock, self.n, self.fast = sock, n, fast
        self.numbers: list[int] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _slow(self) -> bool:
        return not self.fast.is_set() if self.fast is not None else len(self.numbers) < SLOW

    def _read(self) -> None:
        while len(self.numbers) < self.n and self.sock.poll(5000):
            match = NUMBER.search(self.sock.recv())
            assert match, "a message without its number"
            self.numbers.append(int(match.group(1)))
            if self._slow():
                time.sleep(0.0005)

    def join(self) -> list[int]:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the reader is still reading after 60 s"
        return self.numbers


def held_back_daemon(start_daemon, sockets):
    """A daemon that paces, and a reader past its handshake and warmed up (the SUB's subscription is live)."""
    d = start_daemon(*HELD_BACK)
    sub = connected(sockets, zmq.SUB, d.publish, rcvhwm=100, rcvbuf=64 * 1024)
    settle(d, "publish", 1)
    warm_up(ready_producer(sockets, d.collector), sub)
    return d, sub


def assert_held_back_without_loss(d) -> None:
    """The daemon was held back (its output stalled) and lost nothing itself: any loss is the producer's."""
    assert d.value("fanoutd_output_stalls_total", socket="publish") > 0, "never held back: the test tested nothing"
    assert_no_loss_in_fanoutd(d)


def assert_no_loss_in_fanoutd(d) -> None:
    assert d.total("fanoutd_slow_consumers_total", socket="publish") == 0, d.log()
    assert d.value("fanoutd_dropped_messages_total", output="publish", reason="hwm") == 0, d.log()


def assert_all_in_order(numbers: list[int]) -> None:
    assert len(numbers) == N and numbers == list(range(1, N + 1)), (len(numbers), numbers[:3], numbers[-3:])


def send_all(producer: Producer) -> None:
    for n in range(1, N + 1):
        producer.send(b"t", f"{PAYLOAD}-{n}".encode())


def test_python_producer_that_drops_counts_every_message_it_does_not_send(start_daemon, sockets):
    """drop=True (the default): a send never waits; what the full queue refuses is counted in ``dropped``, and
    everything else arrives: delivered + dropped == sent, nothing silently gone."""
    d, sub = held_back_daemon(start_daemon, sockets)
    producer = Producer(d.collector, wait=5, hwm=10)
    try:
        reader = Reader(sub, N)
        send_all(producer)
        assert producer.dropped > 0, "the producer was never refused: it was not held back"
        wait_for("every message sent to arrive", lambda: len(reader.numbers),
                 lambda got: got >= N - producer.dropped, timeout=60)
    finally:
        producer.close()
    numbers = reader.join()
    assert len(numbers) + producer.dropped == N, (len(numbers), producer.dropped)
    assert numbers == sorted(set(numbers)), "duplicated or reordered"
    assert_held_back_without_loss(d)


def test_python_producer_that_waits_delivers_everything(start_daemon, sockets):
    """drop=False: a send waits for room (up to send_timeout): the producer goes at the reader's pace."""
    d, sub = held_back_daemon(start_daemon, sockets)
    producer = Producer(d.collector, wait=5, hwm=10, drop=False, send_timeout=30)
    try:
        reader = Reader(sub, N)
        send_all(producer)
        numbers = reader.join()
    finally:
        producer.close()
    assert producer.dropped == 0 and producer.flushed is True
    assert_all_in_order(numbers)
    assert_held_back_without_loss(d)


def test_python_producer_closed_while_held_back_says_it_may_not_have_flushed(start_daemon, sockets, caplog):
    """Closed with its queue full (1,000 messages: a reader at 2,000 a second needs 0.5 s for them, after the
    kernel's buffers) and a 200 ms linger, the Producer cannot know what libzmq discards: it warns and sets
    ``flushed`` to False rather than let the loss pass unseen."""
    d, sub = held_back_daemon(start_daemon, sockets)
    done = threading.Event()
    reader = Reader(sub, N, fast=done)  # slow until the producer is closed
    producer = Producer(d.collector, wait=5, hwm=1_000, drop=False, send_timeout=30, linger=0.2)
    try:
        send_all(producer)
    finally:
        producer.close()
        done.set()
    reader.join()
    assert producer.flushed is False
    assert "did not take everything queued within the 0.2s linger" in caplog.text
    assert_held_back_without_loss(d)


def test_fanout_pub_says_so_when_the_collector_did_not_take_its_last_lines_before_exit(start_daemon, sockets):
    """Held back until after its last line, `fanout pub` would close with 10,000 lines and more still queued (its
    hwm, plus the kernel's buffers) for a reader that takes at most 2,000 a second: its 5 s linger runs out and
    libzmq discards the rest unseen. It exits 1 saying the last lines may be lost, never 0."""
    d, sub = held_back_daemon(start_daemon, sockets)
    done = threading.Event()
    reader = Reader(sub, N, fast=done)  # slow until fanout pub has exited
    lines = b"".join(f"{PAYLOAD}-{n}\n".encode() for n in range(1, N + 1))
    try:
        result = subprocess.run([sys.executable, "-m", "fanoutd_client.tool", "pub", "-e", d.collector, "t"],
                                input=lines, capture_output=True, timeout=120, check=False)
    finally:
        done.set()
    numbers = reader.join()
    assert result.returncode == 1, (result.returncode, result.stderr.decode(), len(numbers))
    assert b"did not take the last messages within 5s" in result.stderr, result.stderr.decode()
    assert numbers == sorted(set(numbers))
    assert_held_back_without_loss(d)


def test_fanout_pub_from_stdin_delivers_every_line(start_daemon, sockets):
    """`fanout pub` reads lines from stdin and waits when held back (drop=False): every line arrives, exit 0."""
    d, sub = held_back_daemon(start_daemon, sockets)
    reader = Reader(sub, N)
    lines = b"".join(f"{PAYLOAD}-{n}\n".encode() for n in range(1, N + 1))
    result = subprocess.run([sys.executable, "-m", "fanoutd_client.tool", "pub", "-e", d.collector, "t"],
                            input=lines, capture_output=True, timeout=120, check=False)
    numbers = reader.join()
    assert result.returncode == 0, result.stderr.decode()
    assert_all_in_order(numbers)
    assert_held_back_without_loss(d)


@pytest.mark.parametrize("lang", ["c", "node"])
def test_example_producer_delivers_everything(lang, request, start_daemon, sockets, run):  # noqa: F811
    """The C and Node examples set XPUB_NODROP and wait at a full queue (up to 5 s each): every message arrives.
    A send refused for 5 s would end the run with exit 1 and the message's number on stderr, never silently."""
    example = request.getfixturevalue(f"{lang}_examples")
    d, sub = held_back_daemon(start_daemon, sockets)
    reader = Reader(sub, N)
    status, _, err = run([*example["producer"], d.collector, "t", str(N), PAYLOAD]).finish(timeout=120)
    numbers = reader.join()
    assert status == 0, (err, len(numbers))
    assert_all_in_order(numbers)
    assert_held_back_without_loss(d)


def test_c_example_says_so_when_the_collector_did_not_take_its_last_messages_before_exit(
        c_examples, start_daemon, sockets, run):  # noqa: F811
    """Held back until after its last send, the C producer closes with its queue full (1,000 messages, which a
    reader at 2,000 a second takes in no less than 0.5 s, after the kernel's buffers): its linger (200 ms here)
    runs out and libzmq discards the rest unseen. It exits 1 saying the last messages may be lost, never 0."""
    d, sub = held_back_daemon(start_daemon, sockets)
    done = threading.Event()
    reader = Reader(sub, N, fast=done)  # slow until the producer has exited
    try:
        status, _, err = run([*c_examples["producer"], d.collector, "t", str(N), PAYLOAD],
                             env={"FANOUT_LINGER_MS": "200"}).finish(timeout=120)
    finally:
        done.set()
    numbers = reader.join()
    assert status == 1, (status, err, len(numbers))
    assert "did not take the last messages within 200 ms" in err, err
    assert numbers == sorted(set(numbers))
    assert_held_back_without_loss(d)


def plain_pub(sockets, endpoint: str, fixed: bool) -> zmq.Socket:
    """A plain PUB as any language makes one; ``fixed``: the two lines of clients/README.md (XPUB_NODROP, and a
    blocking send, pyzmq's default)."""
    sock = sockets(zmq.PUB, sndhwm=10, sndtimeo=30_000)
    if fixed:
        sock.setsockopt(zmq.XPUB_NODROP, 1)  # libzmq's PUB accepts it: at the HWM it refuses instead of dropping
    sock.connect(endpoint)
    return sock


def test_plain_pub_with_xpub_nodrop_delivers_everything(start_daemon, sockets):
    d, sub = held_back_daemon(start_daemon, sockets)
    pub = plain_pub(sockets, d.collector, fixed=True)
    warm_up(pub, sub)  # a PUB cannot see the collector's subscription: probe end to end (the slow joiner)
    reader = Reader(sub, N)
    for n in range(1, N + 1):
        pub.send(f"t {PAYLOAD}-{n}".encode())  # blocks at the HWM (EAGAIN after SNDTIMEO would raise)
    assert_all_in_order(reader.join())
    assert_held_back_without_loss(d)


def test_plain_pub_without_the_fix_loses_messages_that_nobody_counts(start_daemon, sockets):
    """Why the fix matters: a plain PUB drops at its own HWM, in its own process, where fanoutd cannot see it.
    Certain here: it sends 100 MB flat out while the reader is slow, more than every buffer on the way holds.
    Whether fanoutd was held back at all is not asserted: a PUB whose application thread outruns its own I/O
    thread drops at its HWM before anything downstream is full, which is the same silent loss."""
    d, sub = held_back_daemon(start_daemon, sockets)
    pub = plain_pub(sockets, d.collector, fixed=False)
    warm_up(pub, sub)
    sent = threading.Event()
    reader = Reader(sub, N, fast=sent)
    for n in range(1, N + 1):
        pub.send(f"t {PAYLOAD}-{n}".encode())  # never blocks, never refuses: past the HWM it drops
    sent.set()
    numbers = reader.join()
    assert len(numbers) < N, "nothing was lost: the PUB was not held back"
    assert numbers == sorted(set(numbers))
    assert_no_loss_in_fanoutd(d)  # the loss is nowhere in fanoutd's counters


def test_asyncio_producer_that_waits_delivers_everything(start_daemon, sockets):
    """fanoutd_client.aio.Producer(drop=False) on zmq.asyncio: the same wait at a full queue, from a coroutine.
    Awaiting zmq.asyncio's send_multipart instead raised TimeoutError at the first full queue (an XPUB always says
    it is writable, so zmq.asyncio never waits)."""
    import asyncio

    from fanoutd_client import aio

    d, sub = held_back_daemon(start_daemon, sockets)
    reader = Reader(sub, N)

    async def produce() -> aio.Producer:
        producer = aio.Producer(d.collector, hwm=10, drop=False, send_timeout=30)
        try:
            await producer.wait_ready(5)
            for n in range(1, N + 1):
                await producer.send(b"t", f"{PAYLOAD}-{n}".encode())
            return producer
        finally:
            await asyncio.to_thread(reader.join)
            await producer.aclose()

    producer = asyncio.run(produce())
    assert producer.dropped == 0 and producer.flushed is True
    assert_all_in_order(reader.numbers)
    assert_held_back_without_loss(d)
