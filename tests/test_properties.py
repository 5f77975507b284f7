"""Property tests (hypothesis) of message handling, against the real daemon.

The model below is the specification in a few lines; hypothesis throws
arbitrary frame lists at the daemon and checks both outputs against it.
"""

from __future__ import annotations

import pytest
import zmq
from fanoutd_client import wire
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import connected, ready_producer, warm_up

MAX_SIZE = 1024
MAX_FRAMES = 6
SENTINEL = [b"zz sentinel"]


def accepted(frames: list[bytes]) -> bool:
    return len(frames) <= MAX_FRAMES and sum(map(len, frames)) <= MAX_SIZE


def pushed(frames: list[bytes]) -> list[bytes]:
    """What a puller gets: the payload without its topic."""
    if len(frames) == 1:
        topic = wire.topic(frames[0])
        return [frames[0][len(topic) + 1:]] if len(topic) < len(frames[0]) else [frames[0]]
    return frames[1:]


@pytest.fixture
def rig(start_daemon, sockets):
    d = start_daemon("--max-message-size", str(MAX_SIZE), "--max-frames", str(MAX_FRAMES))
    sub = connected(sockets, zmq.SUB, d.publish, rcvhwm=0)
    pull = connected(sockets, zmq.PULL, d.push, rcvhwm=0)
    prod = ready_producer(sockets, d.collector)
    warm_up(prod, sub, pull)
    return d, prod, sub, pull


frames_strategy = st.lists(
    st.one_of(st.binary(max_size=64), st.binary(min_size=200, max_size=700),
              st.builds(lambda t, p: t + b" " + p, st.binary(max_size=8), st.binary(max_size=32))),
    min_size=1, max_size=MAX_FRAMES + 3)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=frames_strategy)
def test_outputs_match_the_model(rig, frames):
    d, prod, sub, pull = rig
    prod.send_multipart(frames)
    prod.send_multipart(SENTINEL)
    if accepted(frames):
        assert sub.recv_multipart() == frames
        assert pull.recv_multipart() == pushed(frames)
    assert sub.recv_multipart() == SENTINEL
    assert pull.recv_multipart() == [b"sentinel"]


@given(frames=frames_strategy)
def test_model_sanity(frames):
    """The model itself: stripping never invents bytes, and keeps every frame after the topic."""
    out = pushed(frames)
    if len(frames) > 1:
        assert out == frames[1:]
    else:
        assert frames[0].endswith(out[0])
