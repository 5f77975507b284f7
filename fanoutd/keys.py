"""The keys a configuration names (CURVE certificates, the metrics port's web config), read once into a
:class:`Keys` the daemon compares at reload.

Reading comes after validation and depends on it (config -> keys, never
back): :mod:`fanoutd.config` says which files, :mod:`fanoutd.files` reads
them, and any failure is one ConfigError line naming the setting and cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .config import Config
from .files import load_public_keys, load_secret_key, parse_certificate, read_bytes, resolve
from .roles import POLICY_OWNERS
from .webconfig import WebConfig, load as load_web_config

__all__ = ["Keys", "load_keys"]


@dataclass(frozen=True)
class Keys:
    """What the key files held when they were read: the inputs of access control, compared at reload."""

    secret: bytes | None  # the daemon's Z85 CURVE secret key, if curve_secret_key is set
    clients: Mapping[str, Mapping[str, bytes] | None]  # role -> {file name: Z85 public key}; None: any key
    upstream_server: bytes | None = None  # the upstream relays' Z85 public key (upstream_server_key)
    web: WebConfig | None = None  # the metrics port's TLS and users (metrics_web_config)


def load_keys(config: Config) -> Keys:
    """Read every key file the config names; any failure is one ConfigError line."""
    secret = load_secret_key(config.curve_secret_key) if config.curve_secret_key else None
    clients = {}
    for role in POLICY_OWNERS:
        directory = getattr(config, f"{role}_clients")
        clients[role] = load_public_keys(directory, f"{role}_clients") if directory else None
    server = None
    if config.upstream_server_key:
        path = resolve(config.upstream_server_key)
        server, _ = parse_certificate(read_bytes(path, "upstream_server_key"), path, "upstream_server_key")
    web = load_web_config(config.metrics_web_config) if config.metrics_web_config else None
    return Keys(secret, clients, server, web)
