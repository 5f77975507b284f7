"""Access control: CURVE keys and IP allow/deny lists, enforced through ZAP.

Each bound socket carries its own ZAP domain (its role), so the collector,
publish and push sockets can each have their own policy.  The ZAP handler is
a green ROUTER on ``inproc://zeromq.zap.01`` in the daemon's context, bound
before any data socket exists: libzmq lets every CURVE client in when no
handler answers, so the order matters.  Denials are counted per socket and
reason and logged (rate-limited) with the peer address and key.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import gevent
import zmq
import zmq.auth
from zmq.utils import z85

from . import green
from .config import Config, ConfigError

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
LOG_EVERY = 10.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Policy:
    """Who may connect to one socket."""

    curve: bool
    clients: frozenset[bytes] | None  # Z85 public keys; None: any CURVE key
    allow: tuple[Network, ...]
    deny: tuple[Network, ...]

    def check(self, address: str, mechanism: bytes, credentials: list[bytes]) -> str | None:
        """None when allowed, else the reason it is not."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None  # ipc and inproc peers have no IP address
        if ip is not None:
            if any(ip in net for net in self.deny):
                return "address"
            if self.allow and not any(ip in net for net in self.allow):
                return "address"
        if self.curve:
            if mechanism != b"CURVE" or not credentials:
                return "mechanism"
            if self.clients is not None and z85.encode(credentials[0]) not in self.clients:
                return "key"
        return None


# Sockets that have no settings of their own take another's: the relay serves
# downstream nodes as publish serves subscribers; the ingress takes producers
# as the collector does.
BORROWED_POLICY = {"relay": "publish", "ingress": "collector"}


def policy_role(role: str) -> str:
    """The socket whose access-control settings ``role`` uses."""
    return BORROWED_POLICY.get(role, role)


def load_policies(config: Config) -> dict[str, Policy]:
    """The policy of every socket (an open one where nothing is configured), read from the config's files."""
    out = {}
    for role in ("collector", "publish", "push"):
        curve = getattr(config, f"{role}_curve")
        directory = getattr(config, f"{role}_clients")
        allow, deny = getattr(config, f"{role}_allow"), getattr(config, f"{role}_deny")
        clients = None
        if directory:
            if not os.path.isdir(directory):
                raise ConfigError(f"{role}_clients: {directory} is not a directory")
            clients = frozenset(zmq.auth.load_certificates(directory))
        out[role] = Policy(curve, clients, _networks(allow), _networks(deny))
    for role, owner in BORROWED_POLICY.items():
        out[role] = out[owner]
    return out


def _networks(items: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def server_secret_key(config: Config) -> bytes:
    """The daemon's CURVE secret key, from a zmq.auth secret certificate file."""
    try:
        _, secret = zmq.auth.load_certificate(config.curve_secret_key)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"curve_secret_key: cannot load {config.curve_secret_key}: {exc}") from None
    if not secret:
        raise ConfigError(f"curve_secret_key: {config.curve_secret_key} holds no secret key")
    return secret


class ZapHandler:
    """Answers libzmq's authentication requests from the gevent hub."""

    def __init__(self, context: zmq.Context, policies: Mapping[str, Policy]) -> None:
        self._green = green.shadow(context)
        self._policies = dict(policies)
        self.denied: Counter[tuple[str, str]] = Counter()
        self._socket: zmq.Socket | None = None
        self._greenlet: gevent.Greenlet | None = None
        self._last_log = 0.0
        self._unlogged = 0

    def start(self, on_crash: Callable[[gevent.Greenlet], None]) -> None:
        """Bind and serve; ``on_crash`` hears of an unexpected failure (the daemon must not run unguarded)."""
        sock = self._socket = self._green.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(ZAP_ENDPOINT)
        self._greenlet = gevent.spawn(self._serve, sock)
        self._greenlet.link_exception(on_crash)

    def update(self, policies: Mapping[str, Policy]) -> None:
        """Swap in new policies (on reload); connections made from now on get them."""
        self._policies = dict(policies)

    def _serve(self, sock: zmq.Socket) -> None:
        for frames in green.messages(sock):
            try:
                delimiter = frames.index(b"")
            except ValueError:
                log.warning("ignoring a malformed ZAP request")
                continue
            envelope, request = frames[:delimiter + 1], frames[delimiter + 1:]
            if len(request) < 6:
                log.warning("ignoring a malformed ZAP request")
                continue
            version, request_id, domain, address, _identity, mechanism, *credentials = request
            role = domain.decode(errors="replace")
            policy = self._policies.get(role)
            reason = "domain" if policy is None else policy.check(address.decode(errors="replace"), mechanism,
                                                                 credentials)
            if reason is None:
                sock.send_multipart(envelope + [version, request_id, b"200", b"OK", b"", b""])
                continue
            self.denied[(role, reason)] += 1
            self._log_denial(role, reason, address, credentials)
            sock.send_multipart(envelope + [version, request_id, b"400", reason.encode(), b"", b""])

    def _log_denial(self, role: str, reason: str, address: bytes, credentials: list[bytes]) -> None:
        now = time.monotonic()
        if now - self._last_log < LOG_EVERY:
            self._unlogged += 1
            return
        key = z85.encode(credentials[0]).decode() if credentials and len(credentials[0]) == 32 else "-"
        log.warning("denied a connection to %s from %s (reason: %s, key: %s)%s", role,
                    address.decode(errors="replace"), reason, key,
                    f"; {self._unlogged} more denials not logged" if self._unlogged else "")
        self._last_log, self._unlogged = now, 0

    def close(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(timeout=1.0)
        if self._socket is not None:
            self._socket.close(linger=0)
