"""The soak harness, shortened: a stalled subscriber, a producer restart and a broker restart, and every
message accounted for per path, each number from its own counter (the 10-minute run is `make soak`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(150)


def test_a_short_soak_adds_up_exactly(tmp_path):
    out = tmp_path / "soak.md"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "30", "--stall", "8",
                             "--broker-flag", "--slow-consumer-timeout 3", "--out", str(out),
                             "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = out.read_text()
    assert "**no**" not in report and report.count("| yes |") == 7, report
    # The stalled subscriber was cut off and knew exactly what it missed.
    stalled = [line for line in report.splitlines() if line.startswith("| stalled subscriber, broker run 1")]
    assert stalled and int(stalled[0].split("|")[3].split("/")[1].replace(",", "")) > 0, report
