"""The tables of ``bench/overload.py``: one line per run, and, over repeats, each cell's medians with every run.

Rows are built from the result dicts the script also writes as JSON (a
``fleet.FleetResult`` as a dict, with its cell's name, ``expected`` and
``lost``), so the medians table can be rebuilt from saved runs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

NAMES = {"fanoutd": "fanoutd", "nats": "NATS", "redis": "Redis"}
RUN_HEADER = ["| cell | system | delivered (equal readers) | lost | least-served | odd reader | cuts (broker's count) "
              "| producer msg/s | seconds | peak RSS, MiB (+ over connected) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
MEDIANS_HEADER = ["| cell | system | delivered (equal readers) | least-served, lowest | odd reader, each run "
                  "| cuts | producer msg/s | seconds | peak RSS, MiB | RSS growth, MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]

Result = dict[str, Any]


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def _cuts(r: Result) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(r["cuts"].items())) or "none"


def _odd(r: Result) -> str:
    if r["spec"]["stalled"]:
        return "stalled"
    return f"{r['odd_received']:,}" if r["odd_received"] is not None else ""


def run_row(r: Result, settings: dict[str, str]) -> str:
    """One run; ``settings``: what the lever set, named beside fanoutd."""
    system = r["spec"]["system"]
    name = NAMES[system] + (" (" + ", ".join(f"{k} {v}" for k, v in settings.items()) + ")"
                            if system == "fanoutd" and settings else "")
    if r["error"]:
        return f"| {r['cell']} | {name} | error: {r['error']} | | | | | | | |"
    return (f"| {r['cell']} | {name} | {r['received']:,} of {r['expected']:,} | {r['lost']:,} "
            f"| {r['received_min']:,} | {_odd(r)} | {_cuts(r)} | {r['pub_rate']:,.0f} | {r['window_s']:.1f} "
            f"| {_mib(r['peak_rss'])} (+{_mib(r['peak_rss'] - r['rss_connected'])}) |")


def _spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    return fmt(statistics.median(values)) + " (" + ", ".join(fmt(v) for v in values) + ")"


def medians(results: Sequence[Result]) -> list[str]:
    """Per cell and system, in the order first run: the median of each measure, and each run in brackets."""
    keys = list(dict.fromkeys((r["cell"], r["spec"]["system"]) for r in results))
    lines = list(MEDIANS_HEADER)
    for cell, system in keys:
        rs = [r for r in results if (r["cell"], r["spec"]["system"]) == (cell, system)]
        if any(r["error"] for r in rs):
            lines.append(f"| {cell} | {NAMES[system]} | errors: {'; '.join(r['error'] for r in rs if r['error'])} "
                         "| | | | | | | |")
            continue
        got = ("every one, every run" if all(r["lost"] == 0 for r in rs)
               else "got " + ", ".join(f"{r['received']:,}" for r in rs))
        cuts = [_cuts(r) for r in rs]
        lines.append(
            f"| {cell} | {NAMES[system]} | {rs[0]['expected']:,}: {got} | {min(r['received_min'] for r in rs):,} "
            f"| {'stalled' if rs[0]['spec']['stalled'] else ', '.join(_odd(r) for r in rs if _odd(r))} "
            f"| {cuts[0] + f' (x{len(rs)})' if len(set(cuts)) == 1 else '; '.join(cuts)} "
            f"| {_spread([r['pub_rate'] for r in rs], lambda v: f'{v:,.0f}')} "
            f"| {_spread([r['window_s'] for r in rs], lambda v: f'{v:.1f}')} "
            f"| {_spread([r['peak_rss'] for r in rs], _mib)} "
            f"| {_spread([r['peak_rss'] - r['rss_connected'] for r in rs], _mib)} |")
    return lines
