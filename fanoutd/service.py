"""The broker's life: signals, the main loop and the stop sequence, around a :class:`~fanoutd.runtime.Runtime`.

Signal handlers only record intent and wake the main loop; the loop acts.
Stopping runs in two bounded stages: the engine stops reading once the
collector is empty (or ``drain_timeout`` passes), then the outputs flush
within what is left of that bound and the context terminates.  A second
SIGTERM or SIGINT aborts: no draining, no flushing, exit status 1.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
from fanoutd_client import wire

from . import reload, status, systemd
from .config import Config, ConfigError
from .keys import Keys, load_keys
from .runtime import Runtime, StartupError

__all__ = ["Broker", "StartupError"]

log = logging.getLogger(__name__)


class Broker:
    """Runs one fanoutd: ``Broker(config, reload).run()`` returns the exit status."""

    def __init__(self, config: Config, keys: Keys, reload_source: Callable[[], Config] | None = None) -> None:
        self._config = config
        self._keys = keys
        self._reload_source = reload_source
        self._wake = gevent.event.Event()
        self._stops = 0
        self._reloads = 0
        self._crashed: gevent.Greenlet | None = None

    def _on_stop(self, signum: int) -> None:
        self._stops += 1
        log.info("received %s", signal.Signals(signum).name)
        self._wake.set()

    def _on_reload(self) -> None:
        self._reloads += 1
        self._wake.set()

    def _on_crash(self, greenlet: gevent.Greenlet) -> None:
        """A greenlet the daemon relies on died: gevent printed its traceback; the loop exits non-zero."""
        self._crashed = greenlet
        self._wake.set()

    def run(self) -> int:
        handlers = [gevent.signal_handler(signal.SIGTERM, self._on_stop, signal.SIGTERM),
                    gevent.signal_handler(signal.SIGINT, self._on_stop, signal.SIGINT),
                    gevent.signal_handler(signal.SIGHUP, self._on_reload)]
        try:
            runtime = Runtime(self._config, self._keys, os.urandom(wire.NODE_ID_LEN), self._on_crash)
            result = runtime.open()
            result.rawlink(lambda _: self._wake.set())
            runtime.phase = "ready"
            where = status.endpoints(runtime.engine.endpoints, runtime.metrics_address(), runtime.server.scheme)
            log.info("fanoutd ready: %s", where)
            systemd.notify("READY=1", "STATUS=" + status_line(runtime))
            helpers = [gevent.spawn(status.report, runtime.engine.counters),
                       gevent.spawn(status.watchdog, runtime.engine.counters)]
            for helper in helpers:
                helper.link_exception(self._on_crash)
            try:
                return self._main_loop(runtime, result)
            finally:
                gevent.killall(helpers, timeout=1.0)
        finally:
            for handler in handlers:
                handler.cancel()

    def _main_loop(self, runtime: Runtime, result: Any) -> int:
        while True:
            self._wake.wait()
            self._wake.clear()
            if result.ready():
                if result.successful():
                    log.error("the forwarding loop ended on its own (%s)", result.value)
                else:
                    exc = result.exception
                    log.error("the forwarding loop failed", exc_info=(type(exc), exc, exc.__traceback__))
                self._stop(runtime, result, drain=False)
                return 1
            if self._crashed is not None:
                log.error("%s failed, exiting so the service manager restarts fanoutd: %r", self._crashed,
                          self._crashed.exception)
                self._stop(runtime, result, drain=False)
                return 1
            if self._stops:
                return self._stop(runtime, result, drain=True)
            if self._reloads:
                self._reloads = 0
                self._reload(runtime)

    def _stop(self, runtime: Runtime, result: Any, drain: bool) -> int:
        """Drain within drain_timeout (a second signal or the bound aborts), flush, close; the exit status."""
        runtime.phase = "stopping"
        systemd.notify("STOPPING=1", "STATUS=draining")
        deadline = time.monotonic() + (runtime.config.drain_timeout if drain else 0.0)
        aborted, timed_out = not drain, False
        if drain:
            log.info("stopping: draining for up to %.1fs (signal again to abort)", runtime.config.drain_timeout)
        runtime.engine.stop(deadline, abort=aborted)
        while not result.ready():
            if self._stops > 1 and not aborted:
                log.warning("aborting: messages still queued are lost")
                runtime.engine.stop(deadline, abort=True)
                aborted = True
            elif time.monotonic() >= deadline and not (aborted or timed_out):
                log.warning("the collector did not empty within drain_timeout; stopping anyway")
                runtime.engine.stop(deadline, abort=True)
                timed_out = True
            self._wake.clear()
            self._wake.wait(timeout=max(0.05, deadline - time.monotonic()))
        failed = not result.successful()
        if failed:
            exc = result.exception
            log.error("the forwarding loop failed while draining", exc_info=(type(exc), exc, exc.__traceback__))
        clean = runtime.close(deadline=time.monotonic() if aborted else deadline)
        log.info("stopped: %s", status_line(runtime))
        return 0 if clean and not aborted and not failed else 1

    def _reload(self, runtime: Runtime) -> None:
        if self._reload_source is None:
            log.warning("SIGHUP ignored: no configuration source to reload")
            return
        systemd.notify("RELOADING=1")
        try:
            new = self._reload_source()
            plan = reload.plan(runtime.config, runtime.keys, new, load_keys(new))
            runtime.apply(plan)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
        else:
            log.info("reloaded: applied %s", plan.applied())
            if plan.restart:
                log.warning("reload: %s changed but need a restart to take effect", ", ".join(plan.restart))
        systemd.notify("READY=1", "STATUS=" + status_line(runtime))


def status_line(runtime: Runtime) -> str:
    return status.status_line(runtime.engine.counters())
