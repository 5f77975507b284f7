"""The metrics port's web configuration: an exporter-toolkit ``web.config`` file (TLS, basic-auth users, headers).

The format is the one node_exporter and most exporters read, so an operator
reuses the file, the certificates and the Prometheus ``tls_config`` /
``basic_auth`` they already have. It is read strictly: a key fanoutd cannot
honour with Python's ``ssl`` (Go cipher-suite names, ``RequestClientCert``,
HTTP/2, ...) is refused with one line naming it, never ignored, because a
security setting dropped in silence is worse than a refusal. Relative paths
in it are relative to the file's own directory, as in the exporter-toolkit.

Loading it builds a throwaway ``ssl.SSLContext`` so that a bad certificate,
key or CA file is found at start, by ``--check-config`` and at reload alike;
the server builds its own (gevent's) from the same :class:`WebConfig`.
Nothing here imports gevent.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from . import files
from .values import ConfigError

WHAT = "metrics_web_config"

CLIENT_AUTH: Mapping[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
VERSIONS: Mapping[str, ssl.TLSVersion] = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# The security headers the exporter-toolkit accepts in http_server_config.headers, and only those.
HEADERS = ("Content-Security-Policy", "Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options",
           "X-XSS-Protection")
# Keys of the format fanoutd cannot honour, and why: refused, never ignored.
REFUSED: Mapping[str, str] = {
    "cipher_suites": "Go cipher-suite names, which Python's ssl cannot set (it takes OpenSSL's names, and none for "
                     "TLS 1.3): remove it to get OpenSSL's default suites",
    "curve_preferences": "Python's ssl cannot set a list of curves: remove it to get OpenSSL's defaults",
    "client_allowed_sans": "Python's ssl cannot match client certificates by SAN: use a client CA of your own",
    "cert": "inline certificates are not read: give cert_file",
    "key": "inline keys are not read: give key_file",
    "client_ca": "an inline client CA is not read: give client_ca_file",
    "RequestClientCert": "it asks for a client certificate without verifying it, which Python's ssl cannot do: use "
                         "VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file",
    "RequireAnyClientCert": "it requires a client certificate without verifying it, which Python's ssl cannot do: "
                            "use RequireAndVerifyClientCert with client_ca_file",
    "TLS10": "fanoutd serves TLS 1.2 or later: use TLS12 or TLS13",
    "TLS11": "fanoutd serves TLS 1.2 or later: use TLS12 or TLS13",
    "http2": "fanoutd serves HTTP/1.1 only (Prometheus scrapes it): remove http2 or set it to false",
}
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
             "prefer_server_cipher_suites")
# A bcrypt hash as htpasswd -B ($2y$) and Go's bcrypt ($2a$) write them: cost, then 22 + 31 characters.
_BCRYPT = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")


@dataclass(frozen=True)
class Tls:
    cert_file: str
    key_file: str
    verify: ssl.VerifyMode = ssl.CERT_NONE
    client_ca_file: str = ""
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion | None = None
    prefer_server_cipher_suites: bool = True


@dataclass(frozen=True)
class WebConfig:
    """What the file says; ``digest`` covers its bytes and those of every file it names, so a renewed
    certificate at the same path is a change at reload."""

    path: str
    tls: Tls | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: tuple[tuple[str, str], ...] = ()
    digest: str = ""

    def describe(self) -> str:
        """A few words for the ready line and the reload line: what a client must present."""
        parts = []
        if self.tls:
            parts.append("TLS" + (" with client certificates" if self.tls.verify == ssl.CERT_REQUIRED else ""))
        if self.users:
            parts.append(f"basic auth ({len(self.users)} user{'s' * (len(self.users) != 1)})")
        return " and ".join(parts) or "no TLS and no basic auth"


class _Loader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice (PyYAML would silently keep the last)."""


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: {key!r} is given twice")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load(setting: str) -> WebConfig:
    """Read and check the file ``metrics_web_config`` names; any problem is one ConfigError line."""
    path = files.resolve(setting)
    data = files.read_bytes(path, WHAT)
    try:
        doc = yaml.load(data.decode("utf-8"), Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError:
        raise ConfigError(f"{WHAT}: {path}: not UTF-8 text") from None
    except ConfigError as exc:
        raise ConfigError(f"{WHAT}: {path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{WHAT}: {path}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    try:
        return _check(path, data, {} if doc is None else doc)
    except ConfigError as exc:
        raise ConfigError(f"{WHAT}: {path}: {exc}") from None


def _check(path: str, data: bytes, doc: Any) -> WebConfig:
    top = _section(doc, "the file", ("tls_server_config", "basic_auth_users", "http_server_config"))
    base = os.path.dirname(os.path.abspath(path))
    digest = hashlib.sha256(data)
    tls = _tls(_section(top["tls_server_config"], "tls_server_config", _TLS_KEYS), base, digest) \
        if top.get("tls_server_config") is not None else None
    users = {}
    for user, hashed in _section(top.get("basic_auth_users"), "basic_auth_users", None).items():
        if not isinstance(user, str) or not user or ":" in user:
            raise ConfigError(f"basic_auth_users: user {user!r} must be a non-empty string without ':' (quote it)")
        if not isinstance(hashed, str) or not _BCRYPT.match(hashed):
            raise ConfigError(f"basic_auth_users: {user}: not a bcrypt hash ($2y$10$..., as `htpasswd -nBC 10 "
                              f"{user}` writes after the colon)")
        users[user] = hashed.encode()
    http = _section(top.get("http_server_config"), "http_server_config", ("headers", "http2"))
    if http.get("http2") not in (None, False):
        raise ConfigError(f"http_server_config: http2: {REFUSED['http2']}")
    headers = []
    for name, value in _section(http.get("headers"), "http_server_config.headers", None).items():
        if name not in HEADERS or not isinstance(value, str) or "\n" in value or "\r" in value:
            raise ConfigError(f"http_server_config.headers: {name!r}: only {', '.join(HEADERS)} may be set, each "
                              "to one line of text")
        headers.append((name, value))
    return WebConfig(path, tls, users, tuple(headers), digest.hexdigest())


def _section(value: Any, where: str, known: tuple[str, ...] | None) -> dict[str, Any]:
    """A mapping (empty for a missing section) whose keys are all ``known`` (any, when None)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(value).__name__}")
    for key in value if known is not None else ():
        if key in REFUSED and key not in known:
            raise ConfigError(f"{where}: {key}: {REFUSED[key]}")
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (fanoutd reads {', '.join(known)})")
    return value


def _tls(section: dict[str, Any], base: str, digest: Any) -> Tls:
    def text(key: str) -> str:
        value = section.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"tls_server_config: {key}: expected a string, got {value!r}")
        return value or ""

    def version(key: str) -> ssl.TLSVersion | None:
        name = text(key)
        if name in REFUSED:
            raise ConfigError(f"tls_server_config: {key}: {name}: {REFUSED[name]}")
        if name and name not in VERSIONS:
            raise ConfigError(f"tls_server_config: {key}: {name!r} is none of {', '.join(VERSIONS)}")
        return VERSIONS[name] if name else None

    def file(key: str) -> str:
        given = text(key)
        resolved = os.path.join(base, given) if given else ""
        if resolved:
            digest.update(files.read_bytes(resolved, f"tls_server_config: {key}"))
        return resolved

    if not text("cert_file") or not text("key_file"):
        raise ConfigError("tls_server_config: cert_file and key_file are both required")
    auth = text("client_auth_type") or "NoClientCert"
    if auth in REFUSED:
        raise ConfigError(f"tls_server_config: client_auth_type: {auth}: {REFUSED[auth]}")
    if auth not in CLIENT_AUTH:
        raise ConfigError(f"tls_server_config: client_auth_type: {auth!r} is none of {', '.join(CLIENT_AUTH)}")
    verify, ca = CLIENT_AUTH[auth], text("client_ca_file")
    if verify != ssl.CERT_NONE and not ca:
        raise ConfigError(f"tls_server_config: client_auth_type {auth} needs client_ca_file")
    if verify == ssl.CERT_NONE and ca:
        raise ConfigError("tls_server_config: client_ca_file is given but client_auth_type is NoClientCert "
                          "(set RequireAndVerifyClientCert or VerifyClientCertIfGiven)")
    prefer = section.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise ConfigError(f"tls_server_config: prefer_server_cipher_suites: expected true or false, got {prefer!r}")
    tls = Tls(file("cert_file"), file("key_file"), verify, file("client_ca_file"),
              version("min_version") or ssl.TLSVersion.TLSv1_2, version("max_version"), prefer)
    if tls.max_version is not None and tls.max_version < tls.min_version:
        raise ConfigError("tls_server_config: max_version is below min_version")
    context(tls)  # a certificate, key or CA that OpenSSL will not load is found now, not at the first scrape
    return tls


def _no_password() -> bytes:
    return b""  # an encrypted key then fails to load, with a line saying so, instead of a prompt on the terminal


def context(tls: Tls, factory: Callable[[int], ssl.SSLContext] = ssl.SSLContext) -> ssl.SSLContext:
    """A server context as ``tls`` says (``factory``: gevent's SSLContext in the daemon); ConfigError if it cannot."""
    ctx = factory(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = tls.min_version
    if tls.max_version is not None:
        ctx.maximum_version = tls.max_version
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls_server_config: cannot load cert_file {tls.cert_file} with key_file {tls.key_file}: "
                          f"{_why(exc)} (PEM files, the key unencrypted and matching the certificate)") from None
    if tls.client_ca_file:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"tls_server_config: cannot load client_ca_file {tls.client_ca_file}: "
                              f"{_why(exc)}") from None
    ctx.verify_mode = tls.verify
    return ctx


def _why(exc: OSError) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason).lower().replace("_", " ") if reason else files.cause(exc)
