"""/metrics: the names other tools rely on, the accounting identity, promtool, a real Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import zmq

from fanoutd.counters import REJECTS
from fanoutd.roles import ROLES
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, connected, free_port, ready_producer, settle, warm_up


def test_no_puller_accounting_and_promtool_is_clean(start_daemon, sockets):
    d = start_daemon("--metrics-topics", "orders")
    sub = connected(sockets, zmq.SUB, d.publish, rcvhwm=0)
    prod = ready_producer(sockets, d.collector)
    probes = warm_up(prod, sub)
    n = 5000
    for i in range(n):
        prod.send(b"orders %d" % i)
    for _ in range(n):
        sub.recv()
    total = probes + n
    assert d.wait_value("fanoutd_received_messages_total", total) == total
    m = d.metrics()
    assert m[("fanoutd_published_messages_total", ())] == total
    no_puller = m[("fanoutd_dropped_messages_total", (("output", "push"), ("reason", "no_puller")))]
    hwm = m[("fanoutd_dropped_messages_total", (("output", "push"), ("reason", "hwm")))]
    assert m[("fanoutd_pushed_messages_total", ())] + no_puller + hwm == total
    assert no_puller == total
    assert m[("fanoutd_topic_received_messages_total", (("topic", "orders"),))] == n
    assert m[("fanoutd_topic_received_messages_total", (("topic", "__other__"),))] == probes
    assert m[("fanoutd_connected_peers", (("socket", "publish"),))] == 1
    assert m[("fanoutd_connected_peers", (("socket", "collector"),))] == 1
    assert m[("fanoutd_connected_peers", (("socket", "push"),))] == 0
    assert ("fanoutd_build_info", ()) not in m  # it carries version labels
    assert any(name == "fanoutd_build_info" for name, _ in m)
    assert m[("fanoutd_max_message_size_bytes", ())] == 1024 * 1024
    assert m[("process_resident_memory_bytes", ())] > 0
    _, text = d.get("/metrics")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0 and check.stdout.strip() == "" and check.stderr.strip() == "", (
        check.stdout + check.stderr)


def test_publish_and_push_accounting_with_a_puller(start_daemon, sockets):
    d = start_daemon()
    sub = connected(sockets, zmq.SUB, d.publish, rcvhwm=0)
    pull = connected(sockets, zmq.PULL, d.push, rcvhwm=0)
    prod = ready_producer(sockets, d.collector)
    settle(d, "push", 1)  # or a warm-up probe may find no puller yet (dropped, counted as no_puller)
    probes = warm_up(prod, sub, pull)
    n = 10_000
    for i in range(n):
        prod.send_multipart([b"t", b"%d" % i])
    assert [pull.recv_multipart() for _ in range(n)][-1] == [b"%d" % (n - 1)]
    total = probes + n
    assert d.wait_value("fanoutd_pushed_messages_total", total) == total
    assert d.value("fanoutd_received_messages_total") == total
    assert d.value("fanoutd_published_messages_total") == total
    assert d.value("fanoutd_dropped_messages_total", output="push", reason="no_puller") == 0


@pytest.mark.timeout(90)
def test_a_real_prometheus_scrapes_fanoutd(start_daemon, sockets, tmp_path):
    d = start_daemon()
    prod = ready_producer(sockets, d.collector)
    n = 1234
    for i in range(n):
        prod.send(b"t %d" % i)
    assert d.wait_value("fanoutd_received_messages_total", n) == n
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: fanoutd\n    static_configs:\n"
        f"      - targets: ['{d.http.removeprefix('http://')}']\n")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
    try:
        query = urllib.parse.urlencode({"query": 'fanoutd_received_messages_total{job="fanoutd"}'})
        url = f"http://127.0.0.1:{port}/api/v1/query?{query}"
        deadline = time.monotonic() + 60
        value = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    result = json.load(resp)["data"]["result"]
                if result:
                    value = float(result[0]["value"][1])
                    if value == n:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        assert value == n, (tmp_path / "prometheus.log").read_text()
        check_dashboard_queries(port, d)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_fanoutd_top_shows_rates_drops_and_peers(start_daemon, sockets):
    d = start_daemon()
    sub = connected(sockets, zmq.SUB, d.publish)
    prod = ready_producer(sockets, d.collector)
    warm_up(prod, sub)
    proc = subprocess.Popen([sys.executable, "-m", "fanoutd", "top", "--url", d.http + "/metrics",
                             "--interval", "1", "--once"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for i in range(3000):  # spread over ~3 s so that top's two scrapes see traffic in between
        prod.send(b"t %d" % i)
        if i % 10 == 0:
            time.sleep(0.01)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = {line[:28].strip(): line[28:].split() for line in out.splitlines() if line[:28].strip()}
    rate, total = (float(x.replace(",", "")) for x in lines["received"])
    assert rate > 0 and total > 0
    assert float(lines["dropped push no_puller"][1].replace(",", "")) > 0
    for reason in REJECTS:  # every reason the loop counts has its row, federation's included
        assert f"rejected {reason}" in lines
    assert {"auth denied", "handshake failures"} <= set(lines)
    peers = {cols[0]: cols[1:] for cols in (line.split() for line in out.splitlines() if line[:1] != " ")
             if cols and cols[0] in ("collector", "publish", "push")}
    assert (peers["collector"][0], peers["publish"][0], peers["push"][0]) == ("1", "1", "0"), out
    slowest = out.split("slowest peers (bytes queued in the kernel):\n", 1)[1].splitlines()
    assert any(re.fullmatch(r"\s+publish\s+127\.0\.0\.1:\d+\s+[\d,]+", line) for line in slowest), out


def test_fanoutd_top_unreachable_is_one_line():
    r = subprocess.run([sys.executable, "-m", "fanoutd", "top", "--url", f"http://127.0.0.1:{free_port()}/metrics",
                        "--once", "--interval", "0.1"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("fanoutd top: cannot read")


def check_dashboard_queries(prometheus_port: int, d) -> None:
    """Every query of the shipped Grafana dashboard parses in Prometheus and names metrics fanoutd serves."""
    import re
    from pathlib import Path
    dashboard = json.loads((Path(__file__).resolve().parent.parent / "fanoutd" / "grafana-dashboard.json").read_text())
    served = {name for name, _ in d.metrics()} | {"fanoutd_topic_received_messages_total"}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = (target["expr"].replace("$job", ".*").replace("$instance", ".*")
                    .replace("$__rate_interval", "1m"))
            for name in re.findall(r"\b((?:fanoutd|process)_[a-z_]+)\b", expr):
                assert name in served, f"{panel['title']}: {name} is not a fanoutd metric"
            url = f"http://127.0.0.1:{prometheus_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            with urllib.request.urlopen(url, timeout=5) as resp:
                assert json.load(resp)["status"] == "success", expr


def test_per_socket_families_cover_every_socket(start_daemon):
    """A daemon with every socket labels its per-socket families with each of them, from the one role table
    (docs/metrics.md is checked against a live daemon by tests/test_reference.py)."""
    relay_port = free_port()  # named as its own upstream before it listens: port 0 cannot be
    # Its upstream is its own relay (named differently, as two endpoints may not be equal): the link comes up,
    # so the node is ready, and whatever loops back is counted as `loop`.
    repair_port = free_port()  # likewise the relay's repair endpoint, which its own upstream_repair asks
    d = start_daemon("--relay", f"tcp://127.0.0.1:{relay_port}", "--upstream", f"tcp://localhost:{relay_port}",
                     "--relay-repair", f"tcp://127.0.0.1:{repair_port}",
                     "--upstream-repair", f"tcp://localhost:{repair_port}",
                     "--ingress", "tcp://127.0.0.1:*", "--metrics-topics", "orders")
    _, text = d.get("/metrics")
    # Per-socket families cover every socket this daemon has, from the one role table.
    sockets = {s.labels["socket"] for f in text_string_to_metric_families(text) if f.name == "fanoutd_connected_peers"
               for s in f.samples}
    assert sockets == {role.name for role in ROLES}
    hwm = {s.labels["socket"] for f in text_string_to_metric_families(text)
           if f.name == "fanoutd_high_water_mark_messages" for s in f.samples}
    assert hwm == {role.name for role in ROLES}
