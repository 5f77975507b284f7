"""The producer's side of fanoutd's protocol, for both flavours of I/O: readiness, the size limit, draining.

Why an XPUB, how readiness is seen, the broker's announced limit and the
hold while a collector drains live here; nothing here blocks (see
:mod:`._protocol` for how waits are expressed), the blocking and asyncio
producers only do the I/O.
"""

from __future__ import annotations

import collections
import json
import math
import time
from typing import Any, Unpack

import zmq

from ._base import Client, ClientOptions, Data, Endpoints, Waits, log, ms, to_bytes
from ._protocol import single_frame_topic
from .wire import DRAIN_TOPIC  # a stopping collector subscribes to it: hold messages until one subscribes anew

#: The ZMTP metadata property in which fanoutd's collector announces its
#: ``max_message_size`` (decimal bytes): a producer's XPUB reads it from the
#: collector's subscription message.
MAX_MESSAGE_SIZE_PROPERTY = "X-Max-Message-Size"
#: fanoutd's default ``max_message_size``, assumed when the collector does not announce one.
DEFAULT_MAX_MESSAGE_SIZE = 1_048_576
#: How often (in sends) a producer looks for subscription news without being asked.
CHECK_EVERY = 16


class MessageTooLarge(ValueError):
    """A message over the broker's ``max_message_size``, refused before it was sent.

    fanoutd would reject it anyway, counting it but telling nobody; refusing
    here tells the one party who can act on it.
    """

    def __init__(self, size: int, limit: int, source: str) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes is over the limit of {limit} bytes ({source}): "
                         "not sent, fanoutd would reject it")


def announced_limit(frame: zmq.Frame) -> int | None:
    """The ``max_message_size`` a collector announced on its connection, or None.

    ``Frame.get`` raises ZMQError (EINVAL) for a property the peer did not
    send, as fanoutd before 0.2 does not; a malformed value counts as none.
    """
    try:
        value = frame.get(MAX_MESSAGE_SIZE_PROPERTY)
    except zmq.ZMQError:
        return None
    text = str(value)
    if not (text.isascii() and text.isdigit() and 0 < len(text) < 19 and int(text) > 0):
        log.warning("ignoring the collector's %s %r: not a positive decimal", MAX_MESSAGE_SIZE_PROPERTY, text)
        return None
    return int(text)


