"""Forwarder(sockets, *, settings) refuses what the loop cannot run with, each with an error that says why.

The Forwarder is only constructed here, never run: construction touches no
socket, so these checks need neither a binding to libzmq nor a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import zmq

from fanoutd.dataplane import _forward

NODE_ID = b"\x01" * 8


@pytest.fixture
def handles(sockets: Callable[..., zmq.Socket]) -> dict[str, int]:
    """Real socket handles for every role the Forwarder knows."""
    kinds = {"collector": zmq.SUB, "ingress": zmq.PULL, "upstream": zmq.SUB, "publish": zmq.XPUB,
             "push": zmq.PUSH, "relay": zmq.XPUB, "stamped": zmq.XPUB}
    return {role: sockets(kind).underlying for role, kind in kinds.items()}


def test_every_role_and_setting_is_accepted(handles: dict[str, int]) -> None:
    forwarder = _forward.Forwarder(handles, max_message_size=1024, max_frames=4, strip_topic=False,
                                   topics=[b"orders"], upstream_topics=[b""], stall_ns=1_000_000, stall_fd=-1,
                                   node_id=NODE_ID, epoch=7, stamp_streams=16)
    assert forwarder.counters() == dict.fromkeys(_forward.COUNTER_NAMES, 0)
    assert forwarder.topic_counters() == (0, 0)
    assert forwarder.stalls() == forwarder.windows() == (0, 0, 0)


@pytest.mark.parametrize(("sockets_of", "settings", "error", "says"), [
    (lambda h: {**h, "pub": h["publish"]}, {}, ValueError, "unknown socket role 'pub'"),
    (lambda h: {"publish": h["publish"]}, {}, ValueError, "a collector socket is required"),
    (lambda h: {"collector": 0}, {}, ValueError, "a collector socket is required"),
    (lambda h: {b"collector": h["collector"]}, {}, TypeError, "role names"),
    (lambda h: {"collector": h["collector"], "relay": h["relay"]}, {"epoch": 7}, ValueError, "node_id of 8 bytes"),
    (lambda h: {"collector": h["collector"], "upstream": h["upstream"]}, {"node_id": b"short"}, ValueError,
     "node_id of 8 bytes"),
    (lambda h: {"collector": h["collector"], "stamped": h["stamped"]}, {}, ValueError, "non-zero epoch"),
    (lambda h: {"collector": h["collector"]}, {"max_frames": 0}, ValueError, "max_frames must be between"),
    (lambda h: {"collector": h["collector"]}, {"stall_ns": -1}, ValueError, "stall_ns must not be negative"),
    (lambda h: {"collector": h["collector"]}, {"stamp_streams": 0}, ValueError, "stamp_streams must be between"),
    (lambda h: {"collector": h["collector"]}, {"topics": [b"t"] * 1000}, ValueError, "topics can be counted"),
    (lambda h: {"collector": h["collector"]}, {"publish": 1}, TypeError, "publish"),  # a socket is no keyword
])
def test_refused(handles: dict[str, int], sockets_of: Callable[[dict[str, int]], dict[Any, int]],
                 settings: dict[str, Any], error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says):
        _forward.Forwarder(sockets_of(handles), **settings)


def test_settings_are_keywords_only(handles: dict[str, int]) -> None:
    with pytest.raises(TypeError):
        _forward.Forwarder({"collector": handles["collector"]}, 1024)
