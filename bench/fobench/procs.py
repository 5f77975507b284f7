"""Child processes for the bench: spawn, read lines with a deadline, stop.

Every child's stdout is read by a daemon thread into a queue, so the runner
can wait for a given line ("ready", a JSON result) with a timeout and never
block on a child that hangs.  Only loopback addresses are ever used.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

LOOPBACK = "127.0.0.1"


class ProcError(RuntimeError):
    """A child did not say what it should have in time, or died."""


_HANDED_OUT: deque[int] = deque(maxlen=1024)  # recent answers of free_port()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago, below the ephemeral range.

    bind(0) hands out ephemeral ports, which outgoing connections (a sink or a
    federation link reconnecting) also take as source ports: a server started
    next could then find its port taken. Random ports under 32768 avoid that.
    Nor is a port handed out lately given again: it stays free until its
    server binds it, so one server's five ports could otherwise repeat one.
    """
    for _ in range(200):
        port = random.randrange(20000, 32768)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        _HANDED_OUT.append(port)
        return port
    raise ProcError("no free port below the ephemeral range")


def tcp_endpoint(port: int) -> str:
    return f"tcp://{LOOPBACK}:{port}"


_LIVE: weakref.WeakSet[Child] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    """Never leave a server or load generator behind, even after an error."""
    for child in list(_LIVE):
        child.stop(timeout=2.0)


class Child:
    """A running child process whose stdout lines arrive on a queue."""

    def __init__(self, argv: Sequence[str], name: str, stdin: bool = False,
                 env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            env=env, cwd=cwd, text=True, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_tail: list[str] = []
        _LIVE.add(self)
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + [line.rstrip("\n")])[-20:]

    def _fail(self, what: str) -> ProcError:
        tail = "; ".join(self.stderr_tail[-3:])
        return ProcError(f"{self.name}: {what}" + (f" (stderr: {tail})" if tail else ""))

    def expect(self, text: str, timeout: float) -> None:
        """Wait until the child prints a line equal to ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(f"no {text!r} within {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                time.sleep(0.05)  # let the stderr pump finish
                raise self._fail(f"exited ({self.proc.poll()}) before {text!r}")
            if line.strip() == text:
                return

    def result(self, timeout: float) -> dict[str, Any]:
        """Wait for the child's JSON result line and return it parsed."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(f"no result within {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                time.sleep(0.05)
                raise self._fail(f"exited ({self.proc.poll()}) without a result")
            if line.startswith("{"):
                parsed: dict[str, Any] = json.loads(line)
                return parsed

    def send_line(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the child, then SIGKILL it if it lingers; return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode


def stop_all(children: Sequence[Child]) -> None:
    for child in children:
        child.stop()


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """GET a loopback URL; return its status, or None if it did not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (OSError, ValueError):
        return None


def prometheus_counters(url: str, prefix: str, timeout: float = 2.0) -> dict[str, float]:
    """Scrape a loopback /metrics page; return its ``*_total`` samples under ``prefix``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode()
    except (OSError, ValueError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefix) and " " in line:
            name, _, value = line.rpartition(" ")
            if name.split("{", 1)[0].endswith("_total"):
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
    return out


def wait_tcp(port: int, timeout: float, child: Child | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.proc.poll() is not None:
            raise child._fail(f"exited ({child.proc.returncode}) while starting")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ProcError(f"nothing listening on {LOOPBACK}:{port} after {timeout:.0f} s")


def _stat(path: str) -> tuple[str, int]:
    """The name and utime + stime, in clock ticks, of a /proc stat file (a process's or one thread's)."""
    with open(path) as f:
        head, _, rest = f.read().rpartition(")")
    fields = rest.split()
    return head.partition("(")[2], int(fields[11]) + int(fields[12])


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, all its threads, in clock ticks."""
    return _stat(f"/proc/{pid}/stat")[1]


def thread_ticks(pid: int) -> dict[str, int]:
    """utime + stime of each of a process's threads, in clock ticks, summed by thread name (fanoutd's loop is
    ``fanoutd-fwd``, libzmq's I/O threads ``ZMQbg/IO/N``); threads that end meanwhile are simply missing."""
    out: dict[str, int] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            name, ticks = _stat(f"/proc/{pid}/task/{task}/stat")
        except OSError:
            continue
        out[name] = out.get(name, 0) + ticks
    return out


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
