"""Parsers for setting values: each takes what a TOML file, an environment
variable or a flag gave (a TOML value or a string) and returns the typed value,
or raises ConfigError with words fit for a one-line answer.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from .dataplane.limits import FRAMES_CAP, TOPICS_CAP

KIB = 1024
MIB = 1024 * KIB


class ConfigError(ValueError):
    """A problem with the configuration, worded for a one-line answer."""


_ENDPOINT = re.compile(r"^(tcp://(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5}|\*)|ipc://[^\0]+)$")


def any_port(endpoint: str) -> bool:
    """Whether a tcp endpoint leaves its port to the kernel (``:*`` or ``:0``): each bind gets a new one.

    Only a bound socket can take one: the port it got is read back after the
    bind and reported (the ready line, GET /endpoints). A connecting socket
    needs a real port to connect to.
    """
    m = _ENDPOINT.match(endpoint)
    return bool(m and m.group(3) and (m.group(3) == "*" or int(m.group(3)) == 0))


def _endpoints(raw: Any) -> tuple[str, ...]:
    items = _list(raw)
    for ep in items:
        m = _ENDPOINT.match(ep)
        if not m:
            raise ConfigError(f"malformed endpoint {ep!r} (expected tcp://HOST:PORT or ipc://PATH)")
        if m.group(3) and not any_port(ep) and not 1 <= int(m.group(3)) <= 65535:
            raise ConfigError(f"port out of range in {ep!r}")
    fixed = [ep for ep in items if not any_port(ep)]  # tcp://HOST:* twice binds two ports
    if len(set(fixed)) != len(fixed):
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
    """HOST:PORT to listen on; port 0 lets the kernel choose (GET /endpoints and the ready line say which)."""
    if not isinstance(raw, str) or ":" not in raw:
        raise ConfigError(f"expected HOST:PORT, got {raw!r}")
    host, _, port = raw.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
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


def _share(raw: Any) -> float:
    """A share of time, 0 to 1."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"expected a share between 0 and 1, got {raw!r}") from None
    if not 0 <= value <= 1:
        raise ConfigError(f"must be between 0 and 1, got {value}")
    return value


# The slow_consumer_policy values (what each means: fanoutd.slowrules, docs/concepts.md "Pace or cut").
PACE, CUT = "pace", "cut"


def _policy(raw: Any) -> str:
    text = str(raw).strip().lower()
    if text not in (PACE, CUT):
        raise ConfigError(f"expected {PACE} or {CUT}, got {raw!r}")
    return text


def _level(raw: Any) -> str:
    text = str(raw).strip().lower()
    if text not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"expected debug, info, warning or error, got {raw!r}")
    return text


# max_message_size floor: libzmq counts handshake frames against ZMQ_MAXMSGSIZE
# (libzmq #4436), so values that small would break connections, not protect them.
MIN_MESSAGE_SIZE = 256

PARSERS: Mapping[str, Callable[[Any], Any]] = {
    "endpoints": _endpoints,
    "hostport": _hostport,
    "topics": _topics,
    "counted_topics": _counted_topics,
    "path": _path,
    "networks": _networks,
    "bool": _bool,
    "size": _bounded(MIN_MESSAGE_SIZE, 1024 * MIB, "a size in bytes (suffixes KiB, MiB allowed)"),
    "budget": _bounded(0, 64 * 1024 * MIB, "a size in bytes (suffixes KiB, MiB allowed; 0: no bound)"),
    "frames": _bounded(1, FRAMES_CAP, "a number of frames"),
    "count": _bounded(1, 100_000_000, "a number of messages"),
    "threads": _bounded(1, 64, "a number of threads"),
    "streams": _bounded(1, 1 << 24, "a number of streams"),
    "subscriptions": _bounded(0, 1 << 40, "a number of subscriptions (0: no bound)"),
    "seconds": _seconds,
    "share": _share,
    "policy": _policy,
    "level": _level,
}

# kind -> the type its parser returns: the field types of fanoutd.config.Config.
TYPES: Mapping[str, Any] = {
    "endpoints": tuple[str, ...],
    "hostport": tuple[str, int],
    "topics": tuple[str, ...],
    "counted_topics": tuple[str, ...],
    "path": str,
    "networks": tuple[str, ...],
    "bool": bool,
    "size": int,
    "budget": int,
    "frames": int,
    "count": int,
    "threads": int,
    "streams": int,
    "subscriptions": int,
    "seconds": float,
    "share": float,
    "policy": str,
    "level": str,
}
