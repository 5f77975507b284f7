"""What every fanoutd client shares: one socket, its protective options, its life.

The clients are deliberately thin: fanoutd's wire contract is plain ZeroMQ,
so a client is one socket with sensible options plus the few lines of
framing the contract needs.  Everything here exists to make the *defaults*
safe: a dead peer is noticed (ZMTP heartbeats), closing never hangs for long
(bounded linger), memory stays bounded (HWMs), and a malformed endpoint
fails at construction with a message that says what was expected.

Context ownership: a client without an injected context makes a private one
and terminates it on :meth:`close` (so nothing outlives the client and
``Context.instance()``, which other code may own, is never touched); an
injected context, e.g. a ``zmq.green.Context`` under gevent, belongs to the
caller and is never terminated here.

A client, like the socket it wraps, belongs to one thread (or greenlet):
ZeroMQ sockets are not thread-safe, so make one client per thread.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, ClassVar, Self, TypedDict

import zmq

log = logging.getLogger("fanoutd_client")

DEFAULT_COLLECTOR = "tcp://127.0.0.1:5560"
DEFAULT_PUBLISH = "tcp://127.0.0.1:5561"
DEFAULT_PUSH = "tcp://127.0.0.1:5562"

#: One endpoint or several (the client connects to each).
Endpoints = str | Sequence[str]
#: Topics and payloads: bytes as they are, str encoded as UTF-8.
Data = str | bytes

# host:port, host being a name, an IPv4 address or a bracketed IPv6 address.
# libzmq also takes a source address first ("tcp://SOURCE;HOST:PORT"), where
# the port may be 0 or "*": it is only checked for being non-empty.
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+(?:%\w+)?\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")
_TRANSPORTS = ("tcp", "ipc", "inproc")


class ClientOptions(TypedDict, total=False):
    """Socket options every client takes; times are in seconds (floats), like the daemon's."""

    context: zmq.Context[Any] | None
    hwm: int
    linger: float | None
    heartbeat_interval: float
    heartbeat_timeout: float
    heartbeat_ttl: float | None
    reconnect_interval: float | None
    reconnect_interval_max: float | None
    curve_serverkey: Data | None
    curve_publickey: Data | None
    curve_secretkey: Data | None


def to_bytes(value: Data, what: str) -> bytes:
    """bytes unchanged, str as UTF-8; anything else is a caller bug worth a clear TypeError."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


def validate_endpoint(endpoint: str) -> str:
    """Return ``endpoint`` if a client can connect to it, else raise ValueError saying why.

    libzmq's own error for a bad endpoint is a bare EINVAL; checking here
    names the endpoint and the expected form instead.
    """
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str, not {type(endpoint).__name__}")
    transport, sep, address = endpoint.partition("://")
    if not sep or transport not in _TRANSPORTS:
        raise ValueError(f"bad endpoint {endpoint!r}: expected tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    if not address or any(c.isspace() for c in address):
        raise ValueError(f"bad endpoint {endpoint!r}: empty address or whitespace in it")
    if transport == "tcp":
        source, semicolon, destination = address.rpartition(";")
        match = _HOST_PORT.fullmatch(destination)
        if destination.startswith("*"):
            raise ValueError(f"bad endpoint {endpoint!r}: '*' is for binding; connect to a host")
        if not match or not 0 < int(match.group(1)) < 65536 or (semicolon and not source):
            raise ValueError(f"bad endpoint {endpoint!r}: expected tcp://HOST:PORT with PORT 1-65535")
    return endpoint


def normalize_endpoints(endpoints: Endpoints) -> tuple[str, ...]:
    """One endpoint or a sequence of them, validated, as a non-empty tuple without duplicates."""
    items = (endpoints,) if isinstance(endpoints, str) else tuple(endpoints)
    if not items:
        raise ValueError("at least one endpoint is needed")
    for endpoint in items:
        validate_endpoint(endpoint)
    if len(set(items)) != len(items):
        raise ValueError(f"duplicate endpoint in {list(items)}: each one would be a second connection")
    return items


def _ms(seconds: float, what: str) -> int:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not seconds >= 0:
        raise ValueError(f"{what} must be a number of seconds >= 0, not {seconds!r}")
    return math.ceil(seconds * 1000)


def _curve_options(server: Data | None, public: Data | None, secret: Data | None) -> dict[int, bytes]:
    """CURVE client keys (Z85, 40 characters each: what `fanoutd keygen` writes), all three or none."""
    keys = {"curve_serverkey": server, "curve_publickey": public, "curve_secretkey": secret}
    given = {name: key for name, key in keys.items() if key is not None}
    if not given:
        return {}
    if len(given) != 3:
        missing = ", ".join(name for name in keys if name not in given)
        raise ValueError(f"CURVE needs curve_serverkey, curve_publickey and curve_secretkey; missing {missing}")
    out = {}
    for (name, key), option in zip(given.items(), (zmq.CURVE_SERVERKEY, zmq.CURVE_PUBLICKEY, zmq.CURVE_SECRETKEY)):
        value = to_bytes(key, name)
        if len(value) != 40:
            raise ValueError(f"{name} must be a 40-character Z85 key, got {len(value)} bytes")
        out[option] = value
    return out


def load_curve_keys(secret_file: str, server_public_file: str) -> dict[str, bytes]:
    """Client keyword arguments from zmq.auth certificate files: yours (secret) and the daemon's (public)."""
    import zmq.auth

    public, secret = zmq.auth.load_certificate(secret_file)
    if not secret:
        raise ValueError(f"{secret_file} holds no secret key (pass the .key_secret file)")
    server, _ = zmq.auth.load_certificate(server_public_file)
    return {"curve_serverkey": server, "curve_publickey": public, "curve_secretkey": secret}


