"""The metrics port behind metrics_web_config: TLS, client certificates and basic auth, with a real Prometheus.

Every path requires what the file says; a refusal carries no metric bytes
and is counted; plain HTTP fails the handshake; a reload with a bad file
keeps the running one.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from fanoutd.top import Client, client

from conftest import free_port, ready_producer, wait_for, wait_logged
from webpki import make_pki, web_config


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def prom_client(pki, password: str = "right", cert: str | None = "client", user: str | None = "prom") -> Client:
    (pki / f"{password}.pw").write_text(password + "\n")
    return client(str(pki / "ca.crt"), str(pki / f"{cert}.crt") if cert else None,
                  str(pki / f"{cert}.key") if cert else None, user, str(pki / f"{password}.pw"))


def protected(start_daemon, pki, name: str = "web.yml", **kwargs):
    path = web_config(pki / name, {"prom": "right"}, **kwargs)
    return start_daemon("--metrics-web-config", str(path), via=prom_client(pki)), path


def status_of(via: Client, url: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
    """GET ``url`` as ``via`` from the loopback address ``source`` (the throttle counts per address)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=via.context, timeout=5,
                                       source_address=(source, 0))
    try:
        conn.request("GET", parts.path, headers=dict(via.headers))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_only_the_configured_client_gets_anything_on_any_path(start_daemon, pki):
    d, _ = protected(start_daemon, pki)
    began = time.monotonic()
    assert d.http.startswith("https://")
    assert "metrics https://127.0.0.1:" in wait_logged(d, "fanoutd ready: ")
    status, body = d.get("/metrics")
    assert status == 200 and "fanoutd_received_messages_total" in body
    for path in ("/metrics", "/healthz", "/readyz", "/peers", "/endpoints"):
        status, body = status_of(prom_client(pki, password="wrong"), d.http + path, source="127.0.0.2")
        assert status == 401 and b"fanoutd_" not in body and b"127.0.0.1" not in body, (path, body)
    status, body = status_of(prom_client(pki, user=None), d.http + "/healthz", source="127.0.0.3")
    assert status == 401 and body == b"unauthorized\n"
    status, body = status_of(prom_client(pki, user="nobody"), d.http + "/metrics", source="127.0.0.3")
    assert status == 401 and b"fanoutd_" not in body
    for cert in (None, "rogue"):  # no client certificate; one the client CA did not sign
        with pytest.raises(OSError):
            status_of(prom_client(pki, cert=cert), d.http + "/healthz")
    # Plain HTTP to the TLS port: the handshake fails, nothing HTTP comes back.
    host, port = d.http.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        try:
            while chunk := raw.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert not answer.startswith(b"HTTP/") and b"fanoutd_" not in answer, answer
    # Five failures from 127.0.0.2 within 10 s: its next attempt is refused before any hashing, even a right one.
    status, body = status_of(prom_client(pki), d.http + "/metrics", source="127.0.0.2")
    assert status == 429 and b"fanoutd_" not in body
    assert d.get("/metrics")[0] == 200  # another address is not held back
    counted = {reason: d.value("fanoutd_http_auth_failures_total", reason=reason)
               for reason in ("password", "missing", "user", "certificate", "plain_http", "throttled")}
    assert counted == {"password": 5, "missing": 1, "user": 1, "certificate": 2, "plain_http": 1,
                       "throttled": 1}, counted
    line = wait_logged(d, "metrics port: refused ")
    lines = d.log().count("metrics port: refused ")  # 11 refusals, at most one line per 10 s
    assert "the last from 127.0.0." in line and lines <= 1 + (time.monotonic() - began) // 10, lines
    assert "Traceback" not in d.log()


