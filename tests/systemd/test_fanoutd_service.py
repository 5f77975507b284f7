"""systemd/fanoutd.service, as shipped, running the real daemon under a real systemd.

The box (see nsboot.py) gets the unit file unchanged plus one drop-in that
points ExecStart at ``python -m fanoutd`` of the Python running the tests
and binds that Python and the repository read-only into the service's
sandbox (a test machine has no /usr/local/bin/fanoutd).  The configuration
is /etc/fanoutd/fanoutd.toml in the box, on loopback ports of the box's own
network namespace, so nothing on the host can collide with it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nsboot import SystemdBox, python_paths, service_paths_dropin

REPO = Path(__file__).resolve().parents[2]
UNIT = "fanoutd.service"
CONFIG = """\
collector = ["tcp://127.0.0.1:5560"]
publish = ["tcp://127.0.0.1:5561"]
push = ["tcp://127.0.0.1:5562"]
metrics = "127.0.0.1:9560"
drain_timeout = 2.0
"""
PORTS = (5560, 5561, 5562, 9560)

# Run in the box (as root, in its network namespace): one message through
# the daemon, producer -> collector -> PUB -> subscriber.
ROUND_TRIP = """\
import sys, time, zmq
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB); sub.setsockopt(zmq.SUBSCRIBE, b""); sub.setsockopt(zmq.LINGER, 0)
sub.connect("tcp://127.0.0.1:5561")
pub = ctx.socket(zmq.PUB); pub.setsockopt(zmq.LINGER, 0); pub.connect("tcp://127.0.0.1:5560")
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    pub.send_multipart([b"t", b"hello from the box"])
    if sub.poll(100):
        print(sub.recv_multipart()[1].decode()); sys.exit(0)
sys.exit("no message came through fanoutd")
"""


# Run in the box: freeze only the forwarding thread (ptrace-stop it by its
# name) and hold it frozen until the process is gone: the main thread keeps
# running, so only a watchdog that watches the loop itself can notice.
FREEZE_LOOP = """\
import ctypes, os, sys, time
pid = sys.argv[1]
tid = next(int(t) for t in os.listdir(f"/proc/{pid}/task")
           if open(f"/proc/{pid}/task/{t}/comm").read().strip() == "fanoutd-fwd")
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
for request in (PTRACE_SEIZE, PTRACE_INTERRUPT):
    if libc.ptrace(request, tid, None, None) != 0:
        sys.exit(f"ptrace {request:#x} on {tid}: {os.strerror(ctypes.get_errno())}")
print("frozen", tid, flush=True)
def alive():
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
deadline = time.monotonic() + 40
while alive() and time.monotonic() < deadline:
    time.sleep(0.2)
sys.exit("still alive after 40 s" if alive() else 0)  # exiting lets the traced thread go too
"""


# Run in the box as a transient unit (systemd-run): a subscriber that keeps reading, slowly and steadily, and a
# producer that sends 64 KiB messages flat out and waits when held back (drop=False), so that under pace the broker
# holds its output (and the producer) to the reader's pace. 25 messages a second is deliberately slow: the loop
# counts a turn once per batch of up to 512 messages (loop.c, BATCH), so at this pace a batch takes about 20 s,
# twice WatchdogSec=10s, and only the ticks of the stall's "stall on" answers (fanout.c, stall_output) keep the
# watchdog fed. The messages are large, and the reader's queues small (RCVHWM 4, a 256 KiB SO_RCVBUF), so that
# its acknowledged bytes move every couple of messages, well within the guard's 0.5 s "stopped" span: on loopback
# (MSS 64 KiB) 1 KiB messages at this rate leave TCP nothing to acknowledge for longer, and the reader is cut as
# stopped.
PACE = """\
import sys, threading, time, zmq
from fanoutd_client import Producer
seconds = float(sys.argv[1])
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB); sub.setsockopt(zmq.SUBSCRIBE, b""); sub.setsockopt(zmq.LINGER, 0)
sub.setsockopt(zmq.RCVHWM, 4); sub.setsockopt(zmq.RCVBUF, 256 * 1024)
sub.connect("tcp://127.0.0.1:5561")
got = [0]
def read():
    while sub.poll(10_000):
        sub.recv(); got[0] += 1
        if got[0] % 10 == 0:
            print("read", got[0], flush=True)
        time.sleep(0.04)
threading.Thread(target=read, daemon=True).start()
producer = Producer("tcp://127.0.0.1:5560", wait=10, drop=False, send_timeout=seconds)
payload = b"x" * 64 * 1024
deadline = time.monotonic() + seconds
sent = 0
try:
    while time.monotonic() < deadline:
        producer.send(b"t", payload); sent += 1
finally:
    print("done: sent", sent, "read", got[0], "dropped", producer.dropped, flush=True)
