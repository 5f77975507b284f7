"""A producer knows the broker's max_message_size and refuses larger messages itself.

fanoutd rejects a message over ``max_message_size`` and only counts it;
the producer is never told.  So the Python producers (blocking and
asyncio) and ``fanout pub`` check the size before sending, against the
limit the collector announces in its connection metadata
(``X-Max-Message-Size``, read from the subscription message the producer
already waits for), or fanoutd's default 1 MiB when it announces none.

The announcing side is the daemon's (it sets ZMQ_METADATA on its
collector); until the daemon on this branch does, a bound SUB with that
metadata stands in for it, and the fallback is tested against the real
daemon.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
import zmq

from conftest import settle
from fanoutd_client import (DEFAULT_MAX_MESSAGE_SIZE, MAX_MESSAGE_SIZE_PROPERTY, MessageTooLarge, Producer,
                            Puller, aio)
from test_clients import collectors, nowhere
from test_tool import fanout, one_line, tool_env

__all__ = ["collectors"]  # fixture shared with test_clients

pytestmark = pytest.mark.timeout(60)
ANNOUNCE_1000 = b"X-Max-Message-Size:1000"


def no_more(collector) -> None:
    with pytest.raises(pytest.fail.Exception):
        collector.recv(timeout=0.3)


def test_the_property_name_is_the_one_the_daemon_sets():
    assert MAX_MESSAGE_SIZE_PROPERTY == "X-Max-Message-Size" and DEFAULT_MAX_MESSAGE_SIZE == 1_048_576


def test_producer_learns_the_limit_and_refuses_larger_messages(collectors):
    collector = collectors(metadata=ANNOUNCE_1000)
    with Producer(collector.endpoint) as producer:
        assert producer.max_message_size == DEFAULT_MAX_MESSAGE_SIZE  # nothing announced yet
        producer.wait_ready(5)
        assert producer.max_message_size == 1000
        producer.send("t", b"x" * 998)  # 1000 bytes with "t ": exactly the limit passes, as in fanoutd
        with pytest.raises(MessageTooLarge) as refused:
            producer.send("t", b"x" * 999)
        assert isinstance(refused.value, ValueError)
        assert (refused.value.size, refused.value.limit) == (1001, 1000)
        assert "message of 1001 bytes is over the limit of 1000 bytes (the collector's max_message_size)" \
            in str(refused.value)
        with pytest.raises(MessageTooLarge, match="1001 bytes"):
            producer.send_multipart("t", b"x" * 500, b"y" * 500)  # counted over all frames
        with pytest.raises(MessageTooLarge):
            producer.send_json("t", "x" * 1000)
        producer.send_multipart("t", b"x" * 499, b"y" * 500)
    assert collector.recv() == [b"t " + b"x" * 998]
    assert collector.recv() == [b"t", b"x" * 499, b"y" * 500]
    no_more(collector)


def test_asyncio_producer_learns_the_limit_too(collectors):
    collector = collectors(metadata=ANNOUNCE_1000)

    async def main() -> None:
        async with asyncio.timeout(20), aio.Producer(collector.endpoint) as producer:
            await producer.wait_ready(5)
            assert producer.max_message_size == 1000
            with pytest.raises(MessageTooLarge, match="over the limit of 1000 bytes"):
                await producer.send("t", b"x" * 999)
            await producer.send("t", b"fits")
    asyncio.run(main())
    assert collector.recv() == [b"t fits"]
    no_more(collector)


def test_the_smallest_limit_of_several_collectors_applies(collectors):
    small, large = collectors(metadata=ANNOUNCE_1000), collectors(metadata=b"X-Max-Message-Size:5000")
    with Producer([large.endpoint, small.endpoint], wait=5) as producer:
        assert producer.max_message_size == 1000


@pytest.mark.parametrize("metadata", [None, b"X-Max-Message-Size:lots", b"X-Max-Message-Size:0",
                                      b"X-Other:12"])
def test_no_or_a_malformed_announcement_falls_back_to_the_default(collectors, metadata):
    collector = collectors(metadata=metadata)
    with Producer(collector.endpoint, wait=5) as producer:
        assert producer.max_message_size == DEFAULT_MAX_MESSAGE_SIZE
        with pytest.raises(MessageTooLarge, match="fanoutd's default max_message_size; the collector announced none"):
            producer.send("t", b"x" * DEFAULT_MAX_MESSAGE_SIZE)


def test_an_explicit_limit_overrides_the_announced_one(collectors):
    collector = collectors(metadata=ANNOUNCE_1000)
    with Producer(collector.endpoint, wait=5, max_message_size=10) as producer:
        assert producer.max_message_size == 10
        with pytest.raises(MessageTooLarge, match="given to this producer"):
            producer.send("t", b"x" * 9)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="max_message_size must be an int >= 1"):
            Producer(nowhere(), max_message_size=bad)


def test_fanout_pub_refuses_an_oversize_line_with_status_1(collectors):
    collector = collectors(metadata=ANNOUNCE_1000)
    result = fanout("pub", "-e", collector.endpoint, "t", stdin=b"first\n" + b"x" * 999 + b"\nnever\n")
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith("fanout pub: stdin line 2: message of 1001 bytes is over the limit of 1000 bytes")
    assert "1 messages before it were sent" in line
    assert collector.recv() == [b"t first"]
    no_more(collector)
    big = fanout("pub", "-e", collector.endpoint, "t", "x" * 999)
    assert big.returncode == 1 and one_line(big.stderr).startswith("fanout pub: MESSAGE: message of 1001 bytes")


# --- the real daemon ---------------------------------------------------------------------------------


def test_against_the_daemon_the_limit_is_its_default_and_exactly_the_limit_gets_through(start_daemon):
    d = start_daemon()
    with Puller(d.push) as puller, Producer(d.collector, wait=5) as producer:
        settle(d, "push", 1)
        assert producer.max_message_size == DEFAULT_MAX_MESSAGE_SIZE  # announced or not, 1 MiB by default
        payload = b"x" * (DEFAULT_MAX_MESSAGE_SIZE - 2)  # with "t ": exactly the limit
        producer.send("t", payload)
        with pytest.raises(MessageTooLarge):
            producer.send("t", payload + b"x")
        assert puller.recv(timeout=10) == payload
    assert d.value("fanoutd_rejected_messages_total", reason="oversize") == 0


def test_the_producer_believes_what_the_daemon_announces(start_daemon):
    """The daemon announces its configured limit in the collector's ZMTP metadata; the Producer uses it."""
    d = start_daemon("--max-message-size", "4096")
    with zmq.Context() as ctx, ctx.socket(zmq.XPUB) as xpub:
        xpub.setsockopt(zmq.LINGER, 0)
        xpub.setsockopt(zmq.RCVTIMEO, 5000)
        xpub.connect(d.collector)
        frame = xpub.recv(copy=False)  # the collector's subscription, with its connection's metadata
        assert frame.get(MAX_MESSAGE_SIZE_PROPERTY) == "4096"
    with Producer(d.collector, wait=5) as producer:
        assert producer.max_message_size == 4096
        with pytest.raises(MessageTooLarge):
            producer.send("t", b"x" * 4096)


