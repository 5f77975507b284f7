"""One run of one system: start it, attach sinks, push load, collect counts.

A trial always starts a fresh server, connects its subscribers (and, for the
ZeroMQ systems, one puller on the PUSH output), proves each of them is
subscribed end to end before the measured load starts, sends a fixed number
of messages (flat out, or paced for latency), and stops everything.

The clients are the same C programs for every system (``rawpub``, and one
``msink`` per consumer; :mod:`.clients`).  ``clients="libzmq"`` gives the
ZeroMQ systems libzmq's own instead (``zpub``, ``zsink``), as a user's
program would have; runs with a stalled subscriber or a duration need them.

Rate of a sink = messages it received / (its last receive - first send).
A trial's rate is its slowest sink's: lost messages count against it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import clients, servers
from .clients import TOPIC_LEN
from .procs import Child, ProcError, prometheus_counters, rss_bytes, thread_ticks
from . import subscriptions

READY_TIMEOUT = 15.0


@dataclass(frozen=True)
class TrialSpec:
    """What to run: system, message size, subscribers, load."""

    system: str
    size: int
    subs: int
    count: int = 0           # messages to send (0: send for `duration` seconds)
    rate: float = 0.0        # msg/s; 0 = flat out
    latency: bool = False    # record per-message latency in the sinks
    duration: float = 0.0    # ZeroMQ systems only: send for this long instead of `count`
    stall: float = 0.0       # add one subscriber that stops reading for this long
    rss_every: float = 0.0   # sample the server's RSS this often while loaded
    idle_ms: int = 1000      # a sink is done after this long without a message
    # Equal work: Redis and NATS have no PUSH output, so they get one more subscriber standing in for
    # fanoutd's puller (same number of consumers, same bytes out), and their slowest consumer is measured.
    equal_work: bool = True
    clients: str = "raw"     # "raw": rawpub + msink for every system; "libzmq": zpub + zsink for ZeroMQ

    @property
    def libzmq_clients(self) -> bool:
        return self.clients == "libzmq" or bool(self.stall or self.duration)


@dataclass
class SinkResult:
    """What one subscriber or puller saw."""

    output: str              # "sub", "pull" or "stalled"
    received: int
    bad: int
    rate: float              # msg/s, from the first send to this sink's last receive
    p50_us: float | None = None
    p99_us: float | None = None
    max_gap_ms: float = 0.0  # longest silence between two measured messages


@dataclass
class TrialResult:
    spec: TrialSpec
    sent: int = 0
    sinks: list[SinkResult] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds, bytes)
    counters: dict[str, float] = field(default_factory=dict)    # fanoutd's own, after the run
    threads: dict[str, int] = field(default_factory=dict)       # the broker's CPU ticks per thread name, over the run
    error: str | None = None

    def measured(self) -> list[SinkResult]:
        return [s for s in self.sinks if s.output != "stalled"]

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.sinks)

    @property
    def rate(self) -> float:
        """Delivered msg/s of the slowest reading sink."""
        return min((s.rate for s in self.measured()), default=0.0)

    def drops(self) -> dict[str, float]:
        """fanoutd's non-zero drop / reject / slow-consumer counters, to tell drops from late deliveries."""
        out = {}
        for key, value in self.counters.items():
            if value and ("drop" in key or "reject" in key or "slow_consumers" in key):
                name, _, labels = key.removeprefix("fanoutd_").partition("{")
                values = [part.split("=", 1)[1].strip('"') for part in labels.rstrip("}").split(",") if "=" in part]
                out[" ".join([name.split("_")[0], "/".join(values)]).strip()] = value
        return out

    @property
    def lost(self) -> int:
        return max((self.sent - s.received for s in self.measured()), default=0)

    def worst(self, output: str, attr: str) -> float | None:
        values = [getattr(s, attr) for s in self.measured() if s.output == output]
        values = [v for v in values if v is not None]
        return max(values) if values else None


def _sink_result(output: str, raw: dict[str, int], t_first_send: int) -> SinkResult:
    received, span = raw["received"], (raw["t_last"] - t_first_send) / 1e9
    p50, p99 = raw.get("p50"), raw.get("p99")
    return SinkResult(output, received, raw["bad"], received / span if received and span > 0 else 0.0,
                      p50 / 1e3 if p50 is not None else None, p99 / 1e3 if p99 is not None else None,
                      raw.get("max_gap", 0) / 1e6)


def _zsink(bins: dict[str, Path], kind: str, endpoint: str, length: int, offset: int,
           spec: TrialSpec, count: int, stall: float = 0.0) -> Child:
    argv = [str(bins["zsink"]), "-t", kind, "-e", endpoint, "-L", str(length), "-o", str(offset),
            "-n", str(count), "-i", str(spec.idle_ms)]
    if spec.latency:
        argv.append("-l")
    if stall:
        argv += ["-S", str(stall)]
    return Child(argv, f"zsink-{kind}")


def _sample_rss(pid: int, every: float, out: list[tuple[float, int]], stop: threading.Event) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        try:
            out.append((round(time.monotonic() - t0, 2), rss_bytes(pid)))
        except OSError:
            return
        stop.wait(every)


