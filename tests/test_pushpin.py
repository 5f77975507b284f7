"""The Pushpin recipe (docs/pushpin.md), run as written: browsers and HTTP streams fed by fanoutd.

Debian's ``pushpin`` and ``zurl`` run with the recipe's files as shipped
(``tests/pushpin_rig.py``), and the producer sends
``contrib/pushpin/publish.py``'s frames through a real daemon. Several
HTTP streaming clients and a headless Chromium page with an
``EventSource`` (which POSTs each event back, in order) must each get, in
order, every event published after their stream opened; a stream counts as
open once a marker event has reached it. And a Pushpin that stops reading
is what the recipe says: one subscriber, cut and counted, whose streams
carry on once it reads again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ROOT, wait_for
from pushpin_rig import CONTRIB, Stream, handler_pid, require, spawn_group, start_pushpin, stop_group

sys.path.insert(0, str(ROOT / "contrib" / "pushpin"))
from publish import sse_frame  # noqa: E402  (the recipe's module, as shipped)

from fanoutd_client import Producer  # noqa: E402

pytestmark = pytest.mark.timeout(180)

CHANNEL = "news"
EVENTS = 200
HTTP_CLIENTS = 3
BROWSER = "chromium-headless-shell"


@pytest.fixture
def processes() -> Iterator[Callable[[list[str], Path], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def spawn(command: list[str], log: Path) -> subprocess.Popen[str]:
        started.append(spawn_group(command, log))
        return started[-1]

    yield spawn
    for proc in reversed(started):
        stop_group(proc)


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
    require("pushpin", "zurl", "condure", BROWSER)
    daemon = start_daemon()
    port = start_pushpin(processes, tmp_path, daemon)
    server, reported = _reporting_server(port)
    try:
        streams = [Stream(port, CHANNEL) for _ in range(HTTP_CLIENTS)]
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


def test_a_pushpin_that_stops_reading_is_cut_counted_and_its_streams_carry_on(start_daemon, processes, tmp_path):
    """docs/pushpin.md, "When Pushpin is slow": one subscriber under the default policy (pace), cut as ``stopped``."""
    require("pushpin", "zurl", "condure")
    daemon = start_daemon("--publish-hwm", "64")  # a queue that fills with a few hundred flood messages
    port = start_pushpin(processes, tmp_path, daemon)
    stream = Stream(port, CHANNEL)
    stream.start()
    producer = Producer(daemon.collector, wait=10.0, drop=False, send_timeout=30.0)
    try:
        def marked(marker: str) -> None:
            def probe() -> bool:
                producer.send_multipart(CHANNEL, sse_frame(marker))
                assert stream.error is None and stream.is_alive(), f"the stream ended: {stream.error!r}"
                return marker in stream.data
            wait_for(f"{marker!r} on the stream", probe, bool, timeout=60, interval=0.1)

        marked("open")
        handler = handler_pid(tmp_path)
        os.kill(handler, signal.SIGSTOP)  # Pushpin's SUB stops reading; fanoutd cannot tell it from a hung host
        try:
            flood = sse_frame("x" * 60_000)

            def flooded() -> float:
                for _ in range(20):
                    producer.send_multipart(CHANNEL, flood)
                return daemon.value("fanoutd_slow_consumers_total", socket="publish", rule="stopped")

            wait_for("Pushpin cut as stopped", flooded, lambda cuts: cuts >= 1, timeout=60, alive=daemon.proc)
        finally:
            os.kill(handler, signal.SIGCONT)
        # Its SUB reconnects and subscribes again by itself; the stream was never closed.
        marked("back")
        expected = [f"event {i}" for i in range(EVENTS)]
        for event in expected:
            producer.send_multipart(CHANNEL, sse_frame(event))
        wait_for(f"{EVENTS} events after the cut", lambda: [d for d in stream.data if d.startswith("event ")],
                 lambda got: len(got) >= EVENTS, timeout=60)
    finally:
        producer.close()
    after = stream.data[stream.data.index("back"):]
    assert [d for d in after if d != "back"] == expected
