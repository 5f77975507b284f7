"""What the broker tells the outside about itself: readiness, STATUS= lines, rate-limited warnings, the watchdog.

Readiness and the status line are pure functions of a few numbers; the two
loops are greenlets on the hub that read the engine's counters and never
touch a socket.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence

import gevent

from . import systemd
from .config import Config
from .counters import DROPS, PUBLISHED, PUSHED, RECEIVED, REJECTS, RELAYED, STAMPED, TICKS

log = logging.getLogger(__name__)

STATUS_EVERY = 5.0
WARN_EVERY = 10.0

Counters = Callable[[], Mapping[str, int]]


def readiness(phase: str, config: Config, peers: Mapping[str, int],
              link_problems: Mapping[str, str] | None = None,
              misconfigured: Collection[str] = ()) -> tuple[bool, str]:
    """What /readyz answers: ready only while running with every input it needs connected.

    An upstream proven not to be a relay fails it whatever else is connected (a deploy mistake should
    stop a rollout); when no upstream is connected, the body names each link known to be broken and why.
    """
    if phase != "ready":
        return False, phase
    wrong = sorted((ep, cause) for ep, cause in (link_problems or {}).items() if ep in (misconfigured or ()))
    if wrong:
        return False, "; ".join(f"upstream {ep}: {cause}" for ep, cause in wrong)
    if config.upstream and not peers.get("upstream"):
        why = "".join(f"; {ep}: {cause}" for ep, cause in sorted((link_problems or {}).items()))
        return False, "no upstream connected" + why
    return True, "ready"


def hostport(address: tuple[str, int]) -> str:
    """HOST:PORT as a URL takes it (an IPv6 host in brackets)."""
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def endpoints(bound: Mapping[str, Sequence[str]], metrics: tuple[str, int], scheme: str = "http") -> str:
    """Every endpoint as bound (or connected) by role, and the metrics URL: what the ready line shows.

    ``bound`` holds the ports the kernel gave for ``tcp://HOST:*``, so the
    line tells where the broker really listens.
    """
    parts = [f"{role} {','.join(eps)}" for role, eps in bound.items() if eps]
    return ", ".join([*parts, f"metrics {scheme}://{hostport(metrics)}/metrics"])


def status_line(c: Mapping[str, int]) -> str:
    """The one-line summary systemd shows (``systemctl status``) and the stop log repeats."""
    dropped = sum(c.get(key, 0) for key in DROPS.values())
    why = ", ".join(f"{output}/{reason} {c[key]}" for (output, reason), key in DROPS.items() if c.get(key))
    rejected = sum(c.get(key, 0) for key in REJECTS.values())
    extra = "".join(f", {label} {c[key]}" for label, key in (("stamped", STAMPED), ("relayed", RELAYED)) if c.get(key))
    return (f"received {c.get(RECEIVED, 0)}, published {c.get(PUBLISHED, 0)}, "
            f"pushed {c.get(PUSHED, 0)}, dropped {dropped}{f' ({why})' if why else ''}, "
            f"rejected {rejected}{extra}")


def report(counters: Counters) -> None:
    """STATUS= lines for systemctl status, and rate-limited warnings about rejections (never one per message)."""
    last_warn = time.monotonic()
    seen = dict(counters())
    while True:
        gevent.sleep(STATUS_EVERY)
        now = counters()
        systemd.notify("STATUS=" + status_line(now))
        if time.monotonic() - last_warn < WARN_EVERY:
            continue
        rejected = {reason: now[key] - seen[key] for reason, key in REJECTS.items() if now[key] > seen[key]}
        if rejected:
            log.warning("rejected messages in the last %.0fs: %s", time.monotonic() - last_warn,
                        ", ".join(f"{n} {reason}" for reason, n in rejected.items()))
        seen, last_warn = dict(now), time.monotonic()


def watchdog(counters: Counters) -> None:
    """WATCHDOG=1 only while the forwarding loop is seen going round: a stuck engine stops the pings."""
    interval = systemd.watchdog_interval()
    if interval is None:
        return
    last = -1
    while True:
        ticks = counters()[TICKS]
        if ticks != last:
            systemd.notify("WATCHDOG=1")
            last = ticks
        else:
            log.error("the forwarding loop has not gone round in %.1fs; withholding the watchdog ping", interval)
        gevent.sleep(interval)
