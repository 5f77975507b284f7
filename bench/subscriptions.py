"""What a subscription costs libzmq's XPUB, and what the stable API lets a broker know about it.

The evidence behind docs/concepts.md "Subscriptions" (what one costs, why refusing means closing the
connection, what a disconnect says): run it
with the interpreter fanoutd uses (its pyzmq bundles the libzmq fanoutd runs on):

    .venv/bin/python bench/subscriptions.py [COUNT]

Each cell runs in a fresh process (memory freed by one cell would otherwise
hide the next one's growth): one XPUB, with the subscriber in a child process
(so only the XPUB's memory is measured) connecting from 127.0.0.2:

1. COUNT subscriptions of 64 random bytes, applied by libzmq (XPUB_VERBOSER),
   then the same refused by the application (XPUB_MANUAL, never applied):
   the RSS growth of each, the peer addresses the subscriptions carried, and
   what is handed up when the subscriber disconnects (how many
   unsubscriptions, and whether they say from whom: Peer-Address).
2. One subscription of 4 KiB, 64 KiB and 1 MiB: the RSS growth of each.
"""

from __future__ import annotations

import json
import subprocess
import sys

import zmq

SUBSCRIBER = """
import os, sys, time, zmq
sub = zmq.Context().socket(zmq.SUB)
sub.setsockopt(zmq.SNDHWM, 0)  # at the default (1000) a SUB drops subscriptions it makes faster than it sends them
sub.connect(sys.argv[1])
for _ in range(int(sys.argv[2])):
    sub.subscribe(os.urandom(int(sys.argv[3])))
sub.subscribe(b"END")
time.sleep(600)
"""


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def peer_address(frame: zmq.Frame) -> str:
    try:
        return frame.get("Peer-Address")
    except zmq.ZMQError as exc:
        return f"none ({exc.strerror})"


def cell(mode: int, count: int, size: int) -> dict[str, object]:
    """Subscribe ``count`` x ``size`` random bytes from a child; what the XPUB saw and grew by, then after it left."""
    xpub = zmq.Context.instance().socket(zmq.XPUB)
    xpub.setsockopt(mode, 1)
    port = xpub.bind_to_random_port("tcp://127.0.0.1")
    before = rss_mib()
    child = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, f"tcp://127.0.0.2:0;127.0.0.1:{port}",
                              str(count), str(size)])
    try:
        handed, senders = 0, set()
        while True:
            frame = xpub.recv(copy=False)
            handed += 1
            senders.add(peer_address(frame))
            if frame.bytes == b"\x01END":
                break
        grown = rss_mib() - before
    finally:
        child.kill()
        child.wait()
    gone, gone_from = 0, set()
    while xpub.poll(2000):
        frame = xpub.recv(copy=False)
        gone += 1
        gone_from.add(peer_address(frame))
    xpub.close(linger=0)
    return {"handed up": handed, "from": sorted(senders), "RSS growth MiB": round(grown, 1),
            "unsubscriptions handed up at disconnect": gone, "their Peer-Address": sorted(gone_from),
            "RSS growth MiB after": round(rss_mib() - before, 1)}


MODES = {"applied (XPUB_VERBOSER)": zmq.XPUB_VERBOSER, "refused (XPUB_MANUAL)": zmq.XPUB_MANUAL}


def run_cell(mode: str, count: int, size: int) -> dict[str, object]:
    """One cell in a fresh interpreter, its result read back."""
    out = subprocess.run([sys.executable, __file__, "--cell", mode, str(count), str(size)], check=True,
                         capture_output=True, text=True, timeout=600).stdout
    return dict(json.loads(out))


def main() -> None:
    if sys.argv[1:2] == ["--cell"]:
        print(json.dumps(cell(MODES[sys.argv[2]], int(sys.argv[3]), int(sys.argv[4]))))
        return
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(f"libzmq {zmq.zmq_version()}")
    for name in MODES:
        print(f"{count} x 64 random bytes, {name}: {run_cell(name, count, 64)}")
    for size in (4096, 64 * 1024, 1024 * 1024):
        grown = run_cell("applied (XPUB_VERBOSER)", 1, size)["RSS growth MiB"]
        print(f"one subscription of {size} bytes: RSS growth {grown} MiB")


if __name__ == "__main__":
    main()
