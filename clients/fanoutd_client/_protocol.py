"""fanoutd's protocol as the clients speak it, once, for both flavours of I/O.

Framing and topic rules and the consumers' receive loop with its timeout
(with sequence stamps on a stamped subscriber) are here, the producer's
side in :mod:`._producing`; none of it blocks.  A method that has to wait is a
generator that yields a poll timeout (:data:`._base.Waits`); the blocking
clients drive it with :func:`._base.run_blocking`, the asyncio clients with
an ``await`` (:mod:`fanoutd_client.aio`).  Sockets are only read here with
``NOBLOCK``, through ``self._nowait``, so a wait can always be abandoned
without having taken a message off the socket.
"""

from __future__ import annotations

import collections
import json
import math
import time
from collections.abc import Iterable
from typing import Any, Unpack

import zmq

from ._base import Client, ClientOptions, Data, Endpoints, Waits, ms, to_bytes
from ._stamps import GapTracker, NotStamped, Stamp, is_ready, parse_trailer
from .wire import topic as topic_of


def single_frame_topic(topic: Data) -> bytes:
    """A topic that can lead a single-frame message: non-empty, and all topic by the wire's rule (no space)."""
    data = to_bytes(topic, "topic")
    if not data:
        raise ValueError("topic must not be empty")
    if topic_of(data) != data:
        raise ValueError(f"topic {data!r} contains a space; in a single-frame message the topic "
                         "ends at the first space (use send_multipart for such topics)")
    return data


def split_message(frames: list[bytes]) -> tuple[bytes, bytes]:
    """(topic, payload) of a message as fanoutd defines it.

    A single frame's payload is what follows its first space; a multipart
    message's payload frames are concatenated (use ``recv_multipart`` when
    the frame boundaries matter).
    """
    if len(frames) == 1:
        topic = topic_of(frames[0])
        return topic, frames[0][len(topic) + 1:]
    return frames[0], b"".join(frames[1:])


def parse_json(payload: bytes) -> Any:
    """A payload parsed as UTF-8 JSON (ValueError if it is not)."""
    return json.loads(payload.decode("utf-8"))


class ReceiverProtocol(Client):
    """A consumer's receive loop: one message's frames, or TimeoutError after ``timeout`` s.

    Messages read while waiting for readiness are kept in ``_early`` and
    handed out first, in order, so waiting never loses one.
    """

    def __init__(self, endpoints: Endpoints, **options: Unpack[ClientOptions]) -> None:
        self._early: collections.deque[list[bytes]] = collections.deque()
        super().__init__(endpoints, **options)

    def _frames(self, timeout: float | None) -> Waits[list[bytes]]:
        """The next message: one kept while waiting for readiness, else one off the socket."""
        if self._early:
            self._check_open()
            return self._early.popleft()
        return (yield from self._read(timeout))

    def _read(self, timeout: float | None) -> Waits[list[bytes]]:
        deadline = 0.0 if timeout is None else time.monotonic() + ms(timeout, "timeout") / 1000
        while True:
            self._check_open()
            try:
                return self._nowait.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:  # nothing yet, or a poll's spurious wake-up
                pass
            if timeout is None:
                yield None
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timed_out(timeout)
            yield math.ceil(remaining * 1000)


