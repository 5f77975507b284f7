"""The C and Node.js example clients (clients/c, clients/node) against a real fanoutd.

The C examples are compiled into a temporary directory with ``cc ... -lzmq``
(Debian: libzmq3-dev); the Node examples are copied to a temporary
directory and get their dependencies with ``npm ci --ignore-scripts`` (the
zeromq package carries its prebuilt binary).  A missing compiler, header,
node or npm fails these tests with a message saying what to install: they
are never skipped.  Every example runs as a subprocess with a timeout and
is killed at teardown; every receive in the test has a timeout.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth
from fanoutd_client import wire

from conftest import connected, free_port, ready_producer, warm_up

CLIENTS = Path(__file__).resolve().parent.parent / "clients"
EXAMPLES = ("producer", "subscriber", "puller")
LANGS = ("c", "node")
RUN_TIMEOUT = 30

pytestmark = pytest.mark.timeout(180)


def need(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"`{tool}` not found on PATH: the example-client tests need it ({hint})")
    return path


def checked_run(cmd: list[str], cwd: Path, timeout: float, hint: str) -> None:
    try:
        result = subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout}s ({hint})")
    if result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed with {result.returncode} ({hint}):\n{result.stdout}{result.stderr}")


@pytest.fixture(scope="module")
def c_examples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Each C example compiled with `cc -O2 -Wall -Werror ... -lzmq`: name -> command prefix."""
    cc = need("cc", "Debian: apt-get install gcc")
    out = tmp_path_factory.mktemp("c-examples")
    built = {}
    for name in EXAMPLES:
        source = CLIENTS / "c" / f"fanout_{name}.c"
        checked_run([cc, "-O2", "-Wall", "-Werror", "-o", str(out / name), str(source), "-lzmq"],
                    CLIENTS / "c", 120, "libzmq headers: Debian apt-get install libzmq3-dev")
        built[name] = [str(out / name)]
    return built


@pytest.fixture(scope="module")
def c_repair(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """clients/c/fanout_repair.c compiled like the others (C only: it shows the repair wire in raw bytes)."""
    out = tmp_path_factory.mktemp("c-repair") / "repair"
    checked_run([need("cc", "Debian: apt-get install gcc"), "-O2", "-Wall", "-Werror", "-o", str(out),
                 str(CLIENTS / "c" / "fanout_repair.c"), "-lzmq"], CLIENTS / "c", 120,
                "libzmq headers: Debian apt-get install libzmq3-dev")
    return [str(out)]


@pytest.fixture(scope="module")
def node_examples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """The Node examples in a temporary copy with `npm ci --ignore-scripts` done: name -> command prefix."""
    node = need("node", "Debian: apt-get install nodejs")
    npm = need("npm", "Debian: apt-get install npm")
    out = tmp_path_factory.mktemp("node-examples")
    for path in (CLIENTS / "node").iterdir():
        if path.is_file():
            shutil.copy(path, out / path.name)
    checked_run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], out, 300,
                "needs the npm registry, or its cache")
    checked_run([node, "-e", "require('zeromq')"], out, 60,
                "the zeromq package's prebuilt binary did not load")
    return {name: [node, str(out / f"{name}.js")] for name in EXAMPLES}


@pytest.fixture(params=LANGS)
def example(request: pytest.FixtureRequest) -> dict[str, list[str]]:
    """The examples of one language, built (each test runs once per language)."""
    return request.getfixturevalue(f"{request.param}_examples")


class Proc:
    """An example running as a subprocess; its stdout lines arrive on a queue."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.cmd = cmd
        self.popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, **(env or {})})
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))

    def line(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def finish(self, timeout: float = RUN_TIMEOUT) -> tuple[int, list[str], str]:
        """Wait for exit: (status, all remaining stdout lines, stderr)."""
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)
            pytest.fail(f"{self.cmd} did not exit within {timeout}s")
        self._reader.join(5)
        assert self.popen.stderr is not None
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        return self.popen.returncode, rest, self.popen.stderr.read()


@pytest.fixture
def run() -> Iterator[Callable[..., Proc]]:
    """run(cmd, env=None) -> Proc; every one still running at teardown is killed."""
    started: list[Proc] = []

    def start(cmd: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(cmd, env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.kill()
        proc.popen.wait(timeout=10)
        for stream in (proc.popen.stdout, proc.popen.stderr):
            if stream:
                stream.close()


def receive_all(sock: zmq.Socket, count: int) -> list[bytes]:
    return [sock.recv() for _ in range(count)]  # the sockets fixture gives a 5 s RCVTIMEO


def feed_until_printing(proc: Proc, producer: zmq.Socket, probe: bytes) -> list[str]:
    """Send ``probe`` until the example prints its first line (its connection is live); returns that line."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        producer.send(probe)
        first = proc.line(0.05)
        if first is not None:
            return [first]
        assert proc.popen.poll() is None, f"{proc.cmd} exited early: {proc.finish()}"
    pytest.fail(f"{proc.cmd} printed nothing within 15 s of probes")


