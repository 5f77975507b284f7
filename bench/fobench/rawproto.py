"""Redis and NATS on the wire: framing, the raw-socket publisher, checks.

The publisher writes prebuilt, pipelined protocol buffers straight to a TCP
socket (Redis with ``CLIENT REPLY OFF``, NATS with ``verbose`` off), so one
Python thread pushes well over a million small messages a second and the
server, not the load generator, sets the pace.  Subscribers are the C
``rawsink``, which checks every fixed-length frame it counts.

Every payload is ``seq (u64) + send time (u64, CLOCK_MONOTONIC ns) + pad``,
the same header the ZeroMQ load generators use.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from .procs import LOOPBACK, ProcError

CHANNEL = "c"
BATCH_BYTES = 256 * 1024


@dataclass(frozen=True)
class RawProto:
    """How one system frames publishes, subscriptions and deliveries."""

    name: str
    publisher_hello: bytes   # sent once before publishing
    publisher_flush: bytes   # sent after publishing; its reply proves all were taken
    publisher_flushed: bytes  # ... and this is that reply
    sink_hello: str          # subscribe, then ping
    sink_marker: str         # the pong that ends the handshake
    publish_head: str        # "%d" is the payload length
    deliver_head: str        # "%d" is the payload length

    def publish_frame(self, payload: bytes) -> bytes:
        return (self.publish_head % len(payload)).encode() + payload + b"\r\n"

    def deliver_prefix(self, size: int) -> str:
        return self.deliver_head % size


REDIS = RawProto(
    name="redis",
    publisher_hello=b"CLIENT REPLY OFF\r\n",
    publisher_flush=b"CLIENT REPLY ON\r\nPING\r\n",
    publisher_flushed=b"+PONG\r\n",
    sink_hello=f"SUBSCRIBE {CHANNEL}\r\nPING\r\n",
    sink_marker="$4\r\npong\r\n$0\r\n\r\n",
    publish_head=f"*3\r\n$7\r\nPUBLISH\r\n${len(CHANNEL)}\r\n{CHANNEL}\r\n$%d\r\n",
    deliver_head=f"*3\r\n$7\r\nmessage\r\n${len(CHANNEL)}\r\n{CHANNEL}\r\n$%d\r\n",
)

NATS = RawProto(
    name="nats",
    publisher_hello=b'CONNECT {"verbose":false,"pedantic":false,"echo":false}\r\n',
    publisher_flush=b"PING\r\n",
    publisher_flushed=b"PONG\r\n",
    sink_hello=f'CONNECT {{"verbose":false,"pedantic":false}}\r\nSUB {CHANNEL} 1\r\nPING\r\n',
    sink_marker="PONG\r\n",
    publish_head=f"PUB {CHANNEL} %d\r\n",
    deliver_head=f"MSG {CHANNEL} 1 %d\r\n",
)

PROTOS = {"redis": REDIS, "nats": NATS}


def payload(seq: int, size: int, stamp: int = 0) -> bytes:
    return struct.pack("<QQ", seq, stamp) + b"x" * (size - 16)


def sink_argv(proto: RawProto, binary: Path, port: int, size: int, count: int,
              latency: bool = False, idle_ms: int = 1000) -> list[str]:
    argv = [str(binary), "-p", str(port), "-H", proto.sink_hello, "-M", proto.sink_marker,
            "-P", proto.deliver_prefix(size), "-L", str(size), "-n", str(count),
            "-i", str(idle_ms)]
    return argv + (["-l"] if latency else [])


def _recv_until(sock: socket.socket, token: bytes, timeout: float) -> None:
    sock.settimeout(timeout)
    seen = b""
    while token not in seen:
        chunk = sock.recv(65536)
        if not chunk:
            raise ProcError(f"server closed the connection before {token!r}")
        seen = seen[-len(token):] + chunk


class RawPublisher:
    """A raw-socket publisher to one Redis or NATS server on loopback."""

    def __init__(self, proto: RawProto, port: int) -> None:
        self.proto = proto
        self.sock = socket.create_connection((LOOPBACK, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.sendall(proto.publisher_hello)

    def flat_out(self, size: int, count: int) -> tuple[int, int]:
        """Send ``count`` messages as fast as the server takes them; return (t_first, t_last)."""
        frame = self.proto.publish_frame(payload(0, size))
        per_batch = max(1, BATCH_BYTES // len(frame))
        batch = frame * per_batch
        full, rest = divmod(count, per_batch)
        send = self.sock.sendall
        t_first = time.monotonic_ns()
        for _ in range(full):
            send(batch)
        if rest:
            send(frame * rest)
        return t_first, time.monotonic_ns()

    def paced(self, size: int, count: int, rate: float) -> tuple[int, int]:
        """Send ``count`` time-stamped messages at ``rate`` msg/s; return (t_first, t_last)."""
        gap = 1e9 / rate
        pad = b"x" * (size - 16)
        head = (self.proto.publish_head % size).encode()
        pack, send, now = struct.Struct("<QQ").pack, self.sock.sendall, time.monotonic_ns
        t_first = now()
        t = t_first
        for seq in range(count):
            due = t_first + int(gap * seq)
            t = now()
            if due > t:
                time.sleep((due - t) / 1e9)
                t = now()
            send(head + pack(seq, t) + pad + b"\r\n")
        return t_first, t

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the server has processed everything sent so far."""
        self.sock.sendall(self.proto.publisher_flush)
        _recv_until(self.sock, self.proto.publisher_flushed, timeout)

    def close(self) -> None:
        self.sock.close()


def subscriber_count(proto: RawProto, port: int, monitor_port: int = 0) -> int:
    """How many subscriptions the server holds on the bench channel."""
    if proto is NATS:
        import urllib.request
        url = f"http://{LOOPBACK}:{monitor_port}/connz?subs=1&limit=100000"  # the default page is 1,024
        with urllib.request.urlopen(url, timeout=5) as resp:
            conns = json.load(resp).get("connections") or []
        return sum((c.get("subscriptions_list") or []).count(CHANNEL) for c in conns)
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(f"PUBSUB NUMSUB {CHANNEL}\r\n".encode())
        reply = b""
        while reply.count(b"\r\n") < 4:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        # *2 $1 c :N
        lines = reply.split(b"\r\n")
        if len(lines) < 4:
            raise ProcError(f"redis: no answer to PUBSUB NUMSUB (got {reply[:80]!r})")
        return int(lines[3].lstrip(b":"))
