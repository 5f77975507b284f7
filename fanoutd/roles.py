"""The socket roles of a fanoutd node, defined once: everything per-socket is derived from this table.

Settings (endpoints, high-water marks, access control), the socket
descriptions, metrics label values, `fanoutd top` rows and the docs all
iterate over :data:`ROLES` instead of spelling role names out, so adding or
renaming a socket is one edit here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Pattern = Literal["SUB", "PULL", "XPUB", "PUSH", "ROUTER", "DEALER"]


@dataclass(frozen=True)
class Role:
    """One socket of the broker and how the rest of the daemon treats it."""

    name: str
    pattern: Pattern        # the ZeroMQ socket type, by name (zmq is not imported here)
    help: str               # the help of its endpoints setting (named like the role)
    hwm: str                # the setting that bounds its queue (per peer on outputs)
    policy: str | None      # the role whose access-control settings it uses; None: it connects out
    default: tuple[str, ...] = ()  # its endpoints by default (empty: the socket is not created)
    connects: bool = False  # connects to its endpoints instead of binding them

    @property
    def is_input(self) -> bool:
        """Read by the forwarding loop (inputs close first on stop: stop reading, then flush)."""
        return self.pattern in ("SUB", "PULL")

    @property
    def fans_out(self) -> bool:
        """Copies every message to each peer (an XPUB): where one slow peer could lose messages unseen."""
        return self.pattern == "XPUB"

    @property
    def owns_policy(self) -> bool:
        """Has `<name>_curve`, `<name>_clients`, `<name>_allow`, `<name>_deny` settings of its own."""
        return self.policy == self.name


# Inputs first: the order sockets are closed in.
ROLES: tuple[Role, ...] = (
    Role("collector", "SUB", "endpoint(s) the collector SUB binds; producers connect PUB sockets here",
         "collector_hwm", "collector", ("tcp://127.0.0.1:5560",)),
    Role("ingress", "PULL", "endpoint(s) of an optional PULL input for producers that want back-pressure instead "
         "of drops (they connect PUSH sockets; empty: none)", "collector_hwm", "collector"),
    Role("upstream", "SUB", "federation: relay endpoint(s) of upstream fanoutd nodes this node's collector also "
         "reads from", "collector_hwm", None, connects=True),
    # The edge's side of relay_repair: a DEALER the loop owns, with the upstream link's CURVE keys.
    Role("upstream_repair", "DEALER", "federation: the relay_repair endpoint of this node's upstream, asked for the "
         "messages the upstream link missed (docs/concepts.md, \"Federation: past one machine\"; one upstream only; "
         "empty: gaps are only counted)", "repair_hwm", None, connects=True),
    Role("publish", "XPUB", "endpoint(s) the PUB output binds; subscribers connect here (empty: no PUB output)",
         "publish_hwm", "publish", ("tcp://127.0.0.1:5561",)),
    Role("stamped", "XPUB", "endpoint(s) of a second PUB output whose messages end in a sequence stamp, so "
         "subscribers can prove they missed nothing and know when their subscription is live (docs/concepts.md, "
         "\"Sequence stamps\"; empty: none)", "publish_hwm", "publish", ("tcp://127.0.0.1:5565",)),
    # Beside the stamped output (5565), on loopback like it; its access control is the stamped output's (publish_*).
    Role("repair", "ROUTER", "endpoint(s) of the repair endpoint, a ROUTER where stamped subscribers get back "
         "messages they missed from the history, or learn exactly which are gone (docs/concepts.md, \"History and "
         "repair\"; only with a stamped output; access control is the stamped output's, publish_*; empty: none)",
         "repair_hwm", "publish", ("tcp://127.0.0.1:5566",)),
    Role("push", "PUSH", "endpoint(s) the non-blocking PUSH output binds; pullers connect here (empty: no PUSH "
         "output)", "push_hwm", "push", ("tcp://127.0.0.1:5562",)),
    Role("relay", "XPUB", "federation: endpoint(s) where downstream fanoutd nodes connect their upstream (empty: "
         "none)", "publish_hwm", "relay"),
    # The relay's sequences are the stamped output's (one stamp per message): the same history serves both.
    Role("relay_repair", "ROUTER", "federation: endpoint(s) where downstream nodes get back what their relay link "
         "missed, from the repair history (docs/concepts.md, \"Federation: past one machine\"; only with a relay "
         "output; access control is the relay's, relay_*; empty: none)", "repair_hwm", "relay"),
)
BY_NAME: dict[str, Role] = {role.name: role for role in ROLES}
INPUTS: tuple[str, ...] = tuple(role.name for role in ROLES if role.is_input)
POLICY_OWNERS: tuple[str, ...] = tuple(role.name for role in ROLES if role.owns_policy)
