"""How the forwarding loop's counters map to what operators see: drops by output and reason, rejections by reason.

One table each, read by /metrics, `fanoutd top`, the STATUS= line and the
rate-limited warnings, so a new reason is added in one place.
"""

from __future__ import annotations

# (output, reason) -> the loop's counter (fanoutd._forward.COUNTER_NAMES)
DROPS: dict[tuple[str, str], str] = {
    ("push", "no_puller"): "push_dropped_no_puller",
    ("push", "hwm"): "push_dropped_hwm",
    ("publish", "hwm"): "publish_dropped",
    ("relay", "hwm"): "relay_dropped",
    ("stamped", "hwm"): "stamped_dropped",
}
# reason -> the loop's counter
REJECTS: dict[str, str] = {
    "oversize": "rejected_oversize",
    "too_many_frames": "rejected_too_many_frames",
    "loop": "rejected_loop",
    "bad_route": "rejected_bad_route",
    "not_relay": "rejected_not_relay",
}
