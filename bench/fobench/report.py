"""Write what a bench run measured: ``results.md`` (tables) and ``results.png``.

Throughput cells show the median delivered msg/s per subscriber of the
slowest output and, in brackets, the ratio to the C baseline measured in the
same run.  The cost, scale and latency modes have their own tables in
:mod:`.fleetreport`.
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .extra import IdleResult
from .matrix import Cell
from .trial import TrialResult

BASELINE = "cbase"
PEERS = ("redis", "nats")  # fanoutd's competitors; the C baseline is its own stack
NAMES = {"fanoutd": "fanoutd", "cbase": "C baseline", "redis": "Redis", "nats": "NATS", "zmtpd": "zmtpd (prototype)"}


def _k(rate: float | None) -> str:
    if rate is None:
        return "n/a"
    return f"{rate / 1e6:.2f}M" if rate >= 1e6 else f"{rate / 1e3:.0f}k" if rate >= 1e3 else f"{rate:.0f}"


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def _us(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=5).stdout.strip()
        return out.splitlines()[0] if out else "?"
    except OSError:
        return "?"


def _system_libzmq() -> str:
    """Version of the libzmq the C programs link (may differ from pyzmq's bundled one)."""
    import ctypes
    try:
        lib = ctypes.CDLL("libzmq.so.5")
    except OSError:
        return "?"
    major, minor, patch = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    lib.zmq_version(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(patch))
    return f"{major.value}.{minor.value}.{patch.value}"


def environment() -> list[str]:
    import zmq
    machine = (f"- machine: {platform.node()}, {platform.machine()}, Linux {platform.release()}, "
               f"{_cpus()} CPUs")
    software = (f"- C programs: system libzmq {_system_libzmq()}; fanoutd: pyzmq {zmq.__version__} "
                f"with libzmq {zmq.zmq_version()}; "
                f"{_version(['redis-server', '--version'])}; {_version(['nats-server', '--version'])}")
    return [machine, software]


def _cpus() -> int:
    import os
    return len(os.sched_getaffinity(0))


def throughput_table(cells: Sequence[Cell], systems: Sequence[str]) -> list[str]:
    by = {(c.system, c.size, c.subs): c for c in cells}
    keys = sorted({(c.size, c.subs) for c in cells})
    lines = ["| size | subscribers (+1 consumer: fanoutd's and the C baseline's puller, Redis's and NATS's extra "
             "subscriber) | " + " | ".join(NAMES.get(s, s) for s in systems) + " | fanoutd vs best peer |",
             "|---|---|" + "---|" * (len(systems) + 1)]
    for size, subs in keys:
        base = by.get((BASELINE, size, subs))
        base_rate = base.rate if base else None
        row = []
        for system in systems:
            cell = by[(system, size, subs)]
            rate = cell.rate
            text = _k(rate)
            if rate is not None and base_rate and system != BASELINE:
                text += f" ({rate / base_rate:.2f}x)"
            if cell.lost:
                text += f", lost {cell.lost:,.0f}"
            if not cell.good:
                text = "n/a" + (" (error)" if cell.errors else "")
            row.append(text)
        mine = by[("fanoutd", size, subs)].rate if ("fanoutd", size, subs) in by else None
        peers = [by[(p, size, subs)].rate for p in PEERS if (p, size, subs) in by]
        best = max((r for r in peers if r), default=None)
        versus = f"{mine / best:.2f}x" if mine and best else "n/a"
        lines.append(f"| {_size(size)} | {subs} | " + " | ".join(row) + f" | {versus} |")
    return lines


def runs_table(cells: Sequence[Cell]) -> list[str]:
    """Every run of every cell: rate and losses, and fanoutd's own drop counters."""
    lines = ["| size | subscribers | system | msg/s per run | lost per run | fanoutd drop counters |",
             "|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c.size, c.subs, c.system)):
        rates = ", ".join(_k(t.rate) if t.ok else "error" for t in c.trials)
        lost = ", ".join(f"{t.lost:,}" if t.ok else "-" for t in c.trials)
        drops = "; ".join(", ".join(f"{k} {v:,.0f}" for k, v in t.drops().items()) or "0"
                          for t in c.trials if t.counters)
        lines.append(f"| {_size(c.size)} | {c.subs} | {NAMES.get(c.system, c.system)} | {rates} | {lost} "
                     f"| {drops} |")
    errors = [f"- {NAMES.get(c.system, c.system)} {_size(c.size)} x{c.subs}: {e}" for c in cells for e in c.errors]
    return lines + ([""] + errors if errors else [])


def burst_table(results: Sequence[TrialResult]) -> list[str]:
    lines = ["| system | sent | output | received | lost | msg/s |", "|---|---|---|---|---|---|"]
    for r in results:
        name = NAMES.get(r.spec.system, r.spec.system)
        if not r.ok:
            lines.append(f"| {name} | n/a | | | | {r.error} |")
        for s in r.measured():
            lines.append(f"| {name} | {r.sent:,} | {s.output} | {s.received:,} | "
                         f"{r.sent - s.received:,} | {_k(s.rate)} |")
    return lines


def idle_table(results: Sequence[IdleResult]) -> list[str]:
    lines = ["| system | seconds | CPU (% of one core) | RSS MiB |", "|---|---|---|---|"]
    for r in results:
        cpu = "n/a" if r.cpu_percent is None else f"{r.cpu_percent:.2f}"
        rss = "n/a" if r.rss is None else f"{r.rss / 2**20:.1f}"
        lines.append(f"| {NAMES.get(r.system, r.system)} | {r.seconds:.0f} | {cpu} | {rss} |"
                     + (f" {r.error}" if r.error else ""))
    return lines


def stall_lines(results: Sequence[TrialResult]) -> list[str]:
    lines: list[str] = []
    for r in results:
        name = NAMES.get(r.spec.system, r.spec.system)
        if r.error:
            lines.append(f"- {name}: {r.error}")
            continue
        outs = ", ".join(f"{s.output} {_k(s.rate)} msg/s ({s.received:,} received, {r.sent - s.received:,} lost)"
                         for s in r.measured())
        drops = ", ".join(f"{k} {v:,.0f}" for k, v in r.drops().items()) or "none"
        lines.append(f"- {name}: sent {r.sent:,} in {r.spec.duration:.0f} s; readers: {outs}; "
                     f"the stalled subscriber got none of them; the daemon's drop counters: {drops}")
        if r.rss:
            samples = r.rss[:: max(1, len(r.rss) // 10)]
            lines.append("  - RSS over time: " + ", ".join(f"{t:.0f} s {b / 2**20:.0f} MiB"
                                                          for t, b in samples)
                         + f"; peak {max(b for _, b in r.rss) / 2**20:.0f} MiB")
    return lines


def write_markdown(path: Path, sections: list[tuple[str, list[str]]], header: list[str]) -> None:
    text = ["# fanoutd benchmark results", "", *header, ""]
    for title, body in sections:
        text += [f"## {title}", "", *body, ""]
    path.write_text("\n".join(text))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    def enc(obj: Any) -> Any:
        return asdict(obj) if hasattr(obj, "__dataclass_fields__") else str(obj)
    path.write_text(json.dumps(payload, default=enc, indent=1))


def write_plot(path: Path, cells: Sequence[Cell], systems: Sequence[str]) -> bool:
    """Grouped bars of throughput; False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    keys = sorted({(c.size, c.subs) for c in cells})
    by = {(c.system, c.size, c.subs): c for c in cells}
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        ys = [(by[(system, *k)].rate or 0) / 1e3 for k in keys]
        ax.bar([x + i * width for x in range(len(keys))], ys, width, label=NAMES.get(system, system))
    ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(keys))])
    ax.set_xticklabels([f"{_size(s)}\n{n} sub" for s, n in keys])
    ax.set_yscale("log")
    ax.set_ylabel("delivered k msg/s per subscriber, slowest output (log)")
    ax.set_title("Throughput, equal work (median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_table(lines: Sequence[str], out: Path) -> None:
    """A script's table, one markdown line each, written to ``out`` (its folder made) and printed."""
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
