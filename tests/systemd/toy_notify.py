"""A toy ``Type=notify`` service for the nsboot tests: standard library only.

It speaks the notify protocol over ``$NOTIFY_SOCKET`` (a unix datagram socket;
a leading ``@`` means the abstract namespace) the way a real daemon does:

* start: sleeps ``TOY_READY_DELAY`` seconds (default 0), then ``READY=1``
  with ``STATUS=ready uid=<uid>`` and ``MAINPID=``;
* watchdog: ``WATCHDOG=1`` every ``WATCHDOG_USEC / 4`` while healthy;
  SIGUSR1 makes it stop pinging (a hang, as systemd sees it);
* SIGHUP: ``RELOADING=1``, a short pause, then ``READY=1`` and
  ``STATUS=reloaded <n>``;
* SIGTERM: ``STOPPING=1``, then exit 0.

Each step is also printed (stdout goes to the journal), so tests can read
what happened with ``journalctl``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time


def notify(*lines: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        print("toy: no NOTIFY_SOCKET", flush=True)
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(addr)
        sock.sendall("\n".join(lines).encode())


def main() -> int:
    state = {"reload": False, "stop": False, "hang": False}
    signal.signal(signal.SIGHUP, lambda *_: state.update(reload=True))
    signal.signal(signal.SIGTERM, lambda *_: state.update(stop=True))
    signal.signal(signal.SIGUSR1, lambda *_: state.update(hang=True))

    delay = float(os.environ.get("TOY_READY_DELAY", "0"))
    print(f"toy: starting, pid {os.getpid()}, uid {os.getuid()}, ready in {delay}s", flush=True)
    notify(f"STATUS=starting (ready in {delay}s)")
    time.sleep(delay)

    usec = os.environ.get("WATCHDOG_USEC")
    watchdog_pid = os.environ.get("WATCHDOG_PID")
    ping_every = int(usec) / 4e6 if usec and watchdog_pid in (None, str(os.getpid())) else None
    notify("READY=1", f"STATUS=ready uid={os.getuid()}", f"MAINPID={os.getpid()}")
    print(f"toy: ready, watchdog ping every {ping_every}s", flush=True)

    reloads = 0
    last_ping = 0.0
    while not state["stop"]:
        if state["reload"]:
            state["reload"] = False
            reloads += 1
            print(f"toy: SIGHUP, reload {reloads}", flush=True)
            notify("RELOADING=1", f"STATUS=reloading {reloads}")
            time.sleep(0.5)
            notify("READY=1", f"STATUS=reloaded {reloads}")
        if state["hang"]:
            print("toy: SIGUSR1, no more watchdog pings", flush=True)
            notify("STATUS=hung (no watchdog pings)")
            state["hang"] = False
            ping_every = None
        if ping_every is not None and time.monotonic() - last_ping >= ping_every:
            notify("WATCHDOG=1")
            last_ping = time.monotonic()
        time.sleep(0.05)

    print("toy: SIGTERM, stopping", flush=True)
    notify("STOPPING=1", "STATUS=stopping")
    time.sleep(0.2)
    print("toy: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
