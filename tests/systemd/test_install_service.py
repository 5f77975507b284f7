"""systemd/install.sh under a real systemd: offline install from wheels, CURVE through LoadCredential=, uninstall.

The box (see nsboot.py) has no network, so the test first builds, on the
host, a directory of wheels: fanoutd's own (``pip wheel --no-deps`` of a
copy of the repository, so the build leaves nothing in the working tree)
and its dependencies' (``pip download --no-deps --only-binary=:all:`` of
exactly the versions installed in the host venv, found by walking fanoutd's
requirements with importlib.metadata).  pip needs the package index (or a
local mirror) for that step only: for the dependencies, and for the build
requirements of fanoutd's wheel, which pip's build isolation installs.
Wheels are built with the interpreter the script will use in the box
(``python3`` on the box's PATH, the stock Debian one): the host venv's pip
when its Python has the same version, else a throw-away venv of that
interpreter.

In the box, as an operator would: ``install.sh --wheels DIR`` with
FANOUTD_NO_APT=1 and the host's pip configuration switched off
(PIP_CONFIG_FILE=/dev/null: the only place to find packages is DIR), a
server key from ``fanoutd keygen`` (secret 0600, root's), a CURVE config
naming the key relatively, ``install.sh --curve`` again for the
LoadCredential= drop-in (the operator's config is kept), ``systemctl start``,
a CURVE round trip, then ``install.sh --uninstall``.  Where namespaces cannot
be made the test fails and says why; it never skips.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nsboot import BOX_PATH, BoxError, SystemdBox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "systemd" / "install.sh"
UNIT = "fanoutd.service"
PREFIX = "/opt/fanoutd"
# Run in the box with a clean environment: no apt-get, no pip config of the host.
ENV = {"FANOUTD_NO_APT": "1", "PIP_CONFIG_FILE": "/dev/null", "HOME": "/root"}
CONFIG = """\
collector = ["tcp://127.0.0.1:5560"]
publish = ["tcp://127.0.0.1:5561"]
push = []
metrics = "127.0.0.1:9560"
drain_timeout = 2.0
curve_secret_key = "server.key_secret"
collector_curve = true
publish_curve = true
"""
PORTS = (5560, 5561, 9560)

# Run in the box with the installed venv's Python: one message through the
# daemon over CURVE, producer -> collector -> PUB -> subscriber, with the
# server's public key from /etc/fanoutd/server.key; a plaintext subscriber
# on the same port gets nothing.
CURVE_ROUND_TRIP = """\
import sys, time, zmq, zmq.auth
server, _ = zmq.auth.load_certificate("/etc/fanoutd/server.key")
ctx = zmq.Context()
def socket(kind, endpoint, curve=True):
    s = ctx.socket(kind); s.setsockopt(zmq.LINGER, 0)
    if curve:
        public, secret = zmq.curve_keypair()
        s.curve_serverkey, s.curve_publickey, s.curve_secretkey = server, public, secret
    if kind == zmq.SUB:
        s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(endpoint)
    return s
sub = socket(zmq.SUB, "tcp://127.0.0.1:5561")
plain = socket(zmq.SUB, "tcp://127.0.0.1:5561", curve=False)
pub = socket(zmq.PUB, "tcp://127.0.0.1:5560")
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    pub.send_multipart([b"t", b"hello over curve"])
    if sub.poll(100):
        print(sub.recv_multipart()[1].decode())
        break
else:
    sys.exit("no message came through fanoutd over CURVE")
pub.send_multipart([b"t", b"again"])
if plain.poll(1000):
    sys.exit("a plaintext subscriber got a message from a CURVE publish socket")
"""


def dependency_pins() -> list[str]:
    """name==version for every runtime dependency of fanoutd, transitively, as installed in this venv."""
    pins: dict[str, str] = {}
    todo = ["fanoutd"]
    while todo:
        for text in metadata.requires(todo.pop()) or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(req.name)
            if name not in pins:
                pins[name] = metadata.version(req.name)
                todo.append(req.name)
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def host_run(cmd: list[str], what: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert r.returncode == 0, f"{what}: {' '.join(cmd)} exited with {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def box_python() -> str:
    """The python3 install.sh finds on the box's PATH (the box's root is the host's)."""
    found = shutil.which("python3", path=BOX_PATH)
    assert found, f"no python3 on {BOX_PATH}: apt-get install python3 python3-venv"
    return found


