"""A hub greenlet that runs one function at a fixed interval until closed, its crash handed to the daemon.

For the hub's pollers of the forwarding loop's reports (fanoutd/senders.py, fanoutd/subscriptions.py): the
loop posts what it saw into a box without waking anyone, and the hub reads it every so often.
"""

from __future__ import annotations

from collections.abc import Callable

import gevent


class Every:
    """Call ``fn`` every ``interval`` seconds on the hub, from :meth:`start` until :meth:`close`."""

    def __init__(self, interval: float, fn: Callable[[], object]) -> None:
        self._interval = interval
        self._fn = fn
        self._greenlet: gevent.Greenlet | None = None

    def start(self, on_crash: Callable[[gevent.Greenlet], None]) -> None:
        """Begin; an exception in ``fn`` ends the greenlet and is handed to ``on_crash`` (the daemon exits)."""
        self._greenlet = gevent.spawn(self._run)
        self._greenlet.link_exception(on_crash)

    def close(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None

    def _run(self) -> None:
        while True:
            gevent.sleep(self._interval)
            self._fn()
