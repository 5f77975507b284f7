"""metrics_web_config read strictly, and the gate's rules, without a daemon: the file, the credentials, the throttle."""

from __future__ import annotations

import base64
import ssl
import subprocess
import sys

import pytest

from fanoutd import webconfig
from fanoutd.values import ConfigError
from fanoutd.webauth import REASONS, Gate, Throttle, credentials

from conftest import ROOT
from webpki import bcrypt_hash, make_pki, web_config


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_a_file_written_as_for_node_exporter_loads(pki):
    path = pki / "web.yml"
    path.write_text(
        "# as in the exporter-toolkit's docs\n"
        "tls_server_config:\n"
        '  cert_file: "server.crt"\n'
        "  key_file: server.key\n"
        "  client_auth_type: \"VerifyClientCertIfGiven\"\n"
        f"  client_ca_file: {pki / 'ca.crt'}\n"
        "  min_version: TLS13\n"
        "  prefer_server_cipher_suites: false\n"
        "http_server_config:\n  http2: false\n  headers: {X-Frame-Options: deny, X-Content-Type-Options: nosniff}\n"
        f"basic_auth_users:\n  prometheus: {bcrypt_hash('pw')}\n")
    web = webconfig.load(str(path))
    assert web.tls is not None
    assert web.tls.cert_file == str(pki / "server.crt")  # relative to the file's own directory
    assert web.tls.client_ca_file == str(pki / "ca.crt")
    assert (web.tls.verify, web.tls.min_version) == (ssl.CERT_OPTIONAL, ssl.TLSVersion.TLSv1_3)
    assert list(web.users) == ["prometheus"]
    assert web.headers == (("X-Frame-Options", "deny"), ("X-Content-Type-Options", "nosniff"))
    assert web.describe() == "TLS and basic auth (1 user)"
    assert webconfig.load(str(path)) == web
    (pki / "web2.yml").write_text(path.read_text().replace("TLS13", "TLS12"))
    assert webconfig.load(str(pki / "web2.yml")) != web


def test_a_renewed_certificate_at_the_same_path_is_a_change(tmp_path):
    make_pki(tmp_path)
    path = web_config(tmp_path / "web.yml", {"prom": "pw"})
    before = webconfig.load(str(path))
    (tmp_path / "server.crt").write_bytes((tmp_path / "server.crt").read_bytes() + b"\n")
    assert webconfig.load(str(path)) != before


