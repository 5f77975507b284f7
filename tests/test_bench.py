"""The benchmark harness runs end to end on a tiny load (benchmarks are not timed tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from fobench.build import build_all  # noqa: E402  (the bench's own package, beside the tests)
from fobench.procs import Child  # noqa: E402
from fobench.rawproto import REDIS, RawPublisher, subscriber_count  # noqa: E402
from fobench.servers import start_redis  # noqa: E402


@pytest.mark.timeout(300)
def test_bench_quick_runs_every_system(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    assert "| fanoutd | C baseline | Redis | NATS |" in table
    assert "could not run" not in table, table
    row = next(line for line in table.splitlines() if line.startswith("| 100 B | 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert all(cells[2:6]) and "n/a" not in cells[2], row


def _msink(bins: dict[str, Path], mode: str, port: int, k: int, size: int, count: int) -> Child:
    return Child([str(bins["msink"]), "-m", mode, "-p", str(port), "-k", str(k), "-L", str(size),
                  "-n", str(count), "-w", "20000"], f"msink-{mode}")


@pytest.mark.timeout(120)
def test_msink_holds_a_fleet_of_zmtp_subscribers_on_fanoutd(start_daemon):
    """50 raw-ZMTP subscribers in one msink get every one of 2000 paced messages from zpub through fanoutd."""
    bins = build_all()
    daemon = start_daemon()
    sink = _msink(bins, "zmtp", int(daemon.publish.rsplit(":", 1)[1]), 50, 100, 2000)
    producer = None
    try:
        sink.expect("connected", 30)
        producer = Child([str(bins["zpub"]), "-e", daemon.collector, "-s", "100", "-n", "2000", "-r", "4000"],
                         "zpub", stdin=True)
        producer.expect("subscribed", 15)
        sink.expect("ready", 30)  # every connection has had a warm-up message
        producer.send_line("go")
        sent = producer.result(60)
        out = sink.result(60)
    finally:
        for child in (producer, sink):
            if child is not None:
                child.stop()
    assert sent["sent"] == 2000
    assert out["conns"] == out["ready_conns"] == 50, out
    assert out["received_min"] == out["received_max"] == 2000 and out["received"] == 50 * 2000, out
    assert out["bad"] == 0 and out["closed"] == 0, out
    assert 0 < out["t_first"] <= out["t_last"] and 0 < out["connect_ms"] <= out["ready_ms"], out


@pytest.mark.timeout(120)
def test_msink_holds_a_fleet_of_redis_subscribers():
    """20 RESP subscribers in one msink each get all 2000 messages a raw publisher sends to redis-server."""
    bins = build_all()
    server = start_redis()
    sink = _msink(bins, "redis", server.port, 20, 1024, 2000)
    try:
        sink.expect("ready", 30)
        assert subscriber_count(REDIS, server.port) == 20
        publisher = RawPublisher(REDIS, server.port)
        try:
            publisher.paced(1024, 2000, 4000)
            publisher.flush(30)
        finally:
            publisher.close()
        out = sink.result(60)
    finally:
        sink.stop()
        server.stop()
    assert out["conns"] == out["ready_conns"] == 20, out
    assert out["received_min"] == out["received_max"] == 2000 and out["received"] == 20 * 2000, out
    assert out["bad"] == 0 and out["closed"] == 0, out


@pytest.mark.timeout(60)
def test_msink_exit_codes():
    """Bad usage exits 2; nothing to connect to exits 1 with one line on stderr."""
    msink = str(build_all()["msink"])
    usage = subprocess.run([msink, "-m", "smtp", "-p", "1", "-k", "1", "-L", "100", "-n", "1"],
                           capture_output=True, text=True, timeout=10)
    assert usage.returncode == 2 and "usage" in usage.stderr
    refused = subprocess.run([msink, "-m", "redis", "-p", str(free_port()), "-k", "5", "-L", "100", "-n", "1"],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and refused.stdout == "", refused
    assert refused.stderr.count("\n") == 1 and "refused" in refused.stderr, refused.stderr
