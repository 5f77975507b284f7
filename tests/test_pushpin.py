"""The Pushpin recipe (docs/pushpin.md), run as written: browsers and HTTP streams fed by fanoutd.

Debian's own ``pushpin`` (its runner starts condure, zurl, pushpin-proxy
and pushpin-handler) runs with Debian's config plus exactly the keys of
``contrib/pushpin/pushpin.conf``; only what a second instance on a shared
machine needs is changed on top (free ports, a private run directory, the
runner's own zurl instead of the system's zurl service, the routes to the
test's backend). ``contrib/pushpin/grip_backend.py`` holds the streams,
and the producer sends ``contrib/pushpin/publish.py``'s frames through a
real daemon. Several HTTP streaming clients and a headless Chromium page
with an ``EventSource`` (which POSTs each event back, in order) must each
get, in order, every event published after their stream opened; a stream
counts as open once a marker event has reached it.
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
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ROOT, Daemon, free_port, settle, wait_for

sys.path.insert(0, str(ROOT / "contrib" / "pushpin"))
from publish import sse_frame  # noqa: E402  (the recipe's module, as shipped)

from fanoutd_client import Producer  # noqa: E402

pytestmark = pytest.mark.timeout(180)

CONTRIB = ROOT / "contrib" / "pushpin"
# Debian's pushpin.conf as shipped (/etc/pushpin/pushpin.conf is a conffile an admin may have edited).
DEBIAN_CONF = Path("/usr/share/pushpin/pushpin.conf.condure")
CHANNEL = "news"
EVENTS = 200
HTTP_CLIENTS = 3
BROWSER = "chromium-headless-shell"


def _require(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing or not DEBIAN_CONF.exists():
        pytest.fail(f"missing {missing or DEBIAN_CONF}: run `make system-deps` (.ci/system-deps installs them)")


def _spawn(command: list[str], log: Path) -> subprocess.Popen[str]:
    """Start a process in its own group, so that stopping it also stops what it started."""
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _stop(proc: subprocess.Popen[str]) -> None:
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


@pytest.fixture
def processes() -> Iterator[Callable[[list[str], Path], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def spawn(command: list[str], log: Path) -> subprocess.Popen[str]:
        started.append(_spawn(command, log))
        return started[-1]

    yield spawn
    for proc in reversed(started):
        _stop(proc)


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
    routes.write_text((CONTRIB / "routes").read_text().replace("127.0.0.1:7990", f"127.0.0.1:{backend_port}"))
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


def _start_pushpin(spawn, tmp_path: Path, daemon: Daemon) -> int:
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


class Stream(threading.Thread):
    """One HTTP streaming client: collects the ``data:`` lines of GET /stream/CHANNEL as they come."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.data: list[str] = []
        self.error: BaseException | None = None
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def run(self) -> None:
        try:
            self.conn.request("GET", f"/stream/{CHANNEL}")
            resp = self.conn.getresponse()
            assert resp.status == 200, resp.status
            while line := resp.readline():
                if line.startswith(b"data: "):
                    self.data.append(line[6:].rstrip(b"\n").decode())
        except (OSError, AssertionError) as exc:
            self.error = exc


PAGE = """<!doctype html><title>fanoutd through Pushpin</title><script>
let chain = Promise.resolve();
const source = new EventSource("http://127.0.0.1:%d/events/%s");
// One POST at a time, in the order the events came: the test sees the browser's order.
source.onmessage = (e) => { chain = chain.then(() => fetch("/report", {method: "POST", body: e.data})); };
</script>"""


def _reporting_server(pushpin_port: int) -> tuple[ThreadingHTTPServer, list[str]]:
    """The test's own HTTP server: serves the EventSource page and collects what the browser POSTs back."""
    reported: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = (PAGE % (pushpin_port, CHANNEL)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            reported.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass  # one line per event would drown the test's output

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, reported


def _events_after_markers(received: list[str]) -> list[str]:
    assert received and received[0] == "marker", received[:5]
    return [item for item in received if item != "marker"]


def test_every_event_reaches_http_streams_and_a_browser_through_pushpin(start_daemon, processes, tmp_path):
    _require("pushpin", "zurl", "condure", BROWSER)
    daemon = start_daemon()
    port = _start_pushpin(processes, tmp_path, daemon)
    server, reported = _reporting_server(port)
    try:
        streams = [Stream(port) for _ in range(HTTP_CLIENTS)]
        for stream in streams:
            stream.start()
        profile = tmp_path / "chromium-profile"
        browser = processes([BROWSER, "--no-sandbox", "--headless", "--disable-gpu", f"--user-data-dir={profile}",
                             f"http://127.0.0.1:{server.server_port}/"], tmp_path / "chromium.log")
        producer = Producer(daemon.collector, wait=10.0, drop=False, send_timeout=10.0)
        try:
            clients = [*(s.data for s in streams), reported]

            def marked() -> int:
                """Markers until every client has one: each stream and Pushpin's subscription are open then."""
                producer.send_multipart(CHANNEL, sse_frame("marker"))
                for s in streams:
                    assert s.error is None and s.is_alive(), f"a stream ended: {s.error!r}"
                return sum(1 for received in clients if received)

            wait_for("a marker at every client", marked, lambda n: n == len(clients), timeout=60,
                     interval=0.1, alive=browser)
            expected = [f"event {i}" for i in range(EVENTS)]
            for event in expected:
                producer.send_multipart(CHANNEL, sse_frame(event))

            def arrived(count: int) -> None:
                wait_for(f"{count} events at every client", lambda: [len(_events_after_markers(r)) for r in clients],
                         lambda counts: all(n >= count for n in counts), timeout=60, alive=browser)

            arrived(EVENTS)
            # Then the recipe's command, as docs/pushpin.md shows it (another connection: only once the rest is in).
            expected.append("from the command line")
            subprocess.run([sys.executable, str(CONTRIB / "publish.py"), "--collector", daemon.collector, CHANNEL,
                            expected[-1]], check=True, timeout=30)
            arrived(len(expected))
        finally:
            producer.close()
        for name, received in zip([*(f"stream {i}" for i in range(HTTP_CLIENTS)), "browser"], clients):
            assert _events_after_markers(received) == expected, f"{name} got them out of order or twice"
        # Pushpin kept up: nothing cut or dropped on its way out of fanoutd.
        assert daemon.total("fanoutd_slow_consumers_total", socket="publish") == 0
        assert daemon.total("fanoutd_dropped_messages_total", output="publish") == 0
    finally:
        server.shutdown()
        server.server_close()
