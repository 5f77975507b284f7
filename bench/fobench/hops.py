"""Latency added per federation hop: chains of 1, 2, 3 fanoutd nodes, measured end to end.

Node 0 takes the load on its collector; node k's upstream is node k-1's
relay; the subscriber and puller read the last node. The same fixed-rate
latency trial as the main latency table runs through each chain, so the
difference between chain lengths is what one more hop costs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from . import trial
from .procs import LOOPBACK, Child, ProcError, free_port, http_status, tcp_endpoint
from .servers import REPO_DIR, START_TIMEOUT, Server, _clean_env

HOPS = (1, 2, 3)
RATE, SIZE = 10_000, 100


def _node(python: str, upstream: str | None) -> tuple[Child, list[str], str]:
    ports = [free_port() for _ in range(5)]
    ep = [tcp_endpoint(p) for p in ports[:4]]
    metrics = f"{LOOPBACK}:{ports[4]}"
    argv = [python, "-P", "-m", "fanoutd", "--collector", ep[0], "--publish", ep[1], "--push", ep[2],
            "--relay", ep[3], "--stamped", "", "--metrics", metrics]
    if upstream:
        argv += ["--upstream", upstream]
    child = Child(argv, "fanoutd", env=_clean_env(), cwd=str(REPO_DIR))
    deadline = time.monotonic() + START_TIMEOUT
    while http_status(f"http://{metrics}/readyz", timeout=0.5) != 200:
        if child.proc.poll() is not None or time.monotonic() > deadline:
            child.stop()
            raise child._fail(f"fanoutd node not ready on {metrics}")
        time.sleep(0.05)
    return child, ep, metrics


def run(bins: dict[str, Path], repeats: int, seconds: float, python: str | None = None) -> list[list[str]]:
    """Rows: hops, subscriber p50/p99, puller p50/p99 (µs, medians over repeats)."""
    rows = []
    for hops in HOPS:
        samples: list[tuple[float, float, float, float]] = []
        for _ in range(repeats):
            nodes: list[Child] = []
            try:  # a node that fails to start fails this row only, not the whole bench run
                endpoints: list[list[str]] = []
                upstream = None
                for _ in range(hops):
                    child, ep, metrics = _node(python or sys.executable, upstream)
                    nodes.append(child)
                    endpoints.append(ep)
                    upstream = ep[3]
                time.sleep(0.5)  # every relay subscription has arrived upstream
                first, last = endpoints[0], endpoints[-1]
                chain = Server("fanoutd", nodes[-1], first[0], last[1], last[2], strip_topic=True,
                               extras={"metrics": metrics})
                spec = trial.TrialSpec("fanoutd", SIZE, 1, count=int(RATE * seconds), rate=RATE, latency=True)
                result = trial.TrialResult(spec)
                trial.run_on(chain, spec, bins, result)
                sub = next(s for s in result.sinks if s.output == "sub")
                pull = next(s for s in result.sinks if s.output == "pull")
                samples.append((sub.p50_us or 0, sub.p99_us or 0, pull.p50_us or 0, pull.p99_us or 0))
            except ProcError as err:
                print(f"  [hops] {hops} node(s): {err}", flush=True)
            finally:
                for child in nodes:
                    child.stop()
        if not samples:
            rows.append([str(hops), "failed", "failed", "failed", "failed"])
            continue
        medians = [sorted(col)[len(col) // 2] for col in zip(*samples)]
        rows.append([str(hops), *(f"{v:.0f}" for v in medians)])
    return rows


def table(rows: list[list[str]]) -> list[str]:
    out = ["| nodes in the chain | subscriber p50 µs | subscriber p99 µs | puller p50 µs | puller p99 µs |",
           "|---|---|---|---|---|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    if len(rows) > 1 and "failed" not in (rows[0][1], rows[-1][1]):
        per_hop = (float(rows[-1][1]) - float(rows[0][1])) / (len(rows) - 1)
        out += ["", f"Added per hop (subscriber p50, first to last chain): {per_hop:.0f} µs."]
    return out
