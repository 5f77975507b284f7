"""Upstream links, watched for what libzmq never reports: a host that does not resolve, an endpoint that is no relay.

libzmq retries a connect to an unresolvable host forever without an error
or a monitor event, so an edge with a typo in ``upstream`` used to say only
"no upstream connected"; and an upstream pointed at a hub's *publish*
endpoint instead of its relay connects fine and delivers nothing usable.
This greenlet resolves every upstream host (gevent's resolver, off the hub)
and probes every upstream endpoint with a short-lived SUB, configured like
the data link, that waits for the relay's hello (its welcome message, see
clients/README.md, "Trailing frame"): an endpoint that completes a
handshake but sends no hello is not a fanoutd relay.  It runs when the
node starts and every ``CHECK_EVERY`` seconds until each link is proven,
logs a failure with the endpoint and the likely mistake (rate-limited), counts it per link
(``fanoutd_upstream_link_errors_total``) and hands the causes to /readyz.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Callable

import gevent
import gevent.socket
import zmq
from fanoutd_client import wire

from . import green, logs
from .config import Config
from .sockets import SocketSpec

log = logging.getLogger(__name__)

CHECK_EVERY = 10.0
HELLO_WAIT = 3.0  # after the handshake: a relay's loop greets within one idle tick (0.1 s)
NOT_RELAY = "not a fanoutd relay (it completed a handshake but sent no relay hello): is it a publish endpoint?"
RETRY_FIRST, RETRY_MAX = 1.0, 30.0  # back-off of a refused link (libzmq never retries one itself)


def host_of(endpoint: str) -> tuple[str, int] | None:
    """(host, port) of a tcp endpoint naming a host by name; None for addresses and other transports."""
    if not endpoint.startswith("tcp://"):
        return None
    host, _, port = endpoint.removeprefix("tcp://").rpartition(";")[2].rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        return host, int(port)


class UpstreamWatch:
    """``problems``: endpoint -> why it cannot work now; ``errors[(endpoint, reason)]`` counts failed checks.

    ``misconfigured``: the endpoints proven not to be relays (/readyz fails for those).
    """

    def __init__(self, config: Config, context: zmq.Context | None = None, spec: SocketSpec | None = None) -> None:
        self._named = {ep: target for ep in config.upstream if (target := host_of(ep)) is not None}
        self._spec = spec
        self._context = green.shadow(context) if context is not None and spec is not None else None
        self._unproven = set(config.upstream) if self._context is not None else set()
        self._unresolved: dict[str, str] = {}
        self.misconfigured: set[str] = set()
        self._refused: dict[str, str] = {}
        self._backoff: dict[str, float] = {}
        self._public_key = ""  # this node's public key, named when a relay refuses it
        self._reconnect: Callable[[str], bool] = lambda endpoint: True
        self._retries: set[gevent.Greenlet] = set()  # scheduled reconnects of refused links
        self._closed = False
        self.errors: Counter[tuple[str, str]] = Counter(dict.fromkeys(((ep, "unresolvable") for ep in self._named), 0))
        self.errors.update(dict.fromkeys(((ep, "not_relay") for ep in self._unproven), 0))
        self.errors.update(dict.fromkeys(((ep, "refused") for ep in config.upstream), 0))
        self._greenlet: gevent.Greenlet | None = None
        self._warn = logs.Sparse(log)

    @property
    def problems(self) -> dict[str, str]:
        """endpoint -> why it cannot work now."""
        return {**self._unresolved, **self._refused, **dict.fromkeys(self.misconfigured, NOT_RELAY)}

    def heal_with(self, reconnect: Callable[[str], bool], public_key: bytes | None) -> None:
        """How to connect a refused link afresh (the loop owns the socket), and this node's key to name."""
        self._reconnect = reconnect
        self._public_key = public_key.decode() if public_key else ""

    def refused(self, endpoint: str, why: str) -> None:
        """The upstream at ``endpoint`` refused this node's handshake: say why, count it, retry with back-off."""
        if why == "auth":
            cause = (f"the relay refused this node's key {self._public_key or '(none: plaintext)'}: add it to the "
                     "hub's relay_clients and reload the hub")
        elif why == "protocol":
            cause = ("the handshake failed: CURVE on one side only? (upstream_server_key here, relay_curve there, "
                     "and the relay's public key must match)")
        else:
            cause = (f"the link closed during its handshake ({why}): CURVE on one side only, or not a "
                     "ZeroMQ 4 peer?")
        self._refused[endpoint] = cause
        self.errors[(endpoint, "refused")] += 1
        delay = self._backoff.get(endpoint, RETRY_FIRST)
        self._backoff[endpoint] = min(delay * 2, RETRY_MAX)
        self._warn.warning("upstream %s: %s; retrying in %.0fs", endpoint, cause, delay,
                           held="more upstream failures not logged")
        self._schedule(delay, endpoint)

    def linked(self, endpoint: str) -> None:
        """A handshake with the upstream at ``endpoint`` succeeded."""
        self._backoff.pop(endpoint, None)
        if self._refused.pop(endpoint, None) is not None:
            log.info("upstream %s: link up, its handshake succeeded", endpoint)

    def _retry(self, endpoint: str) -> None:
        if endpoint in self._refused and not self._reconnect(endpoint):
            self._schedule(0.2, endpoint)  # the loop has not taken the last request yet

    def _schedule(self, delay: float, endpoint: str) -> None:
        if not self._closed:
            retry = gevent.spawn_later(delay, self._retry, endpoint)
            self._retries.add(retry)
            retry.link(self._retries.discard)

    def start(self, on_crash: Callable[[gevent.Greenlet], None]) -> None:
        if not self._named and not self._unproven:
            return  # nothing libzmq could hide
        self._greenlet = gevent.spawn(self._watch)
        self._greenlet.link_exception(on_crash)

    def close(self) -> None:
        self._closed = True
        gevent.killall(list(self._retries), timeout=1.0)
        if self._greenlet is not None:
            self._greenlet.kill(timeout=1.0)

    def check(self) -> None:
        """Resolve every named upstream host once; record, count and log the ones that fail."""
        for endpoint, (host, port) in self._named.items():
            try:
                gevent.socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
            except OSError as exc:
                cause = f"cannot resolve host {host!r} ({exc.strerror or exc})"
                self._unresolved[endpoint] = cause
                self.errors[(endpoint, "unresolvable")] += 1
                self._warn.warning("upstream %s: %s; libzmq keeps retrying it without a word",
                                   endpoint, cause, held="more upstream failures not logged")
            else:
                self._unresolved.pop(endpoint, None)

    def probe(self, endpoint: str) -> bool | None:
        """Whether endpoint is a fanoutd relay: True (it said hello), False (a handshake but no hello), None
        (no handshake yet: down, refused or unreachable, which the data link's peer count shows)."""
        if self._context is None or self._spec is None:
            raise RuntimeError("this watch was made without a context and link description to probe with")
        sock = self._context.socket(zmq.SUB)
        monitor = None
        try:
            for option, value in self._spec.options:
                sock.setsockopt(option, value)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SUBSCRIBE, wire.MAGIC)
            monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            try:
                sock.connect(endpoint)
            except zmq.ZMQError as exc:  # the data link's connect took it: nothing to learn here
                log.debug("relay probe of %s: %s", endpoint, exc)
                return None
            if not monitor.poll(int(HELLO_WAIT * 1000)):
                return None
            if not sock.poll(int(HELLO_WAIT * 1000)):
                return False
            frames = sock.recv_multipart(copy=False)
            try:
                relay = frames[0].get(wire.RELAY_PROPERTY) == wire.RELAY_PROPERTY_VALUE
            except zmq.ZMQError:
                relay = False
            return relay and len(frames) == 1 and frames[0].bytes == wire.RELAY_HELLO
        finally:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(linger=0)
            sock.close(linger=0)

    def check_relays(self) -> None:
        """Probe every upstream not yet proven a relay; record, count and log the ones that are not."""
        for endpoint in sorted(self._unproven):
            verdict = self.probe(endpoint)
            if verdict is True:
                self._unproven.discard(endpoint)
                if endpoint in self.misconfigured:
                    self.misconfigured.discard(endpoint)
                    log.info("upstream %s: now a fanoutd relay", endpoint)
            elif verdict is False:
                self.misconfigured.add(endpoint)
                self.errors[(endpoint, "not_relay")] += 1
                self._warn.warning("upstream %s: %s; its messages are refused and counted as "
                                   "fanoutd_rejected_messages_total{reason=\"not_relay\"}", endpoint, NOT_RELAY,
                                   held="more upstream failures not logged")

    def _watch(self) -> None:
        while True:
            self.check()
            if self._unproven:
                self.check_relays()
            gevent.sleep(CHECK_EVERY)
