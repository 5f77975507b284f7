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
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import gevent
import zmq
from zmq.utils import z85

from . import green, logs
from .config import Config
from .keys import Keys
from .peers import plain_ip
from .roles import BY_NAME, POLICY_OWNERS, ROLES

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DENIALS = ("address", "key", "mechanism")  # why a connection may be refused (Policy.check)

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
        if not (self.deny or self.allow or self.curve):
            return None  # an open socket: no address to parse for every connection of a crowd
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(address)
        except ValueError:
            ip = None  # ipc and inproc peers have no IP address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped  # an IPv4 client of a dual-stack socket is matched as the IPv4 address it is
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


def build_policies(config: Config, keys: Keys) -> dict[str, Policy]:
    """The policy of every configured socket that takes connections (an open one where nothing is configured)."""
    own = {}
    for role in POLICY_OWNERS:
        listed = keys.clients.get(role)
        own[role] = Policy(getattr(config, f"{role}_curve"),
                           None if listed is None else frozenset(listed.values()),
                           _networks(getattr(config, f"{role}_allow")), _networks(getattr(config, f"{role}_deny")))
    return {role.name: own[role.policy] for role in ROLES if role.policy is not None and getattr(config, role.name)}


def _networks(items: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


class ZapHandler:
    """Answers libzmq's authentication requests from the gevent hub."""

    def __init__(self, context: zmq.Context, policies: Mapping[str, Policy]) -> None:
        self._hub = green.plain(context)
        self._policies = dict(policies)
        # Every socket's reasons from zero, so rates work from the first scrape.
        self.denied: Counter[tuple[str, str]] = Counter(
            dict.fromkeys(((role, reason) for role in policies for reason in DENIALS), 0))
        self._socket: zmq.Socket | None = None
        self._greenlet: gevent.Greenlet | None = None
        self._denials = logs.Sparse(log)

    def start(self, on_crash: Callable[[gevent.Greenlet], None]) -> None:
        """Bind and serve; ``on_crash`` hears of an unexpected failure (the daemon must not run unguarded)."""
        sock = self._socket = self._hub.socket(zmq.ROUTER)
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
                green.send_now(sock, envelope + [version, request_id, b"200", b"OK", b"", b""])
                continue
            self.denied[(role, reason)] += 1
            self._log_denial(role, reason, address, credentials)
            green.send_now(sock, envelope + [version, request_id, b"400", reason.encode(), b"", b""])

    def _log_denial(self, role: str, reason: str, address: bytes, credentials: list[bytes]) -> None:
        key = z85.encode(credentials[0]).decode() if credentials and len(credentials[0]) == 32 else "-"
        owner = BY_NAME[role].policy if role in BY_NAME else role
        hint = {"key": f"to allow it, add its certificate to {owner}_clients and reload",
                "address": f"its address is outside {owner}_allow or inside {owner}_deny",
                "mechanism": f"{owner}_curve is on and it did not use CURVE"}.get(reason, "")
        self._denials.warning("denied a connection to %s from %s (reason: %s, key: %s)%s", role,
                              plain_ip(address.decode(errors="replace")), reason, key, f"; {hint}" if hint else "",
                              held="more denials not logged")

    def close(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(timeout=1.0)
        if self._socket is not None:
            self._socket.close(linger=0)
