"""The loop and pyzmq share one libzmq: the ABI the loop is built with, and the binding, in real processes.

Each binding case runs in its own interpreter, because which libzmq a
process has loaded, and in which symbol scope, is fixed once pyzmq imports.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from conftest import ROOT

PROBE = ROOT / "tests" / "abi" / "probe.c"
CHILD_TIMEOUT = 60

# A second libzmq is mapped privately before pyzmq loads its own; the loop
# must still bind pyzmq's, and prove it by forwarding one message between
# pyzmq sockets (the other library's functions would crash on them).
FORWARD_CHILD = r"""
import ctypes, json, os, sys, threading, time
ctypes.CDLL(sys.argv[1], mode=os.RTLD_LOCAL)
import zmq
from fanoutd.dataplane import _forward, zmqlib

described = zmqlib.bind()
assert zmqlib.bind() is described, "a second bind() must be the cached answer"
ctx = zmq.Context()
collector, publish, producer, receiver = (ctx.socket(k) for k in (zmq.SUB, zmq.XPUB, zmq.PUB, zmq.SUB))
publish.setsockopt(zmq.XPUB_NODROP, 1)  # as the daemon's publish socket
for sock in (collector, receiver):
    sock.setsockopt(zmq.SUBSCRIBE, b"")
collector.bind("inproc://collector")
publish.bind("inproc://publish")
producer.connect("inproc://collector")
receiver.connect("inproc://publish")
forwarder = _forward.Forwarder({"collector": collector.underlying, "publish": publish.underlying})
outcome = {}
loop = threading.Thread(target=lambda: outcome.update(result=forwarder.run()))
loop.start()
got, deadline = None, time.monotonic() + 10
while got is None and time.monotonic() < deadline:
    producer.send(b"orders hello")  # resent until the subscriptions have propagated
    if receiver.poll(50):
        got = receiver.recv().decode()
forwarder.stop()
loop.join(10)
for sock in (collector, publish, producer, receiver):
    sock.close(linger=0)
ctx.term()
print(json.dumps({"described": described, "pyzmq": zmq.zmq_version(), "got": got, "result": outcome.get("result")}))
"""

# bind() where a libzmq may sit in the global symbol scope (argv[1]: a
# library to load RTLD_GLOBAL first, or "" when LD_PRELOAD puts it there).
REFUSAL_CHILD = r"""
import ctypes, json, os, sys
if sys.argv[1]:
    ctypes.CDLL(sys.argv[1], mode=os.RTLD_GLOBAL)
import zmq
from fanoutd.dataplane import zmqlib
try:
    outcome = {"described": zmqlib.bind()}
except zmqlib.LibzmqError as exc:
    outcome = {"refused": str(exc)}
print(json.dumps({"pyzmq": zmq.zmq_version(), **outcome}))
"""


def run_child(code: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run code in a fresh interpreter; its last stdout line is a JSON report."""
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"child exited {proc.returncode}:\n{proc.stderr}"
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def bundled() -> tuple[str, str]:
    """(version, file) of the libzmq pyzmq ships and uses, bound in this process (it is idempotent)."""
    from fanoutd.dataplane import zmqlib

    described = zmqlib.bind()
    version, file = described.removeprefix("libzmq ").split(" from ", 1)
    assert version == zmq.zmq_version()
    site = Path(zmq.__file__).resolve().parent.parent
    if not Path(file).resolve().is_relative_to(site):
        pytest.skip(f"pyzmq uses {file}, not a libzmq of its own: there is no second copy to confuse it with")
    return version, file


@pytest.fixture(scope="module")
def system_libzmq(bundled: tuple[str, str]) -> str:
    """The system's libzmq (a soname the dynamic linker finds), a different copy from pyzmq's."""
    name = ctypes.util.find_library("zmq")
    if name is None:
        pytest.skip("no system libzmq (Debian: libzmq5)")
    return name


def test_abi_header_matches_zmq_h(tmp_path: Path) -> None:
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path / "probe"
    build = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Wstrict-prototypes", "-Werror",
                            "-Werror=incompatible-pointer-types", f"-I{ROOT / 'fanoutd' / 'dataplane'}", str(PROBE),
                            "-o", str(exe), "-lzmq"], capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    if "zmq.h: No such file" in build.stderr:
        pytest.skip("no zmq.h (Debian: libzmq3-dev)")
    assert build.returncode == 0, f"fanoutd/dataplane/zmq_abi.h disagrees with zmq.h:\n{build.stderr}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=10)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("zmq_abi.h matches zmq.h 4.")


def test_binds_pyzmqs_libzmq_when_another_is_loaded_first(bundled, system_libzmq) -> None:
    version, file = bundled
    report = run_child(FORWARD_CHILD, system_libzmq)
    assert report["described"] == f"libzmq {version} from {file}"
    assert report["pyzmq"] == version
    assert report["got"] == "orders hello"
    assert report["result"] == "drained"


@pytest.mark.parametrize("how", ["LD_PRELOAD", "RTLD_GLOBAL"])
def test_refuses_a_libzmq_that_overrides_pyzmqs(bundled, system_libzmq, how) -> None:
    """pyzmq's own calls then go to the global copy (zmq_version() says so); the loop would reach the bundled one."""
    version, file = bundled
    if how == "LD_PRELOAD":
        report = run_child(REFUSAL_CHILD, "", env={"LD_PRELOAD": system_libzmq})
    else:
        report = run_child(REFUSAL_CHILD, system_libzmq)
    assert "described" not in report, f"bound despite a global libzmq: {report}"
    message = report["refused"]
    assert "\n" not in message
    assert message.startswith(f"fanoutd's loop found libzmq {version} in {file} but pyzmq uses {report['pyzmq']} from /")
    assert f"/{system_libzmq}, which" in message  # the global copy, by the path the linker found it at
    assert message.endswith("which LD_PRELOAD or a library loaded with RTLD_GLOBAL puts ahead of pyzmq's own: "
                            "start fanoutd without it")


def test_the_daemon_refuses_to_start_with_one_line(start_daemon, bundled, system_libzmq) -> None:
    """The real entry point under LD_PRELOAD: no socket is driven by the wrong library, exit 2, one line."""
    d = start_daemon(env={"LD_PRELOAD": system_libzmq}, ready=False)
    assert d.proc.wait(timeout=30) == 2
    lines = d.log().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fanoutd: cannot start: fanoutd's loop found libzmq "), lines
