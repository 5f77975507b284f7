"""The soak: steady traffic through a real fanoutd for minutes, with a stalled subscriber, a producer restart
and a broker restart, and every message accounted for per path, each number read from its own counter.

    python bench/soak.py --seconds 600 --out bench/soak.md      # `make soak`

Counters, and where each comes from:
- producer: messages it tried to send, and those its full queue refused (``Producer.dropped``);
- broker: each run's received, pushed, push drops and stamped messages, from the line it logs when it stops
  (``stopped: received N, ...``), and its epoch (node id) from ``/metrics``;
- puller: messages it pulled;
- each stamped subscriber, per broker epoch: messages delivered, messages lost (gaps in the stamps), the
  first and last sequence it saw (what it missed before it subscribed, and after its last message).
The report checks, exactly: producer sent = broker received + producer dropped; received = pushed + push
drops; pushed = pulled; and for each subscriber and epoch, stamped = delivered + lost + before first + after
last. Exit status 1 if any does not hold.
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import zmq

from fanoutd_client import Producer, Puller, Subscriber

ROOT = Path(__file__).resolve().parent.parent
# 200 bytes: a subscriber that stops reading for the stall fills the kernel buffers within seconds, and is cut.
PAYLOAD = b"x" * 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """fanoutd as a subprocess on fixed ports, restartable; each run's final counters parsed from its stop line."""

    def __init__(self, workdir: Path, flags: list[str]) -> None:
        ports = [free_port() for _ in range(4)]
        self.collector, self.stamped, self.push = (f"tcp://127.0.0.1:{p}" for p in ports[:3])
        self.http = f"http://127.0.0.1:{ports[3]}"
        self.args = [sys.executable, "-m", "fanoutd", "--collector", self.collector, "--publish", "",
                     "--stamped", self.stamped, "--push", self.push, "--metrics", f"127.0.0.1:{ports[3]}", *flags]
        self.workdir = workdir
        self.runs: list[dict[str, int]] = []  # per run: its counters and epoch
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.workdir / f"fanoutd-{len(self.runs)}.log", "wb")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                text = urllib.request.urlopen(self.http + "/metrics", timeout=1).read().decode()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"fanoutd did not start: see {log.name}")
                time.sleep(0.05)
        node = re.search(r'fanoutd_build_info\{[^}]*node="([0-9a-f]+)"', text)
        self.runs.append({"epoch": int(node.group(1), 16) if node else 0})

    def stop(self) -> None:
        """SIGTERM (drain, flush, exit 0); the run's counters are the ones it logs as it stops."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        if self.proc.wait(timeout=30) != 0:
            raise SystemExit(f"fanoutd exited with {self.proc.returncode}")
        text = (self.workdir / f"fanoutd-{len(self.runs) - 1}.log").read_text()
        line = re.findall(r"stopped: (.*)", text)[-1]
        self.runs[-1].update({m.group(1): int(m.group(2)) for m in re.finditer(r"([\w/]+) (\d+)", line)})
        self.runs[-1]["slow_consumers"] = len(re.findall(r"slow consumer on stamped", text))
        self.proc = None


class Sender(threading.Thread):
    """A paced producer; ``restart()`` closes it and starts a new one (a new context, a new connection)."""

    def __init__(self, endpoint: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.rate = endpoint, rate
        self.attempts = self.dropped = 0
        self.restarts = 0
        self._restart = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        generation = 0
        while not self.stop.is_set():
            context = zmq.Context()
            producer = Producer(self.endpoint, context=context, wait=10)
            t0, sent = time.monotonic(), 0
            while not (self.stop.is_set() or self._restart.is_set()):
                producer.send("soak", b"%d %d " % (generation, sent) + PAYLOAD)
                sent += 1
                if sent % 100 == 0 and (ahead := sent / self.rate - (time.monotonic() - t0)) > 0:
                    time.sleep(ahead)
            producer.close()  # lingers up to 1 s to flush what it queued
            context.term()
            self.attempts += sent
            self.dropped += producer.dropped
            generation += 1
            if self._restart.is_set():
                self._restart.clear()
                self.restarts += 1

    def restart(self) -> None:
        self._restart.set()


class Reader(threading.Thread):
    """A stamped subscriber that keeps its own books per broker epoch; ``pauses`` (at, seconds) stall it."""

    def __init__(self, name: str, endpoint: str, pauses: list[tuple[float, float]], t0: float) -> None:
        super().__init__(daemon=True)
        self.name_, self.endpoint, self.pauses, self.t0 = name, endpoint, list(pauses), t0
        self.books: dict[int, dict[str, int]] = defaultdict(lambda: {"delivered": 0, "lost": 0, "first": 0,
                                                                     "last": 0})
        self.next_seq: dict[int, int] = {}
        self.producer_gaps: list[tuple[float, int, int, int]] = []  # (when, generation, expected, got)
        self.stop = threading.Event()

    def run(self) -> None:
        with Subscriber(self.endpoint, ["soak "], stamped=True, hwm=1000) as sub:
            lost = 0
            while not self.stop.is_set():
                if self.pauses and time.monotonic() - self.t0 >= self.pauses[0][0]:
                    time.sleep(self.pauses.pop(0)[1])
                try:
                    _, payload = sub.recv(timeout=0.1)
                except TimeoutError:
                    continue
                generation, seq = map(int, payload.split(b" ", 2)[:2])
                expected = self.next_seq.get(generation, 0)
                if seq != expected:  # the producer's own numbering: where producer-to-broker gaps are
                    self.producer_gaps.append((round(time.monotonic() - self.t0, 2), generation, expected, seq))
                self.next_seq[generation] = seq + 1
                stamp = sub.last_stamp
                assert stamp is not None
                book = self.books[stamp.epoch]
                book["delivered"] += 1
                book["lost"] += sub.lost - lost
                lost = sub.lost
                book["first"] = book["first"] or stamp.seq
                book["last"] = stamp.seq


class PullReader(threading.Thread):
    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.pulled = endpoint, 0
        self.stop = threading.Event()

    def run(self) -> None:
        with Puller(self.endpoint, hwm=0) as puller:
            while not self.stop.is_set():
                try:
                    puller.recv(timeout=0.1)
                    self.pulled += 1
                except TimeoutError:
                    pass


def soak(seconds: float, rate: float, stall: float, flags: list[str], workdir: Path) -> tuple[bool, str]:
    broker = Broker(workdir, flags)
    broker.start()
    t0 = time.monotonic()
    readers = [Reader("fast", broker.stamped, [], t0),
               Reader("stalled", broker.stamped, [(0.15 * seconds, stall), (0.75 * seconds, stall)], t0)]
    puller = PullReader(broker.push)
    for thread in (*readers, puller):
        thread.start()
    time.sleep(1.0)
    sender = Sender(broker.collector, rate)
    sender.start()
    events = [(0.4 * seconds, "producer restart", sender.restart),
              (0.6 * seconds, "broker restart", lambda: (broker.stop(), broker.start()))]
    for at, _, action in events:
        time.sleep(max(0.0, at - (time.monotonic() - t0)))
        action()
    time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    sender.stop.set()
    sender.join(30)
    time.sleep(3.0)  # everything sent reaches every reader
    broker.stop()
    for thread in (*readers, puller):
        thread.stop.set()
        thread.join(10)
    return report(seconds, rate, stall, sender, broker, readers, puller)


def report(seconds: float, rate: float, stall: float, sender: Sender, broker: Broker, readers: list[Reader],
           puller: PullReader) -> tuple[bool, str]:
    runs = broker.runs
    total = {key: sum(run.get(key, 0) for run in runs) for key in ("received", "pushed", "stamped")}
    push_dropped = sum(run.get("push/no_puller", 0) + run.get("push/hwm", 0) for run in runs)
    checks = [("producer sent = broker received + producer dropped", sender.attempts,
               total["received"] + sender.dropped),
              ("broker received = pushed + push dropped", total["received"], total["pushed"] + push_dropped),
              ("broker pushed = puller pulled", total["pushed"], puller.pulled)]
    lines = [f"# fanoutd soak: {seconds:.0f} s at {rate:.0f} msg/s", "",
             f"A stamped subscriber reading everything, one that stops reading for {stall:.0f} s twice, a puller; "
             f"the producer restarted at 40 % ({sender.restarts} restart), the broker restarted (SIGTERM, "
             "drain, start on the same ports) at 60 %. Every number is read from its own counter.", "",
             "| path | counted | messages |", "|---|---|---|",
             f"| producer | sent (attempts) | {sender.attempts:,} |",
             f"| producer | refused by its full queue (`Producer.dropped`) | {sender.dropped:,} |",
             f"| broker, {len(runs)} runs | received | {total['received']:,} |",
             f"| broker | pushed / push drops | {total['pushed']:,} / {push_dropped:,} |",
             f"| puller | pulled | {puller.pulled:,} |",
             f"| broker | stamped (handed to the stamped output) | {total['stamped']:,} |",
             f"| broker | stamped sent without a full subscriber (`dropped{{output=\"stamped\"}}`) | "
             f"{sum(run.get('stamped/hwm', 0) for run in runs):,} |",
             f"| broker | slow consumers cut | {sum(run['slow_consumers'] for run in runs)} |"]
    for reader in readers:
        for i, run in enumerate(runs):
            book = reader.books.get(run["epoch"], {"delivered": 0, "lost": 0, "first": 1, "last": 0})
            before, after = book["first"] - 1, run.get("stamped", 0) - book["last"]
            lines.append(f"| {reader.name_} subscriber, broker run {i + 1} | delivered / lost (stamp gaps) / "
                         f"before its first / after its last | {book['delivered']:,} / {book['lost']:,} / "
                         f"{before:,} / {after:,} |")
            checks.append((f"{reader.name_}, run {i + 1}: stamped = delivered + lost + before first + after last",
                           run.get("stamped", 0), book["delivered"] + book["lost"] + before + after))
    fast = readers[0]
    ends = ", ".join(f"generation {g}: {n:,}" for g, n in sorted(fast.next_seq.items()))
    lines += ["", f"Producer numbering as the fast subscriber saw it (next expected per generation: {ends}); "
              f"gaps: {fast.producer_gaps or 'none'} (seconds into the run, generation, expected, got)."]
    lines += ["", "| identity | left | right | holds |", "|---|---|---|---|"]
    lines += [f"| {name} | {left:,} | {right:,} | {'yes' if left == right else '**no**'} |"
              for name, left, right in checks]
    return all(left == right for _, left, right in checks), "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--rate", type=float, default=5000.0, help="messages per second the producer sends")
    p.add_argument("--stall", type=float, default=15.0, help="seconds the stalled subscriber stops reading, twice")
    p.add_argument("--broker-flag", action="append", default=[], help="an extra fanoutd flag (repeatable)")
    p.add_argument("--out", type=Path, help="also write the report here (markdown)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp"), help="where the broker logs go")
    args = p.parse_args()
    flags = [f for flag in args.broker_flag for f in flag.split(" ", 1)]
    ok, text = soak(args.seconds, args.rate, args.stall, flags, args.workdir)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