def test_producer_reaches_subscribers_and_pullers(example, start_daemon, sockets, run):
    d = start_daemon()
    sub = connected(sockets, zmq.SUB, d.publish)
    pull = connected(sockets, zmq.PULL, d.push)
    probes = warm_up(ready_producer(sockets, d.collector), sub, pull)

    status, out, err = run([*example["producer"], d.collector, "orders", "20", "item"]).finish()
    assert (status, out) == (0, []), err

    assert receive_all(sub, 20) == [b"orders item-%d" % n for n in range(1, 21)]
    assert receive_all(pull, 20) == [b"item-%d" % n for n in range(1, 21)]
    assert not sub.poll(200) and not pull.poll(200)
    assert d.wait_value("fanoutd_received_messages_total", probes + 20) == probes + 20
    assert d.value("fanoutd_rejected_messages_total", reason="oversize") == 0


def test_producer_default_payload_and_zero_count(example, start_daemon, sockets, run):
    d = start_daemon()
    sub = connected(sockets, zmq.SUB, d.publish)
    warm_up(ready_producer(sockets, d.collector), sub)
    assert run([*example["producer"], d.collector, "t", "0"]).finish()[0] == 0
    assert run([*example["producer"], d.collector, "t", "1"]).finish()[0] == 0
    assert sub.recv() == b"t message-1"


def test_producer_gives_up_when_no_collector(example, run):
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    status, _, err = run([*example["producer"], nowhere, "orders", "1"],
                         env={"FANOUT_READY_TIMEOUT_MS": "300"}).finish()
    assert status == 1 and "no subscription from the collector" in err
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("bad", [["tcp://127.0.0.1:1", "has space", "1"], ["tcp://127.0.0.1:1", "t", "many"],
                                 ["tcp://127.0.0.1:1"]])
def test_producer_usage_errors(example, run, bad):
    status, _, err = run([*example["producer"], *bad]).finish()
    assert status == 2 and err.strip()


def test_subscriber_prints_matching_messages(example, start_daemon, sockets, run):
    d = start_daemon()
    producer = ready_producer(sockets, d.collector)
    proc = run([*example["subscriber"], d.publish, "orders", "12", "10000"])
    lines = feed_until_printing(proc, producer, b"orders warmup")
    for n in range(1, 13):
        producer.send(b"other not-for-me")
        producer.send(b"orders data-%d" % n)
    producer.send_multipart([b"orders", b"part-1", b"part-2"])
    status, rest, err = proc.finish()
    assert status == 0, err
    lines += rest
    warm = lines.count("orders warmup")
    assert warm >= 1 and lines == ["orders warmup"] * warm + [f"orders data-{n}" for n in range(1, 13 - warm)]


def test_subscriber_prints_multipart_frames_on_one_line(example, start_daemon, sockets, run):
    d = start_daemon()
    producer = ready_producer(sockets, d.collector)
    proc = run([*example["subscriber"], d.publish, "", "0", "10000"])
    feed_until_printing(proc, producer, b"warmup x")
    producer.send_multipart([b"orders", b"part-1", b"part-2"])
    deadline = time.monotonic() + 10
    line = None
    while line != "orders part-1 part-2" and time.monotonic() < deadline:
        line = proc.line(0.5)
    assert line == "orders part-1 part-2"


def test_puller_prints_payloads_without_topic(example, start_daemon, sockets, run):
    d = start_daemon()
    producer = ready_producer(sockets, d.collector)
    proc = run([*example["puller"], d.push, "12", "10000"])
    lines = feed_until_printing(proc, producer, b"orders warmup")
    for n in range(1, 12):
        producer.send(b"orders data-%d" % n)
    producer.send_multipart([b"orders", b"part-1", b"part-2"])
    status, rest, err = proc.finish()
    assert status == 0, err
    lines += rest
    warm = lines.count("warmup")
    # Probes sent after the first one arrived may still be in flight: they come first.
    expected = ["warmup"] * warm + [f"data-{n}" for n in range(1, 12)] + ["part-1 part-2"]
    assert lines == expected[:12]


