"""fanoutd/counters.py names exactly the loop's counters, and /metrics shows each where the table says."""

from __future__ import annotations

from fanoutd import counters
from fanoutd.config import load
from fanoutd.dataplane import _forward
from fanoutd.metrics import BrokerCollector, Sources
from fanoutd.roles import ROLES


def test_the_table_names_exactly_the_loops_counters() -> None:
    names = [counter.name for counter in counters.COUNTERS]
    assert len(names) == len(set(names)), "a counter listed twice"
    assert set(names) == set(_forward.COUNTER_NAMES)


def test_every_output_that_fans_out_has_its_stalls_and_drops() -> None:
    fan_out = {role.name for role in ROLES if role.fans_out}
    for metric in ("fanoutd_output_stalls", "fanoutd_output_held_seconds"):
        assert {c.label_values[0] for c in counters.in_family(metric)} == fan_out
    assert fan_out <= {output for output, _ in counters.DROPS}


def test_nanoseconds_are_shown_as_seconds() -> None:
    for counter in counters.COUNTERS:
        if counter.name.endswith("_ns"):
            assert (counter.metric.endswith("_seconds"), counter.per_unit) == (True, 10**9), counter
        else:
            assert counter.per_unit == 1, counter


def test_each_counter_reaches_its_metric_sample() -> None:
    """Every counter gets a value of its own: each sample the table names must show exactly that value."""
    values = {name: 1000 * (i + 1) for i, name in enumerate(_forward.COUNTER_NAMES)}
    every_output = {role.name: [f"tcp://127.0.0.1:{port}"] for port, role in enumerate(ROLES, 1) if not role.default}
    config = load(every_output, {})
    collector = BrokerCollector(Sources(counters=lambda: values, topics=dict, peers=dict, handshake_failures=dict,
                                        disconnects=dict, auth_denied=dict, config=lambda: config))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in collector.collect() for s in family.samples}
    exposed = [c for c in counters.COUNTERS if c.metric]
    assert exposed, "the table exposes nothing"
    for counter in exposed:
        key = (counter.metric + "_total", tuple(sorted(counter.labels)))
        assert samples.get(key) == values[counter.name] / counter.per_unit, (counter, samples.get(key))
