"""Subscriptions are bounded per connection, per peer address and per output (dataplane/subs.c).

A subscription that would pass a bound closes the connection that sent it
(the only refusal that makes libzmq free what it holds), counted in
fanoutd_subscriptions_refused_total{socket,bound} and named in /peers;
every other subscriber goes on. What is counted is distinct prefixes per
connection, as libzmq's trie holds them, and a connection's count goes when
it closes. Real daemon, real sockets; each wait is for a state (the
fanoutd_subscriptions gauge), never a sleep.
"""

from __future__ import annotations

import json
import signal

import pytest
import zmq

from conftest import connected, ready_producer, settle, wait_for, wait_logged, warm_up

OUTPUTS = ["publish", "stamped", "relay"]


def endpoint_of(d, output: str, source: str = "") -> str:
    """The output's endpoint, connected from ``source`` (another loopback address: another peer address) if given."""
    endpoint = d.publish if output == "publish" else d.stamped if output == "stamped" else d.bound()["relay"][0]
    return endpoint.replace("tcp://", f"tcp://{source}:0;") if source else endpoint


def subscriber(sockets, endpoint: str, **options: int) -> zmq.Socket:
    """An XSUB: it sends every subscription it is given, duplicates included, and (as a SUB does) an
    unsubscription only when it cancels the last of its subscriptions of that prefix."""
    sock = sockets(zmq.XSUB, sndhwm=0, **options)  # at the default 1,000 libzmq drops subscriptions sent faster
    sock.connect(endpoint)
    return sock


def subscribe(sock: zmq.Socket, *prefixes: bytes, on: bool = True) -> None:
    for prefix in prefixes:
        sock.send((b"\x01" if on else b"\x00") + prefix)


def held(d, output: str, expected: int) -> None:
    d.wait_value("fanoutd_subscriptions", expected, socket=output)


def closed_rules(d, output: str) -> list[str | None]:
    status, body = d.get("/peers")
    assert status == 200
    return [c["rule"] for c in json.loads(body)["closed"] if c["socket"] == output]


@pytest.mark.parametrize("output", OUTPUTS)
def test_a_connection_past_its_bound_is_closed_and_counted_while_another_keeps_receiving(
        start_daemon, sockets, output):
    d = start_daemon("--relay", "tcp://127.0.0.1:*", "--subscriptions-per-connection", "3")
    endpoint = endpoint_of(d, output)
    producer = ready_producer(sockets, d.collector)
    reader = connected(sockets, zmq.SUB, endpoint)  # one subscription: the empty prefix
    greedy = subscriber(sockets, endpoint, reconnect_ivl=-1)  # closed once: no reconnect to count again
    settle(d, output, 2)
    if output == "stamped":  # the stamped output answers each subscription (READY), bound or not
        assert reader.recv_multipart()[0] == b""
    warm_up(producer, reader)
    subscribe(greedy, b"a", b"b", b"c")
    held(d, output, 4)
    if output == "stamped":
        assert sorted(greedy.recv_multipart()[0] for _ in range(3)) == [b"a", b"b", b"c"]
    before = d.value("fanoutd_disconnects_total", socket=output)
    subscribe(greedy, b"d")  # the fourth distinct prefix: over the bound of 3
    d.wait_value("fanoutd_subscriptions_refused_total", 1, socket=output, bound="connection")
    d.wait_value("fanoutd_disconnects_total", before + 1, socket=output)
    held(d, output, 1)  # its three went with it; the reader's stays
    d.wait_value("fanoutd_connected_peers", 1, socket=output)
    wait_for("the refused connection named in /peers", lambda: closed_rules(d, output),
             lambda rules: "subscriptions_per_connection" in rules)
    line = wait_logged(d, f"{output}: closed subscriber 127.0.0.1")
    assert "subscriptions_per_connection = 3" in line
    producer.send(b"t after")
    got = wait_for("the other subscriber's message after the refusal",
                   lambda: reader.recv_multipart() if reader.poll(100) else None,
                   lambda m: m is not None and m[0] == b"t after")
    assert got[0] == b"t after"
    for bound in ("address", "socket"):
        assert d.value("fanoutd_subscriptions_refused_total", socket=output, bound=bound) == 0


