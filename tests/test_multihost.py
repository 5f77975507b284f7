"""Federation across hosts: network namespaces joined by a bridge stand in for machines.

Topology (all addresses live only inside namespaces this test creates):

    producer 10.231.0.10 ──▶ hub 10.231.0.1 ──relay──▶ edge-a 10.231.0.2 ──▶ clients-a 10.231.0.20
                                               └─relay──▶ edge-b 10.231.0.3 ──▶ clients-b 10.231.0.30

Every subscriber and puller on every edge must get every message, and the
tree must survive the hub being killed and restarted. The same runs over
IPv6 (fd31::/64 on the same bridge) with CURVE on every relay link, each
edge with its own key pair.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

HOSTS = {"hub": "10.231.0.1", "edge-a": "10.231.0.2", "edge-b": "10.231.0.3", "producer": "10.231.0.10",
         "clients-a": "10.231.0.20", "clients-b": "10.231.0.30"}
HOSTS6 = {host: f"fd31::{ip.rsplit('.', 1)[1]}" for host, ip in HOSTS.items()}
PREFIX = f"fo{os.getpid() % 100000}"


def sh(*cmd: str, timeout: float = 20) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


@dataclass
class Lan:
    names: dict[str, str]
    ipv6: bool = False
    keys: str = ""  # a directory of CURVE certificates: the relay links use CURVE

    def host(self, name: str) -> str:
        """How an endpoint names the host: an IPv4 address, or a bracketed IPv6 one."""
        return f"[{HOSTS6[name]}]" if self.ipv6 else HOSTS[name]

    def cmd(self, host: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.names[host], *args]

    def python(self, host: str, code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(host, sys.executable, "-c", code, *args), capture_output=True, text=True,
                              timeout=timeout)


@pytest.fixture
def lan() -> Iterator[Lan]:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.fail("the multi-host test needs root and iproute2 (ip netns) to build its hosts")
    names = {host: f"{PREFIX}-{host}" for host in HOSTS}
    switch = f"{PREFIX}-sw"
    try:
        sh("ip", "netns", "add", switch)
        sh("ip", "netns", "exec", switch, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", switch, "ip", "link", "set", "br0", "up")
        for i, (host, address) in enumerate(HOSTS.items()):
            ns = names[host]
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", f"{PREFIX}h{i}", "netns", ns, "type", "veth", "peer", "name", f"{PREFIX}s{i}",
               "netns", switch)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", f"{PREFIX}h{i}", "name", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "-6", "addr", "add", f"{HOSTS6[host]}/64", "dev", "eth0", "nodad")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            sh("ip", "netns", "exec", switch, "ip", "link", "set", f"{PREFIX}s{i}", "master", "br0")
            sh("ip", "netns", "exec", switch, "ip", "link", "set", f"{PREFIX}s{i}", "up")
        yield Lan(names)
    finally:
        for ns in [*names.values(), switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def daemon(lan: Lan, procs: list, host: str, *flags: str) -> subprocess.Popen[str]:
    ip = lan.host(host)
    args = ["--collector", f"tcp://{ip}:5560", "--publish", f"tcp://{ip}:5561", "--push", f"tcp://{ip}:5562",
            "--relay", f"tcp://{ip}:5563", "--metrics", "127.0.0.1:9560", "--heartbeat-interval", "0.5",
            "--heartbeat-timeout", "1.5", *flags]
    if lan.keys:  # each node its own key pair; the hub's relay admits the edges' keys only
        args += ["--curve-secret-key", f"{lan.keys}/{host}.key_secret", "--relay-curve",
                 "--relay-clients", f"{lan.keys}/edges"]
        if "--upstream" in flags:
            args += ["--upstream-server-key", f"{lan.keys}/hub.key"]
    p = subprocess.Popen(lan.cmd(host, sys.executable, "-m", "fanoutd", *args), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    procs.append(p)
    return p


WAIT_READY = """
import sys, time, urllib.request, urllib.error
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen("http://127.0.0.1:9560/readyz", timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except (OSError, urllib.error.URLError):
        pass
    time.sleep(0.1)
sys.exit(1)
"""

SAMPLE = """
import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9560/metrics", timeout=5).read().decode()
print(sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(sys.argv[1])))
"""

PEERS = """
import json, sys, urllib.request
view = json.load(urllib.request.urlopen("http://127.0.0.1:9560/peers", timeout=5))
print(sum(1 for c in view["connected"] if c["socket"] == sys.argv[1] and c["handshaken"]))
"""


def wait_ready(lan: Lan, host: str, seconds: float = 20) -> None:
    assert lan.python(host, WAIT_READY, str(seconds), timeout=seconds + 10).returncode == 0, f"{host} not ready"


def wait_peers(lan: Lan, host: str, socket: str, count: int, seconds: float = 20) -> None:
    """Wait for ``count`` peers past their handshake on ``socket`` of ``host`` (/peers): messages reach them."""
    deadline = time.monotonic() + seconds
    while float(lan.python(host, PEERS, socket).stdout or -1) < count:
        if time.monotonic() > deadline:
            view = lan.python(host, "import urllib.request; print(urllib.request.urlopen("
                                    "'http://127.0.0.1:9560/peers', timeout=5).read().decode())")
            raise AssertionError(f"{host}: fewer than {count} {socket} peers past their handshake in {seconds}s; "
                                 f"/peers:\n{view.stdout}{view.stderr}")
        time.sleep(0.2)


def clients(lan: Lan, procs: list, n: int) -> list[subprocess.Popen[str]]:
    out = []
    for host, edge in (("clients-a", "edge-a"), ("clients-b", "edge-b")):
        ip = lan.host(edge)
        for args in (["sub", "-e", f"tcp://{ip}:5561", "orders"], ["pull", "-e", f"tcp://{ip}:5562"]):
            p = subprocess.Popen(lan.cmd(host, sys.executable, "-m", "fanoutd_client.tool", *args, "--count", str(n),
                                         "--timeout", "30"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(p)
            out.append(p)
    for edge in ("edge-a", "edge-b"):
        wait_peers(lan, edge, "publish", 1)
        wait_peers(lan, edge, "push", 1)  # a subscription follows the handshake on the same connection
    return out


def produce(lan: Lan, n: int, tag: str) -> None:
    lines = "".join(f"{tag}-{i}\n" for i in range(n))
    r = subprocess.run(lan.cmd("producer", sys.executable, "-m", "fanoutd_client.tool", "pub", "-e",
                               f"tcp://{lan.host('hub')}:5560", "--wait", "10", "orders"),
                       input=lines, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def check(receivers: list[subprocess.Popen[str]], n: int, tag: str) -> None:
    for i, p in enumerate(receivers):
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        prefix = "orders " if i % 2 == 0 else ""
        assert out.splitlines() == [f"{prefix}{tag}-{k}" for k in range(n)]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("variant", ["ipv4", "ipv6-curve"])
def test_hub_and_two_edges_deliver_everything_and_survive_a_hub_restart(lan, procs, variant, tmp_path):
    if variant == "ipv6-curve":
        import zmq.auth
        lan.ipv6, lan.keys = True, str(tmp_path)
        (tmp_path / "edges").mkdir()
        for host in ("hub", "edge-a", "edge-b"):
            public, _ = zmq.auth.create_certificates(tmp_path, host)
            if host != "hub":
                (tmp_path / "edges" / f"{host}.key").write_bytes(open(public, "rb").read())
    hub = daemon(lan, procs, "hub")
    wait_ready(lan, "hub")
    for edge in ("edge-a", "edge-b"):
        daemon(lan, procs, edge, "--upstream", f"tcp://{lan.host('hub')}:5563")
    for edge in ("edge-a", "edge-b"):
        wait_ready(lan, edge)
    n = 500
    receivers = clients(lan, procs, n)
    produce(lan, n, "first")
    check(receivers, n, "first")
    if lan.keys:
        # A rogue edge whose key the hub does not list gets nothing, and the hub counts and names it.
        import zmq.auth
        zmq.auth.create_certificates(lan.keys, "producer")
        daemon(lan, procs, "producer", "--upstream", f"tcp://{lan.host('hub')}:5563")
        deadline = time.monotonic() + 20
        while float(lan.python("hub", SAMPLE, 'fanoutd_auth_denied_total{reason="key",socket="relay"}').stdout
                    or 0) < 1:
            assert time.monotonic() < deadline, "the hub never counted the rogue edge"
            time.sleep(0.2)
        produce(lan, 10, "rogue-check")
        time.sleep(1.0)  # time for the rogue to get what it must not: nothing to wait for if all is well
        assert float(lan.python("producer", SAMPLE, "fanoutd_received_upstream_messages_total").stdout) == 0
        assert lan.python("producer", WAIT_READY, "0.5").returncode != 0, "a refused edge must not say ready"
        receivers = clients(lan, procs, 10)
        produce(lan, 10, "after-rogue")
        check(receivers, 10, "after-rogue")

    hub.kill()
    hub.wait(timeout=10)
    for edge in ("edge-a", "edge-b"):  # edges notice through heartbeats and report it
        deadline = time.monotonic() + 15
        while lan.python(edge, WAIT_READY, "0.5").returncode == 0:
            assert time.monotonic() < deadline, f"{edge} still ready without its upstream"
            time.sleep(0.2)
    daemon(lan, procs, "hub")
    for host in ("hub", "edge-a", "edge-b"):
        wait_ready(lan, host)
    receivers = clients(lan, procs, n)
    produce(lan, n, "second")
    check(receivers, n, "second")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("interval,timeout", [(0.5, 1.5), (1.0, 0.3)])
def test_a_subscriber_whose_host_vanishes_is_dropped_within_interval_plus_timeout(lan, procs, interval, timeout):
    """Bound sockets leave the heartbeat timeout to the kernel (fanoutd.sockets.heartbeat_options).

    The host's switch port goes down: no FIN, no RST, the subscriber process lives on. The next ping
    goes unacknowledged and the hub drops the connection within interval + timeout (TCP_USER_TIMEOUT;
    without it the kernel would retransmit for about a quarter of an hour). A timeout shorter than the
    interval covers the other shape of the defaults.
    """
    daemon(lan, procs, "hub", "--heartbeat-interval", str(interval), "--heartbeat-timeout", str(timeout))
    wait_ready(lan, "hub")
    sub = subprocess.Popen(lan.cmd("clients-a", sys.executable, "-m", "fanoutd_client.tool", "sub", "-e",
                                   f"tcp://{lan.host('hub')}:5561", "--timeout", "60"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    procs.append(sub)
    wait_peers(lan, "hub", "publish", 1)
    time.sleep(3 * interval)  # pings go out and are answered: a live subscriber stays
    assert float(lan.python("hub", PEERS, "publish").stdout) == 1
    sh("ip", "netns", "exec", f"{PREFIX}-sw", "ip", "link", "set", f"{PREFIX}s{list(HOSTS).index('clients-a')}",
       "down")
    t0 = time.monotonic()
    while float(lan.python("hub", PEERS, "publish").stdout or -1) != 0:
        assert time.monotonic() - t0 < interval + timeout + 10, "the hub still holds the vanished subscriber"
        time.sleep(0.1)
    waited = time.monotonic() - t0
    assert waited < interval + timeout + 1.5, waited  # plus the sampling: a python start in the hub's namespace
    assert sub.poll() is None, "the subscriber's process must outlive its host's link"
    assert float(lan.python("hub", SAMPLE, 'fanoutd_disconnects_total{socket="publish"}').stdout) == 1
