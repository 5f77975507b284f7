"""fanoutd's Debian package (`make deb`): lintian, the man pages, and apt as an operator uses it.

The package is built twice per module (debbuild.py): the version of
debian/changelog and a higher one whose shipped configuration differs.  The
lifecycle runs in a real systemd (nsboot.py: its root is an overlay of the
host's, so dpkg and apt in the box change nothing on the host, and every
dependency the host has installed is there), non-interactively and with
``--force-confold``, as ``apt-get`` would on a Debian 12 machine: install
(enabled, started, /readyz 200, ``fanout pub``/``fanout sub``), an edited
configuration applied by restart and by ``systemctl reload``, an upgrade
under traffic (drained and restarted; a ``Producer(drop=False)`` loses
nothing and a stamped subscriber sees one restart and no loss; the edited
conffile kept), ``apt-get remove`` (stopped, configuration kept) and
``apt-get purge`` (nothing left).  The traffic runs in the box with the
Python running the tests (its fanoutd_client), not the package's, which the
upgrade replaces under it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from debbuild import CONFFILE_MARK, REPO, Debs, build_debs
from nsboot import SystemdBox, python_paths

UNIT = "fanoutd.service"
VENV = "/opt/venvs/fanoutd"
CONF = "/etc/fanoutd/fanoutd.toml"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
APT = ["apt-get", "-y", "-q", "-o", "Dpkg::Options::=--force-confold", "-o", "Dpkg::Options::=--force-confdef"]
# The operator's edits: the stamped output on, uncommented from the shipped file.
STAMPED = "tcp://127.0.0.1:5565"

# Run in the box as a transient unit: a stamped subscriber and a Producer(drop=False) sending numbered messages
# until /run/traffic.stop appears; then it flushes, waits for the last message and prints what it saw as JSON
# (one short line: the journal splits long ones).
TRAFFIC = """\
import json, os, sys, threading, time
from fanoutd_client import Producer, Subscriber
sub = Subscriber(sys.argv[1], stamped=True)
sub.wait_ready(20)
got, done = [], threading.Event()
def read():
    while not done.is_set():
        try:
            got.append(int(sub.recv(timeout=0.2)[1]))
        except TimeoutError:
            pass
threading.Thread(target=read, daemon=True).start()
prod = Producer("tcp://127.0.0.1:5560", wait=20, drop=False, send_timeout=60, linger=10)
sent = 0
while not os.path.exists("/run/traffic.stop"):
    prod.send(b"t", b"%d" % sent)
    sent += 1
    if sent % 100 == 0:
        print("sent", sent, "got", len(got), "restarts", sub.restarts, flush=True)
    time.sleep(0.002)
prod.close()
deadline = time.monotonic() + 10
while (not got or got[-1] != sent - 1) and time.monotonic() < deadline:
    time.sleep(0.05)
done.set()
print(json.dumps({"sent": sent, "in_order": got == sorted(got), "last": got[-1] if got else None,
                  "dropped": prod.dropped, "flushed": prod.flushed, "restarts": sub.restarts, "lost": sub.lost}),
      flush=True)
