"""Sockets described before they exist, then created in one place: options first, monitor, then bind or connect.

:func:`describe` is a pure function of the config, one :class:`SocketSpec`
per role of :data:`fanoutd.roles.ROLES` that has endpoints;
:func:`open_socket` makes one, in the thread that will use it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass, field

import zmq
from fanoutd_client import wire

from .config import Config, queue_hwm
from .roles import ROLES, Role

_KIND = {"SUB": zmq.SUB, "PULL": zmq.PULL, "XPUB": zmq.XPUB, "PUSH": zmq.PUSH, "ROUTER": zmq.ROUTER,
         "DEALER": zmq.DEALER}
# The socket-monitor events peer counts, disconnects and handshake failures are built from.
MONITOR_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_MONITOR_STOPPED
                  | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)


class BindError(RuntimeError):
    """A socket could not be bound; the message names the socket and endpoint."""


@dataclass(frozen=True)
class SocketSpec:
    """Everything needed to create one bound socket, decided before any socket exists."""

    role: str
    kind: int
    endpoints: tuple[str, ...]
    options: tuple[tuple[int, int | bytes], ...]
    subscribe: tuple[bytes, ...] = field(default=())
    connect: bool = False  # connect to the endpoints instead of binding them


def frame_guard(config: Config) -> int:
    """ZMQ_MAXMSGSIZE for the collector: a per-frame cap libzmq enforces while reading.

    Messages over max_message_size are rejected and counted by the engine
    with the connection kept; this guard only stops a peer from making us
    buffer an absurd frame. It is set well above the limit so that a reload
    may raise max_message_size within it.
    """
    return 2 * config.max_message_size + 64 * 1024




def client_security_options(secret_key: bytes | None,
                            server_key: bytes | None) -> tuple[tuple[int, int | bytes], ...]:
    """CURVE client keys for a socket that connects out (the upstream link), when the server's key is given."""
    if server_key is None:
        return ()
    if secret_key is None:
        raise ValueError("a CURVE link needs this node's secret key")
    return ((zmq.CURVE_SERVERKEY, server_key), (zmq.CURVE_PUBLICKEY, zmq.curve_public(secret_key)),
            (zmq.CURVE_SECRETKEY, secret_key))


def security_options(config: Config, role: Role, secret_key: bytes | None) -> tuple[tuple[int, int | bytes], ...]:
    """The ZAP domain (the role) on every socket that takes connections, plus the CURVE server keys where asked for.

    A ZAP domain on every such socket does two things: each connection is
    seen (and checked) by the ZAP handler, and libzmq refuses legacy ZMTP
    1.0/2.0 peers whenever ZAP is on. Those skip the socket-type check, so
    without this any stray TCP client that writes a byte could pose as a
    puller and swallow PUSH messages.
    """
    if role.policy is None:
        return ()
    options: tuple[tuple[int, int | bytes], ...] = ((zmq.ZAP_DOMAIN, role.name.encode()),)
    if getattr(config, f"{role.policy}_curve"):
        if secret_key is None:
            raise ValueError("a CURVE socket needs the server secret key")
        options += ((zmq.CURVE_SERVER, 1), (zmq.CURVE_SECRETKEY, secret_key))
    return options


def needs_ipv6(endpoints: tuple[str, ...]) -> int:
    """ZMQ_IPV6 for a socket: on unless every tcp endpoint is an IPv4 address.

    With it, IPv6 addresses and names that resolve to them work and
    tcp://*:PORT serves both families; without it, an IPv4-only socket keeps
    seeing its peers as plain IPv4 addresses rather than ::ffff:a.b.c.d.
    """
    for endpoint in endpoints:
        host = endpoint.partition("tcp://")[2].rpartition(":")[0]
        if endpoint.startswith("tcp://"):
            try:
                ipaddress.IPv4Address(host.rpartition(";")[2])
            except ValueError:
                return 1
    return 0


def heartbeat_ttl_ms(config: Config) -> int:
    """What each PING asks the peer to wait for our next sign of life before it drops us, in ms.

    We ping every ``heartbeat_interval`` and may be silent that long, and the ping itself may sit behind
    queued data, so the peer waits an interval plus ``heartbeat_timeout`` (the same bound by which we
    notice a dead peer). libzmq carries it in deciseconds in 16 bits: at most 6553.5 s.
    """
    return min(int((config.heartbeat_interval + config.heartbeat_timeout) * 1000), 6_553_500)


