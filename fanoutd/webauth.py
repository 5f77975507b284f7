"""The metrics port's gate: every request checked against the web configuration's basic-auth users.

Rules, each against a known way such gates fail:

- The full credentials are checked with bcrypt at every request; nothing is
  cached (the exporter-toolkit's cache let wrong passwords in: CVE-2022-46146).
- bcrypt takes tens of milliseconds by design, so it runs in a small thread
  pool, off the gevent hub (the hub also answers the slow-consumer guard's
  stalls); an unknown user is hashed too, so timing does not tell users apart.
- An address that failed ``THROTTLE_FAILURES`` times within ``THROTTLE_SECONDS``
  is refused (429) before any hashing, so a guesser cannot keep the pool busy;
  the addresses remembered are bounded.
- A refusal carries no metric bytes; every refusal is counted in
  ``fanoutd_http_auth_failures_total{reason}`` and logged at most once per
  ``LOG_EVERY`` seconds, never once per request.

The TLS handshake, which comes before any path, is the server's
(fanoutd.webserver); its failures are counted here, under the same metric.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import os
import ssl
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import bcrypt

from .webconfig import WebConfig

log = logging.getLogger(__name__)

# reason -> what it means (docs/metrics.md takes the labels from here).
REASONS = {
    "missing": "no basic-auth credentials, or malformed ones",
    "user": "an unknown user",
    "password": "a wrong password",
    "throttled": "refused before hashing: too many failures from that address",
    "plain_http": "plain HTTP sent to the TLS port",
    "certificate": "no client certificate, or one the client CA does not verify",
    "tls": "any other failed TLS handshake (versions, ciphers, a timeout, a connection closed early)",
}
THROTTLE_FAILURES = 5
THROTTLE_SECONDS = 10.0
THROTTLE_ADDRESSES = 4096
LOG_EVERY = 10.0
HASH_THREADS = 2
REALM = 'Basic realm="fanoutd", charset="UTF-8"'

StartResponse = Callable[..., Any]
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Throttle:
    """Failures per address over a sliding window, for at most ``size`` addresses (the oldest forgotten)."""

    def __init__(self, failures: int = THROTTLE_FAILURES, seconds: float = THROTTLE_SECONDS,
                 size: int = THROTTLE_ADDRESSES, clock: Callable[[], float] = time.monotonic) -> None:
        self._failures, self._seconds, self._size, self._clock = failures, seconds, size, clock
        self._seen: OrderedDict[str, list[float]] = OrderedDict()

    def _recent(self, address: str) -> list[float]:
        now = self._clock()
        times = [t for t in self._seen.get(address, ()) if now - t < self._seconds]
        if times:
            self._seen[address] = times
        else:
            self._seen.pop(address, None)
        return times

    def over(self, address: str) -> bool:
        return len(self._recent(address)) >= self._failures

    def failed(self, address: str) -> None:
        times = self._recent(address)
        self._seen[address] = [*times, self._clock()]
        self._seen.move_to_end(address)
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)


def credentials(header: str) -> tuple[str, bytes] | None:
    """(user, password) of a ``Basic`` Authorization header, or None if there are none or they are malformed."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def check(password: bytes, hashed: bytes) -> bool:
    """bcrypt's verdict; a password bcrypt refuses (over 72 bytes, a NUL) is simply wrong."""
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


class Gate:
    """The check in front of the metrics app (``serving(app)`` is the WSGI app); ``use`` swaps the web config."""

    def __init__(self, web: WebConfig | None, run: Callable[..., Any] | None = None,
                 throttle: Throttle | None = None) -> None:
        self._run = run or (lambda fn, args: fn(*args))  # run(fn, args): the daemon passes its thread pool's apply
        self._throttle = throttle or Throttle()
        self.failures: Counter[str] = Counter(dict.fromkeys(REASONS, 0))
        self._unlogged: Counter[str] = Counter()
        self._last_log: float | None = None
        self._decoy: bytes | None = None
        self.web = web

    def use(self, web: WebConfig | None) -> None:
        if web is None or self.web is None or web.users != self.web.users:
            self._decoy = None
        self.web = web

    def refused(self, reason: str, address: str) -> None:
        """Count one refusal; log the ones since the last line, at most every LOG_EVERY seconds."""
        self.failures[reason] += 1
        self._unlogged[reason] += 1
        now = time.monotonic()
        if self._last_log is None or now - self._last_log >= LOG_EVERY:
            log.warning("metrics port: refused %s (by reason; at most one such line per %.0fs), the last from %s",
                        ", ".join(f"{n} {why}" for why, n in sorted(self._unlogged.items())), LOG_EVERY, address)
            self._unlogged.clear()
            self._last_log = now

    def handshake_failed(self, address: str, exc: OSError) -> None:
        reason = getattr(exc, "reason", "") or ""
        if reason == "HTTP_REQUEST":
            self.refused("plain_http", address)
        elif isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE" in reason:
            self.refused("certificate", address)
        else:
            self.refused("tls", address)

    def serving(self, app: App) -> App:
        """``app`` behind this gate."""
        return functools.partial(self._serve, app)

    def _serve(self, app: App, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        web = self.web
        headers = list(web.headers) if web else []

        def respond(status: str, response_headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            return start_response(status, response_headers + headers, *exc_info)

        if web and web.users:
            refusal = self._authenticate(web, environ)
            if refusal is not None:
                status, extra, body = refusal
                respond(status, [("Content-Type", "text/plain; charset=utf-8"), *extra])
                return [body]
        return app(environ, respond)

    def _authenticate(self, web: WebConfig, environ: dict[str, Any]) -> tuple[str, list[Any], bytes] | None:
        """None to let the request through, else the refusal (status, headers, body): never any metric."""
        address = environ.get("REMOTE_ADDR", "")
        unauthorized = ("401 Unauthorized", [("WWW-Authenticate", REALM)], b"unauthorized\n")
        given = credentials(environ.get("HTTP_AUTHORIZATION", ""))
        if given is None:
            self.refused("missing", address)
            return unauthorized
        if self._throttle.over(address):
            self.refused("throttled", address)
            return ("429 Too Many Requests", [("Retry-After", str(int(THROTTLE_SECONDS)))],
                    b"too many failed attempts: try again later\n")
        user, password = given
        hashed = web.users.get(user)
        ok = self._run(check, (password, hashed if hashed is not None else self._decoy_for(web)))
        if hashed is not None and ok:
            return None
        self._throttle.failed(address)
        self.refused("user" if hashed is None else "password", address)
        return unauthorized

    def _decoy_for(self, web: WebConfig) -> bytes:
        """A hash of a random password at the users' highest cost, for unknown users (made once per user set)."""
        if self._decoy is None:
            cost = max(int(h.split(b"$")[2]) for h in web.users.values())
            self._decoy = self._run(bcrypt.hashpw, (os.urandom(16).hex().encode(), bcrypt.gensalt(cost)))
        return self._decoy
