"""Issue #25's "done when", at the defaults and at sizes that fit the suite, with the bench's C clients.

``rawpub`` writes ZMTP to the collector's TCP connection (held back by
fanoutd, it is slowed and loses nothing); one ``msink`` process holds every
subscriber. The full-size cells, side by side with NATS and Redis, are
``bench/overload.py``'s (bench/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from fobench.build import build_all  # noqa: E402  (the bench's own package, beside the tests)
from fobench.procs import Child  # noqa: E402

pytestmark = pytest.mark.timeout(180)
SIZE = 1024


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _deliver(daemon, subs: int, count: int, rate: float = 0) -> tuple[dict, dict]:
    """rawpub sends count x SIZE (rate msg/s, 0 flat out) to subs msink subscribers: (producer's, sink's) results."""
    bins = build_all()
    sink = Child([str(bins["msink"]), "-m", "zmtp", "-p", str(_port(daemon.publish)), "-k", str(subs),
                  "-L", str(SIZE), "-n", str(count), "-w", "60000"], "msink")
    producer = None
    try:
        sink.expect("connected", 60)
        argv = [str(bins["rawpub"]), "-m", "zmtp", "-p", str(_port(daemon.collector)), "-s", str(SIZE),
                "-n", str(count)]
        producer = Child(argv + (["-r", str(rate)] if rate else []), "rawpub", stdin=True)
        producer.expect("subscribed", 15)
        sink.expect("ready", 60)  # every connection has had a warm-up message
        producer.send_line("go")
        return producer.result(120), sink.result(120)
    finally:
        for child in (producer, sink):
            if child is not None:
                child.stop()


def _everyone_got_everything(sent: dict, out: dict, subs: int, count: int) -> None:
    assert sent["sent"] == count, sent
    assert out["conns"] == out["ready_conns"] == subs and out["closed"] == 0 and out["bad"] == 0, out
    assert out["received_min"] == out["received_max"] == count and out["received"] == subs * count, out


def test_ten_readers_flat_out_get_every_message_and_nobody_is_cut_at_the_defaults(start_daemon):
    """The issue's first cell (10 x 300,000 x 1 KiB flat out: fanoutd used to cut 1 to 3 readers that kept
    reading) at a tenth of its length, at the defaults."""
    d = start_daemon()
    sent, out = _deliver(d, 10, 30_000)
    _everyone_got_everything(sent, out, 10, 30_000)
    assert d.total("fanoutd_slow_consumers_total") == 0, d.log()
    assert d.value("fanoutd_dropped_messages_total", output="publish", reason="hwm") == 0


def test_ten_readers_flat_out_held_back_by_the_byte_bound_get_every_message(start_daemon):
    """The same with a byte bound small enough to be reached at this size: the output stalls on held bytes,
    the producer is slowed, and still nobody is cut and every reader gets everything."""
    d = start_daemon("--max-message-size", "64KiB", "--slow-consumer-max-pending", "256KiB")
    sent, out = _deliver(d, 10, 30_000)
    _everyone_got_everything(sent, out, 10, 30_000)
    assert d.value("fanoutd_output_stalls_total", socket="publish") > 0, "the bound was never reached"
    assert d.total("fanoutd_slow_consumers_total") == 0, d.log()
    d.wait_value("fanoutd_pending_bytes", 0, socket="publish")  # all written: nothing held (a tick later)


def test_a_thousand_readers_offered_more_than_the_machine_carries_slow_the_producer_and_lose_nothing(
        start_daemon):
    """The issue's overload cell (1,000 x 50,000 x 1 KiB offered at 5,000 msg/s, --publish-hwm 1000: fanoutd
    delivered 13 %, with 3,000 cuts) at a twentieth of its length: every reader gets every message, nobody is
    cut. At this length the kernel's socket buffers (several MiB per connection) take up the excess, so the
    output need not stall; the full cell, where it must, is bench/overload.py's, and a held-back output with
    readers that keep reading is tests/test_pace.py's."""
    d = start_daemon("--publish-hwm", "1000")
    sent, out = _deliver(d, 1000, 2_500, rate=5000)
    _everyone_got_everything(sent, out, 1000, 2_500)
    assert d.total("fanoutd_slow_consumers_total") == 0, d.log()
    assert d.value("fanoutd_dropped_messages_total", output="publish", reason="hwm") == 0


def _rss(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))


def test_a_backlog_of_messages_that_arrived_one_by_one_costs_about_what_is_counted(start_daemon):
    """At 4,000 msg/s each 1 KiB message reaches fanoutd alone; libzmq's default would keep the 8 KiB it was
    read into alive for as long as a reader holds the message (8 times the counted bytes: 48 MiB held took
    280 MiB here). fanoutd has libzmq copy received messages, so the memory is what fanoutd_pending_bytes says."""
    grown, held = _backlog_growth(start_daemon)
    assert grown <= held + (8 << 20), f"{grown >> 20} MiB grown for {held / (1 << 20):.1f} MiB held"


def test_without_the_receive_copy_a_backlog_of_lone_messages_keeps_their_buffers(start_daemon):
    """receive_copy = false is libzmq's zero-copy receive, the trade-off docs/concepts.md states: the same
    backlog then keeps each lone message's 8 KiB buffer, several times what is counted (the setting reaches
    libzmq, and the docs' warning is true)."""
    grown, held = _backlog_growth(start_daemon, "--no-receive-copy")
    assert grown >= 3 * held, f"{grown >> 20} MiB grown for {held / (1 << 20):.1f} MiB held"


def _backlog_growth(start_daemon, *flags: str) -> tuple[int, float]:
    """A slow reader's backlog of 1 KiB messages sent one by one: (RSS grown, bytes the output held then)."""
    d = start_daemon("--slow-consumer-max-pending", "8MiB", *flags)
    bins = build_all()
    port = str(_port(d.publish))
    fast = Child([str(bins["msink"]), "-m", "zmtp", "-p", port, "-k", "2", "-L", str(SIZE), "-n", "20000",
                  "-w", "60000"], "msink-fast")
    slow = Child([str(bins["msink"]), "-m", "zmtp", "-p", port, "-k", "1", "-L", str(SIZE), "-n", "20000",
                  "-w", "60000", "-b", "20000"], "msink-slow")  # reads 20 KB/s: about 20 messages a second
    producer = None
    try:
        fast.expect("connected", 30)
        slow.expect("connected", 30)
        producer = Child([str(bins["rawpub"]), "-m", "zmtp", "-p", str(_port(d.collector)), "-s", str(SIZE),
                          "-n", "20000", "-r", "4000"], "rawpub", stdin=True)
        producer.expect("subscribed", 15)
        fast.expect("ready", 30)
        slow.expect("ready", 30)
        before = _rss(d.proc.pid, "VmRSS")
        producer.send_line("go")
        held = wait_for("the output to hold 3 MiB for the slow reader",  # the rest of its backlog is in the kernel
                        lambda: d.value("fanoutd_pending_bytes", socket="publish"), lambda v: v >= 3 << 20, timeout=20)
        grown = _rss(d.proc.pid, "VmHWM") - before
    finally:
        for child in (producer, fast, slow):
            if child is not None:
                child.stop()
    return grown, held