BAD = [
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
     "cipher_suites: Go cipher-suite names"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  curve_preferences: [X25519]\n",
     "curve_preferences"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequestClientCert\n"
     "  client_ca_file: ca.crt\n", "RequestClientCert: it asks for a client certificate without verifying it"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAnyClientCert\n",
     "RequireAnyClientCert"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS10\n",
     "min_version: TLS10: fanoutd serves TLS 1.2 or later"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS14\n", "'TLS14' is none"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: "
     "RequireAndVerifyClientCert\n", "needs client_ca_file"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_ca_file: ca.crt\n",
     "client_ca_file is given but client_auth_type is NoClientCert"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n", "cannot load cert_file"),
    ("tls_server_config:\n  cert_file: nothere.crt\n  key_file: server.key\n", "cert_file: cannot read"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: "
     "RequireAndVerifyClientCert\n  client_ca_file: server.key\n", "cannot load client_ca_file"),
    ("tls_server_config:\n  cert_file: server.crt\n", "cert_file and key_file are both required"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cert: inline\n", "inline certificates"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_allowed_sans: [a]\n",
     "client_allowed_sans"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  max_version: TLS12\n"
     "  min_version: TLS13\n", "max_version is below min_version"),
    ("http_server_config:\n  http2: true\n", "fanoutd serves HTTP/1.1 only"),
    ("http_server_config:\n  headers:\n    Set-Cookie: a=b\n", "'Set-Cookie': only Content-Security-Policy"),
    ("rate_limit:\n  interval: 1s\n", "unknown key 'rate_limit'"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  certfile: x\n", "unknown key 'certfile'"),
    ("basic_auth_users:\n  prom: secret\n", "prom: not a bcrypt hash"),
    ("basic_auth_users:\n  no: $2y$10$abcdefghijklmnopqrstuuP4Q6yQ.U8kHDr7vTt2o9DTzyYjVlrEe\n", "user False must be"),
    ("basic_auth_users:\n  a: x\n  a: y\n", "'a' is given twice"),
    ("basic_auth_users: [a, b]\n", "basic_auth_users: expected a mapping"),
    ("tls_server_config: {cert_file: [\n", "invalid YAML"),
    ("- a list\n", "the file: expected a mapping"),
]


@pytest.mark.parametrize("text,needle", BAD, ids=[needle for _, needle in BAD])
def test_what_fanoutd_cannot_honour_is_refused_with_one_line(pki, text, needle):
    path = pki / "bad.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        webconfig.load(str(path))
    message = str(err.value)
    assert message.startswith(f"metrics_web_config: {path}: ") and "\n" not in message, message
    assert needle in message, message


def test_check_config_and_start_refuse_a_bad_file_with_one_line_and_exit_2(pki):
    (pki / "bad.yml").write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                                 "  client_auth_type: RequestClientCert\n")
    for extra in (["--check-config"], ["--metrics", "127.0.0.1:0", "--collector", "tcp://127.0.0.1:0"]):
        r = subprocess.run([sys.executable, "-m", "fanoutd", "--metrics-web-config", str(pki / "bad.yml"), *extra],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "RequestClientCert" in r.stderr, r.stderr
        assert r.stderr.startswith("fanoutd: configuration error: metrics_web_config: "), r.stderr


def test_credentials_of_an_authorization_header():
    def basic(raw: bytes) -> str:
        return "Basic " + base64.b64encode(raw).decode()

    assert credentials(basic(b"prom:pa:ss")) == ("prom", b"pa:ss")
    assert credentials(basic(b"prom:")) == ("prom", b"")
    for header in ("", "Bearer x", basic(b"no-colon"), "Basic !!!", basic(b"\xff:x")):
        assert credentials(header) is None, header


def test_the_throttle_counts_failures_per_address_over_a_window():
    now = [0.0]
    throttle = Throttle(failures=3, seconds=10.0, size=2, clock=lambda: now[0])
    for _ in range(3):
        assert not throttle.over("a")
        throttle.failed("a")
    assert throttle.over("a") and not throttle.over("b")
    now[0] = 10.5
    assert not throttle.over("a")  # the window slid past them
    for address in ("a", "a", "a", "b", "c"):
        throttle.failed(address)
    assert not throttle.over("a")  # a third address pushed out the oldest: memory stays bounded


def test_the_gate_checks_every_time_and_refuses_without_metric_bytes(pki):
    web = webconfig.load(str(web_config(pki / "gate.yml", {"prom": "right"}, tls=False,
                                        extra="http_server_config:\n  headers:\n    X-Frame-Options: deny\n")))
    hashed: list[bytes] = []
    gate = Gate(web, run=lambda fn, args: (hashed.append(args[0]), fn(*args))[1])

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"fanoutd_received_messages_total 1\n"]

    served = gate.serving(app)

    def get(user: str | None, password: str = "", address: str = "10.0.0.1"):
        environ = {"REMOTE_ADDR": address, "PATH_INFO": "/metrics"}
        if user is not None:
            environ["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        got = {}
        body = b"".join(served(environ, lambda status, headers, *_: got.update(status=status, headers=headers)))
        return got["status"], dict(got["headers"]), body

    status, headers, body = get("prom", "right")
    assert status == "200 OK" and body.startswith(b"fanoutd_") and headers["X-Frame-Options"] == "deny"
    assert get("prom", "right")[0] == "200 OK" and len(hashed) == 2  # no cache: hashed again (CVE-2022-46146)
    for user, password, reason in (("prom", "wrong", "password"), ("nobody", "right", "user"), (None, "", "missing")):
        status, headers, body = get(user, password)
        assert status.startswith("401") and b"fanoutd" not in body and headers["WWW-Authenticate"].startswith("Basic")
        assert headers["X-Frame-Options"] == "deny"
        assert gate.failures[reason] == 1, reason
    for _ in range(3):
        assert get("prom", "wrong")[0].startswith("401")
    before = len(hashed)
    status, headers, body = get("prom", "right")  # 5 failures from this address: refused before hashing
    assert status.startswith("429") and b"fanoutd" not in body and len(hashed) == before
    assert gate.failures["throttled"] == 1
    assert get("prom", "right", address="10.0.0.2")[0] == "200 OK"  # per address
    assert set(gate.failures) == set(REASONS)


def test_a_relative_file_is_read_from_the_credentials_directory(tmp_path, monkeypatch):
    """Under systemd's LoadCredential= the file and the certificates it names sit in $CREDENTIALS_DIRECTORY."""
    credentials_dir = make_pki(tmp_path / "credentials")
    web_config(credentials_dir / "web.yml", {"prom": "pw"})
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials_dir))
    monkeypatch.chdir(tmp_path)
    web = webconfig.load("web.yml")
    assert web.path == str(credentials_dir / "web.yml")
    assert web.tls is not None and web.tls.key_file == str(credentials_dir / "server.key")


def test_bcrypt_runs_off_the_hub(tmp_path):
    """While a slow hash is checked in the daemon's thread pool, other greenlets on the hub keep running."""
    import bcrypt
    import gevent
    from gevent.threadpool import ThreadPool

    path = tmp_path / "slow.yml"
    path.write_text(f"basic_auth_users:\n  slow: '{bcrypt.hashpw(b'pw', bcrypt.gensalt(10)).decode()}'\n")
    pool = ThreadPool(1)
    gate = Gate(webconfig.load(str(path)), run=pool.apply)
    served = gate.serving(lambda environ, start_response: [b"fanoutd_x 1\n"])
    ticks = []

    def ticker():
        while True:
            ticks.append(1)
            gevent.sleep(0.001)

    turning = gevent.spawn(ticker)
    statuses = []
    environ = {"REMOTE_ADDR": "10.0.0.1",
               "HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"slow:wrong").decode()}
    try:
        served(environ, lambda status, headers, *_: statuses.append(status))
    finally:
        turning.kill()
        pool.kill()
    assert statuses == ["401 Unauthorized"]
    assert len(ticks) > 3, ticks  # with the hash on the hub, the ticker would not have had a turn meanwhile