def test_fanout_pub_with_a_20_mib_line_exits_1_with_one_line_and_sends_nothing_of_it(start_daemon, tmp_path):
    d = start_daemon()
    big = tmp_path / "big"
    with big.open("wb") as f:
        f.write(b"small\n" + b"x" * (20 * 1024 * 1024) + b"\nafter\n")
    with Puller(d.push) as puller:
        settle(d, "push", 1)
        with big.open("rb") as stdin:
            result = subprocess.run([sys.executable, "-m", "fanoutd_client.tool", "pub", "-e", d.collector, "big"],
                                    stdin=stdin, capture_output=True, env=tool_env(), timeout=60)
        assert result.returncode == 1
        line = one_line(result.stderr)
        assert line.startswith("fanout pub: stdin line 2: message of 20971524 bytes is over the limit of "
                               "1048576 bytes"), line
        assert puller.recv(timeout=10) == b"small"
        with pytest.raises(TimeoutError):
            puller.recv(timeout=0.5)
    assert d.value("fanoutd_rejected_messages_total", reason="oversize") == 0


def test_a_producer_cut_for_an_oversize_frame_is_logged_with_its_address_and_counted(start_daemon):
    """libzmq closes a connection whose frame is over the collector's MAXMSGSIZE and says nothing but
    "disconnected": the broker logs that disconnect at once, naming the peer and that cause among the likely
    ones, and counts it; the messages before it were delivered."""
    from conftest import wait_logged
    d = start_daemon("--max-message-size", "4096")
    with zmq.Context() as ctx, ctx.socket(zmq.XPUB) as raw, Puller(d.push) as puller:
        puller.wait_ready(5)
        raw.setsockopt(zmq.LINGER, 0)
        raw.setsockopt(zmq.RCVTIMEO, 5000)
        raw.connect(d.collector)
        assert raw.recv()[:1] == b"\x01"
        before = d.value("fanoutd_disconnects_total", socket="collector")
        raw.send(b"t fine")
        assert puller.recv(timeout=5) == b"fine"
        raw.send(b"t " + b"x" * (2 * 4096 + 64 * 1024 + 1))  # over the frame guard: libzmq drops the connection
        line = wait_logged(d, "collector: producer 127.0.0.1:")
        assert "over twice max_message_size" in line
        assert d.wait_value("fanoutd_disconnects_total", before + 1, socket="collector") == before + 1
