"""One subscription cannot be huge: the outputs cap what a subscriber may send (wire.OUTPUT_FRAME_MAX).

libzmq keeps a subscription in a trie at about 48 bytes per prefix byte
(docs/concepts.md, "Subscriptions"), so a single 1 MiB subscription
used to cost the broker some 49 MiB. A subscription over the cap now closes
only the connection that sent it (counted in fanoutd_disconnects_total);
other subscribers go on receiving, and a long prefix under the cap still works.
"""

from __future__ import annotations

import pytest
import zmq

from conftest import connected, ready_producer, settle, wait_for, warm_up
from fanoutd_client.wire import LONGEST_PREFIX


@pytest.mark.parametrize("output", ["publish", "stamped", "relay"])
def test_a_huge_subscription_closes_only_its_connection(start_daemon, sockets, output):
    d = start_daemon("--relay", "tcp://127.0.0.1:*")
    endpoint = {"publish": d.publish, "stamped": d.stamped, "relay": d.bound()["relay"][0]}[output]
    producer = ready_producer(sockets, d.collector)
    reader = connected(sockets, zmq.SUB, endpoint)
    long_topic = b"L" * LONGEST_PREFIX  # the SUBSCRIBE command with this prefix is exactly the cap: allowed
    long_reader = sockets(zmq.SUB)
    long_reader.setsockopt(zmq.SUBSCRIBE, long_topic)
    long_reader.connect(endpoint)
    settle(d, output, 2)
    warm_up(producer, reader)
    before = d.value("fanoutd_disconnects_total", socket=output)

    huge = sockets(zmq.SUB, reconnect_ivl=-1)  # no reconnect: its one connection is closed once
    huge.setsockopt(zmq.SUBSCRIBE, b"H" * (LONGEST_PREFIX + 1))  # one byte over the cap
    huge.connect(endpoint)
    d.wait_value("fanoutd_disconnects_total", before + 1, socket=output)
    d.wait_value("fanoutd_connected_peers", 2, socket=output)  # the other two were never closed
    assert d.value("fanoutd_disconnects_total", socket=output) == before + 1

    producer.send_multipart([b"H" * (LONGEST_PREFIX + 1) + b" for the huge one"])
    producer.send_multipart([long_topic + b" for the long one"])
    producer.send_multipart([b"t after"])
    got = wait_for("the ordinary subscriber's messages after the huge subscription", lambda: (
        reader.recv_multipart() if reader.poll(100) else None), lambda m: m is not None and m[0] == b"t after")
    assert got[0] == b"t after"
    first = long_reader.recv_multipart()  # a prefix at the cap is a working subscription
    if output == "stamped":  # [prefix, READY trailer]: the stamped output answered that subscription
        assert first[0] == long_topic and len(first) == 2
        first = long_reader.recv_multipart()
    assert first[0] == long_topic + b" for the long one"
    assert not huge.poll(300), "a subscription over the cap must not be applied"
    assert d.value("fanoutd_disconnects_total", socket=output) == before + 1
