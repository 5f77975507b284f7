"""The systems under test: start each on free loopback ports, stop it after.

* ``fanoutd``: ``python -m fanoutd`` with shipped defaults (no config file,
  no ``FANOUTD_*`` environment), ready when ``/readyz`` (or, on builds that
  have no readiness probe yet, ``/healthz``) answers 200;
* ``cbase``: the C baseline (two chained ``zmq_proxy`` calls, HWM 0);
* ``zmtpd``: the ZMTP publisher prototype of issue #28 (``bench/zmtp/``): a
  libzmq SUB collector, its own ZMTP to subscribers, no PUSH output (one
  more subscriber stands in for the puller, as for Redis and NATS); only
  when ``--systems`` names it;
* ``redis``: Debian's ``redis-server``, no persistence;
* ``nats``: Debian's ``nats-server``, with its monitoring port.

A fresh server is started for every trial, so no run inherits another's
queues, memory or subscriptions.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .procs import LOOPBACK, Child, ProcError, free_port, http_status, tcp_endpoint, wait_tcp

REPO_DIR = Path(__file__).resolve().parents[2]
ZMQ_SYSTEMS = ("fanoutd", "cbase", "zmtpd")
RAW_SYSTEMS = ("redis", "nats")
ALL_SYSTEMS = ("fanoutd", "cbase", "redis", "nats")
# Systems --systems may name beyond the default set: the prototype of issue #28 (bench/README.md, "Owning the
# publish path").
KNOWN_SYSTEMS = (*ALL_SYSTEMS, "zmtpd")
START_TIMEOUT = 20.0


@dataclass
class Server:
    """A started system: its process and the loopback addresses to use."""

    system: str
    child: Child
    collector: str = ""     # ZeroMQ systems: where producers connect
    publish: str = ""       # ZeroMQ systems: where subscribers connect
    push: str = ""          # ZeroMQ systems: where pullers connect ("": no PUSH output, one more subscriber)
    strip_topic: bool = False  # does the PUSH output drop the "topic " prefix?
    port: int = 0           # Redis / NATS client port
    monitor_port: int = 0   # NATS monitoring (HTTP) port
    extras: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def is_zmq(self) -> bool:
        return self.system in ZMQ_SYSTEMS

    def stop(self) -> None:
        self.child.stop()


def _clean_env() -> dict[str, str]:
    """This process's environment without any fanoutd setting in it."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FANOUTD_")}


@functools.cache
def _has_flag(python: str, flag: str) -> bool:
    """Whether that build of fanoutd takes a command-line flag: bench/ab.py also runs builds from before it."""
    usage = subprocess.run([python, "-P", "-m", "fanoutd", "--help"], capture_output=True, text=True,
                           env=_clean_env(), cwd=str(REPO_DIR), timeout=60).stdout
    return flag in usage


def start_fanoutd(python: str | None = None) -> Server:
    ports = [free_port() for _ in range(6)]
    ep = [tcp_endpoint(p) for p in (*ports[:3], ports[4], ports[5])]
    metrics = f"{LOOPBACK}:{ports[3]}"
    # The shipped defaults, on free ports: the stamped output and its repair endpoint too (no bench client reads
    # them).
    # -P: the interpreter's own install of fanoutd runs, never the checkout the bench sits in, so bench/ab.py
    # can run two builds from one tree.
    python = python or sys.executable
    argv = [python, "-P", "-m", "fanoutd", "--collector", ep[0],
            "--publish", ep[1], "--push", ep[2], "--stamped", ep[3], "--metrics", metrics]
    # The repair endpoint (on by default with a stamped output) on a free port too: its default, 5566, may be
    # taken by another daemon on the machine, and fanoutd then refuses to start.
    if _has_flag(python, "--repair"):
        argv += ["--repair", ep[4]]
    child = Child(argv, "fanoutd", env=_clean_env(), cwd=str(REPO_DIR))
    server = Server("fanoutd", child, ep[0], ep[1], ep[2], strip_topic=True,
                    extras={"metrics": metrics})
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            time.sleep(0.1)
            raise child._fail(f"exited ({child.proc.returncode}) while starting")
        ready = http_status(f"http://{metrics}/readyz", timeout=0.5)
        if ready == 200 or (ready == 404 and http_status(f"http://{metrics}/healthz", 0.5) == 200):
            return server
        time.sleep(0.05)
    server.stop()
    raise ProcError(f"fanoutd not ready on http://{metrics}/readyz after {START_TIMEOUT:.0f} s")


def _when_ready(server: Server) -> Server:
    """The server once its program has said "ready"; stopped, and the failure raised, if it never does."""
    try:
        server.child.expect("ready", START_TIMEOUT)
    except ProcError:
        server.stop()
        raise
    return server


def start_cbase(binary: Path) -> Server:
    ep = [tcp_endpoint(free_port()) for _ in range(3)]
    child = Child([str(binary), *ep], "cbase")
    return _when_ready(Server("cbase", child, ep[0], ep[1], ep[2], strip_topic=False))


def start_zmtpd(binary: Path) -> Server:
    """The prototype with its defaults (bench/zmtp/zmtpd.c), or the options in $ZMTPD_ARGS (to try a lever)."""
    ep = [tcp_endpoint(free_port()) for _ in range(2)]
    child = Child([str(binary), *os.environ.get("ZMTPD_ARGS", "").split(), *ep], "zmtpd")
    return _when_ready(Server("zmtpd", child, ep[0], ep[1], "", strip_topic=False))


def start_redis() -> Server:
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    # maxclients: Redis refuses connections past 10,000 by default; the scale mode holds 10,001 subscribers.
    argv = [exe, "--save", "", "--appendonly", "no", "--port", str(port), "--bind", LOOPBACK,
            "--daemonize", "no", "--logfile", "", "--maxclients", "19000"]
    server = Server("redis", Child(argv, "redis-server"), port=port)
    try:
        wait_tcp(port, START_TIMEOUT, server.child)
    except ProcError:
        server.stop()
        raise
    return server


def start_nats() -> Server:
    exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port, monitor = free_port(), free_port()
    argv = [exe, "-a", LOOPBACK, "-p", str(port), "-m", str(monitor)]
    server = Server("nats", Child(argv, "nats-server"), port=port, monitor_port=monitor)
    try:
        wait_tcp(port, START_TIMEOUT, server.child)
        deadline = time.monotonic() + START_TIMEOUT
        while http_status(f"http://{LOOPBACK}:{monitor}/healthz") != 200:
            if time.monotonic() > deadline:
                raise ProcError("nats-server: monitoring /healthz never answered 200")
            time.sleep(0.05)
    except ProcError:
        server.stop()
        raise
    return server


def start(system: str, bins: dict[str, Path], python: str | None = None) -> Server:
    """Start one system by name."""
    if system == "fanoutd":
        return start_fanoutd(python)
    if system == "cbase":
        return start_cbase(bins["cbase"])
    if system == "zmtpd":
        return start_zmtpd(bins["zmtpd"])
    if system == "redis":
        return start_redis()
    if system == "nats":
        return start_nats()
    raise ValueError(f"unknown system {system!r}")