"""


def dropin() -> str:
    paths = service_paths_dropin([sys.prefix, sys.base_prefix, str(REPO)]).replace("[Service]\n", "")
    return ("[Service]\n"
            "ExecStart=\n"
            f"ExecStart={sys.executable} -m fanoutd --config /etc/fanoutd/fanoutd.toml\n"
            "Environment=PYTHONDONTWRITEBYTECODE=1\n" + paths)


@pytest.fixture
def box() -> Iterator[SystemdBox]:
    assert (REPO / "fanoutd" / "__main__.py").exists(), "python -m fanoutd is missing from the repository"
    with SystemdBox(
        units={UNIT: (REPO / "systemd" / UNIT).read_text(), f"{UNIT}.d/test.conf": dropin()},
        files={"/etc/fanoutd/fanoutd.toml": CONFIG},
        binds=[*python_paths(), str(REPO)],
    ) as b:
        yield b


def props(box: SystemdBox) -> dict[str, str]:
    return box.show(UNIT, "ActiveState", "SubState", "Result", "MainPID", "NRestarts", "StatusText",
                    "ExecMainStatus", "WatchdogUSec")


def listening(box: SystemdBox) -> set[int]:
    out = box.run(["ss", "-Hltn"]).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


def stop_cleanly(box: SystemdBox) -> float:
    """systemctl stop: the unit ends inactive, successful, exit 0, its ports closed; returns the seconds it took."""
    t0 = time.monotonic()
    box.systemctl("stop", UNIT, timeout=45)
    took = time.monotonic() - t0
    q = props(box)
    assert (q["ActiveState"], q["Result"], q["ExecMainStatus"]) == ("inactive", "success", "0"), \
        (q, box.journal(UNIT))
    assert listening(box) & set(PORTS) == set()
    return took


@pytest.mark.timeout(120)
def test_start_after_ready_reload_watchdog_stop(box: SystemdBox) -> None:
    assert listening(box) & set(PORTS) == set(), "ports already taken in a fresh box"
    box.systemctl("start", UNIT, timeout=45)
    # `systemctl start` returned: READY=1 has come, so every socket is bound now.
    p = props(box)
    assert (p["ActiveState"], p["SubState"]) == ("active", "running"), (p, box.journal(UNIT))
    assert set(PORTS) <= listening(box), (listening(box), box.journal(UNIT))
    ready = box.run([sys.executable, "-c",
                     "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9560/readyz', timeout=5).status)"])
    assert ready.stdout.strip() == "200"

    # It runs sandboxed, as the unit says.
    status = box.run(["cat", f"/proc/{p['MainPID']}/status"]).stdout
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in status.splitlines())}
    assert 61184 <= int(fields["Uid"].split()[0]) <= 65519, status  # a DynamicUser uid
    assert (fields["NoNewPrivs"], fields["Seccomp"], fields["CapEff"]) == ("1", "2", "0000000000000000"), status

    # Messages flow (MemoryDenyWriteExecute and the syscall filter let gevent and libzmq work).
    trip = box.run([sys.executable, "-c", ROUND_TRIP], timeout=30, check=False)
    assert trip.returncode == 0 and "hello from the box" in trip.stdout, (trip.stdout, trip.stderr,
                                                                          box.journal(UNIT))

    # The watchdog (WatchdogSec=10s) is fed: still the same process after it would have fired.
    assert p["WatchdogUSec"] in ("10s", "10000000"), p
    time.sleep(12)
    q = props(box)
    assert (q["ActiveState"], q["MainPID"], q["NRestarts"]) == ("active", p["MainPID"], "0"), (q, box.journal(UNIT))

    # Reload: a [live] setting changed in the file, SIGHUP; applied by the same process.
    box.write_file("/etc/fanoutd/fanoutd.toml", CONFIG + "max_frames = 8\n")
    box.systemctl("reload", UNIT)
    box.wait_for("the daemon to apply the reloaded file",
                 lambda: "max_frames=8" in box.journal(UNIT, output="cat"), timeout=15)
    q = props(box)
    assert (q["ActiveState"], q["MainPID"]) == ("active", p["MainPID"]), (q, box.journal(UNIT))

    # A stalled engine: the forwarding thread frozen, everything else alive. The
    # watchdog pings stop (they follow the loop's ticks), systemd kills and restarts.
    frozen = box.run([sys.executable, "-c", FREEZE_LOOP, p["MainPID"]], timeout=60, check=False)
    assert frozen.returncode == 0 and "frozen" in frozen.stdout, (frozen.stdout, frozen.stderr, props(box),
                                                                  box.journal(UNIT))
    box.wait_for("the watchdog restart", lambda: props(box)["NRestarts"] == "1"
                 and props(box)["ActiveState"] == "active", timeout=30)
    assert "Watchdog timeout" in box.journal(UNIT), box.journal(UNIT)
    assert "has not gone round" in box.journal(UNIT, output="cat"), box.journal(UNIT)
    trip = box.run([sys.executable, "-c", ROUND_TRIP], timeout=30, check=False)
    assert trip.returncode == 0, (trip.stdout, trip.stderr, box.journal(UNIT))

    # Stop: SIGTERM, drain, exit 0 well within TimeoutStopSec=30s.
    took = stop_cleanly(box)
    assert took < 30, f"stop took {took:.1f}s"
    assert box.run(["test", "-e", "/run/fanoutd"], check=False).returncode == 1, "RuntimeDirectory left behind"


PACE_CONFIG = CONFIG + """\
slow_consumer_policy = "pace"
slow_consumer_pace_share = 1.0
publish_hwm = 100
collector_hwm = 100
"""
PACE_FOR = 16.0  # seconds of pacing watched, past WatchdogSec=10s with room for a watchdog interval of 5 s


def metrics(box: SystemdBox) -> dict[str, float]:
    """The daemon's /metrics (asked in the box, where its port is), as {'name{labels}': value}."""
    text = box.run([sys.executable, "-c", "import urllib.request as u; "
                    "print(u.urlopen('http://127.0.0.1:9560/metrics', timeout=5).read().decode())"]).stdout
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


