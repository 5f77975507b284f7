"""Bad files never kill the broker: a malformed key, an unreadable directory, a missing file, a changed key set,
each at start, at --check-config and at reload, through the real daemon."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth

from conftest import connected, daemon_command, wait_logged, warm_up
from fanoutd.config import ConfigError
from fanoutd.files import load_public_keys, load_secret_key

NOT_A_KEY = "# a certificate someone truncated\nmetadata\ncurve\n"
# Root reads any directory; without these two capabilities it reads only what its permissions allow, like
# the service's own unprivileged user would (the interpreter lives under /root, so uid nobody cannot run it).
UNPRIVILEGED = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")


@pytest.fixture
def keydir() -> Iterator[Path]:
    """A world-readable directory outside pytest's 0700 tmp tree: server and producer key pairs, clients/."""
    path = Path(tempfile.mkdtemp(prefix="fanoutd-keys-"))
    path.chmod(0o755)
    (path / "clients").mkdir(mode=0o755)
    for name in ("server", "producer", "producer-2"):
        zmq.auth.create_certificates(path, name)
        (path / f"{name}.key_secret").chmod(0o644)
    shutil.copy(path / "producer.key", path / "clients" / "producer.key")
    yield path
    shutil.rmtree(path)


def flags(keydir: Path) -> list[str]:
    return ["--curve-secret-key", str(keydir / "server.key_secret"), "--collector-curve",
            "--collector-clients", str(keydir / "clients")]


def check_config(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, *daemon_command("--check-config", *args)], capture_output=True, text=True,
                          timeout=30)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def curve_producer(make, keydir: Path, name: str, endpoint: str) -> zmq.Socket:
    sock = make(zmq.XPUB, xpub_verbose=1)
    sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(keydir / f"{name}.key_secret")
    sock.curve_serverkey, _ = zmq.auth.load_certificate(keydir / "server.key")
    sock.connect(endpoint)
    return sock


def test_loaders_name_the_file_and_the_cause(keydir):
    with pytest.raises(ConfigError, match=r"^curve_secret_key: cannot read .*/missing: not found$"):
        load_secret_key(str(keydir / "missing"))
    with pytest.raises(ConfigError, match=r"holds no secret key \(give the \.key_secret file"):
        load_secret_key(str(keydir / "server.key"))
    with pytest.raises(ConfigError, match=r"^x_clients: cannot read directory .*/nope: not found$"):
        load_public_keys(str(keydir / "nope"), "x_clients")
    with pytest.raises(ConfigError, match=r"not a directory$"):
        load_public_keys(str(keydir / "server.key"), "x_clients")
    (keydir / "clients" / "bad.key").write_text(NOT_A_KEY)
    with pytest.raises(ConfigError, match=r"^x_clients: .*/clients/bad.key holds no public key"):
        load_public_keys(str(keydir / "clients"), "x_clients")
    (keydir / "clients" / "bad.key").write_text('public-key = "tooshort"\n')
    with pytest.raises(ConfigError, match=r"bad.key: the public key is not a 40-character Z85 CURVE key"):
        load_public_keys(str(keydir / "clients"), "x_clients")
    os.unlink(keydir / "clients" / "bad.key")
    (keydir / "clients" / "notes.txt").write_text("not a certificate, and not named like one\n")
    assert set(load_public_keys(str(keydir / "clients"), "x_clients")) == {"producer.key"}


def test_relative_key_paths_are_read_from_the_credentials_directory(keydir, monkeypatch):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(keydir))
    assert load_secret_key("server.key_secret") == zmq.auth.load_certificate(keydir / "server.key_secret")[1]


def test_malformed_key_at_start_and_check_config_is_one_line_exit_2(start_daemon, keydir):
    bad = keydir / "clients" / "bad.key"
    bad.write_text(NOT_A_KEY)
    expected = f"fanoutd: configuration error: collector_clients: {bad} holds no public key"
    r = check_config(*flags(keydir))
    assert r.returncode == 2 and one_line(r.stderr).startswith(expected), r.stderr
    d = start_daemon(*flags(keydir), ready=False)
    assert d.proc.wait(timeout=15) == 2
    assert one_line(d.log()).startswith(expected)


def test_missing_files_at_start_and_check_config_say_not_found(start_daemon, keydir):
    shutil.rmtree(keydir / "clients")
    r = check_config(*flags(keydir))
    assert r.returncode == 2
    assert one_line(r.stderr) == (f"fanoutd: configuration error: collector_clients: cannot read directory "
                                  f"{keydir / 'clients'}: not found")
    d = start_daemon("--config", str(keydir / "fanoutd.toml"), ready=False)
    assert d.proc.wait(timeout=15) == 2
    assert one_line(d.log()) == (f"fanoutd: configuration error: config file: cannot read "
                                 f"{keydir / 'fanoutd.toml'}: not found")