"""


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Debs:
    return build_debs(tmp_path_factory.mktemp("deb"))


def options_of(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", help_text))


@pytest.mark.timeout(900)
def test_lintian_reports_no_error_and_no_warning_left_unexplained(debs: Debs) -> None:
    r = subprocess.run(["lintian", "--fail-on", "error,warning", str(debs.old)], capture_output=True, text=True,
                       timeout=300, check=False)
    tags = [line for line in r.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert r.returncode == 0 and tags == [], (r.returncode, tags, r.stderr[-2000:])
    # The overrides are used, each with its reason (a comment above it).
    shown = subprocess.run(["lintian", "--show-overrides", str(debs.old)], capture_output=True, text=True,
                           timeout=300, check=False).stdout
    overrides = (REPO / "debian" / "fanoutd.lintian-overrides").read_text().splitlines()
    for i, line in enumerate(overrides):
        if line and not line.startswith("#"):
            tag = line.split()[1]
            above = next((o for o in reversed(overrides[:i]) if not o.startswith("fanoutd:")), "")
            assert above.startswith("#"), f"override without its reason (a comment above it): {line}"
            assert f"O: fanoutd: {tag}" in shown, f"unused override: {line}\n{shown[-3000:]}"


@pytest.mark.timeout(900)
def test_the_man_pages_are_the_commands_help(debs: Debs, tmp_path: Path) -> None:
    """Each command's page holds every option of its --help and of its subcommands' (built from them)."""
    root = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", str(debs.old), str(root)], check=True, timeout=120)
    python, bindir = root / VENV.lstrip("/") / "bin" / "python", root / VENV.lstrip("/") / "bin"
    for command, subcommands, name in (("fanoutd", ("top", "keygen"), "ZeroMQ fanout broker"),
                                       ("fanout", ("pub", "sub", "pull"), "publish to, subscribe to")):
        page = root / "usr" / "share" / "man" / "man1" / f"{command}.1.gz"
        rendered = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                                  env={"MANWIDTH": "200", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                  timeout=60, check=True)
        assert rendered.stderr == "", rendered.stderr
        text = rendered.stdout.replace("\u2010", "-").replace("\u2212", "-")
        assert re.search(rf"^NAME\n\s+{command} - {name}", text, re.M), text[:500]
        wanted: set[str] = set()
        for args in ((), *((s,) for s in subcommands)):
            out = subprocess.run([str(python), str(bindir / command), *args, "--help"], capture_output=True,
                                 text=True, timeout=60, check=True).stdout
            wanted |= options_of(out)
        assert {"--help", "--version"} < wanted and len(wanted) > 5, wanted
        assert wanted - options_of(text) == set(), (command, sorted(wanted - options_of(text)))


def in_box(box: SystemdBox, *cmd: str, timeout: float = 60) -> str:
    return box.run(list(cmd), timeout=timeout).stdout


def apt(box: SystemdBox, *args: str) -> str:
    r = box.run([*APT, *args], env=APT_ENV, timeout=300, check=False)
    assert r.returncode == 0, f"apt-get {' '.join(args)} exited with {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def exists(box: SystemdBox, path: str) -> bool:
    return box.run(["test", "-e", path], check=False).returncode == 0


def props(box: SystemdBox) -> dict[str, str]:
    return box.show(UNIT, "LoadState", "ActiveState", "SubState", "MainPID", "UnitFileState", "FragmentPath")


def metric(box: SystemdBox, name: str) -> float:
    text = in_box(box, "/usr/bin/python3", "-c", "import urllib.request as u; "
                  "print(u.urlopen('http://127.0.0.1:9560/metrics', timeout=5).read().decode())")
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


@pytest.fixture
def box(debs: Debs) -> Iterator[SystemdBox]:
    with SystemdBox(binds=[*python_paths(), str(REPO), str(debs.old.parent), str(debs.new.parent)]) as b:
        yield b


@pytest.mark.timeout(900)
def test_install_reload_upgrade_remove_purge_with_apt(debs: Debs, box: SystemdBox) -> None:
    assert box.run(["dpkg-query", "-W", "fanoutd"], check=False).returncode != 0, "fanoutd installed on the host"
    box.run(["rm", "-f", "/usr/sbin/policy-rc.d"])  # a host's policy-rc.d would forbid starting services

    # 1. Install: enabled and started by the package, ready, on the PATH, documented.
    apt(box, "install", str(debs.old))
    p = props(box)
    assert (p["ActiveState"], p["SubState"], p["UnitFileState"], p["FragmentPath"]) == \
        ("active", "running", "enabled", f"/lib/systemd/system/{UNIT}"), (p, box.journal(UNIT))
    unit = in_box(box, "cat", f"/lib/systemd/system/{UNIT}")
    # One unit source: what install.sh installs for that prefix, byte for byte.
    rendered = subprocess.run(["sh", str(REPO / "systemd" / "install.sh"), "--print-unit"], env={"PREFIX": VENV},
                              capture_output=True, text=True, timeout=30, check=True).stdout
    assert unit == rendered and f"ExecStart={VENV}/bin/fanoutd --config {CONF}\n" in unit, unit
    assert "LoadCredential" not in unit and not exists(box, f"/etc/systemd/system/{UNIT}.d"), unit
    assert exists(box, "/usr/share/doc/fanoutd/examples/curve.conf")
    assert in_box(box, "cat", CONF) == (REPO / "systemd" / "fanoutd.toml").read_text()
    assert CONF in in_box(box, "cat", "/var/lib/dpkg/info/fanoutd.conffiles").split()
    ready = in_box(box, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9560/readyz")
    assert ready == "200", (ready, box.journal(UNIT))
    assert in_box(box, "readlink", "-f", "/usr/bin/fanoutd") == f"{VENV}/bin/fanoutd\n"
    assert "--check-config" in in_box(box, "man", "-P", "cat", "fanoutd")
    trip = in_box(box, "sh", "-c", "fanout sub --count 1 --timeout 20 > /tmp/got & "
                  "for i in $(seq 60); do fanout pub t 'hello from apt'; [ -s /tmp/got ] && break; sleep 0.3; done; "
                  "wait; cat /tmp/got", timeout=90)
    assert trip.strip() == "t hello from apt", (trip, box.journal(UNIT))
    assert box.run(["sh", "-c", f"find {VENV} -name __pycache__ | grep -q ."], check=False).returncode == 0, \
        "root's fanout wrote no bytecode: the prerm's cleanup is not exercised"

    # 2. The operator edits the conffile: the stamped output (a restart), then a live setting (a reload).
    box.run(["sed", "-i", "-e", f"s|^#stamped = .*|stamped = [\"{STAMPED}\"]|", "-e",
             "s|^#drain_timeout = .*|drain_timeout = 10.0|", CONF])
    box.systemctl("restart", UNIT, timeout=60)
    box.run(["sed", "-i", "s|^#max_frames = .*|max_frames = 8|", CONF])
    edited = in_box(box, "cat", CONF)
    assert f'stamped = ["{STAMPED}"]' in edited and "\nmax_frames = 8\n" in edited, edited
    pid = props(box)["MainPID"]
    box.systemctl("reload", UNIT)
    box.wait_for("the reload to be applied", lambda: "max_frames=8" in box.journal(UNIT, output="cat"), timeout=20)
    assert props(box)["MainPID"] == pid, box.journal(UNIT)

    # 3. Upgrade under traffic: drained, restarted, nothing lost; the edited conffile kept.
    before = metric(box, "fanoutd_received_messages_total")
    box.run(["systemd-run", "--unit=traffic", "--setenv=PYTHONDONTWRITEBYTECODE=1", sys.executable, "-c", TRAFFIC,
             STAMPED])
    flowing = re.compile(r"^sent \d+ got [1-9]\d* restarts 0$", re.M)
    box.wait_for("traffic through the old package", lambda: flowing.search(box.journal("traffic.service",
                                                                                          output="cat")) is not None,
                 timeout=30, interval=0.3)
    apt(box, "install", str(debs.new))
    q = props(box)
    assert (q["ActiveState"], q["UnitFileState"]) == ("active", "enabled") and q["MainPID"] != pid, \
        (q, box.journal(UNIT))
    assert in_box(box, "dpkg-query", "-W", "-f", "${Version}", "fanoutd") == debs.new_version
    assert in_box(box, "cat", CONF) == edited, "the upgrade replaced the operator's configuration"
    assert in_box(box, "cat", f"{CONF}.dpkg-dist") == debs.new_conffile  # the new default, beside it
    assert CONFFILE_MARK not in edited
    journal = box.journal(UNIT, output="cat")
    stopped = re.findall(r"stopped: received (\d+), .* dropped \d+(.*), rejected", journal)
    assert len(stopped) == 2 and "stopping: draining" in journal, journal[-4000:]
    old_received, old_drops = int(stopped[-1][0]), stopped[-1][1]
    restarted = re.compile(r"^sent \d+ got \d+ restarts 1$", re.M)
    box.wait_for("traffic through the new package",
                 lambda: len(restarted.findall(box.journal("traffic.service", output="cat"))) >= 3,
                 timeout=30, interval=0.3)
    box.run(["touch", "/run/traffic.stop"])
    box.wait_for("the traffic to end", lambda: box.show("traffic.service", "ActiveState")["ActiveState"]
                 in ("inactive", "failed"), timeout=40, interval=0.3)
    lines = box.journal("traffic.service", output="cat").splitlines()
    results = [line for line in lines if line.startswith("{")]
    assert len(results) == 1, (box.show("traffic.service", "Result", "ExecMainStatus"), lines[-30:])
    result = json.loads(results[0])
    sent = result["sent"]
    assert result == {"sent": sent, "in_order": True, "last": sent - 1, "dropped": 0, "flushed": True,
                      "restarts": 1, "lost": 0}, (result, lines[-20:])
    new_received = metric(box, "fanoutd_received_messages_total")
    # Every message sent reached a broker: the old one (before the drain) or the new one.
    # The old one dropped only what its PUSH output had no puller for.
    assert (old_received - before) + new_received == sent, \
        (old_received, before, new_received, sent, journal[-3000:])
    assert re.fullmatch(r"( \(push/no_puller \d+\))?", old_drops), \
        (old_received, before, new_received, sent, journal[-3000:])

    # 4. Remove: stopped, the program gone, the configuration kept.
    apt(box, "remove", "fanoutd")
    assert props(box)["ActiveState"] == "inactive", (props(box), box.journal(UNIT))
    for path in (VENV, "/usr/bin/fanoutd", "/usr/bin/fanout", f"/lib/systemd/system/{UNIT}"):
        assert not exists(box, path), f"{path} left after apt-get remove"
    assert in_box(box, "cat", CONF) == edited
    assert in_box(box, "dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "fanoutd").strip() == "rc"
    assert box.run(["curl", "-s", "http://127.0.0.1:9560/readyz"], check=False).returncode != 0

    # 5. Purge: nothing of it left.
    apt(box, "purge", "fanoutd")
    for path in ("/etc/fanoutd", "/opt/venvs", f"/etc/systemd/system/multi-user.target.wants/{UNIT}",
                 f"/var/lib/systemd/deb-systemd-helper-enabled/{UNIT}.dsh-also", "/usr/share/doc/fanoutd",
                 "/usr/share/man/man1/fanoutd.1.gz"):
        assert not exists(box, path), f"{path} left after apt-get purge"
    assert box.run(["dpkg-query", "-W", "fanoutd"], check=False).returncode != 0
    assert props(box)["LoadState"] == "not-found", props(box)
