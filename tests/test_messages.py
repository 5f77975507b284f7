"""A corpus of odd and malformed messages: each is forwarded or counted as rejected, never fatal."""

from __future__ import annotations

import zmq

from conftest import connected, ready_producer, settle, warm_up

LIMIT = 4096
FRAMES = 8

# (message frames, what the puller should get, or None when the daemon must reject it)
CORPUS: list[tuple[list[bytes], list[bytes] | None]] = [
    ([b""], [b""]),
    ([b" "], [b""]),
    ([b" leading space"], [b"leading space"]),
    ([b"two  spaces"], [b" spaces"]),
    ([b"\x00\xff\xfe\x80 \x00binary"], [b"\x00binary"]),
    ([b"\xff" * 100], [b"\xff" * 100]),
    ([b"", b""], [b""]),
    ([b"topic", b""], [b""]),
    ([b"", b"payload"], [b"payload"]),
    ([b"t"] * FRAMES, [b"t"] * (FRAMES - 1)),
    ([b"t"] * (FRAMES + 1), None),
    ([b"t"] * 200, None),
    ([b"t " + b"x" * (LIMIT - 2)], [b"x" * (LIMIT - 2)]),
    ([b"t " + b"x" * (LIMIT - 1)], None),
    ([b"t", b"x" * (LIMIT // 2), b"y" * (LIMIT // 2)], None),
    ([b"t " + b"x" * (3 * LIMIT)], None),
    ([b"t\n\r\t payload"], [b"payload"]),
]


def test_corpus_is_forwarded_or_counted(start_daemon, sockets):
    d = start_daemon("--max-message-size", str(LIMIT), "--max-frames", str(FRAMES))
    sub = connected(sockets, zmq.SUB, d.publish)
    pull = connected(sockets, zmq.PULL, d.push)
    prod = ready_producer(sockets, d.collector)
    settle(d, "push", 1)  # or a warm-up probe may find no puller yet (dropped, counted as no_puller)
    probes = warm_up(prod, sub, pull)
    for frames, expected in CORPUS:
        prod.send_multipart(frames)
        prod.send(b"after ok")  # the next message always flows
        if expected is not None:
            assert sub.recv_multipart() == frames
            assert pull.recv_multipart() == expected
        assert sub.recv_multipart() == [b"after ok"], f"after {frames[:3]!r}"
        assert pull.recv_multipart() == [b"ok"]
    received = probes + 2 * len(CORPUS)
    rejected = sum(1 for _, expected in CORPUS if expected is None)
    assert d.wait_value("fanoutd_received_messages_total", received) == received
    assert d.value("fanoutd_rejected_messages_total", reason="too_many_frames") == 2
    assert d.value("fanoutd_rejected_messages_total", reason="oversize") == rejected - 2
    assert d.value("fanoutd_published_messages_total") == received - rejected
    assert d.value("fanoutd_pushed_messages_total") == received - rejected
    assert d.proc.poll() is None