def test_unreadable_directory_is_refused_at_start_check_config_and_reload(start_daemon, sockets, keydir):
    clients = keydir / "clients"
    os.chown(clients, 65534, 65534)  # another owner, 0700: the daemon may not list it
    clients.chmod(0o700)
    expected = f"collector_clients: cannot read directory {clients}: permission denied"
    r = check_config(*flags(keydir), prefix=UNPRIVILEGED)
    assert r.returncode == 2 and one_line(r.stderr) == f"fanoutd: configuration error: {expected}", r.stderr
    d = start_daemon(*flags(keydir), ready=False, prefix=UNPRIVILEGED)
    assert d.proc.wait(timeout=15) == 2
    assert one_line(d.log()) == f"fanoutd: configuration error: {expected}"
    # At reload: the broker keeps running, and delivering, on the keys it had.
    clients.chmod(0o755)
    conf = keydir / "fanoutd.toml"
    conf.write_text(f'curve_secret_key = "{keydir / "server.key_secret"}"\ncollector_curve = true\n'
                    f'collector_clients = "{clients}"\n')
    conf.chmod(0o644)
    d = start_daemon("--config", str(conf), prefix=UNPRIVILEGED)
    sub = connected(sockets, zmq.SUB, d.publish)
    prod = curve_producer(sockets, keydir, "producer", d.collector)
    assert prod.poll(5000) and prod.recv()[:1] == b"\x01"
    warm_up(prod, sub)
    clients.chmod(0o700)
    d.send_signal(signal.SIGHUP)
    assert expected in wait_logged(d, "reload failed, keeping the running configuration")
    prod.send(b"orders still flowing")
    assert sub.recv() == b"orders still flowing"
    assert d.get("/readyz") == (200, "ready\n")


def test_malformed_key_at_reload_keeps_the_broker_running_and_named(start_daemon, sockets, keydir):
    """The issue's case: a *.key with no public key dropped into an allowlist directory, then SIGHUP."""
    conf = keydir / "fanoutd.toml"
    conf.write_text(f'curve_secret_key = "{keydir / "server.key_secret"}"\ncollector_curve = true\n'
                    f'collector_clients = "{keydir / "clients"}"\n')
    d = start_daemon("--config", str(conf))
    sub = connected(sockets, zmq.SUB, d.publish)
    prod = curve_producer(sockets, keydir, "producer", d.collector)
    assert prod.poll(5000) and prod.recv()[:1] == b"\x01"
    warm_up(prod, sub)
    bad = keydir / "clients" / "bad.key"
    bad.write_text(NOT_A_KEY)
    d.send_signal(signal.SIGHUP)
    line = wait_logged(d, "reload failed, keeping the running configuration")
    assert f"collector_clients: {bad} holds no public key" in line
    assert "Traceback" not in d.log()
    prod.send(b"orders after a bad reload")
    assert sub.recv() == b"orders after a bad reload"
    # The same file fixed and a new key added: the next reload says exactly what it applied.
    bad.unlink()
    shutil.copy(keydir / "producer-2.key", keydir / "clients" / "producer-2.key")
    d.send_signal(signal.SIGHUP)
    assert wait_logged(d, "reloaded: applied").endswith("reloaded: applied collector_clients +producer-2.key")
    second = curve_producer(sockets, keydir, "producer-2", d.collector)
    assert second.poll(10_000) and second.recv()[:1] == b"\x01", "the added key is let in"
    (keydir / "clients" / "producer.key").unlink()
    d.send_signal(signal.SIGHUP)
    wait_logged(d, "reloaded: applied collector_clients -producer.key")
    d.send_signal(signal.SIGHUP)
    wait_logged(d, "reloaded: applied nothing changed")
    assert d.stop() == 0


def test_missing_config_file_at_reload_keeps_the_running_configuration(start_daemon, keydir):
    conf = keydir / "fanoutd.toml"
    conf.write_text("max_frames = 8\n")
    d = start_daemon("--config", str(conf))
    conf.unlink()
    d.send_signal(signal.SIGHUP)
    line = wait_logged(d, "reload failed")
    assert line.endswith(f"reload failed, keeping the running configuration: config file: cannot read {conf}: "
                         "not found")
    assert d.value("fanoutd_max_frames") == 8 and d.get("/readyz")[0] == 200


def test_unresolvable_bind_host_says_so(start_daemon):
    d = start_daemon("--publish", "tcp://no-such-host.invalid:5561", ready=False)
    assert d.proc.wait(timeout=15) == 2
    assert one_line(d.log()) == ("fanoutd: cannot start: cannot bind publish to tcp://no-such-host.invalid:5561: "
                                 "cannot resolve host 'no-such-host.invalid' (not an address, a host name or a "
                                 "local interface)")
