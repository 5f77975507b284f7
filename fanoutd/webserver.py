"""The metrics port's HTTP server: gevent's WSGI server, a bounded connection pool, TLS as the web config says.

Each accepted connection is wrapped with the TLS context current at accept
time, so a reload swaps the certificate, the client CA and the users without
closing the listening socket (connections already open finish as they began).
A handshake that fails (plain HTTP, no client certificate, a timeout) closes
the connection before any HTTP is read, and is counted by the gate.

At most ``CONNECTIONS`` connections are served at once (more wait in the
listen backlog), and a connection that sends nothing for ``IDLE_SECONDS``
(``HANDSHAKE_SECONDS`` during the handshake) is closed: a client can
occupy a slot, never the hub.
"""

from __future__ import annotations

import logging
import ssl
from contextlib import closing
from typing import Any

import gevent.ssl
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from . import webconfig
from .webauth import App, Gate
from .webconfig import WebConfig

log = logging.getLogger(__name__)

CONNECTIONS = 64
HANDSHAKE_SECONDS = 10.0
IDLE_SECONDS = 60.0


class MetricsServer(WSGIServer):
    """The HTTP server for the hub, not yet listening: ``use(web)``, then ``start()`` binds it (OSError if it
    cannot)."""

    def __init__(self, address: tuple[str, int], gate: Gate, app: App) -> None:
        super().__init__(address, gate.serving(app), log=None, error_log=log, spawn=Pool(CONNECTIONS))
        self.gate = gate
        self._tls: ssl.SSLContext | None = None

    def use(self, web: WebConfig | None) -> None:
        """Serve new connections as ``web`` says; ConfigError (and nothing changed) if its TLS files do not load."""
        tls = webconfig.context(web.tls, gevent.ssl.SSLContext) if web and web.tls else None
        self._tls = tls
        self.gate.use(web)

    @property
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    def handle(self, sock: Any, address: Any) -> None:
        tls = self._tls
        if tls is None:
            sock.settimeout(IDLE_SECONDS)
            super().handle(sock, address)
            return
        sock.settimeout(HANDSHAKE_SECONDS)
        try:
            wrapped = tls.wrap_socket(sock, server_side=True)
        except OSError as exc:  # ssl.SSLError is one; so are a reset and a timeout
            self.gate.handshake_failed(_host(address), exc)
            return
        with closing(wrapped):
            wrapped.settimeout(IDLE_SECONDS)
            super().handle(wrapped, address)


def _host(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) and address else str(address)


