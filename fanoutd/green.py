"""Green sockets on the daemon's own libzmq context, read on the gevent hub.

The data sockets live in the engine's worker thread on a plain context; the
sockets the hub reads (monitor events, ZAP requests) must share that
context for ``inproc://`` to reach them, so they come from a green context
that shadows it.
"""

from __future__ import annotations

from collections.abc import Iterator

import zmq
import zmq.green


def shadow(context: zmq.Context) -> zmq.green.Context:
    """A gevent-friendly view of ``context`` (same libzmq context, no second one to terminate)."""
    return zmq.green.Context.shadow(context.underlying)


def messages(sock: zmq.Socket) -> Iterator[list[bytes]]:
    """Every message on ``sock`` until it or its context is closed, which ends the reader cleanly."""
    while True:
        try:
            yield sock.recv_multipart()
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                return
            raise
