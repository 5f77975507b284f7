"""What every fanoutd client shares: one socket, its protective options, its life.

The clients are deliberately thin: fanoutd's wire contract is plain ZeroMQ,
so a client is one socket with sensible options plus the few lines of
framing the contract needs.  Everything here exists to make the *defaults*
safe: a dead peer is noticed (ZMTP heartbeats), closing never hangs for long
(bounded linger), memory stays bounded (HWMs), and a malformed endpoint
fails at construction with a message that says what was expected.

One protocol, two kinds of I/O.  The protocol (options, framing, topic
rules, readiness, limits, error messages) is written once, in this module
and :mod:`._protocol`, without a single blocking call: where the protocol
needs to wait it *yields* a poll timeout (or a :class:`Poll` of a helper
socket, the repair DEALER; see :data:`Waits`), and a driver
does the waiting, :func:`run_blocking` for the blocking clients (plain or
gevent-green sockets) and an ``await`` in :mod:`fanoutd_client.aio`.  Every
message is taken off the socket synchronously, after a poll said it is
there, so neither a timeout nor a cancelled asyncio task can lose one.

Context ownership: a client without an injected context makes a private one
and terminates it on :meth:`Client.close` (so nothing outlives the client
and ``Context.instance()``, which other code may own, is never touched); an
injected context, e.g. a ``zmq.green.Context`` under gevent, belongs to the
caller and is never terminated here.

A client, like the socket it wraps, belongs to one thread (or greenlet, or
asyncio task at a time): ZeroMQ sockets are not thread-safe.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

import zmq

from ._options import (DEFAULT_COLLECTOR, DEFAULT_PUBLISH, DEFAULT_PUSH, DEFAULT_STAMPED, ClientOptions, CurveKeys,
                       Data, Endpoints, curve_options, heartbeat_options, load_curve_keys, ms, normalize_endpoints,
                       to_bytes, validate_endpoint)

__all__ = ["DEFAULT_COLLECTOR", "DEFAULT_PUBLISH", "DEFAULT_PUSH", "DEFAULT_STAMPED", "Client", "ClientOptions",
           "CurveKeys", "Data", "Endpoints", "Poll", "Waits", "load_curve_keys", "ms", "normalize_endpoints",
           "run_blocking", "to_bytes", "validate_endpoint"]

log = logging.getLogger("fanoutd_client")

T = TypeVar("T")


@dataclass(frozen=True)
class Poll:
    """A wait on something other than the client's socket: input on ``socket`` (a helper socket on the
    client's context, e.g. the repair DEALER), or with ``socket`` None a pause; ``timeout`` in ms."""

    socket: zmq.Socket[Any] | None
    timeout: int


#: A protocol step: yields how long to poll the socket for input (ms; None:
#: forever) or a :class:`Poll`, is resumed once the wait is over, and returns its result.
Waits = Generator[int | None | Poll, None, T]


def run_blocking(sock: zmq.Socket[Any], steps: Waits[T]) -> T:
    """Drive a protocol step with blocking polls (under gevent, green ones)."""
    try:
        while True:
            wait = next(steps)
            if not isinstance(wait, Poll):
                sock.poll(wait, zmq.POLLIN)
            elif wait.socket is not None:
                wait.socket.poll(wait.timeout, zmq.POLLIN)
            else:
                _pause(sock, wait.timeout / 1000)
    except StopIteration as done:
        result: T = done.value
        return result


def _pause(sock: zmq.Socket[Any], seconds: float) -> None:
    """Sleep; a gevent client (a green socket) sleeps green, so the hub's other greenlets run meanwhile."""
    green = sys.modules.get("zmq.green")  # not imported: no green socket can exist, and gevent stays unloaded
    if green is not None and isinstance(sock, green.Socket):
        import gevent

        gevent.sleep(seconds)
    else:
        time.sleep(seconds)


def _asyncio_context(context: zmq.Context[Any]) -> bool:
    """Whether ``context`` makes asyncio sockets, without importing zmq.asyncio to find out."""
    module = sys.modules.get("zmq.asyncio")  # not imported: no asyncio context can exist
    return module is not None and isinstance(context, module.Context)