@pytest.mark.parametrize("kind", ["subscriber", "puller"])
def test_consumers_exit_1_on_timeout(example, start_daemon, run, kind):
    d = start_daemon()
    args = [d.publish, "orders", "1", "300"] if kind == "subscriber" else [d.push, "1", "300"]
    started = time.monotonic()
    status, out, err = run([*example[kind], *args]).finish()
    assert (status, out) == (1, []) and "timeout" in err
    assert time.monotonic() - started < 10


def test_curve_producer_with_an_allowed_key(example, start_daemon, sockets, run, tmp_path):
    keys = {}
    (tmp_path / "clients").mkdir()
    for name in ("server", "client"):
        _, secret_file = zmq.auth.create_certificates(tmp_path, name)
        keys[name] = zmq.auth.load_certificate(secret_file)
    shutil.copy(tmp_path / "client.key", tmp_path / "clients" / "client.key")
    d = start_daemon("--curve-secret-key", str(tmp_path / "server.key_secret"),
                     "--collector-curve", "--collector-clients", str(tmp_path / "clients"))
    sub = connected(sockets, zmq.SUB, d.publish)
    py = sockets(zmq.XPUB, xpub_verbose=1)
    py.curve_publickey, py.curve_secretkey = keys["client"]
    py.curve_serverkey = keys["server"][0]
    py.connect(d.collector)
    assert py.recv()[:1] == b"\x01"
    warm_up(py, sub)

    env = {"FANOUT_SERVER_KEY": keys["server"][0].decode(), "FANOUT_PUBLIC_KEY": keys["client"][0].decode(),
           "FANOUT_SECRET_KEY": keys["client"][1].decode(), "FANOUT_READY_TIMEOUT_MS": "5000"}
    status, _, err = run([*example["producer"], d.collector, "secure", "3"], env=env).finish()
    assert status == 0, err
    assert receive_all(sub, 3) == [b"secure message-%d" % n for n in (1, 2, 3)]

    # Without keys the producer never gets the collector's subscription.
    status, _, err = run([*example["producer"], d.collector, "secure", "1"],
                         env={"FANOUT_READY_TIMEOUT_MS": "500"}).finish()
    assert status == 1 and "no subscription" in err


def trailer(seq: int, epoch: int = 99, stream: int = 1, key_length: int = 7) -> bytes:
    return wire.stamp_trailer(epoch, stream, seq, key_length)


def test_stamped_subscriber_strips_the_stamp_and_reports_what_it_missed(example, start_daemon, sockets, run):
    """Against the real stamped output nothing is missed; against a stand-in publisher whose stamps skip, the
    example counts exactly the gaps, a stream reset and a restart, as clients/README.md says to."""
    d = start_daemon()
    stamped = d.stamped
    producer = ready_producer(sockets, d.collector)
    proc = run([*example["subscriber"], stamped, "orders", "6", "10000", "stamped"])
    lines = feed_until_printing(proc, producer, b"orders warmup")
    for n in range(1, 7):
        producer.send(b"orders data-%d" % n)
    status, rest, err = proc.finish()
    assert status == 0, err
    printed = lines + rest
    warm = printed.count("orders warmup")
    assert printed == ["orders warmup"] * warm + [f"orders data-{n}" for n in range(1, 7 - warm)]
    assert err.strip().endswith("lost 0 restarts 0 resets 0"), err

    fake = sockets(zmq.XPUB)
    fake.bind("tcp://127.0.0.1:*")
    proc = run([*example["subscriber"], fake.last_endpoint.decode(), "orders", "5", "10000", "stamped"])
    assert fake.recv() == b"\x01orders"  # its subscription: the stand-in's messages will reach it
    stamps = [trailer(1), trailer(2), trailer(5), trailer(3, stream=2), trailer(9, epoch=100, stream=2)]
    for n, stamp in enumerate(stamps):
        fake.send_multipart([b"orders %d" % n, stamp])
    status, out, err = proc.finish()
    assert status == 0, err
    assert out == [f"orders {n}" for n in range(5)]
    # 5 after 2: two missed; stream 2 after stream 1: a reset, and its seq 3 says two before it were missed.
    assert err.strip().endswith("lost 4 restarts 1 resets 1"), err


