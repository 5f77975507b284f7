"""A reader that keeps up never meets a full queue: no drop at the pusher, no hold at the publisher.

libzmq learns that a reader has made room under the high-water mark from a
command the reader's I/O thread sends, and while a socket sends it reads its
commands at most once every 3M CPU cycles (about a millisecond). A message
sent within that time after the reader took the last one then finds the
queue "full" although it is empty: the PUSH output counted a drop nobody
needed, the publish output held all output and woke the slow-consumer
guard. The loop now reads the commands when a send is refused and tries
once more. These tests make that exact situation (a reader with an empty
queue, the next message within the throttle) and fail on the loop before
the fix: a message lost at the pusher in the first round, a stall in most
rounds at the publisher.
"""

from __future__ import annotations

import time

import pytest
import zmq

from conftest import connected, ready_producer, settle, warm_up

HWM = 1  # libzmq's reader then says "read up to here" after every message (its low-water mark is 1)
ROUNDS, CHAIN = 20, 5


@pytest.mark.parametrize("output", ["push", "publish"])
def test_a_reader_that_took_every_message_is_never_seen_as_full(start_daemon, sockets, output):
    d = start_daemon("--push-hwm", str(HWM), "--publish-hwm", str(HWM))
    kind, endpoint = (zmq.PULL, d.push) if output == "push" else (zmq.SUB, d.publish)
    reader = connected(sockets, kind, endpoint, rcvhwm=0)
    producer = ready_producer(sockets, d.collector)
    settle(d, output, 1)
    warm_up(producer, reader)
    for r in range(ROUNDS):
        time.sleep(0.005)  # past the throttle: the round's first send reads the commands waiting
        for i in range(CHAIN):  # each message sent once the reader has taken the one before: always room
            producer.send(b"t %d.%d" % (r, i))
            assert reader.poll(2000), f"round {r}: message {i} never came"
            assert reader.recv().endswith(b"%d.%d" % (r, i))
    if output == "push":
        assert d.value("fanoutd_dropped_messages_total", output="push", reason="hwm") == 0
    else:
        assert d.value("fanoutd_output_stalls_total", socket="publish") == 0
