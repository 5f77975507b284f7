"""Access control: CURVE per socket, client-key allowlists, IP allow/deny lists through ZAP."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
import zmq
import zmq.auth

from conftest import connected, settle, wait_logged, warm_up


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[bytes, bytes]]:
    """server, good (listed) and bad (unlisted) key pairs; the listed public key in clients/."""
    (tmp_path / "clients").mkdir()
    out = {}
    for name in ("server", "good", "bad"):
        public_file, secret_file = zmq.auth.create_certificates(tmp_path, name)
        out[name] = zmq.auth.load_certificate(secret_file)
    (tmp_path / "clients" / "good.key").write_bytes((tmp_path / "good.key").read_bytes())
    return out


def curve(sock: zmq.Socket, client: tuple[bytes, bytes], server: tuple[bytes, bytes]) -> zmq.Socket:
    sock.curve_publickey, sock.curve_secretkey = client
    sock.curve_serverkey = server[0]
    return sock


def curve_flags(tmp_path: Path, *roles: str) -> list[str]:
    flags = ["--curve-secret-key", str(tmp_path / "server.key_secret")]
    for role in roles:
        flags += [f"--{role}-curve", f"--{role}-clients", str(tmp_path / "clients")]
    return flags


def subscription_seen(sock: zmq.Socket, timeout_ms: int) -> bool:
    return bool(sock.poll(timeout_ms)) and sock.recv()[:1] == b"\x01"


def test_unlisted_producer_never_reaches_subscribers_and_is_counted(start_daemon, sockets, keys, tmp_path):
    d = start_daemon(*curve_flags(tmp_path, "collector"))
    sub = connected(sockets, zmq.SUB, d.publish)
    pull = connected(sockets, zmq.PULL, d.push)
    good = curve(sockets(zmq.XPUB, xpub_verbose=1), keys["good"], keys["server"])
    good.connect(d.collector)
    bad = curve(sockets(zmq.XPUB, xpub_verbose=1), keys["bad"], keys["server"])
    bad.connect(d.collector)
    assert subscription_seen(good, 5000)
    warm_up(good, sub, pull)
    assert not subscription_seen(bad, 1000), "an unlisted key must never get the collector's subscription"
    for _ in range(50):
        bad.send(b"evil injected")
    good.send(b"orders fine")
    assert sub.recv() == b"orders fine" and pull.recv() == b"fine"
    assert not sub.poll(300) and not pull.poll(300)
    assert d.value("fanoutd_auth_denied_total", socket="collector", reason="key") >= 1
    assert d.value("fanoutd_handshake_failures_total", socket="collector", reason="auth") >= 1
    assert "denied a connection to collector from 127.0.0.1 (reason: key" in d.log()


def test_unlisted_subscriber_and_plaintext_subscriber_get_nothing(start_daemon, sockets, keys, tmp_path):
    d = start_daemon(*curve_flags(tmp_path, "publish", "push"))
    good_sub = curve(sockets(zmq.SUB), keys["good"], keys["server"])
    bad_sub = curve(sockets(zmq.SUB), keys["bad"], keys["server"])
    plain_sub = sockets(zmq.SUB)
    bad_pull = curve(sockets(zmq.PULL), keys["bad"], keys["server"])
    plain_pull = sockets(zmq.PULL)
    for s in (good_sub, bad_sub, plain_sub):
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(d.publish)
    for s in (bad_pull, plain_pull):
        s.connect(d.push)
    prod = sockets(zmq.XPUB, xpub_verbose=1)
    prod.connect(d.collector)
    assert subscription_seen(prod, 5000)
    warm_up(prod, good_sub)
    for i in range(100):
        prod.send(b"secret %d" % i)
    assert good_sub.recv() == b"secret 0"
    for s in (bad_sub, plain_sub, bad_pull, plain_pull):
        assert not s.poll(500)
    assert d.value("fanoutd_auth_denied_total", socket="publish", reason="key") >= 1
    # A plaintext peer on a CURVE socket fails the handshake; libzmq reports it as a protocol
    # error or without detail depending on how far the greeting got.
    for role in ("publish", "push"):
        assert plaintext_failures(d, role) >= 1, role
    assert d.value("fanoutd_dropped_messages_total", output="push", reason="no_puller") >= 100


def plaintext_failures(d, role: str) -> float:
    return sum(v for (name, labels), v in d.metrics().items()
               if name == "fanoutd_handshake_failures_total" and ("socket", role) in labels
               and dict(labels)["reason"] in ("protocol", "other"))


def test_ip_allow_and_deny_lists(start_daemon, sockets):
    d = start_daemon("--collector-allow", "127.0.0.2/32", "--publish-deny", "127.0.0.3")
    port = d.collector.rsplit(":", 1)[1]
    allowed = sockets(zmq.XPUB, xpub_verbose=1)
    allowed.connect(f"tcp://127.0.0.2:0;127.0.0.1:{port}")
    refused = sockets(zmq.XPUB, xpub_verbose=1)
    refused.connect(d.collector)  # from 127.0.0.1, not on the allowlist
    assert subscription_seen(allowed, 5000)
    assert not subscription_seen(refused, 1000)
    assert d.value("fanoutd_auth_denied_total", socket="collector", reason="address") >= 1
    pub_port = d.publish.rsplit(":", 1)[1]
    denied_sub = sockets(zmq.SUB)
    denied_sub.setsockopt(zmq.SUBSCRIBE, b"")
    denied_sub.connect(f"tcp://127.0.0.3:0;127.0.0.1:{pub_port}")
    ok_sub = connected(sockets, zmq.SUB, d.publish)
    warm_up(allowed, ok_sub)
    allowed.send(b"t x")
    assert ok_sub.recv() == b"t x"
    assert not denied_sub.poll(500)
    assert d.value("fanoutd_auth_denied_total", socket="publish", reason="address") >= 1


def test_reload_adds_a_client_key_live(start_daemon, sockets, keys, tmp_path):
    conf = tmp_path / "fanoutd.toml"
    conf.write_text(f'curve_secret_key = "{tmp_path / "server.key_secret"}"\ncollector_curve = true\n'
                    f'collector_clients = "{tmp_path / "clients"}"\n')
    d = start_daemon("--config", str(conf))
    late = curve(sockets(zmq.XPUB, xpub_verbose=1), keys["bad"], keys["server"])
    late.connect(d.collector)
    assert not subscription_seen(late, 1000)
    (tmp_path / "clients" / "bad.key").write_bytes((tmp_path / "bad.key").read_bytes())
    d.send_signal(signal.SIGHUP)
    wait_logged(d, "reloaded: applied collector_clients +bad.key")  # exactly what changed, by file
    # libzmq does not retry a connection that ZAP refused (the server sent ERROR): the client reconnects.
    late.disconnect(d.collector)
    late.connect(d.collector)
    assert subscription_seen(late, 10_000), "the producer should be let in after the reload"


def test_curve_config_errors_are_one_line(start_daemon, tmp_path):
    d = start_daemon("--collector-curve", ready=False)
    assert d.proc.wait(timeout=15) == 2
    assert d.log().strip().splitlines()[-1] == (
        "fanoutd: configuration error: collector_curve needs curve_secret_key (create one with `fanoutd keygen`)")
    d = start_daemon("--collector-curve", "--curve-secret-key", str(tmp_path / "missing"), ready=False)
    assert d.proc.wait(timeout=15) == 2
    assert d.log().strip().splitlines() == [
        f"fanoutd: configuration error: curve_secret_key: cannot read {tmp_path / 'missing'}: not found"]


def test_legacy_zmtp_peer_is_refused_logged_with_its_address_and_counted(start_daemon):
    """A ZMTP 2.0 client (libzmq 3.x, JeroMQ 0.3) is refused by design; say so instead of only disconnecting."""
    d = start_daemon()
    host, port = d.collector.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as legacy:
        # libzmq closes a legacy peer the moment its greeting arrives: let the broker read the address first.
        assert d.wait_value("fanoutd_connected_peers", 1, socket="collector") == 1
        legacy.sendall(b"\xff" + b"\0" * 7 + b"\x01\x7f" + b"\x01\x01\x00\x00")  # ZMTP 2.0 greeting, a PUB
        local = f"127.0.0.1:{legacy.getsockname()[1]}"
        try:
            assert legacy.recv(64) is not None
        except ConnectionResetError:
            pass
    line = wait_logged(d, f"collector: refused a connection from {local}: it closed before its ZMTP handshake "
                          "completed: a legacy ZMTP 1.0/2.0 client")
    assert "WARNING" in line
    assert d.wait_value("fanoutd_handshake_failures_total", 1, socket="collector", reason="incomplete") == 1


def test_clients_that_simply_leave_are_not_refused_handshakes(start_daemon, sockets):
    """libzmq's handshake-succeeded event names no connection: ordinary clients that connect and leave must not
    be counted or logged as incomplete handshakes."""
    d = start_daemon()
    for _ in range(5):
        sub = sockets(zmq.SUB)
        sub.connect(d.publish)
        settle(d, "publish", 1)  # connected and past its handshake: an ordinary client
        sub.close(linger=0)
        assert d.wait_value("fanoutd_connected_peers", 0, socket="publish") == 0
    assert d.wait_value("fanoutd_disconnects_total", 5, socket="publish") == 5
    assert d.value("fanoutd_handshake_failures_total", socket="publish", reason="incomplete") == 0
    assert "refused a connection" not in d.log()


def test_plaintext_producer_at_a_curve_collector_is_named_in_the_log(start_daemon, keys, tmp_path):
    """A ZMTP 3.0 NULL (plaintext) greeting at a CURVE collector, sent by hand once the broker has seen the
    connection: libzmq refuses it at once, so this is the way to be sure the address was read first."""
    d = start_daemon(*curve_flags(tmp_path, "collector"))
    host, port = d.collector.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as plain:
        assert d.wait_value("fanoutd_connected_peers", 1, socket="collector") == 1
        plain.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32)
        local = f"127.0.0.1:{plain.getsockname()[1]}"
        line = wait_logged(d, f"collector: refused a connection from {local}: ")
    assert "its ZMTP handshake failed (e.g. a plaintext client at a CURVE socket" in line
    assert d.value("fanoutd_handshake_failures_total", socket="collector", reason="protocol") >= 1