def heartbeat_options(config: Config, connects: bool) -> tuple[tuple[int, int], ...]:
    """ZMTP heartbeats for one socket, with its dead-peer timeout given to the kernel where peers are many.

    A socket pings each peer every ``heartbeat_interval``; a peer that answers nothing within
    ``heartbeat_timeout`` is dropped. libzmq's own timeout costs a timer per ping, cancelled on the
    answer by a walk over every timer of its I/O thread due earlier: the peers still to be pinged in
    the same round. That is quadratic in the peers of a thread (10,000 subscribers: 2.5 % of a core
    idle for the walks alone, bench/README "Idle CPU"). So bound sockets, which may hold thousands,
    send their pings with no libzmq timeout and let the kernel drop a peer that leaves them
    unacknowledged that long (``ZMQ_TCP_MAXRT``, Linux's ``TCP_USER_TIMEOUT``, free of timers in
    user space): a vanished host or a severed path. What only a ZMTP answer can show, a process whose
    kernel still acknowledges but which is frozen, is left to the slow-consumer guard once data
    waits for it. A connecting socket (an upstream link, one per upstream) keeps libzmq's timeout
    as well, so a hung relay shows in /readyz.
    """
    if config.heartbeat_interval <= 0:
        return ()
    timeout = int(config.heartbeat_timeout * 1000)
    return ((zmq.HEARTBEAT_IVL, int(config.heartbeat_interval * 1000)), (zmq.HEARTBEAT_TTL, heartbeat_ttl_ms(config)),
            (zmq.HEARTBEAT_TIMEOUT, timeout if connects else 0), (zmq.TCP_MAXRT, timeout))


def limits_metadata(config: Config) -> bytes:
    """ZMTP metadata a producer reads from the collector's handshake: the limit it can check locally."""
    return b"X-Max-Message-Size:%d" % config.max_message_size


#: The listen backlog of every bound socket. libzmq's default, 100, overflows when more peers connect at
#: once (every subscriber of a restarted broker reconnects together); the kernel then drops their SYNs
#: and they retry a second later (bench/README.md, "Results", times the connect). The kernel caps it at
#: net.core.somaxconn (4096 by default).
LISTEN_BACKLOG = 4096
#: How long a connection may take to finish its ZMTP handshake (ZAP included) before libzmq drops it:
#: 10 s where libzmq waits 30 s. Besides shedding silent connections sooner, it keeps a crowd's connect
#: linear: libzmq cancels the handshake timer of each connection by walking its I/O thread's timers in
#: order of expiry, and a 30 s timer sat behind the heartbeat timer of every connection made before
#: it; a 10 s one sits before them (the profile is in bench/README.md, "Where fanoutd is behind").
HANDSHAKE_TIMEOUT_MS = 10_000
#: A relay's ZMTP metadata: every message an edge reads from it carries this property, so the
#: edge can refuse what comes from anything else (a publish endpoint given as upstream by mistake).
RELAY_METADATA = f"{wire.RELAY_PROPERTY}:{wire.RELAY_PROPERTY_VALUE}".encode()