def test_fanoutd_top_reaches_a_protected_port(start_daemon, pki):
    d, _ = protected(start_daemon, pki)
    (pki / "top.pw").write_text("right\n")
    flags = ["--ca-file", str(pki / "ca.crt"), "--cert", str(pki / "client.crt"), "--key", str(pki / "client.key"),
             "--user", "prom", "--password-file", str(pki / "top.pw")]
    r = subprocess.run([sys.executable, "-m", "fanoutd", "top", "--url", d.http + "/metrics", "--once",
                        "--interval", "0.2", *flags], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "received" in r.stdout and "slowest peers" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "fanoutd", "top", "--url", d.http + "/metrics", "--once",
                        "--interval", "0.2", *flags[:-4]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("fanoutd top: cannot read") and "401" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "fanoutd", "top", "--url", d.http + "/metrics", "--once",
                        "--ca-file", str(pki / "missing.crt")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "missing.crt" in r.stderr, r.stderr


def test_a_reload_with_a_bad_file_keeps_the_running_one(start_daemon, pki):
    d, path = protected(start_daemon, pki, name="reload.yml")
    good = path.read_text()
    path.write_text(good.replace("client_auth_type: RequireAndVerifyClientCert",
                                 "client_auth_type: RequestClientCert"))
    d.send_signal(signal.SIGHUP)
    line = wait_logged(d, "reload failed, keeping the running configuration: ")
    assert "RequestClientCert" in line
    assert d.get("/metrics")[0] == 200
    assert status_of(prom_client(pki, user="ann", password="new"), d.http + "/metrics", source="127.0.0.4")[0] == 401
    # A good new file applies to new connections: ann in, prom out.
    web_config(path, {"ann": "new"})
    d.send_signal(signal.SIGHUP)
    assert "metrics port: TLS with client certificates and basic auth (1 user) now" in wait_logged(d, "reloaded: ")
    assert d.get("/metrics")[0] == 401
    status, body = status_of(prom_client(pki, user="ann", password="new"), d.http + "/metrics", source="127.0.0.4")
    assert status == 200 and b"fanoutd_received_messages_total" in body
    assert d.proc.poll() is None and "Traceback" not in d.log()


@pytest.mark.timeout(120)
def test_a_real_prometheus_scrapes_over_tls_with_basic_auth_and_the_wrong_ones_get_nothing(start_daemon, sockets,
                                                                                        pki, tmp_path):
    d, _ = protected(start_daemon, pki)
    prod = ready_producer(sockets, d.collector)
    n = 321
    for i in range(n):
        prod.send(b"t %d" % i)
    assert d.wait_value("fanoutd_received_messages_total", n) == n
    (pki / "prom.pw").write_text("right")
    (pki / "wrong.pw").write_text("wrong")
    target = d.http.removeprefix("https://")

    def job(name: str, password: str, cert: bool = True, interval: str = "1s") -> str:
        tls = f"      ca_file: {pki / 'ca.crt'}\n"
        if cert:
            tls += f"      cert_file: {pki / 'client.crt'}\n      key_file: {pki / 'client.key'}\n"
        return (f"  - job_name: {name}\n    scheme: https\n    scrape_interval: {interval}\n"
                f"    tls_config:\n{tls}    basic_auth:\n      username: prom\n"
                f"      password_file: {pki / password}\n    static_configs:\n      - targets: ['{target}']\n")

    config = tmp_path / "prometheus.yml"
    # The wrong password's job scrapes every 4 s: from the same address as the good one, it stays under the
    # throttle's 5 failures in 10 s, which would hold the good one back too.
    config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
                      + job("good", "prom.pw") + job("wrong", "wrong.pw", interval="4s")
                      + job("nocert", "prom.pw", cert=False))
    port = free_port()
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list:
        with urllib.request.urlopen(f"{api}/query?" + urllib.parse.urlencode({"query": expr}), timeout=5) as resp:
            return json.load(resp)["data"]["result"]

    def targets() -> dict[str, dict]:
        with urllib.request.urlopen(f"{api}/targets", timeout=5) as resp:
            active = json.load(resp)["data"]["activeTargets"]
        return {t["labels"]["job"]: t for t in active}

    def attempt(probe):
        try:
            return probe()
        except OSError:
            return None

    try:
        got = wait_for("Prometheus's good job to scrape the count",
                       lambda: attempt(lambda: query('fanoutd_received_messages_total{job="good"}')),
                       lambda r: bool(r) and float(r[0]["value"][1]) == n, timeout=60, alive=proc)
        assert float(got[0]["value"][1]) == n
        seen = wait_for("the wrong jobs to be scraped and fail", lambda: attempt(targets),
                        lambda t: bool(t) and all(t[job]["lastScrape"][:4] != "0001" and t[job]["lastError"]
                                                  for job in ("wrong", "nocert")), timeout=30, alive=proc)
        assert seen["good"]["health"] == "up", seen["good"]
        assert seen["wrong"]["health"] == "down" and "401" in seen["wrong"]["lastError"], seen["wrong"]
        assert seen["nocert"]["health"] == "down", seen["nocert"]
        for job in ("wrong", "nocert"):  # nothing of fanoutd's reached Prometheus through them
            assert query(f'{{job="{job}",__name__=~"fanoutd_.*"}}') == [], job
            assert float(query(f'up{{job="{job}"}}')[0]["value"][1]) == 0
        assert d.value("fanoutd_http_auth_failures_total", reason="password") >= 1
        assert d.value("fanoutd_http_auth_failures_total", reason="certificate") >= 1
        assert d.value("fanoutd_http_auth_failures_total", reason="throttled") == 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