def test_c_producer_to_c_subscriber_across_a_curve_federation_link_over_ipv6(c_examples, start_daemon, run,
                                                                              tmp_path):
    """The federation issue's check: 10,000 messages from the C producer at a hub to the C subscriber at an
    edge, the relay link over IPv6 with CURVE both ways (the edge's own key pair, listed at the hub)."""
    for name in ("hub", "edge"):
        zmq.auth.create_certificates(tmp_path, name)
    (tmp_path / "edges").mkdir()
    (tmp_path / "edges" / "edge.key").write_bytes((tmp_path / "edge.key").read_bytes())
    hub = start_daemon("--collector", "tcp://[::1]:*", "--relay", "tcp://[::1]:*", "--relay-curve", "--relay-clients",
                       str(tmp_path / "edges"), "--curve-secret-key", str(tmp_path / "hub.key_secret"))
    hub_collector, relay = hub.bound()["collector"][-1], hub.bound()["relay"][0]
    edge = start_daemon("--publish", "tcp://[::1]:*", "--upstream", relay, "--upstream-server-key",
                        str(tmp_path / "hub.key"), "--curve-secret-key", str(tmp_path / "edge.key_secret"))
    edge_publish = edge.bound()["publish"][-1]
    n = 10_000
    sub = run([*c_examples["subscriber"], edge_publish, "orders", str(n), "20000"])
    assert link_carries_a_probe(hub, edge_publish), "the federation link never carried a probe"
    status, out, err = run([*c_examples["producer"], hub_collector, "orders", str(n), "item"]).finish()
    assert status == 0, err
    status, lines, err = sub.finish()
    assert status == 0, err
    assert lines == [f"orders item-{k}" for k in range(1, n + 1)]
    assert edge.value("fanoutd_received_upstream_messages_total") >= n
    assert hub.value("fanoutd_auth_denied_total", socket="relay", reason="key") == 0


def link_carries_a_probe(hub, edge_publish: str) -> bool:
    """Probe hub to edge with a Python SUB until a probe arrives: the C subscriber's subscription is live then."""
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.IPV6, 1)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"probe")
    sub.connect(edge_publish)
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.IPV6, 1)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(hub.collector)
    try:
        if not pub.poll(10_000):
            return False
        pub.recv()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pub.send(b"probe x")
            if sub.poll(100):
                # The C subscriber connected at the same time as this probe; its subscription is not visible
                # from here (it counts what it gets, so probing it would change its output).
                time.sleep(0.5)
                return True
        return False
    finally:
        sub.close()
        pub.close()



def test_c_repair_asks_for_heads_and_a_range_and_prints_the_answers(c_repair, start_daemon, sockets, run):
    """Messages go into the history with nobody subscribed; the example's HEADS names their stream and its
    last sequence, its RANGE prints the held ones exactly as sent and names the rest as not stamped yet."""
    d = start_daemon()
    producer = ready_producer(sockets, d.collector)
    for n in range(1, 6):
        producer.send(b"orders data-%d" % n)
    producer.send_multipart([b"other", b"x"])
    d.wait_value("fanoutd_received_messages_total", 6)

    status, out, err = run([*c_repair, d.repair, "heads", "ord", "5000"]).finish()
    assert status == 0, err
    epoch, heads = out[0].split(), out[1:]
    assert epoch[0] == "epoch" and len(heads) == 1, out
    words = heads[0].split()
    assert words[:2] == ["stream", words[1]] and words[2:] == ["seq", "5", "key", "orders"], heads
    # The key is "orders " (its topic and the space that ends it): printed, the line ends in that space.
    assert heads[0].endswith("key orders ")

    status, out, err = run([*c_repair, d.repair, "range", epoch[1], words[1], "2", "7", "5000"]).finish()
    assert status == 0, err
    assert out == ["orders data-2", "orders data-3", "orders data-4", "orders data-5", "gone 6..7 future"]

    status, out, err = run([*c_repair, d.repair, "range", str(int(epoch[1]) ^ 1), words[1], "1", "1",
                            "5000"]).finish()
    assert (status, out) == (0, ["gone 1..1 epoch"]), err


def test_c_repair_exits_1_when_nothing_answers(c_repair, run):
    status, out, err = run([*c_repair, f"tcp://127.0.0.1:{free_port()}", "heads", "", "300"]).finish()
    assert (status, out) == (1, []) and "no answer within 300 ms" in err
    status, _, err = run([*c_repair, "tcp://127.0.0.1:1", "range", "1", "2", "x", "4", "300"]).finish()
    assert status == 2 and "bad FIRST" in err
