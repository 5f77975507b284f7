"""One run of one system with a fleet of subscribers held by ``msink``: the cost, scale and latency modes.

``msink`` holds K subscriber connections in one process over raw TCP (ZMTP
for the ZeroMQ systems, RESP and the NATS protocol for the others), so the
same program reads for every system and 10,000 subscribers fit in one
process.  The producer is the same C program for every system too,
``rawpub``, paced per message by ``clock_nanosleep`` (:mod:`.clients`).

Equal work, as in the throughput matrix: fanoutd and the C baseline feed K
subscribers and one puller (``msink`` as a PULL), Redis and NATS K + 1
subscribers.

A run: start the server; connect the fleet (``connect_ms``: until every
handshake is done); measure the server's CPU and memory with everyone
connected and no traffic (``idle_cpu``, ``rss_per_conn``: fanoutd's
slow-consumer detector scans every connection, so this is its cost); start
the producer and wait until every consumer is ready; then send ``count``
messages and read the server's CPU time (all threads, in ns, from
``/proc/PID/task/*/schedstat``) over the window from the first send to the
last delivery, divided by the deliveries.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import brokerstats, clients, servers
from .procs import Child, ProcError, prometheus_counters, rss_bytes
from . import subscriptions

READY_TIMEOUT = 120.0   # 10,000 handshakes through fanoutd's ZAP handler take a while
IDLE_PROBE = 31.0       # seconds of connected-but-idle measurement: one ZMTP heartbeat period of fanoutd (30 s)
IDLE_PROBE_SMALL = 5.0  # ... below IDLE_PROBE_FROM subscribers, where a heartbeat wave costs next to nothing
IDLE_PROBE_FROM = 1_000
SINK_WAIT_MS = 90_000   # how long a sink waits for its first message: past the idle probe and the fleet's start
MAX_PER_SINK = 5_000    # connections per msink process (spread over processes, and so over cores)


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of a process, in ns (schedstat: finer than the 10 ms of /proc/PID/stat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total


@dataclass(frozen=True)
class FleetSpec:
    system: str
    size: int
    subs: int
    count: int
    rate: float = 0.0        # msg/s; 0: flat out
    latency: bool = False
    idle_probe: float = 0.0  # measure connected-idle CPU for this long before the load
    idle_ms: int = 1000
    stalled: int = 0         # more subscribers, in their own msink, that stop reading once ready (msink -S)
    slow_bps: float = 0.0    # > 0: one more subscriber, in its own msink, reading at most this many bytes/s
    budget: float = 120.0    # seconds the load may take beyond count / rate


@dataclass
class FleetResult:
    spec: FleetSpec
    sent: int = 0
    consumers: int = 0
    received: int = 0            # deliveries over every consumer
    received_min: int = 0        # the worst consumer's count
    closed: int = 0              # connections the server closed during the run
    connect_ms: float = 0.0
    cpu_s: float = 0.0           # server CPU over the load window
    window_s: float = 0.0
    idle_cpu_pct: float | None = None
    rss_per_conn: float | None = None   # bytes, connected minus started, per subscriber connection
    latency_us: dict[str, float] = field(default_factory=dict)  # p50, p99, p999 (subscribers)
    counters: dict[str, float] = field(default_factory=dict)
    odd_received: int | None = None  # the slow subscriber's deliveries (stalled ones are not asked)
    cuts: dict[str, int] = field(default_factory=dict)  # the broker's own count of slow readers cut, by reason
    rss_connected: int = 0       # bytes, once every subscriber is connected
    peak_rss: int = 0            # bytes, the server's VmHWM at the end of the load
    pub_rate: float = 0.0        # msg/s the producer achieved (its first write to the return of its last)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.received > 0

    @property
    def expected(self) -> int:
        return self.sent * self.consumers

    @property
    def lost(self) -> int:
        return self.expected - self.received

    @property
    def deliveries_per_s(self) -> float:
        return self.received / self.window_s if self.window_s > 0 else 0.0

    @property
    def cpu_us_per_delivery(self) -> float | None:
        return self.cpu_s * 1e6 / self.received if self.received else None

    def counted_losses(self) -> float:
        """fanoutd's own account of what it did not deliver (cut subscribers, drops)."""
        return sum(v for k, v in self.counters.items() if "dropped" in k or "slow_consumers" in k)


class _CpuTrace:
    """Samples a process's CPU time every 20 ms, so a window can be cut out afterwards."""

    def __init__(self, pid: int) -> None:
        self.pid, self.samples = pid, [(time.monotonic_ns(), cpu_ns(pid))]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.samples.append((time.monotonic_ns(), cpu_ns(self.pid)))
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, t_ns: int) -> int:
        """CPU time at the first sample at or after ``t_ns`` (the latest before it if none is)."""
        for t, cpu in self.samples:
            if t >= t_ns:
                return cpu
        return self.samples[-1][1]