def _run_libzmq(server: servers.Server, spec: TrialSpec, bins: dict[str, Path], result: TrialResult) -> None:
    count = spec.count or 10**12
    offset = 0 if server.strip_topic else TOPIC_LEN
    sinks: list[tuple[str, Child]] = [
        ("sub", _zsink(bins, "sub", server.publish, spec.size, TOPIC_LEN, spec, count))
        for _ in range(spec.subs)]
    sinks.append(("pull", _zsink(bins, "pull", server.push, spec.size - TOPIC_LEN + offset,
                                 offset, spec, count)))
    if spec.stall:
        sinks.append(("stalled", _zsink(bins, "sub", server.publish, spec.size, TOPIC_LEN, spec,
                                        count, stall=spec.stall)))
    argv = [str(bins["zpub"]), "-e", server.collector, "-s", str(spec.size)]
    argv += ["-n", str(spec.count)] if spec.count else ["-d", str(spec.duration)]
    if spec.rate:
        argv += ["-r", str(spec.rate)]
    producer = Child(argv, "zpub", stdin=True)
    children = [producer] + [c for _, c in sinks]
    stop = threading.Event()
    try:
        producer.expect("subscribed", READY_TIMEOUT)
        for _, sink in sinks:
            sink.expect("ready", READY_TIMEOUT)
        if spec.rss_every:
            threading.Thread(target=_sample_rss, args=(server.pid, spec.rss_every, result.rss, stop),
                             daemon=True).start()
        producer.send_line("go")
        budget = 60.0 + spec.duration + spec.stall + (spec.count / spec.rate if spec.rate else 0)
        pub = producer.result(budget)
        result.sent = int(pub["sent"])
        for output, sink in sinks:
            result.sinks.append(_sink_result(output, sink.result(budget), int(pub["t_first"])))
        if "metrics" in server.extras:
            url = f"http://{server.extras['metrics']}/metrics"
            result.counters = prometheus_counters(url, "fanoutd_")
            if spec.stall:  # long runs: did anything still arrive after the sinks' cutoff?
                time.sleep(5)
                late = prometheus_counters(url, "fanoutd_")
                result.counters["received_after_cutoff"] = (late.get("fanoutd_received_messages_total", 0)
                                                            - result.counters.get("fanoutd_received_messages_total", 0))
    finally:
        stop.set()
        for child in children:
            child.stop()


def _run_raw(server: servers.Server, spec: TrialSpec, bins: dict[str, Path], result: TrialResult) -> None:
    """Any system, with rawpub and one msink per consumer."""
    sinks: list[tuple[str, Child]] = []
    if server.is_zmq:
        sinks += [("sub", clients.msink(bins, "zmtp", clients.port_of(server.publish), 1, spec.size, spec.count,
                                        TOPIC_LEN, spec.idle_ms, latency=spec.latency))
                  for _ in range(spec.subs)]
        sinks.append(("pull", clients.puller(bins, server, spec.size, spec.count, spec.idle_ms,
                                             latency=spec.latency)))
    else:
        consumers = spec.subs + (1 if spec.equal_work else 0)
        sinks += [("sub", clients.msink(bins, server.system, server.port, 1, spec.size, spec.count, 0,
                                        spec.idle_ms, latency=spec.latency))
                  for _ in range(consumers)]
    producer, ready = clients.producer(bins, server, spec.size, spec.count, spec.rate)
    children = [producer] + [c for _, c in sinks]
    try:
        producer.expect(ready, READY_TIMEOUT)
        for _, sink in sinks:
            sink.expect("ready", READY_TIMEOUT)
        if not server.is_zmq:
            seen = subscriptions.count(server.system, server.port, server.monitor_port)
            if seen != len(sinks):
                raise ProcError(f"{server.system}: {seen} subscriptions, expected {len(sinks)}")
        before = thread_ticks(server.pid)
        producer.send_line("go")
        budget = 60.0 + (spec.count / spec.rate if spec.rate else 0)
        pub = producer.result(budget)
        result.sent = int(pub["sent"])
        for output, sink in sinks:
            result.sinks.append(_sink_result(output, sink.result(budget), int(pub["t_first"])))
        result.threads = {name: ticks - before.get(name, 0) for name, ticks in thread_ticks(server.pid).items()}
        if "metrics" in server.extras:
            result.counters = prometheus_counters(f"http://{server.extras['metrics']}/metrics", "fanoutd_")
    finally:
        for child in children:
            child.stop()


def run_on(server: servers.Server, spec: TrialSpec, bins: dict[str, Path], result: TrialResult) -> None:
    """Run ``spec`` against a server that is already up (a chain of nodes, say), with the right clients."""
    (_run_libzmq if server.is_zmq and spec.libzmq_clients else _run_raw)(server, spec, bins, result)


def run_trial(spec: TrialSpec, bins: dict[str, Path], python: str | None = None) -> TrialResult:
    """Run one trial on a fresh server; failures come back in ``result.error``."""
    result = TrialResult(spec)
    try:
        server = servers.start(spec.system, bins, python)
    except (ProcError, OSError) as err:
        result.error = f"start: {err}"
        return result
    try:
        run_on(server, spec, bins, result)
        bad = sum(s.bad for s in result.sinks)
        if bad:
            result.error = f"{bad} malformed messages"
    except (ProcError, OSError, ValueError, KeyError) as err:
        result.error = str(err)
    finally:
        server.stop()
    return result
