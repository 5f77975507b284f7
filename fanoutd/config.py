"""fanoutd's settings: one table, four layers, one frozen object out.

Every setting is declared once in ``SETTINGS``; the TOML file, the
``FANOUTD_*`` environment variables and the command-line flags are all
derived from that table, and they layer as defaults < file < env < flags.
Validation happens here, once, so the rest of the daemon can trust a
:class:`Config` and never sees a raw string.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fanoutd_client import wire

from . import files
from .roles import POLICY_OWNERS, ROLES, Role
from .values import KIB, MIB, PACE, PARSERS, TYPES, ConfigError, any_port

__all__ = ["INPUT_HWM_FLOOR", "KIB", "MIB", "SETTINGS", "Config", "ConfigError", "Setting", "as_dict", "budget_depth",
           "input_hwm", "load", "log_level", "queue_hwm"]


#: The fewest messages an input queues per producer connection, whatever collector_max_pending says. libzmq's reader
#: wakes the I/O thread every half high-water mark read (libzmq 4.3): a queue of 32 cost 40-67 % of flat-out
#: throughput at 100 B and 1 KiB, one of 256 about 15 % at 100 B x 4 subscribers (bench/README.md, "The input bound").
INPUT_HWM_FLOOR = 512


@dataclass(frozen=True)
class Setting:
    """One tunable: its name, how to parse it, its default, and whether a reload applies it live."""

    name: str
    kind: str
    default: Any
    help: str
    live: bool = False

    @property
    def env(self) -> str:
        return "FANOUTD_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    *(Setting(role.name, "endpoints", role.default, role.help) for role in ROLES),
    Setting("metrics", "hostport", "127.0.0.1:9560",
            "HOST:PORT of the HTTP server for /metrics, /healthz, /readyz, /peers and /endpoints (port 0: one "
            "the kernel picks, reported by /endpoints; without metrics_web_config it asks for no credentials: keep "
            "it on loopback or a management network)"),
    Setting("metrics_web_config", "path", "",
            "an exporter-toolkit web.config YAML file for the metrics port: tls_server_config (certificate, key, "
            "client certificates) and basic_auth_users (bcrypt hashes); every path on the port then requires "
            "what it says (docs/security.md); re-read on reload, a bad file keeping the running one", live=True),
    Setting("collector_topics", "topics", ("",),
            "topic prefixes the collector subscribes to (default: every topic)"),
    Setting("metrics_topics", "counted_topics", (),
            "topics to count received messages for, each its own series (at most 64); "
            "all others are counted under topic=\"__other__\"; empty: per-topic counting off"),
    Setting("push_strip_topic", "bool", True,
            "hand pullers the payload without its topic (false: whole messages)", live=True),
    Setting("max_message_size", "size", 1 * MIB,
            "largest message accepted, in bytes over all frames; larger ones are rejected and counted",
            live=True),
    Setting("max_frames", "frames", 16,
            "most frames a message may have; more are rejected and counted", live=True),
    Setting("collector_hwm", "count", 100_000,
            "most messages queued per producer connection on the collector, the ingress and the upstream link; "
            "the default leaves it to collector_max_pending, and another value above what that allows is refused"),
    Setting("collector_max_pending", "size", 32 * MIB,
            "bytes of messages the broker may queue per producer connection (collector, ingress, upstream link) "
            "while it holds its input back: their queues are this over max_message_size messages deep, never under "
            f"{INPUT_HWM_FLOOR} (shallower costs throughput), so messages over this / {INPUT_HWM_FLOOR} may hold "
            "more (docs/concepts.md)"),
    # Output HWMs are sized so a burst of several hundred thousand messages flat out is absorbed
    # while consumers catch up (bench: burst mode); the memory this implies: docs/operations.md, "Memory".
    Setting("publish_hwm", "count", 250_000, "high-water mark per subscriber on the PUB output, in messages"),
    Setting("push_hwm", "count", 250_000, "high-water mark per puller on the PUSH output, in messages"),
    Setting("stamp_streams", "streams", 65_536,
            "topic streams the stamper keeps a sequence for (stamped and relay outputs); past it the least "
            "recently used is forgotten and its topic starts a new stream, which subscribers see as a reset, "
            "never as a gap (about 300 bytes each, used only as topics appear)"),
    # Like slow_consumer_max_pending (NATS's max_pending): enough for a reader cut after slow_consumer_timeout
    # to get its gap back at tens of MB/s of traffic, in memory shared with what the outputs hold (no copies).
    Setting("history_bytes", "budget", 64 * MIB,
            "bytes the repair history of the stamped output and the relay may hold (frames, shared with the outputs, plus "
            "about 200 bytes per message, 320 with a frame over 256 bytes), oldest evicted first; 0: no history (the repair endpoint then "
            "answers every range as gone)"),
    Setting("history_seconds", "seconds", 0.0,
            "the age past which the repair history forgets a message (0: only history_bytes bounds it)"),
    Setting("repair_hwm", "count", 10_000,
            "high-water mark per peer on the repair endpoint, in messages (a reply to one request is at most "
            "1,001: keep room for a few); a reply that does not fit is abandoned and counted"),
    Setting("slow_consumer_stall", "seconds", 0.02,
            "when a subscriber's queue is full, how long the loop holds all output for the slow-consumer guard "
            "before it asks again (doubling, up to 1 s); 0: never hold, send on without the full subscriber "
            "and count it"),
    Setting("slow_consumer_timeout", "seconds", 10.0,
            "a subscriber that has not read for this long while data waits for it is disconnected even before "
            "its queue is full (0: only at the high-water mark)"),
    Setting("slow_consumer_policy", "policy", "pace",
            "at a full subscriber queue: pace (hold producers back while every full reader makes progress, "
            "loss-free for live readers; one that shows no progress for a short span is still cut) or cut "
            "(disconnect the reader furthest behind at once: latency first); pace needs slow_consumer_stall "
            "above 0"),
    # Like NATS's max_pending (64 MiB, producers stalled at 3/4 of it); what an output holds is shared by its
    # readers (libzmq shares a message's bytes), so this bounds the furthest-behind reader's backlog in bytes.
    Setting("slow_consumer_max_pending", "budget", 64 * MIB,
            "message bytes an output (publish, relay, stamped) may hold for its readers, counted exactly "
            "(fanoutd_pending_bytes); under pace producers are held back from 3/4 of it until it is down to 1/2, "
            "under cut the output stalls at it; past it the reader furthest behind is cut (rule max_pending); 0: no byte bound "
            "(the high-water marks only)", live=True),
    Setting("receive_copy", "bool", True,
            "copy each received message out of libzmq's 8 KiB receive buffers, so a held message keeps only its own "
            "bytes and fanoutd_pending_bytes is the memory held; false: libzmq's zero-copy receive, cheaper per "
            "message (bench/README.md, \"The copy of received messages\") but a held message that arrived alone "
            "keeps its whole buffer, uncounted (docs/concepts.md, \"Held bytes\"); applies at start"),
    # Equal readers under overload take turns being furthest behind, each about 1/n of the time held: 0.5 would sit
    # at the average of two of them; 0.75 still cuts a reader at a tenth of the others' rate (held ~90% for it).
    Setting("slow_consumer_pace_share", "share", 0.75,
            "under pace: the share of slow_consumer_pace_window one reader may hold its output back as the "
            "furthest behind before it is cut (rule pace_bound); 1: no bound"),
    Setting("slow_consumer_pace_window", "seconds", 10.0,
            "under pace: the window slow_consumer_pace_share is a share of"),
    # libzmq's trie costs about 3.3 KiB per subscription of 64 random bytes (bench/README.md, "Subscriptions"), far
    # less for prefixes many subscribers share; NATS leaves max_subscriptions unbounded by default, Pushpin allows
    # 20 per connection (connection_subscription_max). These leave any sane subscriber room and cap one peer at
    # tens of MiB and one output at a few GiB (docs/concepts.md, "Subscriptions").
    Setting("subscriptions_per_connection", "subscriptions", 10_000,
            "most subscriptions (distinct prefixes) one connection may hold on an output (publish, relay, "
            "stamped); a subscription past it closes that connection, counted in "
            "fanoutd_subscriptions_refused_total{bound=\"connection\"}; 0: no bound", live=True),
    Setting("subscriptions_per_address", "subscriptions", 100_000,
            "most subscriptions the connections from one peer address may hold together on an output; a "
            "subscription past it closes the connection that sent it (bound=\"address\"); 0: no bound",
            live=True),
    Setting("subscriptions_per_socket", "subscriptions", 1_000_000,
            "most subscriptions all connections of an output may hold together; a subscription past it closes "
            "the connection that sent it (bound=\"socket\"); 0: no bound", live=True),
    Setting("peers_view", "bool", True,
            "serve /peers: each connection's peer address, queued bytes and state, and why recent ones closed "
            "(reveals client addresses on the metrics port)"),
    # A heartbeat round costs libzmq a timer walk per peer (quadratic in peers: bench/README.md, "The guard's
    # cost"), so the interval is long and bound sockets leave the timeout to the kernel (sockets.py).
    Setting("heartbeat_interval", "seconds", 30.0,
            "ZMTP heartbeat interval on every socket (0 disables); a vanished peer is noticed within "
            "heartbeat_interval + heartbeat_timeout"),
    Setting("heartbeat_timeout", "seconds", 15.0,
            "a peer that leaves a heartbeat (or data) unacknowledged this long is disconnected (keep it above "
            "slow_consumer_timeout, so a stalled subscriber is cut and counted by the guard first)"),
    Setting("drain_timeout", "seconds", 5.0,
            "on stop: how long to keep forwarding what the collector holds, and to flush the outputs"),
    Setting("io_threads", "threads", 2,
            "libzmq I/O threads (2 measured fastest on 2 cores: connections are spread over them)"),
    Setting("log_level", "level", "info", "debug, info, warning or error", live=True),
    Setting("curve_secret_key", "path", "",
            "the daemon's CURVE secret certificate (zmq.auth format; `fanoutd keygen` writes one)"),
    Setting("upstream_server_key", "path", "",
            "the upstream relays' public certificate (their `fanoutd keygen` .key file): upstream links use "
            "CURVE, authenticating this node with curve_secret_key (empty: plaintext links)"),
    *(setting for role in POLICY_OWNERS for setting in (
        Setting(f"{role}_curve", "bool", False, f"require CURVE encryption and authentication on {role}"),
        Setting(f"{role}_clients", "path", "",
                f"directory of client public certificates allowed on {role} (empty: any CURVE key)", live=True),
        Setting(f"{role}_allow", "networks", (), f"IP networks allowed to connect to {role} (empty: any)",
                live=True),
        Setting(f"{role}_deny", "networks", (), f"IP networks refused on {role}", live=True),
    )),
)
BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}
LIVE: frozenset[str] = frozenset(s.name for s in SETTINGS if s.live)
# The relay had the publish socket's access control before it had its own: where none of its own is
# given, it keeps publish's, so an upgrade never opens a relay that publish_curve used to protect.
INHERITED: Mapping[str, str] = {f"relay_{suffix}": f"publish_{suffix}"
                                for suffix in ("curve", "clients", "allow", "deny")}


def _changed(self: Config, other: Config) -> list[str]:
    """Names of the settings whose values differ between self and other."""
    return [s.name for s in SETTINGS if getattr(self, s.name) != getattr(other, s.name)]


if TYPE_CHECKING:
    # Type checkers read the generated stub (`python -m fanoutd.reference` writes it, a test checks it).
    from ._config_type import Config
else:
    # One field per setting, typed by its kind, plus the file it was read from: adding a setting is one line.
    Config = dataclasses.make_dataclass(
        "Config",
        [(s.name, TYPES[s.kind]) for s in SETTINGS]
        + [("config_file", str | None, dataclasses.field(default=None))],
        frozen=True,
        namespace={"__doc__": "The validated settings the daemon runs with.", "__module__": __name__,
                   "changed": _changed})


def _parse(setting: Setting, raw: Any, source: str) -> Any:
    try:
        return PARSERS[setting.kind](raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {setting.name}: {exc}") from None


def read_file(path: str) -> dict[str, Any]:
    """Read a TOML config file; every key must be a known setting."""
    try:
        data = tomllib.loads(files.read_bytes(path, "config file").decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    unknown = sorted(set(data) - set(BY_NAME))
    if unknown:
        raise ConfigError(f"{path}: unknown setting {unknown[0]!r}")
    return data


def load(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None,
         config_file: str | None = None) -> Config:
    """Layer defaults < file < environment < flags and validate the result.

    ``flags`` holds only what was given on the command line (setting name ->
    raw value). ``config_file`` may also come from ``FANOUTD_CONFIG``.
    """
    environ = os.environ if environ is None else environ
    known = {s.env for s in SETTINGS} | {"FANOUTD_CONFIG"}
    unknown = sorted(name for name in environ if name.startswith("FANOUTD_") and name not in known)
    if unknown:
        near = difflib.get_close_matches(unknown[0].removeprefix("FANOUTD_"),
                                         [name.removeprefix("FANOUTD_") for name in known], n=1, cutoff=0.85)
        raise ConfigError(f"environment: unknown variable {unknown[0]}"
                          + (f" (did you mean FANOUTD_{near[0]}?)" if near else ""))
    path = config_file or environ.get("FANOUTD_CONFIG") or None
    values: dict[str, Any] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = [("defaults", {s.name: s.default for s in SETTINGS})]
    if path:
        layers.append((path, read_file(path)))
    layers.append(("environment", {s.name: environ[s.env] for s in SETTINGS if s.env in environ}))
    layers.append(("command line", flags))
    given: set[str] = set()
    for source, layer in layers:
        for name, raw in layer.items():
            if name not in BY_NAME:
                raise ConfigError(f"{source}: unknown setting {name!r}")
            values[name] = _parse(BY_NAME[name], raw, source)
            if source != "defaults":
                given.add(name)
    for name, source in INHERITED.items():
        if name not in given:
            values[name] = values[source]
    config = Config(**values, config_file=path)
    _check_whole(config)
    return config


def _check_whole(config: Config) -> None:
    if not config.collector:
        raise ConfigError("collector: at least one endpoint is required")
    if not config.publish and not config.push and not config.stamped:
        raise ConfigError("publish, stamped and push are all empty: nothing would leave the broker")
    seen: dict[str, str] = {}
    for ep in config.upstream:
        if any_port(ep):
            raise ConfigError(f"upstream: {ep} names no port to connect to")
        if "*" in ep:
            raise ConfigError(f"upstream: {ep} names no host to connect to")
    for role in ROLES:
        for ep in getattr(config, role.name):
            if any_port(ep):  # the kernel gives each bind its own port
                continue
            if ep in seen:
                raise ConfigError(f"{role.name}: endpoint {ep} is also used by {seen[ep]}")
            seen[ep] = role.name
    if config.slow_consumer_policy == PACE and not config.slow_consumer_pace_window:
        raise ConfigError("slow_consumer_pace_window must be more than 0 (slow_consumer_pace_share = 1 lifts "
                          "the bound)")
    if 0 < config.slow_consumer_max_pending < config.max_message_size:
        raise ConfigError(f"slow_consumer_max_pending ({config.slow_consumer_max_pending}) must be 0 or at least "
                          f"max_message_size ({config.max_message_size}): an output must be able to hold one message")
    if 0 < config.history_bytes < config.max_message_size:
        raise ConfigError(f"history_bytes ({config.history_bytes}) must be 0 or at least max_message_size "
                          f"({config.max_message_size}): the history must be able to hold one message")
    if config.slow_consumer_policy == PACE and not config.slow_consumer_stall:
        raise ConfigError("slow_consumer_policy = \"pace\" holds output, which slow_consumer_stall = 0 never does: "
                          "set slow_consumer_stall above 0, or slow_consumer_policy = \"cut\"")
    # Its default (written out or not) leaves the depth to the budget; another value the budget would override: refused.
    if config.collector_hwm != BY_NAME["collector_hwm"].default and config.collector_hwm > budget_depth(config):
        raise ConfigError(f"collector_hwm = {config.collector_hwm} messages of up to max_message_size "
                          f"({config.max_message_size} bytes) per producer connection is more than "
                          f"collector_max_pending ({config.collector_max_pending} bytes) allows "
                          f"({budget_depth(config)}): lower it, or raise collector_max_pending")
    if config.heartbeat_interval and not config.heartbeat_timeout:
        raise ConfigError("heartbeat_timeout must be more than 0 while heartbeat_interval is on "
                          "(0 would keep silent peers forever; set heartbeat_interval = 0 to turn heartbeats off)")
    too_long = [t for t in config.collector_topics if len(t.encode()) > wire.LONGEST_PREFIX]
    if config.upstream and too_long:  # an upstream relay would close the link at every subscription
        raise ConfigError(f"collector_topics: a prefix of {len(too_long[0].encode())} bytes is longer than the "
                          f"{wire.LONGEST_PREFIX} an upstream relay accepts")
    if config.upstream_server_key and not config.curve_secret_key:
        raise ConfigError("upstream_server_key needs curve_secret_key: this node's key pair for its upstream links")
    if config.upstream_server_key and not config.upstream:
        raise ConfigError("upstream_server_key is set but there is no upstream")
    if config.relay_repair and not config.relay:
        raise ConfigError("relay_repair serves the relay output's history: it needs a relay")
    if config.upstream_repair and len(config.upstream) != 1:
        raise ConfigError("upstream_repair asks one upstream for its link's gaps: it needs exactly one upstream "
                          f"(there are {len(config.upstream)})")
    if len(config.upstream_repair) > 1:
        raise ConfigError("upstream_repair: one endpoint, the relay_repair of the one upstream")
    for ep in config.upstream_repair:
        if any_port(ep) or "*" in ep:
            raise ConfigError(f"upstream_repair: {ep} names no host and port to connect to")
    for role in POLICY_OWNERS:
        if getattr(config, f"{role}_curve") and not config.curve_secret_key:
            raise ConfigError(f"{role}_curve needs curve_secret_key (create one with `fanoutd keygen`)")
        if getattr(config, f"{role}_clients") and not getattr(config, f"{role}_curve"):
            raise ConfigError(f"{role}_clients lists CURVE keys but {role}_curve is off")


def budget_depth(config: Config) -> int:
    """How many messages of max_message_size fit in collector_max_pending, never under :data:`INPUT_HWM_FLOOR`."""
    return max(INPUT_HWM_FLOOR, config.collector_max_pending // config.max_message_size)


def input_hwm(config: Config) -> int:
    """ZMQ_RCVHWM of every input (collector, ingress, upstream link): its queue per producer connection, in messages.

    libzmq bounds a queue in messages, never in bytes, and fixes the bound when a connection is made. While an
    output is held the loop reads no input (docs/architecture.md, "The stall"), and each producer connection's
    queue fills to this before TCP holds the producer back: so this, times the producer's message size, is what
    one connection can make the broker hold (at most collector_max_pending while max_message_size is at most
    collector_max_pending / INPUT_HWM_FLOOR). Computed at start: a reload of max_message_size leaves it.
    """
    return min(config.collector_hwm, budget_depth(config))


def queue_hwm(config: Config, role: Role) -> int:
    """The high-water mark a role's socket gets: :func:`input_hwm` on inputs, its own setting on outputs (per peer)."""
    return input_hwm(config) if role.is_input else int(getattr(config, role.hwm))


def log_level(config: Config) -> int:
    """The logging module's number for the configured level."""
    return int(getattr(logging, config.log_level.upper()))


def as_dict(config: Config) -> dict[str, Any]:
    """The settings as plain values, e.g. for --check-config output."""
    values = {k: v for k, v in dataclasses.asdict(config).items() if k in BY_NAME}
    host, port = config.metrics
    values["metrics"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return values
