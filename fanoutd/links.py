"""Upstream links, watched for what libzmq never reports: an upstream host that does not resolve.

libzmq retries a connect to an unresolvable host forever without an error
or a monitor event, so an edge with a typo in ``upstream`` used to say only
"no upstream connected".  This greenlet resolves every upstream host when
the node starts and every ``CHECK_EVERY`` seconds (with gevent's resolver,
off the hub), logs a failure with the endpoint and the cause (rate-limited),
counts it per link, and hands the causes to /readyz.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Callable

import gevent
import gevent.socket

from . import logs
from .config import Config

log = logging.getLogger(__name__)

CHECK_EVERY = 10.0


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
    """``problems``: endpoint -> why it cannot work now; ``errors[(endpoint, reason)]`` counts failed checks."""

    def __init__(self, config: Config) -> None:
        self._named = {ep: target for ep in config.upstream if (target := host_of(ep)) is not None}
        self.problems: dict[str, str] = {}
        self.errors: Counter[tuple[str, str]] = Counter(dict.fromkeys(((ep, "unresolvable") for ep in self._named), 0))
        self._greenlet: gevent.Greenlet | None = None
        self._warn = logs.Sparse(log)

    def start(self, on_crash: Callable[[gevent.Greenlet], None]) -> None:
        if not self._named:
            return  # no upstream names a host: nothing libzmq could hide
        self._greenlet = gevent.spawn(self._watch)
        self._greenlet.link_exception(on_crash)

    def close(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(timeout=1.0)

    def check(self) -> None:
        """Resolve every named upstream host once; record, count and log the ones that fail."""
        for endpoint, (host, port) in self._named.items():
            try:
                gevent.socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
            except OSError as exc:
                cause = f"cannot resolve host {host!r} ({exc.strerror or exc})"
                self.problems[endpoint] = cause
                self.errors[(endpoint, "unresolvable")] += 1
                self._warn.warning("upstream %s: %s; libzmq keeps retrying it without a word",
                                   endpoint, cause, held="more upstream failures not logged")
            else:
                self.problems.pop(endpoint, None)

    def _watch(self) -> None:
        while True:
            self.check()
            gevent.sleep(CHECK_EVERY)