def describe(config: Config, secret_key: bytes | None = None,
             upstream_server: bytes | None = None) -> tuple[SocketSpec, ...]:
    """One socket per role (:data:`fanoutd.roles.ROLES`) that the config gives endpoints, inputs first."""
    specs = []
    for role in ROLES:
        endpoints = getattr(config, role.name)
        if not endpoints or (role.name == "repair" and not config.stamped):  # repair serves the stamped output's
            continue
        if role.name == "relay_repair" and not config.relay:  # refused by the configuration; here for Config()s
            continue
        hwm = queue_hwm(config, role)
        options: tuple[tuple[int, int | bytes], ...] = ((zmq.LINGER, 0), (zmq.IPV6, needs_ipv6(endpoints)),
                                                        (zmq.HANDSHAKE_IVL, HANDSHAKE_TIMEOUT_MS))
        if role.pattern == "DEALER":  # reads repaired messages, as large as the upstream link's
            options += ((zmq.SNDHWM, hwm), (zmq.RCVHWM, hwm), (zmq.MAXMSGSIZE, frame_guard(config)))
        elif role.is_input:
            options += ((zmq.RCVHWM, hwm), (zmq.MAXMSGSIZE, frame_guard(config)))
            if not role.connects:
                options += ((zmq.METADATA, limits_metadata(config)),)
        else:
            # Outputs read only handshakes and subscriptions, which libzmq keeps in a trie at a cost growing with
            # the prefix (bench/README.md, "Subscriptions"): a frame over the cap closes just that connection.
            options += ((zmq.SNDHWM, hwm), (zmq.MAXMSGSIZE, wire.OUTPUT_FRAME_MAX))
        if role.fans_out:  # refuse, rather than silently drop for one subscriber: the loop decides (dataplane/fanout.c)
            # Every subscription and unsubscription reaches the loop with its connection's metadata: it counts and
            # bounds them per connection, peer address and output (dataplane/subs.c), and answers each subscription
            # on the stamped output (READY).
            options += ((zmq.XPUB_NODROP, 1), (zmq.XPUB_VERBOSER, 1))
        if role.name == "relay":
            options += ((zmq.METADATA, RELAY_METADATA), (zmq.XPUB_WELCOME_MSG, wire.RELAY_HELLO))
        if role.name == "relay_repair":  # a repaired message passes the edge's checks as the relay's do
            options += ((zmq.METADATA, RELAY_METADATA),)
        if role.pattern == "ROUTER":  # a reply to a peer gone or full fails, and is counted, instead of vanishing
            options += ((zmq.ROUTER_MANDATORY, 1),)
        if role.connects:
            options += ((zmq.RECONNECT_IVL, 100), (zmq.RECONNECT_IVL_MAX, 5000))
        else:
            options += ((zmq.BACKLOG, LISTEN_BACKLOG),)
        subscribe = tuple(t.encode() for t in config.collector_topics) if role.pattern == "SUB" else ()
        if role.connects:
            options += client_security_options(secret_key, upstream_server)
        options += heartbeat_options(config, role.connects) + security_options(config, role, secret_key)
        specs.append(SocketSpec(role.name, _KIND[role.pattern], endpoints, options, subscribe,
                                connect=role.connects))
    return tuple(specs)


def open_socket(context: zmq.Context, spec: SocketSpec,
                monitor: str | None = None) -> tuple[zmq.Socket, tuple[str, ...]]:
    """Create, configure, monitor and bind (or connect) one socket; on failure nothing is left open.

    Returns the socket and its endpoints as bound: ``tcp://HOST:*`` (or
    ``:0``) becomes the port the kernel gave, read back with
    ``ZMQ_LAST_ENDPOINT`` after each bind. A connecting socket's endpoints
    are returned as given.
    The monitor is attached before the first bind or connect, or an early
    peer's connection event would be missed and its count be wrong forever.
    """
    sock = context.socket(spec.kind)
    endpoint = ""
    bound: list[str] = []
    try:
        for option, value in spec.options:
            sock.setsockopt(option, value)
        for topic in spec.subscribe:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        if monitor is not None:
            sock.monitor(monitor, MONITOR_EVENTS)
        for endpoint in spec.endpoints:
            if spec.connect:
                sock.connect(endpoint)
                bound.append(endpoint)
            else:
                sock.bind(endpoint)
                bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        verb = "connect" if spec.connect else "bind"
        raise BindError(f"cannot {verb} {spec.role} to {endpoint}: {bind_cause(endpoint, exc.errno)}") from None
    return sock, tuple(bound)


def bind_cause(endpoint: str, error: int) -> str:
    """libzmq's error in the words of the real cause: it reports a host it cannot resolve as "No such device"."""
    host = endpoint.partition("://")[2].rpartition(":")[0].strip("[]")
    if error == errno.ENODEV and endpoint.startswith("tcp://") and host != "*":
        try:
            socket.getaddrinfo(host, None)
        except OSError:
            return f"cannot resolve host {host!r} (not an address, a host name or a local interface)"
        return f"{host!r} is not an address of this machine"
    if error == errno.EADDRNOTAVAIL:
        return f"{host!r} is not an address of this machine"
    return zmq.strerror(error)


def monitor_address(role: str) -> str:
    return f"inproc://fanoutd.monitor.{role}"
