"""The broker's life: start, serve, reload, stop; signals, sd_notify and the watchdog.

Signal handlers only record intent and wake the main loop; the loop acts.
Stopping runs in two bounded stages: the engine stops reading once the
collector is empty (or ``drain_timeout`` passes), then the outputs flush
within what is left of that bound and the context terminates.  A second
SIGTERM or SIGINT aborts: no draining, no flushing, exit status 1.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable

import gevent
import gevent.event
import zmq

from . import auth, logs, metrics, systemd
from .config import LIVE, Config, ConfigError, log_level
from .engine import BindError, Engine
from .peers import PeerTracker

log = logging.getLogger(__name__)

STATUS_EVERY = 5.0
WARN_EVERY = 10.0


class StartupError(RuntimeError):
    """The broker could not start; the message is the one line to show."""


class Broker:
    """Runs one fanoutd: ``Broker(config, reload).run()`` returns the exit status."""

    def __init__(self, config: Config, reload: Callable[[], Config] | None = None) -> None:
        self.config = config
        self._reload_source = reload
        self._wake = gevent.event.Event()
        self._stop_requests = 0
        self.node_id = os.urandom(8)  # names this node in federation routes
        self._crashed: gevent.Greenlet | None = None
        self._reload_requested = False
        self._ready = False
        self._stopping = False
        self._engine: Engine | None = None
        self._peers: PeerTracker | None = None
        self._zap: auth.ZapHandler | None = None

    # ---- signals: record intent only

    def _on_stop(self, signum: int) -> None:
        self._stop_requests += 1
        log.info("received %s", signal.Signals(signum).name)
        self._wake.set()

    def _on_crash(self, greenlet: gevent.Greenlet) -> None:
        """A helper greenlet died unexpectedly: gevent printed its traceback; the loop exits non-zero."""
        self._crashed = greenlet
        self._wake.set()

    def _on_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    # ---- lifecycle

    def run(self) -> int:
        handlers = [gevent.signal_handler(signal.SIGTERM, self._on_stop, signal.SIGTERM),
                    gevent.signal_handler(signal.SIGINT, self._on_stop, signal.SIGINT),
                    gevent.signal_handler(signal.SIGHUP, self._on_reload)]
        context = zmq.Context(io_threads=self.config.io_threads)
        try:
            return self._serve(context)
        finally:
            for handler in handlers:
                handler.cancel()

    def _serve(self, context: zmq.Context) -> int:
        try:
            policies = auth.load_policies(self.config)
            secret = auth.server_secret_key(self.config) if self.config.curve_secret_key else None
        except ConfigError as exc:
            context.term()
            raise StartupError(str(exc)) from None
        # The ZAP handler must answer before any socket accepts a peer.
        zap = self._zap = auth.ZapHandler(context, policies)
        zap.start(self._on_crash)
        engine = self._engine = Engine(self.config, context, secret, node_id=self.node_id)
        try:
            engine.open()
        except BindError as exc:
            zap.close()
            engine.terminate(timeout=2.0)
            raise StartupError(str(exc)) from None
        peers = self._peers = PeerTracker(context, engine.roles, self._on_peers)
        peers.start(self._on_crash)
        sources = metrics.Sources(engine.counters, engine.topic_counters, peers.counts,
                                  lambda: peers.handshake_failures, lambda: peers.disconnects, lambda: zap.denied,
                                  lambda: self.config, self.node_id.hex())
        registry = metrics.make_registry(metrics.BrokerCollector(sources))
        try:
            server = metrics.serve(self.config.metrics, metrics.make_app(registry, self._readiness))
        except OSError as exc:
            engine.stop(time.monotonic(), abort=True)
            engine.start().get()
            self._finish(time.monotonic())
            host, port = self.config.metrics
            raise StartupError(f"cannot serve metrics on {host}:{port}: {os.strerror(exc.errno or 0)}") from None
        result = engine.start()
        result.rawlink(lambda _: self._wake.set())
        self._ready = True
        log.info("fanoutd ready: collector %s, publish %s, push %s, metrics http://%s:%d/metrics",
                 ",".join(self.config.collector), ",".join(self.config.publish) or "-",
                 ",".join(self.config.push) or "-", *self.config.metrics)
        systemd.notify("READY=1", "STATUS=" + self._status())
        helpers = [gevent.spawn(self._report), gevent.spawn(self._watchdog)]
        for helper in helpers:
            helper.link_exception(self._on_crash)
        try:
            status = self._main_loop(result)
        finally:
            gevent.killall(helpers, timeout=1.0)
            server.stop(timeout=1.0)
        return status

    def _main_loop(self, result) -> int:  # result: gevent ThreadResult
        while True:
            self._wake.wait()
            self._wake.clear()
            if result.ready():
                return self._engine_ended(result)
            if self._crashed is not None:
                return self._helper_crashed(result)
            if self._stop_requests:
                return self._shutdown(result)
            if self._reload_requested:
                self._reload_requested = False
                self._reload()

    def _helper_crashed(self, result) -> int:
        """A greenlet the daemon relies on died: stop at once and exit 1 so the service manager restarts us."""
        assert self._engine is not None and self._crashed is not None
        log.error("%s failed, exiting so the service manager restarts fanoutd: %r", self._crashed,
                  self._crashed.exception)
        self._ready = False
        self._engine.stop(time.monotonic(), abort=True)
        result.get()
        self._finish(deadline=time.monotonic())
        return 1

    def _engine_ended(self, result) -> int:
        self._ready = False
        if result.successful():
            log.error("the forwarding loop ended on its own (%s)", result.value)
        else:
            exc = result.exception
            log.error("the forwarding loop failed", exc_info=(type(exc), exc, exc.__traceback__))
        self._finish(deadline=time.monotonic())
        return 1

    def _shutdown(self, result) -> int:
        assert self._engine is not None
        self._stopping = True
        self._ready = False
        systemd.notify("STOPPING=1", "STATUS=draining")
        deadline = time.monotonic() + self.config.drain_timeout
        log.info("stopping: draining for up to %.1fs (signal again to abort)", self.config.drain_timeout)
        self._engine.stop(deadline)
        aborted = timed_out = False
        while not result.ready():
            self._wake.clear()
            if self._stop_requests > 1 and not aborted:
                log.warning("aborting: messages still queued are lost")
                self._engine.stop(deadline, abort=True)
                aborted = True
            elif time.monotonic() >= deadline and not timed_out:
                log.warning("the collector did not empty within drain_timeout; stopping anyway")
                self._engine.stop(deadline, abort=True)
                timed_out = True
            self._wake.wait(timeout=max(0.05, deadline - time.monotonic()))
        if not result.successful():
            exc = result.exception
            log.error("the forwarding loop failed while draining", exc_info=(type(exc), exc, exc.__traceback__))
            self._finish(deadline)
            return 1
        clean = self._finish(deadline=time.monotonic() if aborted else deadline)
        log.info("stopped: %s", self._status())
        return 0 if clean and not aborted else 1

    def _finish(self, deadline: float) -> bool:
        """Close monitors and terminate the context within the flush bound."""
        assert self._engine is not None and self._peers is not None and self._zap is not None
        self._peers.close()
        self._zap.close()
        return self._engine.terminate(timeout=max(0.0, deadline - time.monotonic()) + 2.0)

    # ---- live behaviour

    def _readiness(self) -> tuple[bool, str]:
        if self._stopping:
            return False, "stopping"
        if not self._ready:
            return False, "starting"
        if self.config.upstream and self._peers is not None and not self._peers.counts().get("upstream"):
            return False, "no upstream connected"
        return True, "ready"

    def _on_peers(self, role: str, count: int) -> None:
        if role == "push" and self._engine is not None:
            self._engine.set_push_peers(count)

    def _reload(self) -> None:
        assert self._engine is not None and self._zap is not None
        if self._reload_source is None:
            log.warning("SIGHUP ignored: no configuration source to reload")
            return
        systemd.notify("RELOADING=1")
        try:
            new = self._reload_source()
            changed = self.config.changed(new)
            live = [name for name in changed if name in LIVE]
            applied = dataclasses.replace(self.config, **{name: getattr(new, name) for name in live})
            # Key directories are re-read even when their paths did not change.
            policies = auth.load_policies(applied)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            systemd.notify("READY=1")
            return
        later = [name for name in changed if name not in live]
        if live:
            self._engine.apply_limits(applied)
            logs.configure(log_level(applied))
            self.config = applied
        self._zap.update(policies)
        log.info("reloaded: applied %s", ", ".join(f"{n}={getattr(applied, n)!r}" for n in live) or "nothing")
        if later:
            log.warning("reload: %s changed but need a restart to take effect", ", ".join(later))
        systemd.notify("READY=1", "STATUS=" + self._status())

    def _status(self) -> str:
        c = self._engine.counters() if self._engine else {}
        dropped = sum(c.get(key, 0) for key in metrics.DROPS.values())
        rejected = sum(c.get(key, 0) for key in metrics.REJECTS.values())
        return (f"received {c.get('received_messages', 0)}, published {c.get('published_messages', 0)}, "
                f"pushed {c.get('pushed_messages', 0)}, dropped {dropped}, rejected {rejected}")

    def _report(self) -> None:
        """STATUS= lines for systemctl status, and rate-limited warnings about rejections."""
        assert self._engine is not None
        last_warn = time.monotonic()
        seen = dict(self._engine.counters())
        while True:
            gevent.sleep(STATUS_EVERY)
            systemd.notify("STATUS=" + self._status())
            if time.monotonic() - last_warn < WARN_EVERY:
                continue
            now = self._engine.counters()
            rejected = {reason: now[key] - seen[key] for reason, key in metrics.REJECTS.items() if now[key] > seen[key]}
            if rejected:
                log.warning("rejected messages in the last %.0fs: %s", time.monotonic() - last_warn,
                            ", ".join(f"{n} {reason}" for reason, n in rejected.items()))
            seen, last_warn = dict(now), time.monotonic()

    def _watchdog(self) -> None:
        """WATCHDOG=1 only while the forwarding loop is seen going round: a stuck engine stops the pings."""
        assert self._engine is not None
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        last = -1
        while True:
            ticks = self._engine.counters()["ticks"]
            if ticks != last:
                systemd.notify("WATCHDOG=1")
                last = ticks
            else:
                log.error("the forwarding loop has not gone round in %.1fs; withholding the watchdog ping", interval)
            gevent.sleep(interval)
