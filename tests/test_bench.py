"""The benchmark harness runs end to end on a tiny load (benchmarks are not timed tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_bench_quick_runs_every_system(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    assert "| fanoutd | C baseline | Redis | NATS |" in table
    assert "could not run" not in table, table
    row = next(line for line in table.splitlines() if line.startswith("| 100 B | 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert all(cells[2:6]) and "n/a" not in cells[2], row