HELD = 'fanoutd_output_held_seconds_total{socket="publish"}'


def reads(box: SystemdBox) -> int:
    """How many messages the pacer's reader has read, from its latest line in the journal."""
    counts = [int(line.split()[1]) for line in box.journal("pacer.service", output="cat").splitlines()
              if line.startswith("read ")]
    return counts[-1] if counts else 0


def cut(sample: dict[str, float]) -> float:
    """Slow consumers cut, on every output and by every rule."""
    return sum(v for k, v in sample.items() if k.startswith("fanoutd_slow_consumers_total"))


@pytest.mark.timeout(90)
def test_a_long_pace_keeps_the_watchdog_fed_and_a_stop_while_paced_is_bounded(box: SystemdBox) -> None:
    """Issue #25: under pace, a reader that keeps reading slowly holds the output for longer than WatchdogSec,
    and the service is neither killed by the watchdog nor slow to stop."""
    box.write_file("/etc/fanoutd/fanoutd.toml", PACE_CONFIG)
    box.systemctl("start", UNIT, timeout=45)
    p = props(box)
    assert (p["ActiveState"], p["NRestarts"]) == ("active", "0"), (p, box.journal(UNIT))

    box.run(["systemd-run", "--unit=pacer", "--collect", "--setenv=PYTHONDONTWRITEBYTECODE=1",
             sys.executable, "-c", PACE, str(PACE_FOR + 30)])
    box.wait_for("the output to be held (the pace begins)",
                 lambda: metrics(box).get(HELD, 0) > 0.5, timeout=20, interval=0.5)
    before, t0, read0 = metrics(box), time.monotonic(), reads(box)
    time.sleep(PACE_FOR)
    after, took = metrics(box), time.monotonic() - t0
    q = props(box)
    pacer = box.journal("pacer.service", output="cat")
    assert (q["ActiveState"], q["MainPID"], q["NRestarts"]) == ("active", p["MainPID"], "0"), \
        (q, box.journal(UNIT), pacer)
    held = after[HELD] - before[HELD]
    assert held >= 12, (f"held {held:.1f}s of {took:.1f}s", pacer[-400:], box.journal(UNIT, output="cat")[-3000:],
                        {k: v for k, v in after.items() if any(w in k for w in ("output", "dropped", "slow"))})
    assert cut(after) == 0, ({k: v for k, v in after.items() if "slow_consumers" in k}, box.journal(UNIT))
    assert after['fanoutd_dropped_messages_total{output="publish",reason="hwm"}'] == 0, box.journal(UNIT)
    assert "Watchdog timeout" not in box.journal(UNIT), box.journal(UNIT)
    assert "has not gone round" not in box.journal(UNIT, output="cat"), box.journal(UNIT)
    # The reader kept reading at its pace all along (it was paced, not stopped), and still does.
    assert reads(box) - read0 >= 10 * PACE_FOR, (read0, reads(box), pacer[-600:])
    assert box.show("pacer.service", "ActiveState")["ActiveState"] == "active", pacer[-2000:]

    # Stop while still paced: the drain gives up after drain_timeout (2 s), the stall ends, exit 0.
    box.wait_for("the output still held (it moves at each of the guard's answers, at least once a second)",
                 lambda: metrics(box)[HELD] > after[HELD], timeout=5, interval=0.2)
    took = stop_cleanly(box)
    assert took < 2.0 + 8, (f"stop took {took:.1f}s", box.journal(UNIT))
