"""The running parts of one broker (context, ZAP, engine, peer tracking, HTTP) opened and closed as one.

:meth:`Runtime.open` starts the parts in the order they depend on each
other and, if one fails, rolls back through the very :meth:`Runtime.close`
used at shutdown; ``close`` closes every part even if one of them fails,
and terminates the context last.  Every part exists from construction on
(nothing here is half-built), so no code needs to ask whether it is there.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import gevent
import zmq
from gevent.threadpool import ThreadPool

from . import auth, logs, metrics, status, view, webauth
from .config import Config, log_level
from .dataplane.engine import BindError, Engine
from .keys import Keys
from .peers import PeerTracker
from .senders import Senders
from .subscriptions import Subscriptions
from .reload import Plan
from .links import UpstreamWatch
from .slow import Guard
from .dataplane.zmqlib import LibzmqError
from .values import ConfigError
from .webserver import MetricsServer

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The broker could not start; the message is the one line to show."""


class Runtime:
    """Owns what a running broker holds open; ``phase`` is what /readyz reports."""

    def __init__(self, config: Config, keys: Keys, node_id: bytes,
                 on_crash: Callable[[gevent.Greenlet], None]) -> None:
        self.config = config
        self.keys = keys
        self.phase = "starting"
        self._on_crash = on_crash
        self.context = zmq.Context(io_threads=config.io_threads)
        # The ZAP handler must answer before any socket accepts a peer: it is started first.
        self.zap = auth.ZapHandler(self.context, auth.build_policies(config, keys))
        self.engine = Engine(config, self.context, keys.secret, node_id=node_id, upstream_server=keys.upstream_server)
        self.peers = PeerTracker(self.context, self.engine.roles, self._on_peers)
        self.guard = Guard(config, self.peers, self.engine)
        self.senders = Senders(self.engine, self.peers)
        self.subscriptions = Subscriptions(self.engine, self.peers)
        self.upstreams = UpstreamWatch(config, self.context, self.engine.spec("upstream"))
        self.upstreams.heal_with(self.engine.reconnect, zmq.curve_public(keys.secret) if keys.secret else None)
        self.peers.on_refused, self.peers.on_linked = self.upstreams.refused, self.upstreams.linked
        # bcrypt runs in these threads, off the hub (fanoutd.webauth); the server's connections are bounded too.
        self.hashing = ThreadPool(webauth.HASH_THREADS)
        self.gate = webauth.Gate(keys.web, run=self.hashing.apply)
        sources = metrics.Sources(
            counters=self.engine.counters, topics=self.engine.topic_counters, peers=self.peers.counts,
            handshake_failures=lambda: self.peers.handshake_failures, disconnects=lambda: self.peers.disconnects,
            auth_denied=lambda: self.zap.denied, config=lambda: self.config, node_id=node_id.hex(),
            slow_consumers=lambda: self.guard.cut, upstream_errors=lambda: self.upstreams.errors,
            pending=self.engine.pending_bytes,
            producer_peers=self.senders.counts, http_auth_failures=lambda: self.gate.failures)
        registry = metrics.make_registry(metrics.BrokerCollector(sources))
        peers_view = ((lambda: view.peers(self.peers, self.engine.held_bytes(), self.engine.subscriptions_of))
                      if config.peers_view else None)
        self.server = MetricsServer(config.metrics, self.gate,
                                    metrics.make_app(registry, self.readiness, peers_view, self.endpoints))

    def metrics_address(self) -> tuple[str, int]:
        """Where the HTTP server listens: the port it got once started (``metrics = HOST:0``), else as configured."""
        if self.server.started:
            host, port = self.server.address[:2]
            return str(host), int(port)
        return self.config.metrics

    def endpoints(self) -> dict[str, Any]:
        """What GET /endpoints answers: each role's endpoints as bound, and the metrics HOST:PORT."""
        return {**{role: list(eps) for role, eps in self.engine.endpoints.items()},
                "metrics": status.hostport(self.metrics_address())}

    def readiness(self) -> tuple[bool, str]:
        return status.readiness(self.phase, self.config, self.peers.counts(), self.upstreams.problems,
                                self.upstreams.misconfigured)

    def open(self) -> Any:
        """Start every part; returns the forwarding loop's result. On failure all is closed and StartupError raised."""
        try:
            self.zap.start(self._on_crash)
            # Monitor readers first: libzmq's monitor events are blocking sends, so a monitored socket
            # closed with nobody reading its monitor (a bind that failed half-way) would hang the reaper.
            self.peers.start(self._on_crash)
            library = self.engine.open()
            self.guard.start(self._on_crash)
            self.senders.start(self._on_crash)
            self.subscriptions.start(self._on_crash)
            self.upstreams.start(self._on_crash)
            self._serve_http()
            result = self.engine.start()
        except (BindError, LibzmqError, StartupError) as exc:
            self.close(deadline=time.monotonic())
            raise StartupError(str(exc)) from None
        except BaseException:
            self.close(deadline=time.monotonic())
            raise
        log.debug("forwarding loop bound to %s", library)
        return result

    def _serve_http(self) -> None:
        try:
            self.server.use(self.keys.web)  # TLS as metrics_web_config says, before the first connection
        except ConfigError as exc:  # its files changed since they were checked: as bad as at the check
            raise StartupError(str(exc)) from None
        try:
            self.server.start()
        except OSError as exc:
            host, port = self.config.metrics
            raise StartupError(f"cannot serve metrics on {host}:{port}: {os.strerror(exc.errno or 0)}") from None

    def apply(self, plan: Plan) -> None:
        """Put a reload plan into effect: the metrics port's TLS and users, limits into the loop, policies into
        ZAP, the log level. ConfigError, with nothing applied, if the web config's TLS files no longer load."""
        self.server.use(plan.keys.web)
        self.engine.apply_limits(plan.config)
        self.zap.update(plan.policies)
        logs.configure(log_level(plan.config))
        self.config, self.keys = plan.config, plan.keys

    def close(self, deadline: float) -> bool:
        """Close every part, in order, even if one fails; False if any failed or the context hung.

        The loop (if still running) is aborted; outputs flush until
        ``deadline`` at most, and the context gets 2 s beyond it to terminate.
        """
        def remaining() -> float:
            return max(0.0, deadline - time.monotonic()) + 2.0

        steps: list[tuple[str, Callable[[], bool | None]]] = [
            ("the HTTP server", lambda: self.server.stop(timeout=1.0) if self.server.started else None),
            ("the hashing threads", lambda: self.hashing.kill()),
            ("the slow-consumer guard", self.guard.close),
            ("the producer types", self.senders.close),
            ("the subscription bounds", self.subscriptions.close),
            ("the upstream watch", self.upstreams.close),
            ("the forwarding loop", lambda: self.engine.close(timeout=remaining())),
            ("the socket monitors", self.peers.close),
            ("the ZAP handler", self.zap.close),
            ("the ZeroMQ context", lambda: self.engine.terminate(timeout=remaining())),
        ]
        clean = True
        for name, close in steps:
            try:
                clean &= close() is not False
            except Exception:
                log.exception("closing %s failed; closing the rest", name)
                clean = False
        return clean

    def _on_peers(self, role: str, count: int) -> None:
        if role == "push":
            self.engine.set_push_peers(count)
        elif role == "stamped":
            self.engine.set_stamped_peers(count)
