"""Federation repair: an edge gets back from its hub's relay_repair what its upstream link missed.

A gap on the link is made for real: the edge is frozen (SIGSTOP) while the hub, under ``cut`` with a small
``publish_hwm``, keeps publishing until its guard cuts the edge as a slow consumer; then the edge is thawed,
reconnects, sees the gap at the next message and asks the hub for it.
"""

from __future__ import annotations

import re
import signal
import threading

import pytest
import zmq
import zmq.auth
from fanoutd.config import ConfigError, load
from fanoutd_client._stamps import is_ready, parse_trailer
from fanoutd_client.repair import Repairer

from conftest import connected, ready_producer, settle, wait_for, wait_logged, wait_ready

PAYLOAD = b"x" * 4096


class Reader:
    """A SUB on an edge's publish output read in a thread, so the edge never waits for the test to read."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock, self.got, self._stop = sock, [], threading.Event()
        self.error: zmq.ZMQError | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self.sock.poll(50):
                    self.got.append(self.sock.recv().split(b" ", 2)[1])
        except zmq.ZMQError as exc:  # the fixture closed the socket under a test that failed first
            self.error = exc

    def stop(self) -> list[bytes]:
        self._stop.set()
        self._thread.join(5)
        return self.got


def start_hub(start_daemon, *flags: str):
    """A hub with a relay and relay_repair, cutting slow readers at once (cut, small queues): the link's gap."""
    return start_daemon("--relay", "tcp://127.0.0.1:*", "--relay-repair", "tcp://127.0.0.1:*",
                        "--slow-consumer-policy", "cut", "--publish-hwm", "50", "--push", "", *flags)


def start_edge(start_daemon, hub, *flags: str, repair: bool = True, ready: bool = True):
    """An edge of ``hub``, repairing its link from the hub's relay_repair unless told not to."""
    repair_flags = ("--upstream-repair", hub.bound()["relay_repair"][0]) if repair else ()
    return start_daemon("--upstream", hub.bound()["relay"][0], *repair_flags, "--push", "", *flags, ready=ready)


def live(sockets, hub, edge):
    """A reader on the edge and a producer at the hub, once a message goes all the way through."""
    sub = connected(sockets, zmq.SUB, edge.publish, rcvhwm=0)
    prod = ready_producer(sockets, hub.collector)
    n = 0
    while not sub.poll(100):  # the whole path is live: the edge's link subscribed, the reader too
        prod.send(b"warm %d" % n)
        n += 1
    while sub.poll(300):
        sub.recv()
    return sub, prod


def tree(start_daemon, sockets, hub_flags=(), edge_flags=(), repair=True):
    """A hub and an edge repairing from it, a reader on the edge and a producer at the hub."""
    hub = start_hub(start_daemon, *hub_flags)
    edge = start_edge(start_daemon, hub, *edge_flags, repair=repair)
    return (hub, edge, *live(sockets, hub, edge))


def make_gap(hub, edge, prod) -> int:
    """Freeze the edge and publish until the hub cuts it, then a few more; thaw it. Returns messages sent."""
    seq = 0
    edge.send_signal(signal.SIGSTOP)
    try:
        def send(count: int) -> None:
            nonlocal seq
            for _ in range(count):
                seq += 1
                prod.send(b"t %d %s" % (seq, PAYLOAD))
        wait_for("the hub to cut the frozen edge", lambda: (send(200), hub.total("fanoutd_slow_consumers_total",
                                                                                  socket="relay"))[1],
                 lambda cut: cut >= 1, timeout=60)
        send(50)  # while the edge is away: in the hub's history only
    finally:
        edge.send_signal(signal.SIGCONT)
    wait_for("the edge to link up again", lambda: hub.value("fanoutd_connected_peers", socket="relay"),
             lambda peers: peers == 1, timeout=30)
    return seq


def link(edge) -> dict[str, float]:
    """The edge's account of its link: gaps, and what of them was repaired or not."""
    return {what: edge.value(f"fanoutd_upstream_{what}_total")
            for what in ("gaps", "repaired_messages", "unrepaired_messages")}


def finish(edge, prod, sent: int, reader: Reader) -> tuple[list[bytes], int]:
    """Publish one more message at a time (the first shows the gap to the edge) until the reader has every one."""
    def more() -> tuple[int, dict[str, float]]:
        nonlocal sent
        sent += 1
        prod.send(b"t %d %s" % (sent, PAYLOAD))
        return sent - len(reader.got), link(edge)
    wait_for("the edge's reader to get every message (missing, the edge's link)", more,
             lambda seen: seen[0] <= 1, timeout=60)
    wait_for("the last one", lambda: sent - len(reader.got), lambda missing: missing <= 0, timeout=10)
    return reader.stop(), sent


