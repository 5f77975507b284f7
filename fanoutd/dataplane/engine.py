"""The data path's owner: the data sockets and the forwarding loop between them, in one worker thread.

Sockets are described and created by :mod:`fanoutd.sockets`, in the one OS
thread that uses them: the engine's worker thread.  That thread runs the
forwarding loop in :mod:`fanoutd.dataplane._forward` with the GIL released,
so the gevent hub in the main thread stays free for HTTP, signals and monitors.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import zmq
from gevent import Timeout
from gevent.threadpool import ThreadPool

from . import _forward, zmqlib
from ..config import Config
from ..counters import RECEIVED, RECEIVED_UPSTREAM
from ..roles import INPUTS, ROLES
from ..slowrules import resume_below, stall_above
from ..sockets import BindError, SocketSpec, describe, monitor_address, open_socket

__all__ = ["BindError", "Engine", "OTHER_TOPIC"]

log = logging.getLogger(__name__)

OTHER_TOPIC = "__other__"

# libzmq's context option ZMQ_ZERO_COPY_RECV: zmq.h lists it with the draft context options and pyzmq has no
# name for it, but libzmq 4.3's zmq_ctx_set takes it in every build (tests/test_max_pending.py sees its effect).
ZERO_COPY_RECV = 10


class Engine:
    """Owns the data sockets and the forwarding loop, all in one worker thread.

    Lifecycle: :meth:`open` binds (raises :class:`BindError` or
    :class:`~fanoutd.zmqlib.LibzmqError`), :meth:`start` runs the loop and
    returns a result that resolves when it ends, :meth:`stop` asks it to
    drain or abort, and :meth:`close` leaves no socket open whatever state
    it is called in. The loop closes the sockets itself when it returns, in
    its own thread, as zmq sockets must be.
    """

    def __init__(self, config: Config, context: zmq.Context, secret_key: bytes | None = None,
                 node_id: bytes = b"", upstream_server: bytes | None = None) -> None:
        self.node_id = node_id
        # The stamps' epoch is the node id (new at every start), so subscribers tell a restart from a gap.
        self.epoch = int.from_bytes(node_id, "big") or 1
        self._config = config
        self._context = context
        _receive_buffers(context, copy=config.receive_copy)
        self._specs = describe(config, secret_key, upstream_server)
        self._sockets: dict[str, zmq.Socket] = {}
        self._endpoints: dict[str, tuple[str, ...]] = {}  # per role, as bound (the kernel's port for :*)
        self._forwarder: _forward.Forwarder | None = None  # made in the worker, once the sockets are bound
        self._result: Any = None  # the running loop's gevent ThreadResult
        self._pool = ThreadPool(1)
        self._flush_deadline = 0.0
        # The loop writes this when it stalls output for a full subscriber (see fanoutd.slow).
        self.stall_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(s.role for s in self._specs)

    def spec(self, role: str) -> SocketSpec | None:
        """How the socket of ``role`` is (or will be) made; None if the node has none."""
        return next((s for s in self._specs if s.role == role), None)

    @property
    def endpoints(self) -> Mapping[str, tuple[str, ...]]:
        """Each socket's endpoints as bound (a connecting socket's as configured), in role order; empty before open."""
        return dict(self._endpoints)

    def open(self) -> str:
        """Bind every socket in the worker thread (cooperative wait from the hub); returns the libzmq used."""
        library = zmqlib.bind()
        error = self._pool.spawn(self._open).get()
        if error is not None:
            raise error
        return library

    def _open(self) -> BindError | None:
        # A BindError is returned, not raised: it is an expected answer, and
        # the thread pool would print a traceback for a raised one.
        try:
            for spec in self._specs:
                self._sockets[spec.role], self._endpoints[spec.role] = open_socket(
                    self._context, spec, monitor_address(spec.role))
        except BindError as exc:
            self._close(linger_ms=0)
            return exc
        except BaseException:
            self._close(linger_ms=0)
            raise
        c = self._config
        self._forwarder = _forward.Forwarder(
            {role: sock.underlying for role, sock in self._sockets.items()},
            **_limits(c), topics=[t.encode() for t in c.metrics_topics],
            upstream_topics=[t.encode() for t in c.collector_topics],
            stall_ns=int(c.slow_consumer_stall * 1e9), stall_fd=self.stall_fd,
            node_id=self.node_id, epoch=self.epoch, stamp_streams=c.stamp_streams,
            history_bytes=c.history_bytes if c.stamped or c.relay_repair else 0,
            history_ns=int(c.history_seconds * 1e9),
            upstream_repair_endpoint=c.upstream_repair[0] if c.upstream_repair else None)
        self._forwarder.set_subscription_bounds(*_subscription_bounds(c))
        return None

    def start(self) -> Any:
        """Run the loop in the worker thread; the result is 'drained', 'aborted' or 'terminated'."""
        forwarder = self._forwarder
        if forwarder is None or self._result is not None:
            raise RuntimeError("start() needs a freshly opened engine")
        self._result = self._pool.spawn(self._run, forwarder)
        return self._result

    def _run(self, forwarder: _forward.Forwarder) -> str:
        try:
            return str(forwarder.run())
        finally:
            remaining = self._flush_deadline - time.monotonic()
            self._close(linger_ms=max(0, int(remaining * 1000)))

    def _close(self, linger_ms: int) -> None:
        """Close in the worker: inputs first (stop reading), outputs flush within linger."""
        for role in [r.name for r in ROLES]:
            sock = self._sockets.pop(role, None)
            if sock is not None:
                try:
                    sock.disable_monitor()
                except zmq.ZMQError as exc:
                    log.debug("disable_monitor on %s: %s", role, exc)
                sock.close(linger=0 if role in INPUTS else linger_ms)

    def close(self, timeout: float) -> bool:
        """Leave no data socket open: stop a loop that still runs, or close what a loop never got to.

        False if a running loop did not return within ``timeout``.
        """
        if self._result is None:
            self._pool.spawn(self._close, 0).get()
            return True
        if not self._result.ready():
            self.stop(time.monotonic(), abort=True)
        try:
            self._result.get(block=True, timeout=timeout)
        except Timeout:
            log.error("the forwarding loop did not return within %.1fs", timeout)
            return False
        except Exception as exc:  # its traceback was logged by whoever watched the loop end
            log.debug("the forwarding loop had failed: %r", exc)
        return True

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

    def received(self) -> int:
        """Messages read from every input: while it stays the same, the loop wrote nothing for a subscriber."""
        counters = self.counters()
        return counters[RECEIVED] + counters[RECEIVED_UPSTREAM]

    def topic_counters(self) -> dict[str, int]:
        """Received messages per counted topic, plus ``__other__``; empty when counting is off."""
        if self._forwarder is None or not self._config.metrics_topics:
            return {}
        values = self._forwarder.topic_counters()
        return dict(zip((*self._config.metrics_topics, OTHER_TOPIC), values))

    def held_bytes(self) -> dict[str, int]:
        """Each fanning-out output this node has -> the message bytes libzmq holds for its readers, exactly.

        Counted by the loop's held-bytes ledger (held.c): every frame of more
        than 256 bytes, once however many readers share it, until libzmq has
        written it to the last of them or dropped it with its connection.
        """
        if self._forwarder is None:
            return {}
        return {role: n for role, n in zip(_forward.OUTPUTS, self._forwarder.held_bytes()) if self.spec(role)}

    def pending_bytes(self) -> dict[str, int]:
        """:meth:`held_bytes`, and the PUSH output's (its pullers' queues), counted the same way."""
        held = self.held_bytes()
        if self._forwarder is not None and self.spec("push"):
            held["push"] = self._forwarder.push_held_bytes()
        return held

    def stalls(self) -> dict[str, int]:
        """Fanning-out outputs the loop has stalled (a full subscriber queue) -> the number of that stall."""
        if self._forwarder is None:
            return {}
        return _by_output(self._forwarder.stalls())

    def senders(self) -> list[tuple[int, int, str]]:
        """Producer connections the loop read from for the first time since the last call: (fd, inode, Socket-Type)."""
        if self._forwarder is None:
            return []
        return [(fd, inode, kind.decode(errors="replace")) for fd, inode, kind in self._forwarder.senders()]

    def forget_senders(self) -> None:
        """A producer connection closed: the loop reports each connection again at its next message."""
        if self._forwarder is not None:
            self._forwarder.forget_senders()

    def subscriber_closed(self, fd: int, inode: int) -> bool:
        """A connection of an output closed: its subscriptions stop counting. False: the loop is behind, try later."""
        if self._forwarder is None:
            return True
        return bool(self._forwarder.subscriber_closed(fd, max(inode, 0)))

    def subscriptions_of(self, role: str, fd: int) -> int:
        """The subscriptions the loop counts for the connection ``fd`` of output ``role`` (for /peers)."""
        if self._forwarder is None:
            return 0
        return int(self._forwarder.subscriptions_of(_forward.OUTPUTS.index(role), fd))

    def subscription_refusals(self) -> list[tuple[str, str, int, int, int, str]]:
        """Connections the loop closed for a subscription past a bound: (output, bound, fd, inode, value, address)."""
        if self._forwarder is None:
            return []
        return [(_forward.OUTPUTS[out], *rest) for out, *rest in self._forwarder.subscription_refusals()]

    def answer_stall(self, role: str, number: int, stall_on: bool) -> None:
        """The guard has looked at stall ``number``: stall on for another stall period, or send lossy."""
        if self._forwarder is not None:
            self._forwarder.answer_stall(_forward.OUTPUTS.index(role), number, stall_on)

    def windows(self) -> dict[str, int]:
        """Fanning-out outputs with an open lossy window -> the number of the lossy send that opened it."""
        if self._forwarder is None:
            return {}
        return _by_output(self._forwarder.windows())

    def close_window(self, role: str, number: int) -> bool:
        """Close ``role``'s window once its full subscriber is gone, unless a later lossy send reopened it."""
        if self._forwarder is None:
            return False
        return bool(self._forwarder.close_window(_forward.OUTPUTS.index(role), number))

    def reconnect(self, endpoint: str) -> bool:
        """Have the loop connect the upstream link to ``endpoint`` afresh; False if a request is still pending."""
        if self._forwarder is None:
            return False
        return bool(self._forwarder.reconnect(endpoint.encode()))

    def set_push_peers(self, count: int) -> None:
        if self._forwarder is not None:
            self._forwarder.set_push_peers(count)

    def set_stamped_peers(self, count: int) -> None:
        """With no connection on the stamped output, the loop spares itself that output's sends."""
        if self._forwarder is not None:
            self._forwarder.set_stamped_peers(count)

    def apply_limits(self, config: Config) -> None:
        """Apply the settings a reload can change without touching sockets."""
        self._config = config
        if self._forwarder is not None:
            self._forwarder.set_limits(**_limits(config))
            self._forwarder.set_subscription_bounds(*_subscription_bounds(config))

    def terminate(self, timeout: float) -> bool:
        """Terminate the context in the worker thread; False if it did not finish in time."""
        result = self._pool.spawn(self._context.term)
        try:
            result.get(timeout=timeout)
        except Timeout:
            log.error("the ZeroMQ context did not terminate within %.1fs", timeout)
            return False
        os.close(self.stall_fd)  # only once the loop, its only writer, is gone
        return True