def test_duplicates_count_once_and_an_unsubscription_makes_room(start_daemon, sockets):
    d = start_daemon("--subscriptions-per-connection", "3")
    sub = subscriber(sockets, d.publish)
    settle(d, "publish", 1)
    subscribe(sub, b"a", b"a", b"b", b"a", b"b", b"c", b"c")  # three prefixes, seven subscriptions
    held(d, "publish", 3)
    subscribe(sub, b"b", on=False)  # libzmq's XSUB, like its SUB, sends only the last unsubscription of b
    subscribe(sub, b"b", on=False)
    held(d, "publish", 2)
    subscribe(sub, b"d", b"d")
    held(d, "publish", 3)
    libzmq_sub = connected(sockets, zmq.SUB, d.publish)  # a real SUB: repeats every subscribe
    for _ in range(5):
        libzmq_sub.setsockopt(zmq.SUBSCRIBE, b"same")
    held(d, "publish", 5)  # "" and "same"
    assert d.value("fanoutd_connected_peers", socket="publish") == 2
    status, body = d.get("/peers")
    assert sorted(c["subscriptions"] for c in json.loads(body)["connected"] if c["socket"] == "publish") == [2, 3]
    assert d.value("fanoutd_subscriptions_refused_total", socket="publish", bound="connection") == 0
    producer = ready_producer(sockets, d.collector)
    producer.send(b"d 1")
    assert sub.recv() == b"d 1"  # still connected, still subscribed


def test_an_address_sums_its_connections_and_forgets_one_that_closed(start_daemon, sockets):
    d = start_daemon("--subscriptions-per-connection", "0", "--subscriptions-per-address", "5")
    first = subscriber(sockets, d.publish)
    second = subscriber(sockets, d.publish)
    elsewhere = subscriber(sockets, endpoint_of(d, "publish", source="127.0.0.2"))  # another peer address
    settle(d, "publish", 3)
    subscribe(first, b"a", b"b", b"c")
    subscribe(second, b"d", b"e")
    subscribe(elsewhere, b"1", b"2", b"3", b"4", b"5")  # its own allowance
    held(d, "publish", 10)
    third = subscriber(sockets, d.publish, reconnect_ivl=-1)
    settle(d, "publish", 4)
    subscribe(third, b"f")  # 127.0.0.1 holds 5 already
    d.wait_value("fanoutd_subscriptions_refused_total", 1, socket="publish", bound="address")
    d.wait_value("fanoutd_connected_peers", 3, socket="publish")
    first.close(linger=0)  # its three no longer count for 127.0.0.1
    held(d, "publish", 7)
    again = subscriber(sockets, d.publish)  # a reconnecting subscriber is not starved
    settle(d, "publish", 3)
    subscribe(again, b"g", b"h", b"i")
    held(d, "publish", 10)
    assert d.value("fanoutd_connected_peers", socket="publish") == 3
    assert d.value("fanoutd_subscriptions_refused_total", socket="publish", bound="address") == 1
    wait_for("the refused connection named in /peers", lambda: closed_rules(d, "publish"),
             lambda rules: "subscriptions_per_address" in rules)


def test_the_socket_bound_counts_every_connection_of_the_output(start_daemon, sockets):
    d = start_daemon("--subscriptions-per-socket", "4")
    one = subscriber(sockets, d.stamped)
    other = subscriber(sockets, endpoint_of(d, "stamped", source="127.0.0.2"), reconnect_ivl=-1)
    settle(d, "stamped", 2)
    subscribe(one, b"a", b"b")
    subscribe(other, b"c", b"d")
    held(d, "stamped", 4)
    subscribe(other, b"e")
    d.wait_value("fanoutd_subscriptions_refused_total", 1, socket="stamped", bound="socket")
    held(d, "stamped", 2)
    assert sorted(one.recv_multipart()[0] for _ in range(2)) == [b"a", b"b"]  # READY for each, as always
    assert d.value("fanoutd_subscriptions_refused_total", socket="publish", bound="socket") == 0


