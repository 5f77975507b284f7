"""IPv6: every endpoint, the clients, dual-stack wildcards, IPv4-mapped peers in allow lists, metrics on ::1."""

from __future__ import annotations

import urllib.request

import zmq

from conftest import connected, wait_ready, warm_up
from fanoutd_client import Producer, Puller, Subscriber

V6 = "tcp://[::1]:{}"


def test_every_socket_and_the_clients_work_on_ipv6(start_daemon, sockets):
    d = start_daemon("--collector", V6.format("*"), "--publish", V6.format("*"), "--push", V6.format("*"),
                     "--ingress", V6.format("*"), "--metrics", "[::1]:0", ready=False)
    wait_ready(d)
    bound = d.bound()
    collector, publish, push, ingress = (bound[role][-1] for role in ("collector", "publish", "push", "ingress"))
    metrics = bound["metrics"]
    ready_line = next(line for line in d.log().splitlines() if "fanoutd ready" in line)
    for endpoint in (collector, publish, push, ingress):
        assert endpoint.startswith("tcp://[::1]:") and endpoint in ready_line
    assert metrics.startswith("[::1]:") and f"metrics http://{metrics}/metrics" in ready_line
    with Subscriber(publish, topics=["orders"]) as sub, Puller(push) as puller, \
            Producer(collector, wait=10) as producer:
        for _ in range(200):  # until the subscription and the puller's pipe are live
            producer.send("orders", b"warm")
            try:
                sub.recv(timeout=0.05)
                break
            except TimeoutError:
                pass
        while True:
            try:
                sub.recv(timeout=0.3)
            except TimeoutError:
                break
        while True:
            try:
                puller.recv(timeout=0.3)
            except TimeoutError:
                break
        producer.send("orders", b"over ipv6")
        assert sub.recv(timeout=5) == (b"orders", b"over ipv6")
        assert puller.recv(timeout=5) == b"over ipv6"
        ingress_producer = sockets(zmq.PUSH, ipv6=1)
        ingress_producer.connect(ingress)
        ingress_producer.send(b"orders via the ingress")
        assert puller.recv(timeout=5) == b"via the ingress"
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as resp:
        assert b"fanoutd_received_messages_total" in resp.read()


def test_a_wildcard_serves_both_families_and_ipv4_mapped_peers_match_ipv4_allow_lists(start_daemon, sockets):
    d = start_daemon("--publish", "tcp://*:*", "--publish-allow", "127.0.0.1/32")
    port = int(d.bound()["publish"][-1].rpartition(":")[2])
    v4 = connected(sockets, zmq.SUB, f"tcp://127.0.0.1:{port}")
    v6 = sockets(zmq.SUB, ipv6=1)
    v6.setsockopt(zmq.SUBSCRIBE, b"")
    v6.connect(f"tcp://[::1]:{port}")  # ::1 is not in the allow list: refused
    prod = sockets(zmq.XPUB, xpub_verbose=1)
    prod.connect(d.collector)
    assert prod.recv()[:1] == b"\x01"
    warm_up(prod, v4)
    prod.send(b"t both")
    assert v4.recv() == b"t both"  # an IPv4 client of the dual-stack socket, seen as ::ffff:127.0.0.1
    assert not v6.poll(500)
    assert d.value("fanoutd_auth_denied_total", socket="publish", reason="address") >= 1
