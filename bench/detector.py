"""What the slow-consumer guard costs with many subscribers connected: its per-second scan, and the broker's CPU.

    python bench/detector.py --subscribers 10000

Holds K subscribers in helper processes (a process can hold about 5,000
ZeroMQ sockets under this machine's 20,000 open-files limit: two fds each),
waits until the broker counts them all, then idles for --seconds and reports
the broker's CPU (user + system, from /proc) and the guard's own timing of
its passes (it logs each at debug level: "guard pass: looked at N
connections, W with data waiting, in X ms"). Idle, a pass looks only at
connections that had data waiting; so a producer then sends one message a
second for --busy-seconds, and the passes over every connection that this
brings back are reported too.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HOLD = r"""
import sys, time, zmq
ctx = zmq.Context(); ctx.set(zmq.MAX_SOCKETS, 10000)
socks = []
for _ in range(int(sys.argv[2])):
    s = ctx.socket(zmq.SUB); s.setsockopt(zmq.LINGER, 0); s.setsockopt(zmq.SUBSCRIBE, b""); s.connect(sys.argv[1])
    socks.append(s)
print("held", flush=True)
sys.stdin.read()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks of 1/100 s


def peers(http: str) -> int:
    text = urllib.request.urlopen(http + "/metrics", timeout=5).read().decode()
    found = re.search(r'fanoutd_connected_peers\{socket="publish"\} ([0-9.e+]+)', text)
    return int(float(found.group(1))) if found else 0


PRODUCE = r"""
import sys, time, zmq
ctx = zmq.Context(); pub = ctx.socket(zmq.PUB); pub.setsockopt(zmq.LINGER, 0); pub.connect(sys.argv[1])
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pub.send(b"detector tick"); time.sleep(1.0)
"""


def guard_passes(lines: list[str]) -> list[tuple[int, float]]:
    """(connections looked at, ms) of each guard pass in these log lines."""
    found = (re.search(r"guard pass: looked at (\d+) connections, \d+ with data waiting, in ([0-9.]+) ms", line)
             for line in lines)
    return [(int(m.group(1)), float(m.group(2))) for m in found if m]


def report(phase: str, passes: list[tuple[int, float]]) -> None:
    ms = sorted(t for _, t in passes)
    looked = sorted(n for n, _ in passes)
    if not passes:
        print(f"  {phase}: no guard pass logged")
        return
    print(f"  {phase}: {len(passes)} guard passes looked at {looked[0]} to {looked[-1]} connections (median "
          f"{looked[len(looked) // 2]}), median {ms[len(ms) // 2]:.1f} ms, max {ms[-1]:.1f} ms")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subscribers", type=int, default=10_000)
    p.add_argument("--per-process", type=int, default=5_000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--busy-seconds", type=float, default=10.0)
    args = p.parse_args()
    ports = [free_port() for _ in range(3)]
    collector, publish, http = (f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{ports[1]}",
                                f"http://127.0.0.1:{ports[2]}")
    log = tempfile.NamedTemporaryFile(prefix="fanoutd-detector-", suffix=".log", delete=False)
    broker = subprocess.Popen([sys.executable, "-m", "fanoutd", "--collector", collector,
                               "--publish", publish, "--push", "", "--stamped", "", "--metrics", f"127.0.0.1:{ports[2]}",
                               "--log-level", "debug"], stdout=log, stderr=subprocess.STDOUT)
    holders: list[subprocess.Popen[str]] = []
    try:
        time.sleep(1.5)
        left = args.subscribers
        while left > 0:
            n = min(left, args.per_process)
            holders.append(subprocess.Popen([sys.executable, "-c", HOLD, publish, str(n)], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True))
            left -= n
        t0 = time.monotonic()
        for holder in holders:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        while peers(http) < args.subscribers:
            if time.monotonic() - t0 > 120:
                raise SystemExit(f"only {peers(http)} of {args.subscribers} subscribers connected in 120 s")
            time.sleep(0.5)
        connect_time = time.monotonic() - t0
        time.sleep(3.0)  # let the handshakes and first heartbeats settle
        mark = Path(log.name).read_text().count("\n")
        c0, w0 = cpu_seconds(broker.pid), time.monotonic()
        time.sleep(args.seconds)
        cpu = (cpu_seconds(broker.pid) - c0) / (time.monotonic() - w0)
        idle = guard_passes(Path(log.name).read_text().splitlines()[mark:])
        mark = Path(log.name).read_text().count("\n")
        with subprocess.Popen([sys.executable, "-c", PRODUCE, collector, str(args.busy_seconds)]) as producer:
            producer.wait(timeout=args.busy_seconds + 30)
        busy = guard_passes(Path(log.name).read_text().splitlines()[mark:])
        print(f"{args.subscribers} subscribers connected in {connect_time:.1f} s; idle for {args.seconds:.0f} s:")
        print(f"  broker CPU {cpu * 100:.1f}% of one core (everything: libzmq heartbeats, the guard, metrics)")
        report("idle", idle)
        report(f"then a message a second for {args.busy_seconds:.0f} s", busy)
        return 0
    finally:
        for holder in holders:
            holder.kill()
        broker.terminate()
        broker.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
