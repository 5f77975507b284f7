"""Connected-peer counts, from ZeroMQ socket-monitor events, read on the gevent hub.

The engine's worker thread asks libzmq to publish monitor events of each
data socket on an inproc address; this module reads them in the main thread
through a green context that shadows the same libzmq context.  The push
count is handed back to the native loop so that a refused PUSH send can be
told apart: nobody connected (``no_puller``) or everyone full (``hwm``).
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from collections.abc import Callable, Iterable

import gevent
import zmq

from . import green
from .sockets import monitor_address

log = logging.getLogger(__name__)

_EVENT = struct.Struct("=Hi")
HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "other",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
}


class PeerTracker:
    """Keeps ``counts()[role]``: connections accepted and not yet closed, per socket."""

    def __init__(self, context: zmq.Context, roles: Iterable[str],
                 on_change: Callable[[str, int], None] | None = None) -> None:
        self._green = green.shadow(context)
        self._roles = tuple(roles)
        self._fds: dict[str, set[int]] = {role: set() for role in self._roles}
        self.handshake_failures: Counter[tuple[str, str]] = Counter(
            dict.fromkeys(((role, reason) for role in self._roles for reason in HANDSHAKE_FAILURES.values()), 0))
        self.disconnects: Counter[str] = Counter(dict.fromkeys(self._roles, 0))
        self._on_change = on_change
        self._sockets: list[zmq.Socket] = []
        self._greenlets: list[gevent.Greenlet] = []

    def counts(self) -> dict[str, int]:
        return {role: len(fds) for role, fds in self._fds.items()}

    def start(self, on_crash: Callable[[gevent.Greenlet], None]) -> None:
        """Start reading every monitor; ``on_crash`` hears of an unexpected failure."""
        for role in self._roles:
            sock = self._green.socket(zmq.PAIR)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(monitor_address(role))
            self._sockets.append(sock)
            greenlet = gevent.spawn(self._read, role, sock)
            greenlet.link_exception(on_crash)
            self._greenlets.append(greenlet)

    def _read(self, role: str, sock: zmq.Socket) -> None:
        fds = self._fds[role]
        for frames in green.messages(sock):
            if len(frames) != 2 or len(frames[0]) != _EVENT.size:
                log.warning("ignoring a malformed monitor event on %s", role)
                continue
            event, value = _EVENT.unpack(frames[0])
            if event == zmq.EVENT_MONITOR_STOPPED:
                return
            if event in HANDSHAKE_FAILURES:
                self.handshake_failures[(role, HANDSHAKE_FAILURES[event])] += 1
                log.debug("%s: handshake failed (%s)", role, HANDSHAKE_FAILURES[event])
                continue
            before = len(fds)
            if event in (zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED):
                fds.add(value)
            elif event == zmq.EVENT_DISCONNECTED:
                fds.discard(value)
                self.disconnects[role] += 1
            if len(fds) != before:
                log.debug("%s: %d peer(s) connected on %s", role, len(fds), frames[1].decode(errors="replace"))
                if self._on_change is not None:
                    self._on_change(role, len(fds))

    def close(self, timeout: float = 1.0) -> None:
        """Wait briefly for the monitors to report they stopped, then close the sockets."""
        gevent.joinall(self._greenlets, timeout=timeout)
        gevent.killall(self._greenlets, timeout=timeout)
        for sock in self._sockets:
            sock.close(linger=0)
        self._sockets.clear()
        self._greenlets.clear()
