"""What the slow-consumer guard costs with many subscribers connected: its per-second scan, and the broker's CPU.

    python bench/detector.py --subscribers 10000

Holds K subscribers in helper processes (a process can hold about 5,000
ZeroMQ sockets under this machine's 20,000 open-files limit: two fds each),
waits until the broker counts them all, then idles for --seconds and reports
the broker's CPU (user + system, from /proc) and the guard's own timing of
its scans (it logs each at debug level: "scanned N connections in X ms").
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subscribers", type=int, default=10_000)
    p.add_argument("--per-process", type=int, default=5_000)
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args()
    ports = [free_port() for _ in range(3)]
    publish, http = f"tcp://127.0.0.1:{ports[1]}", f"http://127.0.0.1:{ports[2]}"
    log = tempfile.NamedTemporaryFile(prefix="fanoutd-detector-", suffix=".log", delete=False)
    broker = subprocess.Popen([sys.executable, "-m", "fanoutd", "--collector", f"tcp://127.0.0.1:{ports[0]}",
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
        lines = Path(log.name).read_text().splitlines()[mark:]
        scans = [float(m.group(2)) for line in lines if (m := re.search(r"scanned (\d+) connections in ([0-9.]+) ms",
                                                                          line))]
        scans.sort()
        median = scans[len(scans) // 2] if scans else float("nan")
        print(f"{args.subscribers} subscribers connected in {connect_time:.1f} s; idle for {args.seconds:.0f} s:")
        print(f"  broker CPU {cpu * 100:.1f}% of one core (everything: libzmq heartbeats, the guard, metrics)")
        print(f"  guard scans: {len(scans)}, median {median:.1f} ms, max {max(scans) if scans else float('nan'):.1f} "
              f"ms per scan of every connection (once a second)")
        return 0
    finally:
        for holder in holders:
            holder.kill()
        broker.terminate()
        broker.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