def _split(n: int) -> list[int]:
    procs = max(1, -(-n // MAX_PER_SINK))
    return [n // procs + (1 if i < n % procs else 0) for i in range(procs)]


def _msinks(bins: dict[str, Path], mode: str, port: int, n: int, spec: FleetSpec, offset: int) -> list[Child]:
    return [clients.msink(bins, mode, port, k, spec.size, spec.count, offset, spec.idle_ms, SINK_WAIT_MS,
                          spec.latency) for k in _split(n)]


def _odd_sink(bins: dict[str, Path], server: servers.Server, spec: FleetSpec) -> Child:
    """The stalled subscribers (``-S``), or the one slow subscriber (``-b``), in a process of their own."""
    if server.is_zmq:
        mode, port, offset = "zmtp", clients.port_of(server.publish), clients.TOPIC_LEN
    else:
        mode, port, offset = server.system, server.port, 0
    flags = ["-S"] if spec.stalled else ["-b", f"{spec.slow_bps:.0f}"]
    stay_ms = int((spec.budget + (spec.count / spec.rate if spec.rate else 0)) * 1000)
    return clients.msink(bins, mode, port, spec.stalled or 1, spec.size, spec.count, offset, spec.idle_ms,
                         stay_ms if spec.stalled else SINK_WAIT_MS, extra=flags)


def run(spec: FleetSpec, bins: dict[str, Path], python: str | None = None,
        on_load: Callable[[int], object] | None = None) -> FleetResult:
    """One run; ``on_load(server_pid)`` (e.g. a profiler) runs in a thread from the first send."""
    result = FleetResult(spec)
    try:
        server = servers.start(spec.system, bins, python)
    except (ProcError, OSError) as err:
        result.error = f"start: {err}"
        return result
    children: list[Child] = []
    trace: _CpuTrace | None = None
    try:
        rss0 = rss_bytes(server.pid)
        if server.is_zmq:
            sinks = _msinks(bins, "zmtp", clients.port_of(server.publish), spec.subs, spec, clients.TOPIC_LEN)
            puller = clients.puller(bins, server, spec.size, spec.count, spec.idle_ms, SINK_WAIT_MS)
            readers, result.consumers = [*sinks, puller], spec.subs + 1
        else:
            sinks = _msinks(bins, server.system, server.port, spec.subs + 1, spec, 0)
            readers, result.consumers = list(sinks), spec.subs + 1
        odd = [_odd_sink(bins, server, spec)] if spec.stalled or spec.slow_bps else []
        children += readers + odd
        t0 = time.monotonic()
        for sink in sinks + odd:
            sink.expect("connected", READY_TIMEOUT)
        result.connect_ms = (time.monotonic() - t0) * 1e3
        if spec.idle_probe:
            time.sleep(0.5)
            c0, w0 = cpu_ns(server.pid), time.monotonic_ns()
            time.sleep(spec.idle_probe)
            result.idle_cpu_pct = (cpu_ns(server.pid) - c0) * 100 / (time.monotonic_ns() - w0)
        result.rss_connected = rss_bytes(server.pid)
        result.rss_per_conn = (result.rss_connected - rss0) / spec.subs
        producer, ready = clients.producer(bins, server, spec.size, spec.count, spec.rate)
        children.append(producer)
        producer.expect(ready, READY_TIMEOUT)
        for reader in readers + odd:
            reader.expect("ready", READY_TIMEOUT)
        if not server.is_zmq:
            seen = subscriptions.count(server.system, server.port, server.monitor_port)
            if seen != result.consumers + (spec.stalled or (1 if odd else 0)):
                raise ProcError(f"{server.system}: {seen} subscriptions, expected {result.consumers} and the odd")
        trace = _CpuTrace(server.pid)
        producer.send_line("go")
        if on_load is not None:
            threading.Thread(target=on_load, args=(server.pid,), daemon=True).start()
        budget = spec.budget + (spec.count / spec.rate if spec.rate else 0)
        pub = producer.result(budget)
        result.sent = int(pub["sent"])
        outs = [reader.result(budget) for reader in readers]
        if spec.slow_bps and not spec.stalled:
            result.odd_received = int(odd[0].result(budget)["received"])
        trace.stop()
        result.peak_rss = brokerstats.peak_rss(server.pid)
        result.cuts = brokerstats.cuts(server)
        if int(pub["t_end"]) > int(pub["t_first"]):
            result.pub_rate = result.sent / ((int(pub["t_end"]) - int(pub["t_first"])) / 1e9)
        t_first, t_last = int(pub["t_first"]), max(int(o["t_last"]) for o in outs if o["received"])
        result.window_s = (t_last - t_first) / 1e9
        result.cpu_s = (trace.at(t_last) - trace.at(t_first)) / 1e9
        result.received = sum(int(o["received"]) for o in outs)
        result.received_min = min(int(o.get("received_min", o["received"])) for o in outs)
        result.closed = sum(int(o.get("closed", 0)) for o in outs)
        bad = sum(int(o["bad"]) for o in outs)
        if spec.latency:
            weights = [(o, int(o["received"])) for o in outs[:len(sinks)] if "p50" in o]
            for q in ("p50", "p99", "p999"):  # several sink processes: weighted by their deliveries
                total = sum(w for _, w in weights)
                if total:
                    result.latency_us[q] = sum(o[q] * w for o, w in weights) / total / 1e3
        if "metrics" in server.extras:
            result.counters = prometheus_counters(f"http://{server.extras['metrics']}/metrics", "fanoutd_")
        if bad:
            result.error = f"{bad} malformed messages"
    except (ProcError, OSError, ValueError, KeyError) as err:
        result.error = str(err)
    finally:
        if trace is not None:
            trace.stop()
        for child in children:
            child.stop()
        server.stop()
    return result