def test_a_gap_on_the_link_is_repaired_from_the_hub_and_the_edge_reader_gets_every_message(start_daemon, sockets):
    hub, edge, sub, prod = tree(start_daemon, sockets)
    reader = Reader(sub)
    sent = make_gap(hub, edge, prod)
    got, sent = finish(edge, prod, sent, reader)
    gaps = edge.value("fanoutd_upstream_gaps_total")
    assert gaps > 0, "the test made no gap on the link"
    assert edge.wait_value("fanoutd_upstream_repaired_messages_total", gaps) == gaps
    assert edge.value("fanoutd_upstream_unrepaired_messages_total") == 0
    assert sorted(int(s) for s in got) == list(range(1, sent + 1)), "every message exactly once"
    assert hub.value("fanoutd_repaired_messages_total") >= gaps


def test_a_gap_at_the_end_of_the_stream_is_found_through_the_hub_heads_with_no_further_traffic(
        start_daemon, sockets):
    """Nothing is sent after the thaw: only the heads the edge asks for at its reconnect show the gap."""
    hub, edge, sub, prod = tree(start_daemon, sockets)
    reader = Reader(sub)
    sent = make_gap(hub, edge, prod)
    wait_for("the edge's reader to get every message, with nothing sent after the gap", lambda: len(reader.got),
             lambda n: n >= sent, timeout=60)
    gaps = edge.value("fanoutd_upstream_gaps_total")
    assert gaps > 0, "the test made no gap on the link"
    assert edge.wait_value("fanoutd_upstream_repaired_messages_total", gaps) == gaps
    assert edge.value("fanoutd_upstream_unrepaired_messages_total") == 0
    got = reader.stop()
    assert sorted(int(s) for s in got) == list(range(1, sent + 1)), "every message exactly once"
    assert edge.value("fanoutd_upstream_duplicate_messages_total") == 0, "nothing more came over the link"


def test_an_edge_of_an_edge_repairs_its_link_from_the_edge_between(start_daemon, sockets):
    """hub -> middle -> edge: the edge's gap is served by the middle's relay_repair, from the middle's history of
    what came over its own link (the route, [hub, middle], passes the edge's loop check)."""
    hub = start_daemon("--relay", "tcp://127.0.0.1:*", "--push", "")
    middle = start_hub(start_daemon, "--upstream", hub.bound()["relay"][0])
    edge = start_edge(start_daemon, middle)
    sub, prod = live(sockets, hub, edge)
    reader = Reader(sub)
    sent = make_gap(middle, edge, prod)
    got, sent = finish(edge, prod, sent, reader)
    gaps = edge.value("fanoutd_upstream_gaps_total")
    assert gaps > 0, "the test made no gap on the edge's link"
    assert edge.wait_value("fanoutd_upstream_repaired_messages_total", gaps) == gaps
    assert sorted(int(s) for s in got) == list(range(1, sent + 1)), "every message exactly once"
    assert middle.value("fanoutd_repaired_messages_total") >= gaps, "the middle served it"
    assert hub.value("fanoutd_repaired_messages_total") == 0
    assert middle.value("fanoutd_upstream_gaps_total") == 0, "the middle's own link lost nothing"


def test_a_gap_older_than_the_hub_history_is_counted_as_not_repaired_exactly(start_daemon, sockets):
    """The hub keeps about 15 of these messages: the edge gets those back and counts the rest as gone."""
    hub, edge, sub, prod = tree(start_daemon, sockets, hub_flags=("--max-message-size", "65536",
                                                                   "--history-bytes", "65536"))
    reader = Reader(sub)
    sent = make_gap(hub, edge, prod)
    sent += 1
    prod.send(b"t %d %s" % (sent, PAYLOAD))  # shows the gap
    gaps = edge.wait_at_least("fanoutd_upstream_gaps_total", 1)

    def settled() -> float:
        return (edge.value("fanoutd_upstream_repaired_messages_total")
                + edge.value("fanoutd_upstream_unrepaired_messages_total"))
    wait_for("every gap settled", settled, lambda n: n == gaps, timeout=30)
    unrepaired = edge.value("fanoutd_upstream_unrepaired_messages_total")
    assert unrepaired > 0 and edge.value("fanoutd_upstream_repaired_messages_total") > 0
    wait_for("the reader to have what was delivered", lambda: len(reader.got),
             lambda n: n == sent - unrepaired, timeout=20)
    got = reader.stop()
    assert len(got) == len(set(got)) == sent - unrepaired, "what never arrived is exactly what is counted"