def _limits(config: Config) -> dict[str, Any]:
    """The loop's limits (set_limits): at start and at each reload, from the same settings."""
    policy, max_pending = config.slow_consumer_policy, config.slow_consumer_max_pending
    return {"max_message_size": config.max_message_size, "max_frames": config.max_frames,
            "strip_topic": config.push_strip_topic, "stall_above": stall_above(policy, max_pending),
            "resume_below": resume_below(policy, max_pending), "push_above": max_pending}


def _subscription_bounds(config: Config) -> tuple[int, int, int]:
    """The loop's subscription bounds (dataplane/subs.c): per connection, per peer address, per output."""
    return (config.subscriptions_per_connection, config.subscriptions_per_address, config.subscriptions_per_socket)


def _by_output(numbers: tuple[int, ...]) -> dict[str, int]:
    """The loop's per-output numbers (in OUTPUTS order) of the outputs where they are set."""
    return {role: n for role, n in zip(_forward.OUTPUTS, numbers) if n}


def _receive_buffers(context: zmq.Context, copy: bool) -> None:
    """Have libzmq copy each received message into its own allocation (``copy``, the setting receive_copy) or
    hand out messages that point into its receive buffers, before any data socket exists.

    libzmq reads a connection into 8 KiB buffers and by default hands out
    messages that point into them: a message outliving its neighbours keeps
    the whole buffer. At a moderate rate each message arrives alone, so a
    backlog of 1 KiB messages held for a slow reader pinned eight times its
    bytes (48 MiB held took 280 MiB of memory: bench/README.md, "Slow readers
    and overload"); copied, what the held-bytes ledger counts is what is
    held. The copy costs an allocation and a memcpy per message on libzmq's
    I/O thread and its free on another (bench/README.md, "The copy of
    received messages"), which a deployment whose readers keep up may rather
    not pay.
    """
    try:
        context.set(ZERO_COPY_RECV, 0 if copy else 1)
    except zmq.ZMQError as exc:
        if copy:
            log.warning("this libzmq refuses ZMQ_ZERO_COPY_RECV (%s): held messages may keep up to 8 KiB of "
                        "receive buffer each beyond the bytes fanoutd_pending_bytes counts", exc)
        else:
            log.warning("this libzmq refuses ZMQ_ZERO_COPY_RECV (%s): received messages stay copied", exc)
