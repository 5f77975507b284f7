"""Federation on loopback: trees of fanoutd nodes, loop refusal, an upstream that goes away."""

from __future__ import annotations

import signal

import zmq
import zmq.auth
from fanoutd_client import wire

from conftest import connected, free_port, ready_producer, settle, wait_for, wait_logged, wait_ready, warm_up


def relay_flag(fixed: bool = False) -> tuple[str, str]:
    """A relay endpoint: port 0 unless ``fixed`` (named before its daemon listens, or kept across a restart)."""
    return "--relay", f"tcp://127.0.0.1:{free_port() if fixed else '*'}"


def relay_of(d) -> str:
    return d.bound()["relay"][0]


def test_a_chain_hub_edge_edge_delivers_everywhere_once(start_daemon, sockets):
    hub = start_daemon(*relay_flag())
    edge1 = start_daemon("--upstream", relay_of(hub), *relay_flag())
    edge2 = start_daemon("--upstream", relay_of(edge1))
    subs = [connected(sockets, zmq.SUB, d.publish) for d in (hub, edge1, edge2)]
    pulls = [connected(sockets, zmq.PULL, d.push) for d in (hub, edge1, edge2)]
    prod = ready_producer(sockets, hub.collector)
    warm_up(prod, *subs, *pulls)
    prod.send(b"orders 42")
    prod.send_multipart([b"orders", b"a", b"b"])
    # Last frames a bare route frame of node ids could be mistaken for (multiples of 8 bytes), and one that
    # looks like a trailer without being one: every shape crosses one and two hops intact.
    shapes = [[b"orders", b"id", b"12345678"], [b"orders", b"ABCDEFGH"], [b"orders", b"x" * 16],
              [b"orders", b"y" * 256], [b"orders 12345678"], [b"orders", wire.HEAD.pack(wire.MAGIC, wire.VERSION, wire.ROUTE) + b"z" * 9]]
    for shape in shapes:
        prod.send_multipart(shape)
    for sub in subs:
        assert sub.recv_multipart() == [b"orders 42"]
        assert sub.recv_multipart() == [b"orders", b"a", b"b"]
        assert [sub.recv_multipart() for _ in shapes] == shapes
        assert not sub.poll(200)
    for pull in pulls:
        assert pull.recv_multipart() == [b"42"]
        assert pull.recv_multipart() == [b"a", b"b"]
        assert [pull.recv_multipart() for _ in shapes] == [s[1:] if len(s) > 1 else [b"12345678"] for s in shapes]
    assert edge2.value("fanoutd_received_upstream_messages_total") >= 2
    assert hub.value("fanoutd_relayed_messages_total") >= 2
    # an edge's own producers reach its subtree, not its upstream
    edge_prod = ready_producer(sockets, edge1.collector)
    edge_prod.send(b"local 1")
    assert subs[1].recv() == b"local 1" and subs[2].recv() == b"local 1"
    assert not subs[0].poll(300)


def test_a_loop_is_cut_a_message_never_circulates(start_daemon, sockets):
    a_relay, b_relay = relay_flag(fixed=True), relay_flag(fixed=True)  # each names the other first
    a = start_daemon(*a_relay, "--upstream", b_relay[1], ready=False)
    b = start_daemon(*b_relay, "--upstream", a_relay[1])
    wait_ready(a)
    sub_a = connected(sockets, zmq.SUB, a.publish)
    sub_b = connected(sockets, zmq.SUB, b.publish)
    prod = ready_producer(sockets, a.collector)
    warm_up(prod, sub_a, sub_b)
    before = a.value("fanoutd_rejected_messages_total", reason="loop")
    prod.send(b"once only")
    assert sub_a.recv() == b"once only" and sub_b.recv() == b"once only"
    assert not sub_a.poll(500) and not sub_b.poll(100)
    assert a.wait_value("fanoutd_rejected_messages_total", before + 1, reason="loop") == before + 1