def test_a_reload_changes_the_bounds_live(start_daemon, sockets, tmp_path):
    config = tmp_path / "fanoutd.toml"
    config.write_text("subscriptions_per_connection = 10\n")
    d = start_daemon("--config", str(config))
    sub = subscriber(sockets, d.publish, reconnect_ivl=-1)
    settle(d, "publish", 1)
    subscribe(sub, b"a", b"b", b"c")
    held(d, "publish", 3)
    config.write_text("subscriptions_per_connection = 3\n")
    d.send_signal(signal.SIGHUP)
    assert "subscriptions_per_connection" in wait_logged(d, "reloaded: applied")
    subscribe(sub, b"d")
    d.wait_value("fanoutd_subscriptions_refused_total", 1, socket="publish", bound="connection")


def test_an_edge_with_many_collector_topics_links_under_the_bound(start_daemon, sockets, tmp_path):
    topics = [f"t{i:02d}" for i in range(40)]
    hub = start_daemon("--relay", "tcp://127.0.0.1:*", "--subscriptions-per-connection", "64")
    config = tmp_path / "edge.toml"
    config.write_text("collector_topics = [%s]\n" % ", ".join(f'"{t}"' for t in topics))
    edge = start_daemon("--config", str(config), "--upstream", hub.bound()["relay"][0])
    held(hub, "relay", len(topics))
    reader = connected(sockets, zmq.SUB, edge.publish)
    producer = ready_producer(sockets, hub.collector)
    settle(edge, "publish", 1)
    got = wait_for("a message across the link", lambda: (
        producer.send(b"t39 across"), reader.recv() if reader.poll(100) else None)[1], lambda m: m is not None)
    assert got == b"t39 across"
    assert hub.value("fanoutd_subscriptions_refused_total", socket="relay", bound="connection") == 0


def test_counts_stay_exact_over_many_prefixes_connections_and_addresses(start_daemon, sockets):
    """The loop's tables grow and shrink (prefix sets, the address table): each count stays exact throughout."""
    d = start_daemon("--subscriptions-per-connection", "0", "--subscriptions-per-address", "0")
    many = subscriber(sockets, d.publish)
    peers = [subscriber(sockets, endpoint_of(d, "publish", source=f"127.0.0.{2 + i}")) for i in range(24)]
    settle(d, "publish", 25)
    prefixes = [b"p%05d" % i for i in range(3000)]
    subscribe(many, *prefixes)
    for i, peer in enumerate(peers):
        subscribe(peer, *(b"q%d" % j for j in range(i + 1)))
    held(d, "publish", 3000 + 24 * 25 // 2)
    subscribe(many, *prefixes[::2], on=False)  # every other one: removals amid collisions
    held(d, "publish", 1500 + 24 * 25 // 2)
    subscribe(many, *prefixes[1::2])  # those it holds: nothing changes
    subscribe(many, *prefixes[1:100:2], on=False)  # each held twice now: no unsubscription is sent yet
    subscribe(many, *prefixes[1:100:2], on=False)
    held(d, "publish", 1450 + 24 * 25 // 2)
    for peer in peers[::2]:  # the addresses with 1, 3, 5, ... subscriptions go
        peer.close(linger=0)
    held(d, "publish", 1450 + sum(range(2, 25, 2)))
    assert d.value("fanoutd_subscriptions_refused_total", socket="publish", bound="socket") == 0


def test_a_sub_configured_past_the_bound_is_closed_at_every_attempt(start_daemon, sockets):
    d = start_daemon("--subscriptions-per-connection", "2")
    sub = sockets(zmq.SUB, reconnect_ivl=50)
    for prefix in (b"a", b"b", b"c"):
        sub.setsockopt(zmq.SUBSCRIBE, prefix)
    sub.connect(d.publish)
    # A libzmq SUB sends its subscriptions again after each reconnect, once its socket is used (polled) again.
    refused = wait_for("the SUB refused at three attempts", lambda: (
        sub.poll(50), d.value("fanoutd_subscriptions_refused_total", socket="publish", bound="connection"))[1],
        lambda n: n >= 3)
    assert refused >= 3
    assert d.value("fanoutd_subscriptions", socket="publish") <= 2