class ProducerProtocol(Client):
    """A producer's protocol: an XPUB that counts the collector's subscriptions.

    Why XPUB and not PUB: the collector is a bound SUB, and a PUB that connects
    to it drops everything it sends until the collector's subscription has come
    back over the new connection (the "slow joiner", libzmq issues 1594/2267).
    A PUB cannot tell when that has happened; an XPUB with ``XPUB_VERBOSE``
    receives every peer's subscription as a message (first byte 0x01), so
    ``wait_ready`` can wait for exactly that and nothing is lost.  On the wire
    an XPUB is a PUB: fanoutd and any other SUB see no difference.

    The subscription message also carries the collector's connection
    metadata, where fanoutd announces its ``max_message_size``: the limit a
    producer enforces is learnt there, not configured twice.
    """

    _kind = zmq.XPUB
    _role = "collector"
    _default_linger = 1.0

    def __init__(self, endpoints: Endpoints, *, drop: bool = True, send_timeout: float | None = None,
                 max_message_size: int | None = None, **options: Unpack[ClientOptions]) -> None:
        if max_message_size is not None and (isinstance(max_message_size, bool)
                                             or not isinstance(max_message_size, int) or max_message_size < 1):
            raise ValueError(f"max_message_size must be an int >= 1 (None: learn it), not {max_message_size!r}")
        self._subscriptions = 0
        self._drop = drop
        #: Messages not sent because the collector's queue was full (``drop=True`` only): counted, never silent.
        self.dropped = 0
        #: After ``close``: False if its linger ran out, so messages still queued may have been discarded
        #: (libzmq counts nothing); True if everything was taken; None if unknown (not closed yet, or an
        #: injected context, which flushes in the background).
        self.flushed: bool | None = None
        self._send_timeout_ms = -1 if send_timeout is None else ms(send_timeout, "send_timeout")
        self._max_override = max_message_size
        self._paused = False  # a collector said it is draining: hold messages until one subscribes anew
        self._held: collections.deque[list[bytes]] = collections.deque()
        self._sends = 0
        super().__init__(endpoints, **options)
        self._hold_max = self._socket.getsockopt(zmq.SNDHWM) or 2**62
        # The limits announced by the latest subscriptions, one per endpoint (None:
        # none announced): a collector that reconnects, say after a restart with
        # another limit, replaces what it said before.
        self._announced: collections.deque[int | None] = collections.deque(maxlen=len(self.endpoints))

    def _prepare(self, sock: zmq.Socket[Any]) -> None:
        # Verbose: pass on every peer's subscription, not only the first of each
        # topic, so that N collectors subscribing to b"" give N messages.
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        # Always NODROP: libzmq then refuses a message for a full queue instead of dropping it unseen, and
        # the producer decides: count it and go on (drop=True), or wait up to send_timeout (drop=False).
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        if not self._drop:
            sock.setsockopt(zmq.SNDTIMEO, self._send_timeout_ms)

    def _drain(self) -> None:
        """Count the subscriptions that have arrived and note their limits (without waiting)."""
        while True:
            try:
                frame = self._nowait.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            news = bytes(frame.buffer[:1 + len(DRAIN_TOPIC)])
            if news[1:] == DRAIN_TOPIC:
                self._paused = news[:1] == b"\x01"
                log.info("collector %s: holding messages until a collector subscribes again" if self._paused
                         else "collector %s: no longer draining", "draining" if self._paused else "gone")
            elif news[:1] == b"\x01":
                if self._paused:
                    self._paused = False
                    log.info("a collector subscribed: sending %d held message(s)", len(self._held))
                self._subscriptions += 1
                self._announced.append(announced_limit(frame))
                log.debug("collector subscription %d of %d arrived (%s: %s)", self._subscriptions,
                          len(self.endpoints), MAX_MESSAGE_SIZE_PROPERTY, self._announced[-1])

    @property
    def ready(self) -> bool:
        """True once as many subscriptions as endpoints have arrived and no collector drains (checked without waiting).

        Subscriptions are counted, not matched to endpoints: a collector that
        reconnects during start-up counts twice.  That is rare and only makes
        readiness early, never late.
        """
        self._check_open()
        self._drain()
        return self._subscriptions >= len(self.endpoints) and not self._paused

    @property
    def max_message_size(self) -> int:
        """The largest message (bytes over all frames) this producer sends; larger ones raise MessageTooLarge.

        The collector's announced ``max_message_size`` (the smallest, with
        several collectors), learnt by ``wait_ready``/``ready``; fanoutd's
        default 1 MiB until then or if it announces none; or the
        ``max_message_size`` given to the constructor, which overrides both.
        """
        return self._limit()[0]

    def _limit(self) -> tuple[int, str]:
        if self._max_override is not None:
            return self._max_override, "the max_message_size given to this producer"
        limit, announced = min(((DEFAULT_MAX_MESSAGE_SIZE, False) if n is None else (n, True)
                                for n in self._announced), default=(DEFAULT_MAX_MESSAGE_SIZE, False))
        if announced:
            return limit, "the collector's max_message_size"
        return limit, "fanoutd's default max_message_size; the collector announced none"

    def _readiness(self, timeout: float) -> Waits[None]:
        """Wait until every collector has subscribed; TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + ms(timeout, "timeout") / 1000
        while not self.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._not_ready(timeout)
            yield max(1, math.ceil(remaining * 1000))

    def _not_ready(self, timeout: float) -> TimeoutError:
        arrived = (f"{self._subscriptions} of {len(self.endpoints)} subscriptions arrived "
                   f"from {', '.join(self.endpoints)}")
        if self._uses_curve:  # a refused CURVE handshake looks exactly like silence
            return TimeoutError(f"no answer: the collector may have refused this key ({arrived} within "
                                f"{timeout:g}s; is this client's public key in the daemon's clients directory?)")
        return TimeoutError(f"collector not ready within {timeout:g}s: {arrived} (is fanoutd running there?)")

    def _single(self, topic: Data, payload: Data) -> list[bytes]:
        """The one frame ``topic + b" " + payload``, checked against the topic rules and the limit."""
        self._check_open()
        return self._checked([single_frame_topic(topic) + b" " + to_bytes(payload, "payload")])

    def _multipart(self, topic: Data, frames: tuple[Data, ...]) -> list[bytes]:
        """``[topic, *frames]``: a lone topic frame would be a single-frame message, split at its first space."""
        self._check_open()
        head = to_bytes(topic, "topic")
        if not head:
            raise ValueError("topic must not be empty")
        if not frames:
            raise ValueError("send_multipart needs at least one payload frame")
        return self._checked([head, *(to_bytes(f, "frame") for f in frames)])

    @staticmethod
    def _json(obj: Any) -> bytes:
        """Compact UTF-8 JSON; NaN and Infinity are refused (ValueError): other languages reject them."""
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")

    def _checked(self, frames: list[bytes]) -> list[bytes]:
        size = sum(map(len, frames))
        limit, source = self._limit()
        if size > limit:
            raise MessageTooLarge(size, limit, source)
        return frames

    def _must_wait(self) -> bool:
        """Whether a send has to wait for a draining collector to go (drop=False and the hold is full)."""
        self._sends += 1
        if self._paused or self._sends % CHECK_EVERY == 0:
            self._drain()
        return self._paused and not self._drop and len(self._held) >= self._hold_max

    def _until_resumed(self) -> Waits[None]:
        """Wait (up to send_timeout) until a collector subscribes anew or the hold has room."""
        deadline = None if self._send_timeout_ms < 0 else time.monotonic() + self._send_timeout_ms / 1000
        while self._paused and len(self._held) >= self._hold_max:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise self._queue_full()
            yield None if remaining is None else max(1, math.ceil(remaining * 1000))
            self._drain()

    def _release(self, frames: list[bytes] | None) -> list[list[bytes]]:
        """What to send now, held messages first; while a collector drains, hold (or count a drop past hwm)."""
        if self._paused:
            if frames is not None:
                if len(self._held) < self._hold_max:
                    self._held.append(frames)
                else:
                    self._refused()
            return []
        out = list(self._held)
        self._held.clear()
        if frames is not None:
            out.append(frames)
        return out

    def _note_flush(self, seconds: float) -> None:
        """Set :attr:`flushed` from how long closing a private context took: it returns early once all was taken."""
        if not self._owns_context:
            return
        self.flushed = self._sends == 0 or seconds < self._linger_ms / 1000 * 0.98
        if not self.flushed:
            log.warning("closing: the collector at %s did not take everything queued within the %gs linger "
                        "(fanoutd holding its producers back, or gone?); what was left is discarded, uncounted "
                        "(Producer.flushed is False)", ", ".join(self.endpoints), self._linger_ms / 1000)

    def _abandon_held(self) -> None:
        """At close: messages still held for a collector that never came back are counted as dropped."""
        if self._held:
            log.warning("closing with %d message(s) held for a draining collector that did not come back: "
                        "counted in Producer.dropped", len(self._held))
            self.dropped += len(self._held)
            self._held.clear()

    @property
    def _send_flags(self) -> int:
        return zmq.DONTWAIT if self._drop else 0

    def _refused(self) -> None:
        """A full queue refused a message: count it (drop=True) or raise TimeoutError (drop=False)."""
        if not self._drop:
            raise self._queue_full()
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 10_000 == 0:
            log.warning("collector at %s is not keeping up: %d message(s) dropped so far (Producer.dropped)",
                        ", ".join(self.endpoints), self.dropped)

    def _queue_full(self) -> TimeoutError:
        return TimeoutError(f"collector at {', '.join(self.endpoints)} took no message for "
                            f"{self._send_timeout_ms / 1000:g}s (its queue is full)")