def test_an_edge_serves_history_and_repair_of_what_came_over_the_link(start_daemon, sockets):
    hub, edge, sub, prod = tree(start_daemon, sockets, repair=False)
    stamped = connected(sockets, zmq.SUB, edge.stamped, rcvtimeo=10_000)
    assert is_ready(stamped.recv_multipart()[-1]), "the edge's stamped output confirms the subscription first"
    for i in range(1, 6):
        prod.send(b"orders %d" % i)
    stamps = [parse_trailer(stamped.recv_multipart()[-1]) for _ in range(5)]
    last = stamps[-1]
    assert [s.seq for s in stamps] == list(range(last.seq - 4, last.seq + 1))
    with Repairer(edge.repair) as repairer:
        messages, end = repairer.range(last.epoch, last.stream, last.seq - 4, last.seq)
    assert [m.frames[:-1] for m in messages] == [[b"orders %d" % i] for i in range(1, 6)]
    assert end.gone == []


def test_repair_over_curve_uses_the_link_keys_the_relay_policy_and_heals_with_the_link(
        start_daemon, sockets, tmp_path):
    """The edge's repair socket has the link's keys and relay_repair the relay's policy: refused together at
    first (the edge's key not yet listed), both come up when the hub lists it and reloads, and the repair
    socket then repairs a gap (libzmq never retries a refused handshake: the edge reconnects both)."""
    for name in ("hub", "edge"):
        zmq.auth.create_certificates(tmp_path, name)
    (tmp_path / "relay-clients").mkdir()
    hub = start_hub(start_daemon, "--relay-curve", "--relay-clients", str(tmp_path / "relay-clients"),
                    "--curve-secret-key", str(tmp_path / "hub.key_secret"))
    edge = start_edge(start_daemon, hub, "--upstream-server-key", str(tmp_path / "hub.key"),
                      "--curve-secret-key", str(tmp_path / "edge.key_secret"), ready=False)
    wait_logged(edge, "the relay refused this node's key", 15)
    hub.wait_at_least("fanoutd_auth_denied_total", 1, socket="relay_repair", reason="key")
    (tmp_path / "relay-clients" / "edge.key").write_bytes((tmp_path / "edge.key").read_bytes())
    hub.send_signal(signal.SIGHUP)
    wait_ready(edge, 40)
    sub, prod = live(sockets, hub, edge)
    reader = Reader(sub)
    sent = make_gap(hub, edge, prod)
    got, sent = finish(edge, prod, sent, reader)
    gaps = edge.value("fanoutd_upstream_gaps_total")
    assert gaps > 0
    assert edge.wait_value("fanoutd_upstream_repaired_messages_total", gaps) == gaps
    assert sorted(int(s) for s in got) == list(range(1, sent + 1))
    # the relay's policy: a peer without an admitted key gets no answer at all
    with Repairer(hub.bound()["relay_repair"][0]) as stranger, pytest.raises(TimeoutError):
        stranger.heads(timeout=1)


@pytest.mark.parametrize("settings, error", [
    ({"relay_repair": ["tcp://127.0.0.1:5567"]}, "relay_repair serves the relay output's history: it needs a relay"),
    ({"upstream_repair": ["tcp://127.0.0.1:5567"]}, "upstream_repair asks one upstream for its link's gaps: it needs "
     "exactly one upstream (there are 0)"),
    ({"upstream": ["tcp://a:5563", "tcp://b:5563"], "upstream_repair": ["tcp://a:5567"]},
     "upstream_repair asks one upstream for its link's gaps: it needs exactly one upstream (there are 2)"),
    ({"upstream": ["tcp://a:5563"], "upstream_repair": ["tcp://a:*"]},
     "upstream_repair: tcp://a:* names no host and port to connect to"),
])
def test_repair_settings_that_cannot_work_are_refused(settings, error):
    with pytest.raises(ConfigError, match="^" + re.escape(error) + "$"):
        load(settings, {})


def test_a_tree_with_repair_on_both_ends_is_accepted():
    hub = load({"relay": ["tcp://0.0.0.0:5563"], "relay_repair": ["tcp://0.0.0.0:5567"]}, {})
    edge = load({"upstream": ["tcp://hub:5563"], "upstream_repair": ["tcp://hub:5567"]}, {})
    assert hub.relay_repair == ("tcp://0.0.0.0:5567",) and edge.upstream_repair == ("tcp://hub:5567",)
