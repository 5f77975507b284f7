"""Sockets on the daemon's own libzmq context, read on the gevent hub.

The data sockets live in the engine's worker thread on a plain context; the
sockets the hub reads (monitor events, ZAP requests, upstream checks) must
share that context for ``inproc://`` to reach them, so they come from a
context that shadows it.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import zmq
import zmq.green
from gevent.socket import wait_read

#: Flags and options as plain ints: pyzmq's enums cost microseconds per operation, per frame.
NOBLOCK, SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)
#: A bound on each wait for the socket's FD, so a missed wake-up could only ever delay a read.
WAKE_EVERY = 1.0


def shadow(context: zmq.Context) -> zmq.green.Context:
    """A gevent-friendly view of ``context`` (same libzmq context, no second one to terminate)."""
    return zmq.green.Context.shadow(context.underlying)


def plain(context: zmq.Context) -> zmq.Context:
    """A plain view of ``context``, for sockets read only through :func:`messages` on the hub."""
    return zmq.Context.shadow(context.underlying)


def messages(sock: zmq.Socket) -> Iterator[list[bytes]]:
    """Every message on ``sock`` until it or its context is closed, which ends the reader cleanly.

    Reads in bursts with non-blocking receives and waits on the socket's FD between them. This is the
    hub's busiest path when a crowd connects (every connection is a ZAP request and several monitor
    events): zmq.green's receive spent about 30 µs a message in flag arithmetic there, which delayed
    every handshake waiting for its ZAP reply (a cProfile of 10,000 subscribers connecting at once).
    libzmq's FD signals new input once libzmq has taken what it had; a receive that ends in EAGAIN has,
    so waiting after one cannot miss a message. Frames after the first of a message are already there
    (libzmq delivers a message whole).
    """
    fd = sock.getsockopt(zmq.FD)
    while True:
        try:
            frame = sock.recv(NOBLOCK, copy=False)  # a Frame knows if more follow: no RCVMORE lookup
            frames = [frame.bytes]
            while frame.more:
                frame = sock.recv(NOBLOCK, copy=False)
                frames.append(frame.bytes)
            yield frames
        except zmq.Again:
            try:
                wait_read(fd, timeout=WAKE_EVERY)
            except TimeoutError:
                continue
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.ETERM, zmq.ENOTSOCK, errno.EBADF):
                return
            raise


def send_now(sock: zmq.Socket, frames: list[bytes]) -> None:
    """Send one message without blocking, for a socket that never blocks (a ROUTER answering a request)."""
    for frame in frames[:-1]:
        sock.send(frame, SNDMORE | NOBLOCK)
    sock.send(frames[-1], NOBLOCK)
