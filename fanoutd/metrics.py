"""Prometheus metrics and health endpoints, as one WSGI app (fanoutd.webserver serves it, behind fanoutd.webauth).

Nothing is counted in Python per message: the native loop keeps its own
counters and this module's collector turns a snapshot of them into metric
families at scrape time, in a private ``CollectorRegistry`` (no global
state, no import-time metrics).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import zmq
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

from . import __version__
from .config import Config, queue_hwm
from .counters import BY_METRIC, DROPS, HISTORY_BYTES, REJECTS, in_family
from .roles import ROLES

log = logging.getLogger(__name__)

@dataclass(frozen=True, kw_only=True)
class Sources:
    """Where each number comes from, given by name; each callable returns a fresh snapshot."""

    counters: Callable[[], Mapping[str, int]]
    topics: Callable[[], Mapping[str, int]]
    peers: Callable[[], Mapping[str, int]]
    handshake_failures: Callable[[], Mapping[tuple[str, str], int]]
    disconnects: Callable[[], Mapping[str, int]]
    auth_denied: Callable[[], Mapping[tuple[str, str], int]]
    config: Callable[[], Config]
    node_id: str = ""
    slow_consumers: Callable[[], Mapping[tuple[str, str], int]] = dict
    pending: Callable[[], Mapping[str, int]] = dict
    upstream_errors: Callable[[], Mapping[tuple[str, str], int]] = dict
    producer_peers: Callable[[], Mapping[tuple[str, str], int]] = dict
    http_auth_failures: Callable[[], Mapping[str, int]] = dict


class BrokerCollector:
    """Turns engine counters, peer counts and the config into metric families at scrape time."""

    def __init__(self, sources: Sources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        src = self._sources
        c = src.counters()
        yield _total("fanoutd_received_messages", "Messages read from the collector, the ingress and upstream links.",
                     c)
        yield _total("fanoutd_received_bytes", "Bytes read from the collector, the ingress and upstream links, over "
                     "all frames.", c)
        yield _total("fanoutd_received_upstream_messages", "Of the received messages, those that came from "
                     "an upstream fanoutd (federation).", c)
        yield _total("fanoutd_relayed_messages", "Messages handed to the relay output for downstream fanoutd nodes.", c)
        yield _total("fanoutd_published_messages", "Messages handed to the PUB output.", c)
        yield _total("fanoutd_stamped_messages", "Messages handed to the stamped PUB output, each with its "
                     "sequence stamp.", c)
        yield _total("fanoutd_stamp_stream_evictions", "Topic streams the stamper forgot to stay within "
                     "stamp_streams (their topics start new streams: a reset for subscribers, not a gap).", c)
        yield _total("fanoutd_pushed_messages", "Messages handed to a puller on the PUSH output.", c)
        drops = CounterMetricFamily("fanoutd_dropped_messages",
                                    "Messages not delivered: push no_puller (nobody connected), push hwm "
                                    "(every puller full), push max_pending (the pullers' queues held "
                                    "slow_consumer_max_pending bytes), publish/relay/stamped hwm (sent on without at least one "
                                    "subscriber whose queue was full).", labels=["output", "reason"])
        for (output, reason), key in DROPS.items():
            drops.add_metric([output, reason], c[key])
        yield drops
        rejects = CounterMetricFamily("fanoutd_rejected_messages",
                                      "Messages refused at the collector for breaking a limit.", labels=["reason"])
        for reason, key in REJECTS.items():
            rejects.add_metric([reason], c[key])
        yield rejects
        topics = src.topics()
        if topics:
            family = CounterMetricFamily("fanoutd_topic_received_messages",
                                         "Messages received (collector, ingress, upstream) per "
                                         "counted topic (metrics_topics); "
                                         "every other topic under __other__.", labels=["topic"])
            for topic, count in topics.items():
                family.add_metric([topic], count)
            yield family
        yield _filled(GaugeMetricFamily("fanoutd_connected_peers", "Connections accepted and not yet closed, "
                                        "per socket.", labels=["socket"]), src.peers())
        yield _filled(GaugeMetricFamily("fanoutd_producer_peers", "Producer connections open now, per input "
                                        "socket and by the ZMTP Socket-Type they send with: PUB (a plain PUB drops "
                                        "at its own high-water mark, unseen, while fanoutd holds producers back), "
                                        "XPUB, PUSH; unknown until the connection's first message is read.",
                                        labels=["socket", "type"]), src.producer_peers())
        yield _filled(CounterMetricFamily("fanoutd_slow_consumers", "Subscribers disconnected for not keeping "
                                          "up, per socket and by the slow-consumer guard's rule that cut them "
                                          "(docs/concepts.md#slow-consumers says what each means).",
                                          labels=["socket", "rule"]), src.slow_consumers())
        yield _filled(GaugeMetricFamily("fanoutd_pending_bytes", "Message bytes fanoutd holds for an output's "
                                        "readers, per socket, exactly (shared among its readers: the furthest "
                                        "behind one's backlog; on push, what its pullers' queues hold); bounded "
                                        "by slow_consumer_max_pending.",
                                        labels=["socket"]), src.pending())
        stalls = CounterMetricFamily("fanoutd_output_stalls", "Times the loop held all output because a "
                                     "subscriber's queue was full, per socket.", labels=["socket"])
        held = CounterMetricFamily("fanoutd_output_held_seconds", "Time the loop held all output for a full "
                                   "subscriber queue, per socket: the slow-consumer guard cutting a subscriber, "
                                   "or finding none behind (the broker over its capacity, producers held back).",
                                   labels=["socket"])
        for stall, hold in zip(in_family("fanoutd_output_stalls"), in_family("fanoutd_output_held_seconds")):
            if getattr(src.config(), stall.label_values[0]):
                stalls.add_metric(stall.label_values, c[stall.name])
                held.add_metric(hold.label_values, c[hold.name] / hold.per_unit)
        yield stalls
        yield held
        yield from _subscriptions(src.config(), c)
        yield GaugeMetricFamily("fanoutd_history_bytes", "Bytes the repair history holds: message frames "
                                "(shared with the outputs, not copied) plus each entry's overhead; bounded by "
                                "history_bytes.", value=c[HISTORY_BYTES])
        yield _total("fanoutd_history_evicted_messages", "Messages the repair history let go to stay within "
                     "history_bytes and history_seconds (or could not keep): a repair of them is answered as gone.", c)
        yield _total("fanoutd_repaired_messages", "Messages the repair endpoints (repair, and relay_repair for "
                     "downstream nodes) sent back.", c)
        repairs = CounterMetricFamily("fanoutd_repair_requests", "Requests to the repair endpoints (repair, "
                                      "relay_repair) by result: range, "
                                      "heads (answered), unsent (the reply could not be sent: the peer gone or "
                                      "full), malformed, oversize, flood (over the per-peer rate: refused, no "
                                      "answer).", labels=["result"])
        for counter in in_family("fanoutd_repair_requests"):
            repairs.add_metric(counter.label_values, c[counter.name])
        yield repairs
        if src.config().upstream:
            yield _total("fanoutd_upstream_gaps", "Messages an upstream stamped for this node's subscriptions "
                         "that never arrived over the link (sequence gaps, seen at a stream's next message or, "
                         "with upstream_repair, in the upstream's heads when the link reconnects).", c)
            yield _total("fanoutd_upstream_repaired_messages", "Messages the upstream's relay_repair endpoint "
                         "supplied for gaps on the link (upstream_repair), delivered as new messages.", c)
            yield _total("fanoutd_upstream_unrepaired_messages", "Of the gaps on the upstream link, messages that "
                         "could not be repaired: gone from the upstream's history, another epoch, unanswered "
                         "within 10 s, or past the 256 gaps waiting (0 without upstream_repair: not asked).", c)
            yield _total("fanoutd_upstream_duplicate_messages", "Messages that came over the upstream link after "
                         "a repair had claimed them (a gap at a stream's end, named by the upstream's heads while "
                         "they were still on their way): refused, since the repair delivers them.", c)
            yield _total("fanoutd_upstream_hellos", "Relay hellos read on the upstream links: greetings, "
                         "not messages (none of them is counted as received).", c)
            yield _total("fanoutd_upstream_untracked_messages", "Messages from upstream whose stream this node's "
                         "subscriptions only partly cover (a collector_topics prefix longer than the topic), so "
                         "their gaps cannot be counted.", c)
            yield _filled(CounterMetricFamily("fanoutd_upstream_link_errors", "Checks of an upstream link that "
                                              "found it unusable, per endpoint and reason (unresolvable: its host "
                                              "does not resolve, which libzmq retries without reporting; "
                                              "not_relay: it answers but is no fanoutd relay; refused: its handshake "
                                              "refused this node).",
                                              labels=["endpoint", "reason"]), src.upstream_errors())
        yield _filled(CounterMetricFamily("fanoutd_disconnects", "Connections closed, per socket, for any reason "
                                          "(peer gone, heartbeat timeout, refused handshake).", labels=["socket"]),
                      src.disconnects())
        yield _filled(CounterMetricFamily("fanoutd_handshake_failures", "Connections whose ZMTP handshake failed, "
                                          "per socket: protocol (e.g. plaintext client on a CURVE socket), auth "
                                          "(refused by ZAP), other.", labels=["socket", "reason"]),
                      src.handshake_failures())
        yield _filled(CounterMetricFamily("fanoutd_auth_denied", "Connections refused by access control, per "
                                          "socket: address (IP allow/deny lists), key (CURVE key not in the "
                                          "allowlist), mechanism.", labels=["socket", "reason"]), src.auth_denied())
        yield _filled(CounterMetricFamily("fanoutd_http_auth_failures", "Requests and connections the metrics "
                                          "port refused under metrics_web_config, by reason: missing, user, "
                                          "password (basic auth), throttled (too many failures from the address: "
                                          "refused before hashing), plain_http, certificate, tls (the TLS "
                                          "handshake).", labels=["reason"]), src.http_auth_failures())
        yield from _limits(src.config())
        info = InfoMetricFamily("fanoutd_build", "Versions of fanoutd and the ZeroMQ stack it runs on, and this "
                                "node's federation id (new at every start).")
        info.add_metric([], {"version": __version__, "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
                             "node": src.node_id})
        yield info


def _subscriptions(config: Config, c: Mapping[str, int]) -> Iterator[Metric]:
    """Each configured output's subscriptions held, and those refused by bound (dataplane/subs.c)."""
    held = GaugeMetricFamily("fanoutd_subscriptions", "Subscriptions (distinct prefixes per connection) an output "
                             "holds for its connections, per socket; bounded by subscriptions_per_socket.",
                             labels=["socket"])
    refused = CounterMetricFamily("fanoutd_subscriptions_refused", "Connections closed because a subscription "
                                  "they sent would pass a bound, per socket and bound: connection "
                                  "(subscriptions_per_connection), address (subscriptions_per_address), socket "
                                  "(subscriptions_per_socket).", labels=["socket", "bound"])
    for output in ("publish", "relay", "stamped"):
        if getattr(config, output):
            held.add_metric([output], c[f"{output}_subscriptions"])
    for counter in in_family("fanoutd_subscriptions_refused"):
        if getattr(config, counter.label_values[0]):
            refused.add_metric(counter.label_values, c[counter.name])
    yield held
    yield refused