class SubscriberProtocol(ReceiverProtocol):
    """A SUB on fanoutd's PUB, subscribed (before connecting) to byte prefixes of the first frame.

    With ``stamped=True`` (for fanoutd's stamped output) every message's
    trailing stamp is checked, stripped and counted: ``lost``, ``restarts``,
    ``resets`` and ``untracked`` say what this subscriber missed (see
    :class:`._stamps.GapTracker`), ``last_stamp`` is the latest stamp.
    """

    _kind = zmq.SUB
    _role = "publisher"

    def __init__(self, endpoints: Endpoints, topics: Data | Iterable[Data] = (b"",), *, stamped: bool = False,
                 **options: Unpack[ClientOptions]) -> None:
        items = (topics,) if isinstance(topics, (str, bytes)) else topics
        self._topics = [to_bytes(t, "topic") for t in items]
        self._gaps = GapTracker(self._topics) if stamped else None
        self.last_stamp: Stamp | None = None
        self._ready: set[bytes] = set()  # prefixes the broker said are live for this subscriber
        self._repairing = False  # a blocking Subscriber with a repair endpoint fills its gaps (consumers.py)
        super().__init__(endpoints, **options)

    def _readiness(self, timeout: float) -> Waits[None]:
        """Wait until the stamped output has answered every subscription; TimeoutError after ``timeout`` s.

        Messages that arrive meanwhile are kept, in order, for the next receives.
        """
        if self._gaps is None:
            raise RuntimeError("only a stamped subscriber can know its subscriptions are live: the stamped output "
                               "answers each one (Subscriber(..., stamped=True)); a plain SUB cannot")
        deadline = time.monotonic() + ms(timeout, "timeout") / 1000
        while not set(self._topics) <= self._ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(self._topics) - self._ready)
                raise TimeoutError(f"the stamped output at {', '.join(self.endpoints)} did not confirm "
                                   f"{len(missing)} subscription(s) within {timeout:g}s (is fanoutd running there, "
                                   "with a stamped output?)")
            try:
                frames = yield from self._read(remaining)
            except TimeoutError:
                continue
            if not self._control(frames):
                self._early.append(frames)

    def _control(self, frames: list[bytes]) -> bool:
        """Take the broker's answer to a subscription (``[prefix, READY]``); False for anything else."""
        if len(frames) == 2 and is_ready(frames[1]):
            self._ready.add(frames[0])
            return True
        return False

    def _message(self, timeout: float | None) -> Waits[list[bytes]]:
        """The next message's frames, its stamp checked, counted and stripped on a stamped subscriber."""
        while True:
            frames = yield from self._frames(timeout)
            if self._gaps is None:
                return frames
            if not self._control(frames):
                break
            if self._repairing:  # its heads may have shown a gap at the end: the caller fills it first
                return []
        try:
            if len(frames) < 2:
                raise NotStamped("a message of one frame has no trailer")
            stamp = parse_trailer(frames[-1])
        except NotStamped as exc:
            raise NotStamped(f"{exc}: is {', '.join(self.endpoints)} fanoutd's stamped output?") from None
        self._gaps.observe(frames[0], stamp, count=not self._repairing)
        self.last_stamp = stamp
        return frames[:-1]

    def _tracker(self) -> GapTracker:
        if self._gaps is None:
            raise AttributeError("gaps are counted only by a stamped subscriber (Subscriber(..., stamped=True))")
        return self._gaps

    @property
    def lost(self) -> int:
        """Messages this subscriber missed, from gaps in the stamps of the streams it covers."""
        return self._tracker().lost

    @property
    def restarts(self) -> int:
        """Broker restarts seen (a restart is reported here, never as lost messages)."""
        return self._tracker().restarts

    @property
    def resets(self) -> int:
        """Streams whose history was forgotten (the broker's bounded stamp table): gaps across them are unknown."""
        return self._tracker().resets

    @property
    def untracked(self) -> int:
        """Messages whose stream a subscription covers only in part (a prefix longer than the topic)."""
        return self._tracker().untracked

    def _prepare(self, sock: zmq.Socket[Any]) -> None:
        # Before connect, so the subscriptions go out with the handshake.
        for topic in self._topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)

    def subscribe(self, topic: Data) -> None:
        """Also receive messages whose first frame starts with ``topic``."""
        self._check_open()
        data = to_bytes(topic, "topic")
        self._socket.setsockopt(zmq.SUBSCRIBE, data)
        self._topics.append(data)
        if self._gaps is not None:
            self._gaps.subscriptions_changed(self._topics)

    def unsubscribe(self, topic: Data) -> None:
        """Undo one earlier ``subscribe`` of exactly this prefix."""
        self._check_open()
        data = to_bytes(topic, "topic")
        self._socket.setsockopt(zmq.UNSUBSCRIBE, data)
        if data in self._topics:
            self._topics.remove(data)
        if data not in self._topics:
            self._ready.discard(data)
        if self._gaps is not None:
            self._gaps.subscriptions_changed(self._topics)


class PullerProtocol(ReceiverProtocol):
    """A PULL on fanoutd's PUSH: payloads with the topic already stripped by fanoutd.

    fanoutd's PUSH hands a message only to pullers connected at that moment
    (with none, it drops and counts it as ``push/no_puller``), and nothing
    travels from the broker to one puller alone that could confirm it.  So
    readiness is this end's own knowledge: a socket monitor, set up before
    connecting, reports the completed ZMTP handshake on each endpoint.  The
    broker attaches the connection to its PUSH before it sends its half of
    the handshake whenever it has already read ours, which its access check
    (ZAP, on every fanoutd socket) all but ensures; see docs/concepts.md.
    """

    _kind = zmq.PULL
    _role = "pusher"

    def __init__(self, endpoints: Endpoints, **options: Unpack[ClientOptions]) -> None:
        self._monitor: zmq.Socket[Any] | None = None
        self._handshakes: set[bytes] = set()
        super().__init__(endpoints, **options)

    def _prepare(self, sock: zmq.Socket[Any]) -> None:
        # Before connect, so no handshake goes unseen; a plain socket on the same context, so the
        # non-blocking reads below work for both flavours.
        address = f"inproc://fanoutd-client-puller-monitor-{sock.FD}"
        sock.monitor(address, zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self._monitor = zmq.Context.shadow(self._context.underlying).socket(zmq.PAIR)
        self._monitor.setsockopt(zmq.LINGER, 0)
        self._monitor.connect(address)

    def _connected(self) -> bool:
        """Whether every endpoint has completed a handshake (reads the monitor's pending events)."""
        if self._monitor is None:
            return True
        while True:
            try:
                frames = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) == 2:
                self._handshakes.add(frames[1])
        if len(self._handshakes) < len(self.endpoints):
            return False
        self._stop_monitor()
        return True

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None

    def _readiness(self, timeout: float) -> Waits[None]:
        """Wait until the connection to every endpoint is up; TimeoutError after ``timeout`` s.

        Messages that arrive meanwhile are kept, in order, for the next receives.
        """
        deadline = time.monotonic() + ms(timeout, "timeout") / 1000
        while not self._connected():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no connection to the push output at {', '.join(self.endpoints)} within "
                                   f"{timeout:g}s (is fanoutd running there, with a push output?)")
            try:  # the monitor is not this socket: look at it again every 10 ms
                self._early.append((yield from self._read(min(remaining, 0.01))))
            except TimeoutError:
                pass

    def _close_socket(self) -> bool:
        if not self.closed:
            self._stop_monitor()
        return super()._close_socket()