class Client:
    """Base of the clients: owns one socket (and maybe its context); closes both.

    Subclasses set the socket type, the role (for messages) and the default
    linger, and may prepare the socket before it connects.
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
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 15.0,
        heartbeat_ttl: float | None = None,
        reconnect_interval: float | None = None,
        reconnect_interval_max: float | None = None,
        curve_serverkey: Data | None = None,
        curve_publickey: Data | None = None,
        curve_secretkey: Data | None = None,
    ) -> None:
        self.endpoints: tuple[str, ...] = normalize_endpoints(endpoints)
        if isinstance(hwm, bool) or not isinstance(hwm, int) or hwm < 0:
            raise ValueError(f"hwm must be an int >= 0 (0: unbounded), not {hwm!r}")
        self._linger_ms = _ms(self._default_linger if linger is None else linger, "linger")
        options = self._heartbeat_options(heartbeat_interval, heartbeat_timeout, heartbeat_ttl)
        options[zmq.SNDHWM] = options[zmq.RCVHWM] = hwm
        options[zmq.LINGER] = self._linger_ms
        if reconnect_interval is not None:
            options[zmq.RECONNECT_IVL] = _ms(reconnect_interval, "reconnect_interval")
        if reconnect_interval_max is not None:
            options[zmq.RECONNECT_IVL_MAX] = _ms(reconnect_interval_max, "reconnect_interval_max")
        options.update(_curve_options(curve_serverkey, curve_publickey, curve_secretkey))

        self._closed = True  # until the socket exists, close() has nothing to do
        self._owns_context = context is None
        self._context: zmq.Context[Any] = zmq.Context() if context is None else context
        try:
            self._socket: zmq.Socket[Any] = self._context.socket(self._kind)
        except BaseException:
            self._terminate_context()
            raise
        self._closed = False
        try:
            for option, value in options.items():
                self._socket.setsockopt(option, value)
            self._prepare(self._socket)
            for endpoint in self.endpoints:
                self._socket.connect(endpoint)
        except BaseException:
            self.close()
            raise
        log.debug("%s connected to %s", type(self).__name__, ", ".join(self.endpoints))

    @staticmethod
    def _heartbeat_options(interval: float, timeout: float, ttl: float | None) -> dict[int, int]:
        """ZMTP heartbeats: without them a silently dead peer looks connected forever."""
        interval_ms = _ms(interval, "heartbeat_interval")
        if interval_ms == 0:
            return {zmq.HEARTBEAT_IVL: 0}
        timeout_ms = _ms(timeout, "heartbeat_timeout")
        if timeout_ms < interval_ms:
            raise ValueError("heartbeat_timeout must be at least heartbeat_interval")
        ttl_ms = _ms(timeout if ttl is None else ttl, "heartbeat_ttl")
        return {zmq.HEARTBEAT_IVL: interval_ms, zmq.HEARTBEAT_TIMEOUT: timeout_ms,
                zmq.HEARTBEAT_TTL: min(ttl_ms, 6_553_500)}  # libzmq's TTL is capped at 6553.5 s

    def _prepare(self, sock: zmq.Socket[Any]) -> None:
        """Hook: socket-type options that must be set before connecting."""

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
        if self._closed:
            return
        self._closed = True
        self._socket.close(linger=self._linger_ms)
        self._terminate_context()
        log.debug("%s closed", type(self).__name__)

    def _terminate_context(self) -> None:
        if self._owns_context:
            self._context.term()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    def _recv_frames(self, timeout: float | None) -> list[bytes]:
        """All frames of one message; TimeoutError after ``timeout`` s (None: wait forever)."""
        self._check_open()
        if timeout is None:
            return self._socket.recv_multipart()
        deadline = time.monotonic() + _ms(timeout, "timeout") / 1000
        while True:
            remaining = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            if self._socket.poll(remaining, zmq.POLLIN):
                try:
                    return self._socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:  # a spurious wake-up; wait out the rest
                    pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no message from {self._role} {', '.join(self.endpoints)} "
                                   f"within {timeout:g}s")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<{type(self).__name__} {self._role}={','.join(self.endpoints)}{state}>"