def _filled(family: GaugeMetricFamily | CounterMetricFamily,
            values: Mapping[str, int] | Mapping[tuple[str, str], int]) -> Metric:
    """``family`` with one sample per key: a label value, or a tuple of them."""
    for key, value in sorted(values.items()):
        family.add_metric([key] if isinstance(key, str) else list(key), value)
    return family


def _total(name: str, doc: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    """The counter family ``name``, valued from the loop's counter behind it (fanoutd/counters.py)."""
    counter = BY_METRIC[name]
    return CounterMetricFamily(name, doc, value=counts[counter.name] / counter.per_unit)


def _limits(config: Config) -> Iterable[Metric]:
    yield GaugeMetricFamily("fanoutd_max_message_size_bytes", "Configured max_message_size.",
                            value=config.max_message_size)
    yield GaugeMetricFamily("fanoutd_max_frames", "Configured max_frames.", value=config.max_frames)
    yield GaugeMetricFamily("fanoutd_max_pending_bytes", "Configured slow_consumer_max_pending (0: no byte bound).",
                            value=config.slow_consumer_max_pending)
    hwm = GaugeMetricFamily("fanoutd_high_water_mark_messages",
                            "High-water mark per socket, per peer (on the inputs, per producer connection: the "
                            "depth collector_max_pending gives).", labels=["socket"])
    for role in ROLES:
        if getattr(config, role.name):
            hwm.add_metric([role.name], queue_hwm(config, role))
    yield hwm


def make_registry(collector: BrokerCollector) -> CollectorRegistry:
    """A private registry with fanoutd's metrics and the process metrics prometheus-client gives."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def make_app(registry: CollectorRegistry, ready: Callable[[], tuple[bool, str]],
             peers: Callable[[], bytes] | None = None,
             endpoints: Callable[[], Mapping[str, Any]] | None = None) -> Callable[..., Any]:
    """WSGI app: /metrics, /healthz (process up), /readyz (sockets bound, engine running), /peers (JSON),
    /endpoints (JSON).

    /endpoints is served whatever ``peers_view`` says: it shows where this
    broker listens (the ports the kernel gave for ``tcp://HOST:*`` and
    ``metrics = HOST:0``), which anyone who can reach it knows, and nothing
    about its clients; /peers, which names clients, is the one that is opt-in.
    """
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/peers" and peers is not None:
            start_response("200 OK", [("Content-Type", "application/json")])
            return [peers()]
        if path == "/endpoints" and endpoints is not None:
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(endpoints()).encode()]
        if path == "/healthz":
            status, body = "200 OK", "ok\n"
        elif path == "/readyz":
            ok, why = ready()
            status, body = ("200 OK" if ok else "503 Service Unavailable"), why + "\n"
        else:
            status, body = "404 Not Found", "not found: try /metrics, /healthz, /readyz or /endpoints\n"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [body.encode()]

    return app