def test_edge_survives_its_upstream_going_away(start_daemon, sockets):
    hub = start_daemon(*relay_flag(fixed=True), restartable=True)
    edge = start_daemon("--upstream", relay_of(hub), "--heartbeat-interval", "0.5", "--heartbeat-timeout", "1.5")
    sub = connected(sockets, zmq.SUB, edge.publish)
    prod = ready_producer(sockets, hub.collector)
    warm_up(prod, sub)
    hub.proc.kill()
    hub.proc.wait(timeout=10)
    wait_for("the edge to report it lost its upstream", lambda: edge.get("/readyz"), lambda r: r[0] != 200)
    assert edge.get("/readyz") == (503, "no upstream connected\n")
    assert edge.value("fanoutd_connected_peers", socket="upstream") == 0
    local = ready_producer(sockets, edge.collector)  # the edge keeps serving its own producers
    local.send(b"t still here")
    assert sub.recv() == b"t still here"
    hub2 = start_daemon("--relay", relay_of(hub), ports=hub.ports)
    wait_ready(edge)
    prod2 = ready_producer(sockets, hub2.collector)
    warm_up(prod2, sub)
    prod2.send(b"t back")
    assert sub.recv() == b"t back"


def test_an_unresolvable_upstream_is_logged_counted_and_named_by_readyz(start_daemon):
    """libzmq retries such a connect forever without a word; the edge says what is wrong within seconds."""
    upstream = "tcp://no-such-host.invalid:5570"
    edge = start_daemon("--upstream", upstream, ready=False)
    line = wait_logged(edge, "cannot resolve host", 10)
    assert f"WARNING fanoutd.links: upstream {upstream}: cannot resolve host 'no-such-host.invalid'" in line
    status, body = edge.get("/readyz")
    assert status == 503
    assert body.startswith(f"no upstream connected; {upstream}: cannot resolve host 'no-such-host.invalid'"), body
    assert edge.value("fanoutd_upstream_link_errors_total", endpoint=upstream, reason="unresolvable") >= 1


def test_an_upstream_that_is_a_publish_endpoint_is_named_refused_and_never_delivers(start_daemon, sockets):
    """The mistake of the issue: an edge pointed at the hub's publish endpoint. Nothing from it is delivered,
    damaged or not; the edge says which endpoint and the likely mistake, /readyz fails, and it is counted."""
    hub = start_daemon("--push", "")
    edge = start_daemon("--upstream", hub.publish, "--push", "", ready=False)
    wait_logged(edge, "not a fanoutd relay", 15)
    assert (f"WARNING fanoutd.links: upstream {hub.publish}: not a fanoutd relay (it completed a handshake but "
            "sent no relay hello): is it a publish endpoint?") in edge.log()
    status, body = edge.get("/readyz")
    assert status == 503 and body.startswith(f"upstream {hub.publish}: not a fanoutd relay"), body
    assert edge.value("fanoutd_upstream_link_errors_total", endpoint=hub.publish, reason="not_relay") >= 1
    sub = connected(sockets, zmq.SUB, edge.publish)
    settle(edge, "publish", 1)
    prod = ready_producer(sockets, hub.collector)
    damaged_before = [[b"orders", b"id", b"12345678"], [b"orders", b"ABCDEFGH"], [b"orders single"]]
    for message in damaged_before * 10:
        prod.send_multipart(message)
    assert edge.wait_value("fanoutd_rejected_messages_total", 30, reason="not_relay") == 30
    assert sub.poll(300) == 0, "nothing from a non-relay may reach the edge's subscribers"
    assert edge.value("fanoutd_published_messages_total") == 0


