"""The forwarding loop's counters as operators see them: each one's /metrics sample and its line in `fanoutd top`.

The loop (fanoutd/dataplane) names its counters; this table is the one place
in Python that knows those names and what each counts. /metrics, `fanoutd
top`, the STATUS= line, the rate-limited warnings and the watchdog read it,
so a new counter or drop reason is added here (tests/test_counters.py
asserts the names are exactly the loop's).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Counter:
    """One of the loop's counters and where an operator sees it."""

    name: str                                 # the loop's name for it
    metric: str = ""                          # its /metrics counter family, without _total ("": not exposed)
    labels: tuple[tuple[str, str], ...] = ()  # its sample's labels in that family
    screen: str = ""                          # its line in `fanoutd top` (counters sharing one are summed)
    per_unit: int = 1                         # counts per unit of the metric (10**9: nanoseconds as seconds)

    @property
    def label_values(self) -> list[str]:
        """The sample's label values, in the family's label order."""
        return [value for _, value in self.labels]


# The counters the daemon's code reads by name.
RECEIVED = "received_messages"
RECEIVED_UPSTREAM = "received_upstream_messages"
PUBLISHED = "published_messages"
STAMPED = "stamped_messages"
PUSHED = "pushed_messages"
RELAYED = "relayed_messages"
TICKS = "ticks"
HISTORY_BYTES = "history_bytes"  # a gauge the loop publishes with its counters: /metrics shows it as one


def _drop(output: str, reason: str, name: str) -> Counter:
    return Counter(name, "fanoutd_dropped_messages", (("output", output), ("reason", reason)),
                   f"dropped {output} {reason}")


def _reject(reason: str, name: str) -> Counter:
    return Counter(name, "fanoutd_rejected_messages", (("reason", reason),), f"rejected {reason}")


def _repair(result: str, name: str) -> Counter:
    return Counter(name, "fanoutd_repair_requests", (("result", result),), "repair requests")


def _per_output(output: str) -> tuple[Counter, Counter]:
    """An output's stalls and the time it held: the slow-consumer guard's work on that socket."""
    socket = (("socket", output),)
    return (Counter(f"{output}_stalls", "fanoutd_output_stalls", socket, "output stalls"),
            Counter(f"{output}_held_ns", "fanoutd_output_held_seconds", socket, per_unit=10**9))


SUBSCRIPTION_BOUNDS = ("connection", "address", "socket")  # dataplane/subs.c's bounds, in its order


def _subscriptions(output: str) -> tuple[Counter, ...]:
    """An output's subscriptions refused per bound, and the subscriptions it holds (a gauge the loop publishes)."""
    return (*(Counter(f"{output}_subs_refused_{bound}", "fanoutd_subscriptions_refused",
                      (("socket", output), ("bound", bound)), "subscriptions refused")
              for bound in SUBSCRIPTION_BOUNDS),
            Counter(f"{output}_subscriptions"))


# In the order of `fanoutd top`'s screen.
COUNTERS: tuple[Counter, ...] = (
    Counter(RECEIVED, "fanoutd_received_messages", screen="received"),
    Counter("received_bytes", "fanoutd_received_bytes", screen="received bytes"),
    Counter(RECEIVED_UPSTREAM, "fanoutd_received_upstream_messages", screen="received from upstream"),
    Counter(PUBLISHED, "fanoutd_published_messages", screen="published"),
    Counter(STAMPED, "fanoutd_stamped_messages", screen="stamped"),
    Counter(PUSHED, "fanoutd_pushed_messages", screen="pushed"),
    Counter(RELAYED, "fanoutd_relayed_messages", screen="relayed"),
    Counter("upstream_gaps", "fanoutd_upstream_gaps", screen="upstream gaps"),
    Counter("upstream_repaired_messages", "fanoutd_upstream_repaired_messages", screen="upstream repaired"),
    Counter("upstream_unrepaired_messages", "fanoutd_upstream_unrepaired_messages", screen="upstream unrepaired"),
    Counter("upstream_duplicates", "fanoutd_upstream_duplicate_messages"),  # claimed by a repair of the link's tail
    Counter("upstream_untracked", "fanoutd_upstream_untracked_messages"),
    Counter("upstream_hellos", "fanoutd_upstream_hellos"),  # a relay's greeting on the upstream link: not a message
    Counter("stream_evictions", "fanoutd_stamp_stream_evictions"),
    _drop("push", "no_puller", "push_dropped_no_puller"),
    _drop("push", "hwm", "push_dropped_hwm"),
    _drop("push", "max_pending", "push_dropped_max_pending"),
    _drop("publish", "hwm", "publish_dropped"),
    _drop("relay", "hwm", "relay_dropped"),
    _drop("stamped", "hwm", "stamped_dropped"),
    _reject("oversize", "rejected_oversize"),
    _reject("too_many_frames", "rejected_too_many_frames"),
    _reject("loop", "rejected_loop"),
    _reject("bad_route", "rejected_bad_route"),
    _reject("not_relay", "rejected_not_relay"),
    *_per_output("publish"), *_per_output("stamped"), *_per_output("relay"),
    Counter(HISTORY_BYTES),
    Counter("history_evicted", "fanoutd_history_evicted_messages", screen="history evicted"),
    Counter("repaired_messages", "fanoutd_repaired_messages", screen="repaired"),
    _repair("range", "repair_range"),
    _repair("heads", "repair_heads"),
    _repair("unsent", "repair_unsent"),
    _repair("malformed", "repair_malformed"),
    _repair("oversize", "repair_oversize"),
    _repair("flood", "repair_flood"),
    *_subscriptions("publish"), *_subscriptions("relay"), *_subscriptions("stamped"),
    Counter(TICKS),  # the loop's turns: the watchdog's proof that it goes round
)
BY_NAME: dict[str, Counter] = {counter.name: counter for counter in COUNTERS}
#: The unlabelled /metrics families, each with the one counter behind it.
BY_METRIC: dict[str, Counter] = {c.metric: c for c in COUNTERS if c.metric and not c.labels}


def in_family(metric: str) -> tuple[Counter, ...]:
    """The counters behind one labelled /metrics family, one per sample, in table order."""
    return tuple(counter for counter in COUNTERS if counter.metric == metric)


# (output, reason) -> the loop's counter, and reason -> the loop's counter: what was not delivered, and why.
DROPS: dict[tuple[str, str], str] = {(c.label_values[0], c.label_values[1]): c.name
                                     for c in in_family("fanoutd_dropped_messages")}
REJECTS: dict[str, str] = {c.label_values[0]: c.name for c in in_family("fanoutd_rejected_messages")}


def screen() -> list[tuple[str, str, dict[str, str]]]:
    """`fanoutd top`'s lines for the loop's counters: (label, sample name, labels), in table order.

    Counters that share a label are one line over the labels they share
    (``output stalls``: every socket's).
    """
    lines: dict[str, tuple[str, str, dict[str, str]]] = {}
    for counter in COUNTERS:
        if not counter.screen:
            continue
        if counter.screen in lines:
            _, sample, labels = lines[counter.screen]
            lines[counter.screen] = (counter.screen, sample, {k: v for k, v in labels.items()
                                                              if (k, v) in counter.labels})
        else:
            lines[counter.screen] = (counter.screen, counter.metric + "_total", dict(counter.labels))
    return list(lines.values())
