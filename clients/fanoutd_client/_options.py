"""What a client's arguments mean in ZeroMQ terms, checked before any socket exists.

Endpoints, byte conversion, seconds-to-milliseconds, heartbeats and CURVE
keys are validated here so that a mistake fails at construction with a
message naming the argument and the expected form, instead of as a bare
EINVAL from libzmq (or, worse, as a client that silently never connects).
Nothing here does I/O, so the blocking and the asyncio clients share it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, TypedDict

import zmq

DEFAULT_COLLECTOR = "tcp://127.0.0.1:5560"
DEFAULT_PUBLISH = "tcp://127.0.0.1:5561"
DEFAULT_PUSH = "tcp://127.0.0.1:5562"
DEFAULT_STAMPED = "tcp://127.0.0.1:5565"  # the stamped PUB output (Subscriber(stamped=True))

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
    """Socket options every client takes; times are in seconds (floats), like the daemon's.

    ``context`` is a ``zmq.Context`` (or ``zmq.green.Context``) for the
    blocking clients and a ``zmq.asyncio.Context`` for :mod:`fanoutd_client.aio`.
    """

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


class CurveKeys(TypedDict, total=False):
    """The CURVE keyword arguments of a client, as :func:`load_curve_keys` returns them."""

    curve_serverkey: bytes
    curve_publickey: bytes
    curve_secretkey: bytes


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


def ms(seconds: float, what: str) -> int:
    """Seconds (the unit of every client argument) as libzmq's milliseconds, rounded up."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not seconds >= 0:
        raise ValueError(f"{what} must be a number of seconds >= 0, not {seconds!r}")
    return math.ceil(seconds * 1000)


def heartbeat_options(interval: float, timeout: float, ttl: float | None) -> dict[int, int]:
    """ZMTP heartbeats: without them a silently dead peer looks connected forever.

    A dead broker is noticed within ``interval + timeout``, by our pings, or sooner by the TTL that
    fanoutd's own pings carry.  ``ttl`` (None: 0) is what our pings ask of the broker; fanoutd already
    drops a silent client by its own heartbeats, and a TTL would give it a second timer per
    connection, which libzmq cancels by walking all of its timers on each of our pings.
    """
    interval_ms = ms(interval, "heartbeat_interval")
    if interval_ms == 0:
        return {zmq.HEARTBEAT_IVL: 0}
    timeout_ms = ms(timeout, "heartbeat_timeout")
    if timeout_ms == 0:
        raise ValueError("heartbeat_timeout must be more than 0 while heartbeats are on")
    ttl_ms = ms(0 if ttl is None else ttl, "heartbeat_ttl")
    return {zmq.HEARTBEAT_IVL: interval_ms, zmq.HEARTBEAT_TIMEOUT: timeout_ms,
            zmq.HEARTBEAT_TTL: min(ttl_ms, 6_553_500)}  # libzmq's TTL is capped at 6553.5 s


def curve_options(server: Data | None, public: Data | None, secret: Data | None) -> dict[int, bytes]:
    """CURVE client keys (Z85, 40 characters each: what `fanoutd keygen` writes), all three or none."""
    keys = {"curve_serverkey": server, "curve_publickey": public, "curve_secretkey": secret}
    given = {name: key for name, key in keys.items() if key is not None}
    if not given:
        return {}
    if len(given) != 3:
        missing = ", ".join(name for name in keys if name not in given)
        raise ValueError(f"CURVE needs curve_serverkey, curve_publickey and curve_secretkey; missing {missing}")
    out: dict[int, bytes] = {}
    for (name, key), option in zip(given.items(), (zmq.CURVE_SERVERKEY, zmq.CURVE_PUBLICKEY, zmq.CURVE_SECRETKEY)):
        value = to_bytes(key, name)
        if len(value) != 40:
            raise ValueError(f"{name} must be a 40-character Z85 key, got {len(value)} bytes")
        out[option] = value
    return out


def load_curve_keys(secret_file: str, server_public_file: str) -> CurveKeys:
    """Client keyword arguments from zmq.auth certificate files: yours (secret) and the daemon's (public)."""
    import zmq.auth

    public, secret = zmq.auth.load_certificate(secret_file)
    if not secret:
        raise ValueError(f"{secret_file} holds no secret key (pass the .key_secret file)")
    server, _ = zmq.auth.load_certificate(server_public_file)
    return {"curve_serverkey": server, "curve_publickey": public, "curve_secretkey": secret}