def build_wheels(tmp: Path) -> Path:
    """fanoutd's wheel and its installed dependencies' wheels, for the box's python3, in one directory."""
    target = box_python()
    version = host_run([target, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], "python version")
    if version.stdout.strip() == "%d.%d" % sys.version_info[:2]:
        pip = [sys.executable, "-m", "pip"]
    else:  # another Python: its own throw-away venv, so that the C loop is built for it
        host_run([target, "-m", "venv", str(tmp / "build-venv")], "venv for building wheels", timeout=120)
        pip = [str(tmp / "build-venv" / "bin" / "python"), "-m", "pip"]
    pip += ["--disable-pip-version-check"]
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "*.so", ".hypothesis", ".pytest_cache", "bench"))
    wheels = tmp / "wheels"
    host_run([*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)], "building fanoutd's wheel")
    host_run([*pip, "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(wheels), *dependency_pins()],
             "downloading the dependencies' wheels (the host needs the package index or a mirror)")
    shutil.rmtree(src)
    return wheels


def install(box: SystemdBox, *args: str) -> str:
    r = box.run(["sh", str(SCRIPT), *args], env=ENV, timeout=240, check=False)
    assert r.returncode == 0, f"install.sh {' '.join(args)} exited with {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def read(box: SystemdBox, path: str) -> str:
    return box.run(["cat", path]).stdout


def props(box: SystemdBox) -> dict[str, str]:
    return box.show(UNIT, "LoadState", "ActiveState", "SubState", "MainPID", "FragmentPath", "DropInPaths",
                    "ExecMainStatus", "Result")


def listening(box: SystemdBox) -> set[int]:
    out = box.run(["ss", "-Hltn"]).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


@pytest.mark.timeout(540)
def test_install_offline_curve_credential_uninstall(tmp_path: Path) -> None:
    wheels = build_wheels(tmp_path)
    names = sorted(p.name for p in wheels.iterdir())
    assert any(n.startswith("fanoutd-") for n in names), names

    with SystemdBox(binds=[str(wheels), str(REPO)]) as box:
        # 1. Install offline, nothing there yet: venv, unit, default config, daemon-reload.
        assert box.run(["test", "-e", PREFIX], check=False).returncode == 1, f"{PREFIX} exists in a fresh box"
        out = install(box, "--wheels", str(wheels))
        assert "systemctl enable --now fanoutd" in out, out
        venv_python = box.run(["readlink", "-f", f"{PREFIX}/bin/python"]).stdout.strip()
        assert venv_python == os.path.realpath(box_python()), venv_python
        assert box.run([box_python(), "-c", "import fanoutd"], check=False).returncode != 0, \
            "fanoutd went into the system Python"
        version = box.run([f"{PREFIX}/bin/fanoutd", "--version"]).stdout
        assert version.startswith("fanoutd "), version

        shipped = (REPO / "systemd" / UNIT).read_text()
        installed = read(box, f"/etc/systemd/system/{UNIT}")
        body = "".join(line for line in installed.splitlines(keepends=True) if not line.startswith("# Made by")
                       and not line.startswith("# pointing at the virtualenv"))
        assert body == shipped.replace("ExecStart=/usr/local/bin/fanoutd ", f"ExecStart={PREFIX}/bin/fanoutd "), \
            installed
        assert read(box, "/etc/fanoutd/fanoutd.toml") == (REPO / "systemd" / "fanoutd.toml").read_text()
        p = props(box)
        assert (p["LoadState"], p["ActiveState"], p["FragmentPath"]) == \
            ("loaded", "inactive", f"/etc/systemd/system/{UNIT}"), p

        # 2. The operator's key and CURVE config; the secret stays root's, 0600.
        box.run([f"{PREFIX}/bin/fanoutd", "keygen", "/etc/fanoutd", "server"])
        box.run(["chown", "root:root", "/etc/fanoutd/server.key_secret"])
        box.run(["chmod", "0600", "/etc/fanoutd/server.key_secret"])
        assert box.run(["stat", "-c", "%a %U", "/etc/fanoutd/server.key_secret"]).stdout.split() == ["600", "root"]
        box.write_file("/etc/fanoutd/fanoutd.toml", CONFIG)
        # Without the drop-in the relative name has no $CREDENTIALS_DIRECTORY to be found in.
        assert box.systemctl("start", UNIT, timeout=45, check=False).returncode != 0, box.journal(UNIT)
        assert "curve_secret_key: cannot read server.key_secret" in box.journal(UNIT, output="cat"), \
            box.journal(UNIT)
        # Stop first: the failed start left an automatic restart pending (Restart=on-failure), which could
        # otherwise run, and fail again, while the drop-in below is installed.
        box.systemctl("stop", UNIT)
        box.systemctl("reset-failed", UNIT, check=False)  # a stopped unit may be unloaded already: nothing to reset

        # 3. Install again with the LoadCredential= drop-in: idempotent, the config kept.
        out = install(box, "--wheels", str(wheels), "--curve")
        assert "kept the existing /etc/fanoutd/fanoutd.toml" in out, out
        assert read(box, "/etc/fanoutd/fanoutd.toml") == CONFIG
        assert read(box, f"/etc/systemd/system/{UNIT}.d/curve.conf") == \
            (REPO / "systemd" / f"{UNIT}.d" / "curve.conf").read_text()
        assert f"/etc/systemd/system/{UNIT}.d/curve.conf" in props(box)["DropInPaths"], props(box)

        # 4. Start: the daemon (a DynamicUser) reads the key through $CREDENTIALS_DIRECTORY.
        assert listening(box) & set(PORTS) == set(), "ports already taken in a fresh box"
        box.systemctl("start", UNIT, timeout=45)
        p = props(box)
        assert (p["ActiveState"], p["SubState"]) == ("active", "running"), (p, box.journal(UNIT))
        journal = box.journal(UNIT, output="cat")
        assert "fanoutd ready" in journal and "cannot read /run/credentials" not in journal, journal
        assert set(PORTS) <= listening(box), (listening(box), journal)
        status = read(box, f"/proc/{p['MainPID']}/status")
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
        assert 61184 <= uid <= 65519, status  # a DynamicUser uid, which could not open a 0600 root file
        exe = box.run(["readlink", f"/proc/{p['MainPID']}/exe"]).stdout.strip()
        assert exe == os.path.realpath(box_python()), exe
        cmdline = read(box, f"/proc/{p['MainPID']}/cmdline").split("\0")
        assert f"{PREFIX}/bin/fanoutd" in cmdline, cmdline

        trip = box.run([f"{PREFIX}/bin/python", "-c", CURVE_ROUND_TRIP], timeout=40, check=False)
        assert trip.returncode == 0 and "hello over curve" in trip.stdout, (trip.stdout, trip.stderr,
                                                                            box.journal(UNIT))

        # 5. Uninstall: stopped, unit, drop-in and venv gone, /etc/fanoutd kept.
        box.systemctl("enable", UNIT, timeout=30)
        out = install(box, "--uninstall")
        assert "kept /etc/fanoutd" in out, out
        for path in (PREFIX, f"/etc/systemd/system/{UNIT}", f"/etc/systemd/system/{UNIT}.d",
                     f"/etc/systemd/system/multi-user.target.wants/{UNIT}"):
            assert box.run(["test", "-e", path], check=False).returncode == 1, f"{path} left behind:\n{out}"
        for path in ("/etc/fanoutd/fanoutd.toml", "/etc/fanoutd/server.key_secret", "/etc/fanoutd/server.key"):
            assert box.run(["test", "-f", path], check=False).returncode == 0, f"{path} removed:\n{out}"
        deadline = time.monotonic() + 15
        while props(box)["LoadState"] != "not-found":
            if time.monotonic() > deadline:
                raise BoxError(f"{UNIT} still known to systemd after uninstall: {props(box)}\n{out}")
            time.sleep(0.2)
        assert props(box)["ActiveState"] == "inactive", props(box)
        assert listening(box) & set(PORTS) == set(), listening(box)
