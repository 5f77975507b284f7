"""The benchmark harness runs end to end on a tiny load (benchmarks are not timed tests)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from fobench.build import build_all  # noqa: E402  (the bench's own package, beside the tests)
from fobench.procs import Child  # noqa: E402
from fobench import brokerstats, subscriptions  # noqa: E402
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


@pytest.mark.timeout(120)
def test_ab_compares_two_builds_side_by_side(tmp_path):
    """bench/ab.py runs both builds on a throughput cell and a CPU cell and reports B's ratio to A (the same
    build here, so near 1), naming the fanoutd each side ran."""
    out = tmp_path / "ab.md"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "ab.py"), "--b", sys.executable, "--repeats", "1",
                        "--sizes", "100", "--subs", "1", "--scale", "0.02", "--cost-seconds", "0.5",
                        "--cost-cells", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = out.read_text()
    assert f"A: `{ROOT / 'fanoutd' / '__init__.py'}`" in table, table  # the build under test, by its own install
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
            for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    a, b, ratio, pairs = rows["100 B x1, msg/s"]
    assert a.endswith("k") and b.endswith("k") and 0.2 < float(ratio) < 5, rows
    assert pairs.startswith(f"{ratio} (") and pairs.endswith(")"), rows  # one pair: its median is the ratio
    a, b, ratio, pairs = rows["CPU 100 B x4 @ 40,000/s, µs/delivery"]
    assert 0 < float(a) < 100 and 0 < float(b) < 100 and 0.2 < float(ratio) < 5, rows
    assert pairs.startswith(f"{ratio} ("), rows
    for thread in ("loop", "I/O threads"):  # the run's CPU by thread, per message (a short run may show 0 ticks)
        a, b, ratio, _ = rows[f"100 B x1, {thread} CPU, ns/msg"]
        assert 0 <= float(a.replace(",", "")) < 100_000 and 0 <= float(b.replace(",", "")) < 100_000, rows


@pytest.mark.timeout(120)
def test_pace_runs_both_policies_on_one_cell(tmp_path):
    """bench/pace.py runs the broker under each policy with the same clients and reports every delivery."""
    out = tmp_path / "pace.md"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "pace.py"), "--repeats", "1", "--subs", "2",
                        "--count", "2000", "--out", str(out)], capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith(("| cut |", "| pace |"))]
    assert [row.split("|")[1].strip() for row in rows] == ["cut", "pace"], rows
    pace = [c.strip() for c in rows[1].strip("|").split("|")]
    assert pace[1] == "6,000 of 6,000" and pace[3] == "none", pace  # under the queue at this size: nothing cut


def _msink(bins: dict[str, Path], mode: str, port: int, k: int, size: int, count: int,
           offset: int | None = None, extra: list[str] | None = None) -> Child:
    argv = [str(bins["msink"]), "-m", mode, "-p", str(port), "-k", str(k), "-L", str(size), "-n", str(count),
            "-w", "20000", *(extra or [])]
    return Child(argv + (["-o", str(offset)] if offset is not None else []), f"msink-{mode}")


def _rawpub(bins: dict[str, Path], mode: str, port: int, size: int, count: int, rate: float = 0) -> Child:
    argv = [str(bins["rawpub"]), "-m", mode, "-p", str(port), "-s", str(size), "-n", str(count)]
    return Child(argv + (["-r", str(rate)] if rate else []), "rawpub", stdin=True)


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size, subs, count, rate", [(100, 50, 2000, 4000), (1024, 3, 20000, 0)],
                         ids=["paced-short-frames", "flat-out-long-frames"])
def test_raw_zmtp_clients_carry_every_message_through_fanoutd(start_daemon, size, subs, count, rate):
    """rawpub (a PUB over raw ZMTP) through fanoutd to msink subscribers and an msink puller: all get all."""
    bins = build_all()
    daemon = start_daemon()
    subscribers = _msink(bins, "zmtp", _port(daemon.publish), subs, size, count)
    puller = _msink(bins, "zmtp-pull", _port(daemon.push), 1, size - 2, count, offset=0)  # no "t " for pullers
    producer = None
    try:
        subscribers.expect("connected", 30)
        puller.expect("connected", 30)
        producer = _rawpub(bins, "zmtp", _port(daemon.collector), size, count, rate)
        producer.expect("subscribed", 15)
        subscribers.expect("ready", 30)  # every connection has had a warm-up message
        puller.expect("ready", 30)
        producer.send_line("go")
        sent = producer.result(60)  # after the collector's PONG: it has read everything
        outs = [subscribers.result(60), puller.result(60)]
    finally:
        for child in (producer, subscribers, puller):
            if child is not None:
                child.stop()
    assert sent["sent"] == count and 0 < sent["t_first"] <= sent["t_last"], sent
    for out, conns in zip(outs, (subs, 1)):
        assert out["conns"] == out["ready_conns"] == conns, out
        assert out["received_min"] == out["received_max"] == count and out["received"] == conns * count, out
        assert out["bad"] == 0 and out["closed"] == 0, out
        assert 0 < out["t_first"] <= out["t_last"] and 0 < out["connect_ms"] <= out["ready_ms"], out


@pytest.mark.timeout(120)
def test_msink_holds_a_fleet_of_redis_subscribers():
    """20 RESP subscribers in one msink each get all 2000 messages rawpub sends to redis-server."""
    bins = build_all()
    server = start_redis()
    sink = _msink(bins, "redis", server.port, 20, 1024, 2000)
    producer = None
    try:
        sink.expect("ready", 30)
        assert subscriptions.count("redis", server.port) == 20
        producer = _rawpub(bins, "redis", server.port, 1024, 2000, 4000)
        producer.expect("connected", 15)
        producer.send_line("go")
        assert producer.result(60)["sent"] == 2000  # after redis's PONG: it has taken everything
        out = sink.result(60)
    finally:
        for child in (producer, sink):
            if child is not None:
                child.stop()
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


@pytest.mark.timeout(120)
def test_overload_runs_every_cell_on_every_system(tmp_path):
    """bench/overload.py, each cell shrunk: every system runs every cell, and every equal reader gets everything."""
    out = tmp_path / "overload.md"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "overload.py"), "--scale", "0.01", "--max-readers", "20",
                        "--idle-ms", "2000", "--out", str(out)], capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| cell")]
    assert [(row[0], row[1].split(" (")[0]) for row in rows] == [
        (cell, system) for cell in ("flat10", "overload", "stalled", "tenth", "crowd")
        for system in ("fanoutd", "NATS", "Redis")], rows
    for row in rows:
        delivered, expected = row[2].split(" of ")
        assert delivered == expected and row[3] == "0", row  # far below every bound: nobody loses at this size
        assert float(row[7].replace(",", "")) > 0 and int(row[9].split(" ")[0].replace(",", "")) > 0, row
    assert all(row[5] == "stalled" for row in rows if row[0] == "stalled"), rows
    assert all(row[5].replace(",", "").isdigit() for row in rows if row[0] == "tenth"), rows
    # pace is fanoutd's default, so only the cell's own setting is named (no policy lever, no publish_hwm stand-in)
    assert rows[0][1] == "fanoutd" and rows[3][1] == "fanoutd (publish_hwm 1000)", rows


@pytest.mark.timeout(120)
def test_msink_stalled_subscriber_is_cut_by_redis_and_counted():
    """msink -S stops reading once subscribed: Redis holds what it cannot write until its output-buffer limit
    (pubsub 32 MB) closes it, and brokerstats reads that from Redis itself; a reading msink gets everything."""
    bins = build_all()
    server = start_redis()
    stalled = _msink(bins, "redis", server.port, 1, 65536, 1000, extra=["-S"])
    reader = _msink(bins, "redis", server.port, 1, 65536, 1000)
    producer = None
    try:
        stalled.expect("ready", 30)
        reader.expect("ready", 30)
        producer = _rawpub(bins, "redis", server.port, 65536, 1000, 4000)  # 64 MB in 0.25 s
        producer.expect("connected", 15)
        producer.send_line("go")
        assert producer.result(60)["sent"] == 1000
        out = reader.result(60)
        assert brokerstats.cuts(server) == {"output_buffer_limit": 1}
        assert 0 < brokerstats.peak_rss(server.pid) < 200 * 2**20
    finally:
        for child in (producer, stalled, reader):
            if child is not None:
                child.stop()
        server.stop()
    assert out["received"] == 1000 and out["closed"] == 0, out


@pytest.mark.timeout(120)
def test_msink_read_rate_cap_spreads_the_reading_out():
    """msink -b BPS reads at most BPS bytes a second: 200 KiB at 100 KiB/s take about 2 s to arrive, though
    Redis has them all in a fraction of that."""
    bins = build_all()
    server = start_redis()
    slow = _msink(bins, "redis", server.port, 1, 1024, 200, extra=["-b", str(100 * 1024)])
    producer = None
    try:
        slow.expect("ready", 30)
        producer = _rawpub(bins, "redis", server.port, 1024, 200)
        producer.expect("connected", 15)
        producer.send_line("go")
        sent = producer.result(60)
        out = slow.result(60)
    finally:
        for child in (producer, slow):
            if child is not None:
                child.stop()
        server.stop()
    assert out["received"] == 200 and out["closed"] == 0, out
    assert (sent["t_end"] - sent["t_first"]) < 0.5e9, sent
    assert 1.6e9 < out["t_last"] - sent["t_first"] < 4e9, (out, sent)


@pytest.mark.timeout(120)
def test_overload_repeats_end_with_medians_over_every_run(tmp_path):
    """With --repeats, bench/overload.py adds each cell's medians, every run in brackets; the saved runs rebuild
    the same table with --medians-of."""
    out = tmp_path / "overload.md"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "overload.py"), "--scale", "0.01", "--max-readers", "5",
                        "--cells", "tenth", "--systems", "fanoutd,redis", "--repeats", "2", "--idle-ms", "2000",
                        "--out", str(out)], capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = out.read_text()
    medians = table[table.index("Medians"):].splitlines()
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in medians if line.startswith("| tenth |")}
    assert sorted(rows) == ["Redis", "fanoutd"], medians
    for row in rows.values():
        assert row[2] == "12,000: every one, every run" and len(row[4].split(", ")) == 2, row  # 2,000 x (5 + 1)
        assert re.fullmatch(r"[\d.]+ \([\d.]+, [\d.]+\)", row[7]), row  # seconds: the median, then each run
    again = tmp_path / "again.md"
    subprocess.run([sys.executable, str(ROOT / "bench" / "overload.py"), "--medians-of", str(out.with_suffix(".json")),
                    "--out", str(again)], check=True, capture_output=True, timeout=60, cwd=ROOT)
    assert again.read_text().strip() == "\n".join(medians[2:]).strip()


@pytest.mark.timeout(180)
def test_history_compares_history_on_off_and_before_and_serves_repair(tmp_path):
    """bench/history.py runs the stamped output with history on, off and with the build before history (the
    same build here, history not passed), at a flat-out and a fixed rate, and the repair path."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "history.py"), "--b", sys.executable, "--sizes", "100",
                        "--repeats", "1", "--scale", "0.01", "--rate", "5000", "--repair-peers", "1",
                        "--repair-seconds", "1"], capture_output=True, text=True, timeout=170, cwd=ROOT / "bench")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in r.stdout.splitlines()
            if line.startswith("| 100 B |")]
    assert [(row[1], row[2]) for row in rows[:8]] == [(load, cell) for load in ("flat out", "5,000/s")
                                                      for cell in ("before", "off", "off, no repair", "on")], rows
    for row in rows[:8]:
        rate, cpu, rss = (float(c.split()[0].replace(",", "")) for c in row[3:6])
        assert rate > 0 and 0 < cpu < 1e6 and rss > 0, row
    size, peers, served, cpu = rows[8]
    assert peers == "1" and float(served.replace(",", "")) > 0 and float(cpu.replace(",", "")) > 0, rows[8]


@pytest.mark.timeout(120)
def test_heldcost_reads_the_cpu_per_message_of_two_builds():
    """bench/heldcost.py runs each build's in-process loop on a burst and prints the CPU per message of both;
    the same build on both sides here, so only the figures' sanity is asserted."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "heldcost.py"), "--b", sys.executable, "--sizes",
                        "100,16384", "--repeats", "1", "--scale", "0.01"], capture_output=True, text=True,
                       timeout=110, cwd=ROOT / "bench")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in r.stdout.splitlines()
            if line.startswith("| ") and " B |" in line]
    assert [row[0] for row in rows] == ["100 B", "16384 B"], r.stdout
    for row in rows:
        a, b, ratio = (float(c.replace(",", "")) for c in row[1:4])
        assert 0 < a < 1e6 and 0 < b < 1e6 and ratio > 0, row
