"""fanoutd's settings: one table, four layers, one frozen object out.

Every setting is declared once in ``SETTINGS``; the TOML file, the
``FANOUTD_*`` environment variables and the command-line flags are all
derived from that table, and they layer as defaults < file < env < flags.
Validation happens here, once, so the rest of the daemon can trust a
:class:`Config` and never sees a raw string.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

KIB = 1024
MIB = 1024 * KIB


class ConfigError(ValueError):
    """A problem with the configuration, worded for a one-line answer."""


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
    Setting("collector", "endpoints", ("tcp://127.0.0.1:5560",),
            "endpoint(s) the collector SUB binds; producers connect PUB sockets here"),
    Setting("publish", "endpoints", ("tcp://127.0.0.1:5561",),
            "endpoint(s) the PUB output binds; subscribers connect here (empty: no PUB output)"),
    Setting("push", "endpoints", ("tcp://127.0.0.1:5562",),
            "endpoint(s) the non-blocking PUSH output binds; pullers connect here (empty: no PUSH output)"),
    Setting("upstream", "endpoints", (),
            "federation: relay endpoint(s) of upstream fanoutd nodes this node's collector also reads from"),
    Setting("relay", "endpoints", (),
            "federation: endpoint(s) where downstream fanoutd nodes connect their upstream (empty: none)"),
    Setting("metrics", "hostport", "127.0.0.1:9560",
            "HOST:PORT of the HTTP server for /metrics, /healthz and /readyz"),
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
    Setting("collector_hwm", "count", 100_000, "high-water mark of the collector, in messages"),
    Setting("publish_hwm", "count", 100_000, "high-water mark per subscriber on the PUB output, in messages"),
    Setting("push_hwm", "count", 100_000, "high-water mark per puller on the PUSH output, in messages"),
    Setting("heartbeat_interval", "seconds", 5.0, "ZMTP heartbeat interval on every socket (0 disables)"),
    Setting("heartbeat_timeout", "seconds", 15.0, "a peer silent this long is disconnected"),
    Setting("drain_timeout", "seconds", 5.0,
            "on stop: how long to keep forwarding what the collector holds, and to flush the outputs"),
    Setting("io_threads", "threads", 2,
            "libzmq I/O threads (2 measured fastest on 2 cores: connections are spread over them)"),
    Setting("log_level", "level", "info", "debug, info, warning or error", live=True),
    Setting("curve_secret_key", "path", "",
            "the daemon's CURVE secret certificate (zmq.auth format; `fanoutd keygen` writes one)"),
    *(setting for role in ("collector", "publish", "push") for setting in (
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


@dataclass(frozen=True)
class Config:
    """The validated settings the daemon runs with."""

    collector: tuple[str, ...]
    publish: tuple[str, ...]
    push: tuple[str, ...]
    upstream: tuple[str, ...]
    relay: tuple[str, ...]
    metrics: tuple[str, int]
    collector_topics: tuple[str, ...]
    metrics_topics: tuple[str, ...]
    push_strip_topic: bool
    max_message_size: int
    max_frames: int
    collector_hwm: int
    publish_hwm: int
    push_hwm: int
    heartbeat_interval: float
    heartbeat_timeout: float
    drain_timeout: float
    io_threads: int
    log_level: str
    curve_secret_key: str = ""
    collector_curve: bool = False
    collector_clients: str = ""
    collector_allow: tuple[str, ...] = ()
    collector_deny: tuple[str, ...] = ()
    publish_curve: bool = False
    publish_clients: str = ""
    publish_allow: tuple[str, ...] = ()
    publish_deny: tuple[str, ...] = ()
    push_curve: bool = False
    push_clients: str = ""
    push_allow: tuple[str, ...] = ()
    push_deny: tuple[str, ...] = ()
    config_file: str | None = None


    def changed(self, other: Config) -> list[str]:
        """Names of the settings whose values differ between self and other."""
        return [s.name for s in SETTINGS if getattr(self, s.name) != getattr(other, s.name)]


# ---- parsers: each takes a raw value (TOML value or string) and returns the typed value


_ENDPOINT = re.compile(r"^(tcp://(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})|ipc://[^\0]+)$")


def _endpoints(raw: Any) -> tuple[str, ...]:
    items = _list(raw)
    for ep in items:
        m = _ENDPOINT.match(ep)
        if not m:
            raise ConfigError(f"malformed endpoint {ep!r} (expected tcp://HOST:PORT or ipc://PATH)")
        if m.group(3) and not 1 <= int(m.group(3)) <= 65535:
            raise ConfigError(f"port out of range in {ep!r}")
    if len(set(items)) != len(items):
        raise ConfigError(f"endpoint listed twice in {list(items)}")
    return items


def _list(raw: Any) -> tuple[str, ...]:
    """A list from TOML, a comma-separated string (env), or repeated flags; empty items vanish."""
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, (list, tuple)) and all(isinstance(p, str) for p in raw):
        return tuple(part.strip() for item in raw for part in item.split(",") if part.strip())
    raise ConfigError(f"expected a list of strings, got {raw!r}")


def _topics(raw: Any) -> tuple[str, ...]:
    """Topic prefixes are taken verbatim (the empty prefix means every topic)."""
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, (list, tuple)) and all(isinstance(p, str) for p in raw):
        return tuple(raw)
    raise ConfigError(f"expected a list of strings, got {raw!r}")


TOPICS_CAP = 64


def _counted_topics(raw: Any) -> tuple[str, ...]:
    """An allowlist keeps the number of per-topic series bounded, whatever producers send."""
    topics = _topics(raw) if raw != "" else ()
    if len(topics) > TOPICS_CAP:
        raise ConfigError(f"at most {TOPICS_CAP} topics can be counted, got {len(topics)}")
    if len(set(topics)) != len(topics):
        raise ConfigError("a topic is listed twice")
    for topic in topics:
        if " " in topic or not topic:
            raise ConfigError(f"a counted topic must be non-empty and contain no space, got {topic!r}")
    return topics


def _path(raw: Any) -> str:
    if not isinstance(raw, str) or "\0" in raw:
        raise ConfigError(f"expected a path, got {raw!r}")
    return raw


def _networks(raw: Any) -> tuple[str, ...]:
    items = _list(raw)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"not an IP address or network: {item!r}") from None
    return items


def _hostport(raw: Any) -> tuple[str, int]:
    if not isinstance(raw, str) or ":" not in raw:
        raise ConfigError(f"expected HOST:PORT, got {raw!r}")
    host, _, port = raw.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"bad port in {raw!r}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"bad host in {raw!r} (use an IP address or localhost)") from None
    return host, int(port)


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"expected true or false, got {raw!r}")


_SIZE = re.compile(r"^\s*(-?\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)


def _int(raw: Any, what: str = "a whole number") -> int:
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise ConfigError(f"expected {what}, got {raw!r}")
    m = _SIZE.match(str(raw))
    if not m:
        raise ConfigError(f"expected {what}, got {raw!r}")
    scale = {"": 1, "b": 1, "k": KIB, "m": MIB, "g": 1024 * MIB}[(m.group(2) or "")[:1].lower()]
    return int(m.group(1)) * scale


def _bounded(lo: int, hi: int, what: str) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        value = _int(raw, what)
        if not lo <= value <= hi:
            raise ConfigError(f"must be between {lo} and {hi}, got {value}")
        return value
    return parse


def _seconds(raw: Any) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"expected seconds, got {raw!r}") from None
    if not 0 <= value <= 3600:
        raise ConfigError(f"must be between 0 and 3600 seconds, got {value}")
    return value


def _level(raw: Any) -> str:
    text = str(raw).strip().lower()
    if text not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"expected debug, info, warning or error, got {raw!r}")
    return text


# max_message_size floor: libzmq counts handshake frames against ZMQ_MAXMSGSIZE
# (libzmq #4436), so values that small would break connections, not protect them.
MIN_MESSAGE_SIZE = 256
MAX_FRAMES_CAP = 256

PARSERS: Mapping[str, Callable[[Any], Any]] = {
    "endpoints": _endpoints,
    "hostport": _hostport,
    "topics": _topics,
    "counted_topics": _counted_topics,
    "path": _path,
    "networks": _networks,
    "bool": _bool,
    "size": _bounded(MIN_MESSAGE_SIZE, 1024 * MIB, "a size in bytes (suffixes KiB, MiB allowed)"),
    "frames": _bounded(1, MAX_FRAMES_CAP, "a number of frames"),
    "count": _bounded(1, 100_000_000, "a number of messages"),
    "threads": _bounded(1, 64, "a number of threads"),
    "seconds": _seconds,
    "level": _level,
}


def _parse(setting: Setting, raw: Any, source: str) -> Any:
    try:
        return PARSERS[setting.kind](raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {setting.name}: {exc}") from None


def read_file(path: str) -> dict[str, Any]:
    """Read a TOML config file; every key must be a known setting."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
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
    path = config_file or environ.get("FANOUTD_CONFIG") or None
    values: dict[str, Any] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = [("defaults", {s.name: s.default for s in SETTINGS})]
    if path:
        layers.append((path, read_file(path)))
    layers.append(("environment", {s.name: environ[s.env] for s in SETTINGS if s.env in environ}))
    layers.append(("command line", flags))
    for source, layer in layers:
        for name, raw in layer.items():
            if name not in BY_NAME:
                raise ConfigError(f"{source}: unknown setting {name!r}")
            values[name] = _parse(BY_NAME[name], raw, source)
    config = Config(**values, config_file=path)
    _check_whole(config)
    return config


