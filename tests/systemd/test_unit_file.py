"""Static checks of systemd/fanoutd.service with systemd's own tools.

* ``systemd-analyze security --offline=yes``: the overall exposure must be
  1.5 or lower (0 = fully sandboxed, 10 = not at all).
* ``systemd-analyze verify``: no complaint.  verify also checks that the
  ExecStart binary exists, and /usr/local/bin/fanoutd is where a package
  install puts it, not where a test machine has it.  So the unit is verified
  twice: as shipped, where the only complaint allowed is that binary being
  missing, and as a copy whose ExecStart names the ``fanoutd`` entry point
  of the Python running the tests (same program, same arguments, other
  install location), which must be clean.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "fanoutd.service"
SHIPPED_BINARY = "/usr/local/bin/fanoutd"
MAX_EXPOSURE = 1.5


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: apt-get install systemd (see .ci/system-deps)"
    return subprocess.run([tool, *args], check=False, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_COLORS": "0",
                               "SYSTEMD_PAGER": "", "LANG": "C.UTF-8"})


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.timeout(120)
def test_security_exposure_at_most_1_5() -> None:
    r = analyze("security", "--offline=yes", "--no-pager", str(UNIT))
    match = re.search(r"Overall exposure level for fanoutd\.service: (\d+(?:\.\d+)?)", r.stdout)
    assert match, f"no exposure in the output (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{r.stdout}"


@pytest.mark.timeout(120)
def test_verify_clean(tmp_path: Path) -> None:
    text = UNIT.read_text()
    exec_start = directives(text)["ExecStart"]
    assert exec_start == [f"{SHIPPED_BINARY} --config /etc/fanoutd/fanoutd.toml"], exec_start

    # As shipped: clean, or only "binary not there" when it is not installed here.
    r = analyze("verify", str(UNIT))
    complaints = (r.stdout + r.stderr).strip()
    if Path(SHIPPED_BINARY).exists():
        assert r.returncode == 0 and not complaints, complaints
    else:
        lines = complaints.splitlines()
        assert lines == [f"fanoutd.service: Command {SHIPPED_BINARY} is not executable: No such file or directory"], \
            complaints

    # The same unit with ExecStart at the entry point installed next to this Python: clean.
    entry = Path(sys.executable).parent / "fanoutd"
    assert entry.exists(), f"{entry} missing: install the project into this venv (make install)"
    copy = tmp_path / "fanoutd.service"
    copy.write_text(text.replace(f"ExecStart={SHIPPED_BINARY} ", f"ExecStart={entry} "))
    r = analyze("verify", str(copy))
    complaints = (r.stdout + r.stderr).strip()
    assert r.returncode == 0 and not complaints, complaints


def test_required_settings() -> None:
    d = directives(UNIT.read_text())
    expected = {
        "Type": "notify", "NotifyAccess": "main", "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "10s", "Restart": "on-failure", "TimeoutStopSec": "30s", "DynamicUser": "yes",
        "RuntimeDirectory": "fanoutd", "ConfigurationDirectory": "fanoutd",
        "MemoryDenyWriteExecute": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], f"{key}: expected {value!r}, unit has {d.get(key)}"
    # AF_NETLINK: libzmq's bind resolves interface names with getifaddrs first.
    assert d["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX AF_NETLINK"]
    assert d["CapabilityBoundingSet"] == [""], "the daemon needs no capability (ports are above 1024)"
