"""The data path: the collector, publish and push sockets and the loop between them.

Sockets are first *described* (:func:`describe`: a pure function of the
config), then created in one place (:func:`open_socket`: options before bind)
in the one OS thread that uses them: the engine's worker thread.  That thread
runs the native loop in :mod:`fanoutd._forward` with the GIL released, so the
gevent hub in the main thread stays free for HTTP, signals and monitors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import zmq
from gevent import Timeout
from gevent.threadpool import ThreadPool

from . import _forward
from .auth import policy_role
from .config import Config

log = logging.getLogger(__name__)

INPUTS = ("collector", "ingress", "upstream")
ROLES = (*INPUTS, "publish", "push", "relay")  # inputs first: the order sockets close in

# The socket-monitor events peer counts, disconnects and handshake failures are built from.
MONITOR_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_MONITOR_STOPPED
                  | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


OTHER_TOPIC = "__other__"


class BindError(RuntimeError):
    """A socket could not be bound; the message names the socket and endpoint."""


@dataclass(frozen=True)
class SocketSpec:
    """Everything needed to create one bound socket, decided before any socket exists."""

    role: str
    kind: int
    endpoints: tuple[str, ...]
    options: tuple[tuple[int, int | bytes], ...]
    subscribe: tuple[bytes, ...] = field(default=())
    connect: bool = False  # connect to the endpoints instead of binding them


def frame_guard(config: Config) -> int:
    """ZMQ_MAXMSGSIZE for the collector: a per-frame cap libzmq enforces while reading.

    Messages over max_message_size are rejected and counted by the engine
    with the connection kept; this guard only stops a peer from making us
    buffer an absurd frame. It is set well above the limit so that a reload
    may raise max_message_size within it.
    """
    return 2 * config.max_message_size + 64 * 1024


def security_options(config: Config, role: str, secret_key: bytes | None) -> tuple[tuple[int, int | bytes], ...]:
    """The ZAP domain (the role) on every socket, plus the CURVE server keys where asked for.

    A ZAP domain on every socket does two things: each connection is seen
    (and checked) by the ZAP handler, and libzmq refuses legacy ZMTP 1.0/2.0
    peers whenever ZAP is on. Those skip the socket-type check, so without
    this any stray TCP client that writes a byte could pose as a puller and
    swallow PUSH messages.
    """
    options: tuple[tuple[int, int | bytes], ...] = ((zmq.ZAP_DOMAIN, role.encode()),)
    if getattr(config, f"{policy_role(role)}_curve"):
        if secret_key is None:
            raise ValueError("a CURVE socket needs the server secret key")
        options += ((zmq.CURVE_SERVER, 1), (zmq.CURVE_SECRETKEY, secret_key))
    return options


def describe(config: Config, secret_key: bytes | None = None) -> tuple[SocketSpec, ...]:
    """The three sockets this config asks for; outputs with no endpoints are left out."""
    heartbeat: tuple[tuple[int, int | bytes], ...] = ()
    if config.heartbeat_interval > 0:
        ivl, timeout = int(config.heartbeat_interval * 1000), int(config.heartbeat_timeout * 1000)
        heartbeat = ((zmq.HEARTBEAT_IVL, ivl), (zmq.HEARTBEAT_TIMEOUT, timeout), (zmq.HEARTBEAT_TTL, timeout))
    specs = [
        SocketSpec("collector", zmq.SUB, config.collector,
                   ((zmq.RCVHWM, config.collector_hwm), (zmq.MAXMSGSIZE, frame_guard(config)),
                    (zmq.LINGER, 0)) + heartbeat + security_options(config, "collector", secret_key),
                   tuple(t.encode() for t in config.collector_topics)),
        SocketSpec("publish", zmq.PUB, config.publish,
                   ((zmq.SNDHWM, config.publish_hwm), (zmq.LINGER, 0)) + heartbeat
                   + security_options(config, "publish", secret_key)),
        SocketSpec("push", zmq.PUSH, config.push,
                   ((zmq.SNDHWM, config.push_hwm), (zmq.LINGER, 0)) + heartbeat
                   + security_options(config, "push", secret_key)),
        SocketSpec("ingress", zmq.PULL, config.ingress,
                   ((zmq.RCVHWM, config.collector_hwm), (zmq.MAXMSGSIZE, frame_guard(config)),
                    (zmq.LINGER, 0)) + heartbeat + security_options(config, "ingress", secret_key)),
        SocketSpec("relay", zmq.PUB, config.relay,
                   ((zmq.SNDHWM, config.publish_hwm), (zmq.LINGER, 0)) + heartbeat
                   + security_options(config, "relay", secret_key)),
        SocketSpec("upstream", zmq.SUB, config.upstream,
                   ((zmq.RCVHWM, config.collector_hwm), (zmq.MAXMSGSIZE, frame_guard(config)), (zmq.LINGER, 0),
                    (zmq.RECONNECT_IVL, 100), (zmq.RECONNECT_IVL_MAX, 5000)) + heartbeat,
                   tuple(t.encode() for t in config.collector_topics), connect=True),
    ]
    return tuple(s for s in specs if s.endpoints)


def open_socket(context: zmq.Context, spec: SocketSpec, monitor: str | None = None) -> zmq.Socket:
    """Create, configure, monitor and bind (or connect) one socket; on failure nothing is left open.

    The monitor is attached before the first bind or connect, or an early
    peer's connection event would be missed and its count be wrong forever.
    """
    sock = context.socket(spec.kind)
    endpoint = ""
    try:
        for option, value in spec.options:
            sock.setsockopt(option, value)
        for topic in spec.subscribe:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        if monitor is not None:
            sock.monitor(monitor, MONITOR_EVENTS)
        for endpoint in spec.endpoints:
            (sock.connect if spec.connect else sock.bind)(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        verb = "connect" if spec.connect else "bind"
        raise BindError(f"cannot {verb} {spec.role} to {endpoint}: {zmq.strerror(exc.errno)}") from None
    return sock


def libzmq_path() -> str:
    """The file of the libzmq this process loaded through pyzmq (bundled or system)."""
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            path = line.split(None, 5)[-1].strip()
            if "/libzmq" in path and ".so" in path:
                return path
    raise RuntimeError("cannot find the libzmq that pyzmq loaded in /proc/self/maps")


def monitor_address(role: str) -> str:
    return f"inproc://fanoutd.monitor.{role}"


class Engine:
    """Owns the data sockets and the native forwarding loop, all in one worker thread.

    Lifecycle: :meth:`open` (bind; raises :class:`BindError`), :meth:`start`
    (returns an AsyncResult that resolves when the loop ends), :meth:`stop`,
    and the sockets close themselves in the worker when the loop returns.
    """

    def __init__(self, config: Config, context: zmq.Context, secret_key: bytes | None = None,
                 node_id: bytes = b"") -> None:
        self.node_id = node_id
        self._config = config
        self._context = context
        self._specs = describe(config, secret_key)
        self._sockets: dict[str, zmq.Socket] = {}
        self._forwarder: _forward.Forwarder | None = None
        self._pool = ThreadPool(1)
        self._flush_deadline = 0.0

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(s.role for s in self._specs)

    def open(self) -> None:
        """Bind every socket in the worker thread; cooperative wait from the hub."""
        error = self._pool.spawn(self._open).get()
        if error is not None:
            raise error

    def _open(self) -> BindError | None:
        # A BindError is returned, not raised: it is an expected answer, and
        # the thread pool would print a traceback for a raised one.
        _forward.bind_libzmq(libzmq_path())
        try:
            for spec in self._specs:
                self._sockets[spec.role] = open_socket(self._context, spec, monitor_address(spec.role))
        except BindError as exc:
            self._close(linger_ms=0)
            return exc
        except BaseException:
            self._close(linger_ms=0)
            raise
        handles = {role: sock.underlying for role, sock in self._sockets.items()}
        c = self._config
        self._forwarder = _forward.Forwarder(
            handles["collector"], handles.get("publish", 0), handles.get("push", 0),
            max_message_size=c.max_message_size, max_frames=c.max_frames, strip_topic=c.push_strip_topic,
            topics=[t.encode() for t in c.metrics_topics], upstream=handles.get("upstream", 0),
            relay=handles.get("relay", 0), node_id=self.node_id, ingress=handles.get("ingress", 0))
        return None

    def start(self):  # -> gevent AsyncResult-like ThreadResult
        """Run the loop in the worker thread; the result is 'drained', 'aborted' or 'terminated'."""
        if self._forwarder is None:
            raise RuntimeError("open() first")
        return self._pool.spawn(self._run)

    def _run(self) -> str:
        assert self._forwarder is not None
        try:
            return str(self._forwarder.run())
        finally:
            remaining = self._flush_deadline - time.monotonic()
            self._close(linger_ms=max(0, int(remaining * 1000)))

    def _close(self, linger_ms: int) -> None:
        """Close in the worker: inputs first (stop reading), outputs flush within linger."""
        for role in ROLES:
            sock = self._sockets.pop(role, None)
            if sock is not None:
                try:
                    sock.disable_monitor()
                except zmq.ZMQError as exc:
                    log.debug("disable_monitor on %s: %s", role, exc)
                sock.close(linger=0 if role in INPUTS else linger_ms)

    def stop(self, flush_deadline: float, abort: bool = False) -> None:
        """Ask the loop to drain the collector (or abort); thread-safe, returns at once.

        ``flush_deadline`` (time.monotonic()) bounds how long the outputs may
        keep flushing what they hold once the loop has returned.
        """
        self._flush_deadline = 0.0 if abort else flush_deadline
        if self._forwarder is not None:
            self._forwarder.stop(abort)

    def counters(self) -> Mapping[str, int]:
        """A snapshot of the loop's counters (zeros before open)."""
        if self._forwarder is None:
            return dict.fromkeys(_forward.COUNTER_NAMES, 0)
        return self._forwarder.counters()

    def topic_counters(self) -> dict[str, int]:
        """Received messages per counted topic, plus ``__other__``; empty when counting is off."""
        if self._forwarder is None or not self._config.metrics_topics:
            return {}
        values = self._forwarder.topic_counters()
        return dict(zip((*self._config.metrics_topics, OTHER_TOPIC), values))

    def set_push_peers(self, count: int) -> None:
        if self._forwarder is not None:
            self._forwarder.set_push_peers(count)

    def apply_limits(self, config: Config) -> None:
        """Apply the settings a reload can change without touching sockets."""
        if self._forwarder is not None:
            self._forwarder.set_limits(max_message_size=config.max_message_size,
                                       max_frames=config.max_frames,
                                       strip_topic=config.push_strip_topic)

    def terminate(self, timeout: float) -> bool:
        """Terminate the context in the worker thread; False if it did not finish in time."""
        result = self._pool.spawn(self._context.term)
        try:
            result.get(timeout=timeout)
        except Timeout:
            log.error("the ZeroMQ context did not terminate within %.1fs", timeout)
            return False
        return True
