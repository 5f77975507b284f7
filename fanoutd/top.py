"""``fanoutd top``: live rates, drops and peers of a running fanoutd, read from /metrics.

It scrapes the same endpoint Prometheus does, so what it shows is exactly
what a dashboard would; rates are differences between two scrapes.
"""

from __future__ import annotations

import base64
import json
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

from . import counters
from .roles import ROLES

Sample = Mapping[tuple[str, tuple[tuple[str, str], ...]], float]

CLEAR = "\x1b[H\x1b[2J"


class ScrapeError(RuntimeError):
    """The metrics endpoint could not be read; the message is one line."""


class CredentialsError(ValueError):
    """A file given for TLS or basic auth could not be used; the message is one line."""


@dataclass(frozen=True)
class Client:
    """How to reach a metrics port behind metrics_web_config: a TLS context and an Authorization header."""

    context: ssl.SSLContext | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def read(self, url: str, timeout: float) -> bytes:
        request = urllib.request.Request(url, headers=dict(self.headers))
        with urllib.request.urlopen(request, timeout=timeout, context=self.context) as resp:
            return bytes(resp.read())


def client(ca_file: str | None = None, cert: str | None = None, key: str | None = None, user: str | None = None,
           password_file: str | None = None) -> Client:
    """A Client for the flags given: the server verified against ``ca_file`` (else the system's CAs) for https,
    ``cert``/``key`` as the client certificate, ``user`` with the password in ``password_file`` (first line)."""
    context, password = None, ""
    try:
        if ca_file or cert:
            context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise CredentialsError(f"cannot use --ca-file {ca_file}: {_why(exc)}") from None
    try:
        if cert and context is not None:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise CredentialsError(f"cannot use --cert {cert}{f' with --key {key}' if key else ''}: {_why(exc)}") from None
    try:
        if password_file:
            with open(password_file, encoding="utf-8") as fh:
                password = fh.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"cannot use --password-file {password_file}: {_why(exc)}") from None
    headers = ()
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers = (("Authorization", f"Basic {token}"),)
    return Client(context, headers)


def _why(exc: Exception) -> str:
    """The few words of an OS or OpenSSL error (ssl's own text is "[SSL] PEM lib (_ssl.c:3900)")."""
    if isinstance(exc, ssl.SSLError) and not exc.reason:  # OpenSSL's PEM_LIB: a certificate without its key
        return "no key found in it (give --key), or not PEM"
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason).lower().replace("_", " ") if reason else str(exc)


def scrape(url: str, timeout: float = 5.0, via: Client = Client()) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                                          float]:
    try:
        text = via.read(url, timeout).decode()
    except urllib.error.HTTPError as exc:  # a 401 says: credentials (--user, --password-file) wanted or wrong
        raise ScrapeError(f"cannot read {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ScrapeError(f"cannot read {url}: {reason}") from None
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _sum(sample: Sample, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in sample.items() if n == name and want <= set(ls))


@dataclass(frozen=True)
class Row:
    label: str
    total: float
    rate: float


# The screen's counters, in order: (label, metric, labels); the loop's come from its table (fanoutd/counters.py).
SPEC: tuple[tuple[str, str, dict[str, str]], ...] = (
    *counters.screen(),
    ("slow consumers cut", "fanoutd_slow_consumers_total", {}),
    ("auth denied", "fanoutd_auth_denied_total", {}),
    ("handshake failures", "fanoutd_handshake_failures_total", {}),
)


def rows(before: Sample, after: Sample, seconds: float) -> list[Row]:
    """The lines of the screen: each counter's total and its rate over the interval."""
    out = []
    for label, name, labels in SPEC:
        total = _sum(after, name, **labels)
        out.append(Row(label, total, (total - _sum(before, name, **labels)) / seconds if seconds > 0 else 0.0))
    return out


def _present(sample: Sample, name: str) -> list[str]:
    """The sockets a family has samples for, in the order of the role table."""
    sockets = {dict(labels).get("socket") for (n, labels) in sample if n == name}
    return [role.name for role in ROLES if role.name in sockets]


def peers_view(url: str, timeout: float = 5.0, via: Client = Client()) -> dict[str, list[dict[str, object]]] | None:
    """The daemon's /peers beside its /metrics, or None where it is turned off or unreadable."""
    peers_url = urllib.parse.urljoin(url, "/peers")
    try:
        view = json.loads(via.read(peers_url, timeout))
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return view if isinstance(view, dict) else None


def render_peers(view: dict[str, list[dict[str, object]]], most: int = 5) -> list[str]:
    """The peers furthest behind (largest kernel queue) and the last slow consumers cut off."""
    lines = ["", "slowest peers (bytes queued in the kernel):"]
    for entry in view.get("connected", [])[:most]:
        lines.append(f"  {entry.get('socket', '?'):10}{entry.get('peer', '?'):>28}{entry.get('queued_bytes', 0):>14,}")
    cut = [e for e in view.get("closed", []) if e.get("rule")][:most]  # the guard's cuts carry the rule that cut
    if cut:
        lines.append("slow consumers cut off (newest first):")
        for entry in cut:
            when = time.strftime("%H:%M:%S", time.localtime(float(str(entry.get("closed", 0)))))
            lines.append(f"  {when} {entry.get('socket', '?')} {entry.get('peer', '?')} (rule={entry['rule']}): "
                         f"{entry.get('reason')}")
    return lines


def render(url: str, before: Sample, after: Sample, seconds: float,
           peers: dict[str, list[dict[str, object]]] | None = None) -> str:
    lines = [f"fanoutd top  {url}  (every {seconds:.1f}s)", "", f"{'':28}{'per second':>14}{'total':>16}"]
    for row in rows(before, after, seconds):
        lines.append(f"{row.label:28}{row.rate:>14,.0f}{row.total:>16,.0f}")
    lines.append("")
    lines.append(f"{'socket':16}{'peers':>8}{'disconnects':>14}{'auth denied':>14}")
    for sock in _present(after, "fanoutd_connected_peers"):
        lines.append(f"{sock:16}{_sum(after, 'fanoutd_connected_peers', socket=sock):>8,.0f}"
                     f"{_sum(after, 'fanoutd_disconnects_total', socket=sock):>14,.0f}"
                     f"{_sum(after, 'fanoutd_auth_denied_total', socket=sock):>14,.0f}")
    if peers is not None:
        lines += render_peers(peers)
    rss = _sum(after, "process_resident_memory_bytes")
    if rss:
        lines.append(f"resident memory: {rss / 2**20:,.1f} MiB")
    return "\n".join(lines) + "\n"


def run(url: str, interval: float, once: bool, out: TextIO = sys.stdout, via: Client = Client()) -> int:
    """Redraw every ``interval`` seconds until interrupted; ``once`` prints one screen and exits."""
    try:
        before, t0 = scrape(url, via=via), time.monotonic()
        while True:
            time.sleep(interval)
            after, t1 = scrape(url, via=via), time.monotonic()
            out.write(("" if once else CLEAR) + render(url, before, after, t1 - t0, peers_view(url, via=via)))
            out.flush()
            if once:
                return 0
            before, t0 = after, t1
    except ScrapeError as exc:
        print(f"fanoutd top: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
