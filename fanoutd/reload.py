"""Reload planning: from the running and the newly read configuration and keys, what applies live and what waits.

A pure function of its inputs (no files, no sockets): the caller reads the
new configuration and key files first, through :mod:`fanoutd.keys`, and a
failure there keeps the running configuration untouched.  The plan says
exactly what changed, so the log line after a reload is never a guess.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from .auth import Policy, build_policies
from .keys import Keys
from .config import LIVE, Config


@dataclass(frozen=True)
class Plan:
    """What a reload does: the configuration and keys that run afterwards, and the differences in words."""

    config: Config
    keys: Keys
    policies: Mapping[str, Policy]
    live: tuple[str, ...]      # settings changed and applied now
    restart: tuple[str, ...]   # settings changed that take effect only at the next start
    key_changes: tuple[str, ...]  # e.g. "collector_clients +producer-2.key"

    def applied(self) -> str:
        """The log's account of what the reload applied, or "nothing changed"."""
        parts = [f"{name}={getattr(self.config, name)!r}" for name in self.live] + list(self.key_changes)
        return "; ".join(parts) or "nothing changed"


def plan(current: Config, current_keys: Keys, new: Config, new_keys: Keys) -> Plan:
    """Apply the live settings and the re-read client keys of ``new``; list the rest as needing a restart."""
    changed = current.changed(new)
    live = tuple(name for name in changed if name in LIVE)
    restart = [name for name in changed if name not in LIVE]
    if new.curve_secret_key == current.curve_secret_key and new_keys.secret != current_keys.secret:
        restart.append("curve_secret_key (the file's key)")
    config = dataclasses.replace(current, **{name: getattr(new, name) for name in live})
    # The secret and upstream server keys are bound into the sockets at start; client key sets apply live.
    # The metrics port's web config applies live too: new connections get its TLS and users.
    keys = Keys(current_keys.secret, new_keys.clients, current_keys.upstream_server, new_keys.web)
    changes = tuple(line for role in sorted(set(current_keys.clients) | set(new_keys.clients))
                    if (line := _key_change(f"{role}_clients", current_keys.clients.get(role),
                                            new_keys.clients.get(role))))
    if new_keys.web != current_keys.web:
        changes += (f"metrics port: {new_keys.web.describe() if new_keys.web else 'no TLS and no basic auth'} now",)
    return Plan(config, keys, build_policies(config, keys), live, tuple(restart), changes)


def _key_change(setting: str, before: Mapping[str, bytes] | None, after: Mapping[str, bytes] | None) -> str:
    """One line naming the certificate files added, removed or replaced; empty when the set is the same."""
    if before == after:
        return ""
    if after is None:
        return f"{setting}: any CURVE key now"
    if before is None:
        return f"{setting}: only the {len(after)} listed key(s) now"
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    replaced = sorted(name for name in set(before) & set(after) if before[name] != after[name])
    words = [f"+{n}" for n in added] + [f"-{n}" for n in removed] + [f"~{n}" for n in replaced]
    return f"{setting} {' '.join(words)}"