class Client:
    """Base of the clients: owns one socket (and maybe its context); closes both.

    Subclasses set the socket type, the role (for messages) and the default
    linger, and may prepare the socket before it connects.  This class is
    the blocking flavour's; :mod:`fanoutd_client.aio` overrides the three
    hooks that differ (which context to make or accept, and the
    non-blocking view of the socket).
    """

    _kind: ClassVar[int]
    _role: ClassVar[str]
    _default_linger: ClassVar[float] = 0.0

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        context: zmq.Context[Any] | None = None,
        hwm: int = 10_000,
        linger: float | None = None,
        heartbeat_interval: float = 30.0,
        heartbeat_timeout: float = 15.0,
        heartbeat_ttl: float | None = None,
        reconnect_interval: float | None = None,
        reconnect_interval_max: float | None = None,
        curve_serverkey: Data | None = None,
        curve_publickey: Data | None = None,
        curve_secretkey: Data | None = None,
    ) -> None:
        self._closed = True  # until the socket exists, close() has nothing to do
        self.endpoints: tuple[str, ...] = normalize_endpoints(endpoints)
        if isinstance(hwm, bool) or not isinstance(hwm, int) or hwm < 0:
            raise ValueError(f"hwm must be an int >= 0 (0: unbounded), not {hwm!r}")
        self._linger_ms = ms(self._default_linger if linger is None else linger, "linger")
        options: dict[int, int | bytes] = {}
        options.update(heartbeat_options(heartbeat_interval, heartbeat_timeout, heartbeat_ttl))
        options[zmq.SNDHWM] = options[zmq.RCVHWM] = hwm
        options[zmq.LINGER] = self._linger_ms
        options[zmq.IPV6] = 1  # tcp://[::1]:5560 and host names that resolve to IPv6 work
        if reconnect_interval is not None:
            options[zmq.RECONNECT_IVL] = ms(reconnect_interval, "reconnect_interval")
        if reconnect_interval_max is not None:
            options[zmq.RECONNECT_IVL_MAX] = ms(reconnect_interval_max, "reconnect_interval_max")
        curve = curve_options(curve_serverkey, curve_publickey, curve_secretkey)
        options.update(curve)
        self._uses_curve = bool(curve)
        self._curve: dict[int, int | bytes] = dict(curve)  # for a helper socket to the same broker (repair)
        if context is not None:
            self._check_context(context)

        self._owns_context = context is None
        self._context: zmq.Context[Any] = self._new_context() if context is None else context
        try:
            self._socket: zmq.Socket[Any] = self._context.socket(self._kind)
        except BaseException:
            self._terminate_context()
            raise
        self._closed = False
        try:
            self._nowait: zmq.Socket[Any] = self._nonblocking_view(self._socket)
            for option, value in options.items():
                self._socket.setsockopt(option, value)
            self._prepare(self._socket)
            for endpoint in self.endpoints:
                self._socket.connect(endpoint)
        except BaseException:
            self.close()
            raise
        log.debug("%s connected to %s", type(self).__name__, ", ".join(self.endpoints))

    # --- the hooks in which the asyncio flavour differs --------------------------------------

    def _new_context(self) -> zmq.Context[Any]:
        return zmq.Context()

    def _check_context(self, context: zmq.Context[Any]) -> None:
        """Refuse an asyncio context: its sockets return Futures, which this flavour cannot wait on."""
        if _asyncio_context(context):
            name = type(self).__name__
            raise TypeError(f"{name} is a blocking client and cannot use a zmq.asyncio.Context: use "
                            f"fanoutd_client.aio.{name} (and await it), or pass a zmq.Context "
                            "(zmq.green.Context under gevent)")

    def _nonblocking_view(self, sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
        """The socket as the protocol's non-blocking calls see it (here: the socket itself)."""
        return sock

    def _prepare(self, sock: zmq.Socket[Any]) -> None:
        """Hook: socket-type options that must be set before connecting."""

    # --- life ---------------------------------------------------------------------------------

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The underlying socket, for polling alongside others; do not reconfigure it."""
        return self._socket

    @property
    def context(self) -> zmq.Context[Any]:
        """The context the socket belongs to (private unless one was injected)."""
        return self._context

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the socket (waiting at most ``linger``), then a private context. Idempotent."""
        if self._close_socket():
            self._terminate_context()

    def _close_socket(self) -> bool:
        """Close the socket; False if it already was."""
        if self._closed:
            return False
        self._closed = True
        vars(self).pop("_nowait", None)  # a view of a closed socket must never be used
        self._socket.close(linger=self._linger_ms)
        log.debug("%s closed", type(self).__name__)
        return True

    def _terminate_context(self) -> None:
        if self._owns_context:
            self._context.term()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    def _timed_out(self, timeout: float) -> TimeoutError:
        return TimeoutError(f"no message from {self._role} {', '.join(self.endpoints)} within {timeout:g}s")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<{type(self).__name__} {self._role}={','.join(self.endpoints)}{state}>"