def _check_whole(config: Config) -> None:
    if not config.collector:
        raise ConfigError("collector: at least one endpoint is required")
    if not config.publish and not config.push:
        raise ConfigError("publish and push are both empty: nothing would leave the broker")
    seen: dict[str, str] = {}
    for ep in config.upstream:
        if "*" in ep:
            raise ConfigError(f"upstream: {ep} names no host to connect to")
    for name in ("collector", "publish", "push", "relay", "upstream"):
        for ep in getattr(config, name):
            if ep in seen:
                raise ConfigError(f"{name}: endpoint {ep} is also used by {seen[ep]}")
            seen[ep] = name
    if config.heartbeat_interval and config.heartbeat_timeout < config.heartbeat_interval:
        raise ConfigError("heartbeat_timeout must be at least heartbeat_interval")
    for role in ("collector", "publish", "push"):
        if getattr(config, f"{role}_curve") and not config.curve_secret_key:
            raise ConfigError(f"{role}_curve needs curve_secret_key (create one with `fanoutd keygen`)")
        if getattr(config, f"{role}_clients") and not getattr(config, f"{role}_curve"):
            raise ConfigError(f"{role}_clients lists CURVE keys but {role}_curve is off")


def log_level(config: Config) -> int:
    """The logging module's number for the configured level."""
    return int(getattr(logging, config.log_level.upper()))


def as_dict(config: Config) -> dict[str, Any]:
    """The settings as plain values, e.g. for --check-config output."""
    values = {k: v for k, v in dataclasses.asdict(config).items() if k in BY_NAME}
    host, port = config.metrics
    values["metrics"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return values