def test_an_edge_counts_exactly_the_gaps_in_what_its_upstream_stamped(start_daemon, sockets, ctx):
    """A stand-in relay (an XPUB announcing itself like fanoutd's) sends sequences 1, 2, 5 of one stream: the
    edge delivers three messages without their trailer and counts 2 messages it never got."""
    relay = sockets(zmq.XPUB, xpub_verbose=1)
    relay.setsockopt(zmq.METADATA, f"{wire.RELAY_PROPERTY}:{wire.RELAY_PROPERTY_VALUE}".encode())
    relay.setsockopt(zmq.XPUB_WELCOME_MSG, wire.RELAY_HELLO)
    relay.bind("tcp://127.0.0.1:*")
    edge = start_daemon("--upstream", relay.last_endpoint.decode(), "--push", "")
    sub = connected(sockets, zmq.SUB, edge.publish)
    settle(edge, "publish", 1)
    while relay.recv() != b"\x01":  # the edge's data link subscribing to everything (probes ask for less)
        pass
    wait_ready(edge)  # its link up and handshaken

    def trailer(seq: int) -> bytes:
        return wire.stamp_trailer(99, 1, seq, wire.stream_key_length(b"orders 1", 1), route=(b"hubnode1",))

    for seq in (1, 2, 5):
        relay.send_multipart([b"orders %d" % seq, trailer(seq)])
    relay.send_multipart([b"orders x", b"12345678"])  # no trailer: refused, not delivered damaged
    got = [sub.recv_multipart() for _ in range(3)] if sub.poll(5000) else []
    assert got == [[b"orders 1"], [b"orders 2"], [b"orders 5"]]
    assert edge.wait_value("fanoutd_upstream_gaps_total", 2) == 2
    assert edge.wait_value("fanoutd_rejected_messages_total", 1, reason="bad_route") == 1
    assert sub.poll(300) == 0
    assert edge.get("/readyz")[0] == 200


def test_curve_on_the_upstream_link_a_refused_edge_is_named_on_both_sides_and_heals_after_a_hub_reload(
        start_daemon, sockets, tmp_path):
    """The edge authenticates with its own key pair and checks the hub's relay key. Refused, it says which key
    to add and retries with back-off (libzmq never retries a refused handshake); once the hub lists the key
    and reloads, the link comes up without restarting the edge."""
    for name in ("hub", "edge"):
        zmq.auth.create_certificates(tmp_path, name)
    (tmp_path / "relay-clients").mkdir()
    relay = f"tcp://127.0.0.1:{free_port()}"  # named before the hub is up: port 0 would hide it till then
    hub = start_daemon("--push", "", "--relay", relay, "--relay-curve", "--relay-clients",
                       str(tmp_path / "relay-clients"), "--curve-secret-key", str(tmp_path / "hub.key_secret"))
    edge = start_daemon("--push", "", "--upstream", relay, "--upstream-server-key", str(tmp_path / "hub.key"),
                        "--curve-secret-key", str(tmp_path / "edge.key_secret"), ready=False)
    edge_public = zmq.auth.load_certificate(tmp_path / "edge.key")[0].decode()
    wait_logged(edge, "the relay refused this node's key", 15)
    assert (f"WARNING fanoutd.links: upstream {relay}: the relay refused this node's key {edge_public}: add it to "
            "the hub's relay_clients and reload the hub; retrying in 1s") in edge.log()
    status, body = edge.get("/readyz")
    assert status == 503 and "the relay refused this node's key" in body, body
    assert edge.value("fanoutd_upstream_link_errors_total", endpoint=relay, reason="refused") >= 1
    hub.wait_at_least("fanoutd_auth_denied_total", 1, socket="relay", reason="key")
    assert (f"denied a connection to relay from 127.0.0.1 (reason: key, key: {edge_public}); to allow it, add "
            "its certificate to relay_clients and reload") in hub.log()

    (tmp_path / "relay-clients" / "edge.key").write_bytes((tmp_path / "edge.key").read_bytes())
    hub.send_signal(signal.SIGHUP)
    assert edge.wait_value("fanoutd_connected_peers", 1, timeout=40, socket="upstream") == 1
    wait_ready(edge)
    assert f"upstream {relay}: link up, its handshake succeeded" in edge.log()
    sub = connected(sockets, zmq.SUB, edge.publish)
    prod = ready_producer(sockets, hub.collector)
    warm_up(prod, sub)
    prod.send(b"orders over curve")
    assert sub.recv() == b"orders over curve"
