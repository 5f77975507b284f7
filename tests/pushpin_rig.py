"""Debian's Pushpin as a private instance for tests/test_pushpin.py: the recipe's files, as shipped, on free ports.

Debian's own ``pushpin`` (its runner starts condure, zurl, pushpin-proxy
and pushpin-handler) runs with Debian's config plus exactly the keys of
``contrib/pushpin/pushpin.conf``; only what a second instance on a shared
machine needs is changed on top (free ports, a private run directory, the
runner's own zurl instead of the system's zurl service, the routes to a
backend on a port the kernel picked). ``contrib/pushpin/grip_backend.py``
holds the streams. Every process is started in a group of its own, so
stopping it stops what it started too.
"""

from __future__ import annotations

import configparser
import http.client
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT, Daemon, free_port, settle, wait_for

CONTRIB = ROOT / "contrib" / "pushpin"
# Debian's pushpin.conf as shipped (/etc/pushpin/pushpin.conf is a conffile an admin may have edited).
DEBIAN_CONF = Path("/usr/share/pushpin/pushpin.conf.condure")


def require(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing or not DEBIAN_CONF.exists():
        pytest.fail(f"missing {missing or DEBIAN_CONF}: run `make system-deps` (.ci/system-deps installs them)")


def spawn_group(command: list[str], log: Path) -> subprocess.Popen[str]:
    """Start a process in its own group, so that stopping it also stops what it started."""
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stop_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children the leader left behind
    except ProcessLookupError:
        pass


def _backend(spawn, tmp_path: Path) -> int:
    """The recipe's GRIP backend on a port the kernel picks; its port, read from its first line."""
    log = tmp_path / "grip.log"
    proc = spawn([sys.executable, "-u", str(CONTRIB / "grip_backend.py"), "--port", "0"], log)
    line = wait_for("the GRIP backend's first line", lambda: log.read_text(), lambda text: "\n" in text,
                    timeout=20, alive=proc)
    return int(line.splitlines()[0].rpartition(":")[2])


def _pushpin_conf(tmp_path: Path, publish: str, backend_port: int) -> Path:
    """Debian's config, the recipe's keys, and what a private instance needs on top."""
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(DEBIAN_CONF.read_text())
    conf.read_string((CONTRIB / "pushpin.conf").read_text())
    assert conf["handler"]["push_in_sub_connect"] == "true", "the recipe connects Pushpin's SUB to fanoutd"
    run, logs = tmp_path / "pushpin-run", tmp_path / "pushpin-log"
    run.mkdir()
    logs.mkdir()
    conf["global"]["rundir"] = str(run)
    conf["runner"]["logdir"] = str(logs)
    # Debian's proxy talks to the system's zurl service (/var/run/zurl); this one starts its own zurl.
    conf["runner"]["services"] = "condure,zurl,pushpin-proxy,pushpin-handler"
    for key, name in (("zurl_out_specs", "zurl-in"), ("zurl_out_stream_specs", "zurl-in-stream"),
                      ("zurl_in_specs", "zurl-out")):
        conf["proxy"][key] = "ipc://{rundir}/{ipc_prefix}" + name
    routes = tmp_path / "pushpin-routes"
    shipped = (CONTRIB / "routes").read_text()
    assert "* 127.0.0.1:7990" in shipped, "the recipe's routes send everything to the backend on 7990"
    routes.write_text(shipped.replace("127.0.0.1:7990", f"127.0.0.1:{backend_port}"))
    conf["proxy"]["routesfile"] = str(routes)
    handler = conf["handler"]
    for key in ("push_in_spec", "command_spec"):
        handler[key] = f"tcp://127.0.0.1:{free_port()}"
    handler["push_in_http_port"] = str(free_port())
    handler["push_in_sub_specs"] = publish
    path = tmp_path / "pushpin.conf"
    with open(path, "w") as out:
        conf.write(out)
    return path


def _held(port: int) -> int:
    """The status of a request Pushpin holds as a stream (200 once the proxy and the handler both take them)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/stream/_ready")
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


def start_pushpin(spawn, tmp_path: Path, daemon: Daemon) -> int:
    """Pushpin in front of the recipe's backend, subscribed to ``daemon``; its HTTP port once requests go through."""
    conf = _pushpin_conf(tmp_path, daemon.publish, _backend(spawn, tmp_path))
    port = free_port()
    proc = spawn(["pushpin", "--config", str(conf), "--merge-output", "--port", f"127.0.0.1:{port}"],
                 tmp_path / "pushpin.out")
    # Through condure, the proxy, zurl, the backend and the handler: before the handler has joined the
    # proxy, a held request gets a 500.
    wait_for("a stream held through Pushpin", lambda: _held(port), lambda status: status == 200, timeout=30,
             alive=proc)
    settle(daemon, "publish", 1, timeout=30)  # Pushpin's handler is fanoutd's one subscriber
    return port


def handler_pid(tmp_path: Path) -> int:
    """The pid of the instance's pushpin-handler (the process with the SUB), from the runner's pid file."""
    return int((tmp_path / "pushpin-run" / "pushpin-handler.pid").read_text())


class Stream(threading.Thread):
    """One HTTP streaming client: collects the ``data:`` lines of GET /stream/CHANNEL as they come."""

    def __init__(self, port: int, channel: str) -> None:
        super().__init__(daemon=True)
        self.channel = channel
        self.data: list[str] = []
        self.error: BaseException | None = None
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def run(self) -> None:
        try:
            self.conn.request("GET", f"/stream/{self.channel}")
            resp = self.conn.getresponse()
            assert resp.status == 200, resp.status
            while line := resp.readline():
                if line.startswith(b"data: "):
                    self.data.append(line[6:].rstrip(b"\n").decode())
        except (OSError, AssertionError) as exc:
            self.error = exc
