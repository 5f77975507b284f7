"""Ports the kernel chooses: bound endpoints take ``tcp://HOST:*`` or ``:0`` and ``metrics`` takes ``HOST:0``;
the daemon reports what it got in its ready line and at GET /endpoints."""

from __future__ import annotations

import json
import re

import pytest
import zmq

from conftest import connected, ready_producer, warm_up
from fanoutd.config import ConfigError, load

NO_ENV: dict[str, str] = {}


@pytest.mark.parametrize("role", ["collector", "publish", "push", "stamped", "ingress", "relay"])
def test_a_bound_endpoint_may_leave_its_port_to_the_kernel(role):
    config = load({role: ["tcp://127.0.0.1:*", "tcp://127.0.0.1:0", "tcp://127.0.0.1:*"]}, NO_ENV)
    assert getattr(config, role)[-3:] == ("tcp://127.0.0.1:*", "tcp://127.0.0.1:0", "tcp://127.0.0.1:*")


def test_every_output_may_use_the_same_any_port_endpoint():
    """Each bind of ``:*`` gets a port of its own: it is no endpoint shared between roles."""
    c = load({r: ["tcp://127.0.0.1:*"] for r in ("collector", "publish", "push", "stamped")}, NO_ENV)
    assert c.collector == c.publish == c.push == c.stamped == ("tcp://127.0.0.1:*",)


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:0", "tcp://127.0.0.1:*", "tcp://hub.example:*"])
def test_an_upstream_needs_a_port_to_connect_to(endpoint):
    with pytest.raises(ConfigError, match=re.escape(f"upstream: {endpoint} names no port to connect to")):
        load({"upstream": [endpoint]}, NO_ENV)


def test_metrics_port_zero_is_accepted_and_a_fixed_one_still_must_exist():
    assert load({"metrics": "127.0.0.1:0"}, NO_ENV).metrics == ("127.0.0.1", 0)
    with pytest.raises(ConfigError, match="bad port"):
        load({"metrics": "127.0.0.1:65536"}, NO_ENV)
    with pytest.raises(ConfigError, match="port out of range"):
        load({"push": ["tcp://127.0.0.1:65536"]}, NO_ENV)


def test_the_ready_line_and_get_endpoints_name_the_ports_bound(start_daemon, sockets):
    """The fixture binds every port as 0; what /endpoints says is where the sockets really are."""
    d = start_daemon("--ingress", "tcp://127.0.0.1:*", "--no-peers-view")
    status, body = d.get("/endpoints")
    assert status == 200  # not a client's address in it: served whatever peers_view says
    bound = json.loads(body)
    assert list(bound) == ["collector", "ingress", "publish", "stamped", "repair", "push", "metrics"]
    ports = [int(ep.rpartition(":")[2]) for role in ("collector", "ingress", "publish", "stamped", "repair", "push")
             for ep in bound[role]]
    assert all(ports) and len(set(ports)) == 6, bound
    assert d.http == f"http://{bound['metrics']}" and not bound["metrics"].endswith(":0")
    ready = next(line for line in d.log().splitlines() if "fanoutd ready: " in line)
    assert ready.endswith(f"fanoutd ready: collector {bound['collector'][0]}, ingress {bound['ingress'][0]}, "
                          f"publish {bound['publish'][0]}, stamped {bound['stamped'][0]}, "
                          f"repair {bound['repair'][0]}, push {bound['push'][0]}, "
                          f"metrics http://{bound['metrics']}/metrics"), ready
    sub = connected(sockets, zmq.SUB, bound["publish"][0])
    pull = connected(sockets, zmq.PULL, bound["push"][0])
    warm_up(ready_producer(sockets, bound["collector"][0]), sub, pull)
    ingress = sockets(zmq.PUSH)
    ingress.connect(bound["ingress"][0])
    ingress.send(b"orders via the ingress")
    assert sub.recv() == b"orders via the ingress"
    assert d.get("/nope") == (404, "not found: try /metrics, /healthz, /readyz or /endpoints\n")
