"""Tables and plots of the cost, scale and latency modes, each cell with fanoutd's standing against the best peer.

The *advantage* column is fanoutd's figure against the best of Redis and
NATS in that cell, oriented so that above 1.00x means fanoutd is ahead
(more deliveries per second; less CPU, memory, connect time or latency).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .fleet import FleetResult
from .fleetmodes import FleetCell

PEERS = ("redis", "nats")
NAMES = {"fanoutd": "fanoutd", "cbase": "C baseline", "redis": "Redis", "nats": "NATS", "zmtpd": "zmtpd (prototype)"}
Value = Callable[[FleetResult], float | None]


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def _rate(v: float) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k" if v >= 1e3 else f"{v:.0f}"


def advantage(cells: dict[str, FleetCell], value: Value, higher_is_better: bool) -> str:
    """fanoutd against the best peer in one cell: ``1.23x`` (> 1: fanoutd ahead), or n/a."""
    mine = cells["fanoutd"].median(value) if "fanoutd" in cells else None
    peers = [v for v in (cells[p].median(value) for p in PEERS if p in cells) if v is not None and v > 0]
    if mine is None or mine <= 0 or not peers:
        return "n/a"
    best = max(peers) if higher_is_better else min(peers)
    return f"{(mine / best if higher_is_better else best / mine):.2f}x"


def _by_key(cells: Sequence[FleetCell]) -> dict[tuple[int, ...], dict[str, FleetCell]]:
    out: dict[tuple[int, ...], dict[str, FleetCell]] = {}
    for c in cells:
        out.setdefault(c.key, {})[c.system] = c
    return out


def _table(cells: Sequence[FleetCell], systems: Sequence[str], head: list[str], key_cols: Callable[[tuple[int, ...]],
           list[str]], value: Value, fmt: Callable[[float], str], higher_is_better: bool) -> list[str]:
    names = [NAMES.get(s, s) for s in systems]
    lines = ["| " + " | ".join(head + names + ["fanoutd vs best peer"]) + " |",
             "|" + "---|" * (len(head) + len(names) + 1)]
    for key, row in sorted(_by_key(cells).items()):
        texts = []
        for s in systems:
            cell = row.get(s)
            v = cell.median(value) if cell else None
            texts.append("n/a" + (" (error)" if cell and cell.errors else "") if v is None else fmt(v))
        lines.append("| " + " | ".join(key_cols(key) + texts + [advantage(row, value, higher_is_better)]) + " |")
    return lines


def cost_table(cells: Sequence[FleetCell], systems: Sequence[str]) -> list[str]:
    return _table(cells, systems, ["size", "subscribers (+1 consumer)", "offered msg/s"],
                  lambda k: [_size(k[0]), str(k[1]), _rate(k[2])], lambda r: r.cpu_us_per_delivery,
                  lambda v: f"{v:.3f}", higher_is_better=False)


def scale_tables(cells: Sequence[FleetCell], systems: Sequence[str]) -> list[tuple[str, list[str]]]:
    def subs(k: tuple[int, ...]) -> list[str]:
        return [f"{k[0]:,}"]
    out = [
        ("deliveries/s (all consumers)", _table(cells, systems, ["subscribers"], subs,
                                                lambda r: r.deliveries_per_s, _rate, True)),
        ("server memory per connected subscriber, KiB (RSS connected - RSS started, / K)",
         _table(cells, systems, ["subscribers"], subs,
                lambda r: r.rss_per_conn / 1024 if r.rss_per_conn else None, lambda v: f"{v:.1f}", False)),
        ("time to connect every subscriber (all handshakes done), ms",
         _table(cells, systems, ["subscribers"], subs, lambda r: r.connect_ms, lambda v: f"{v:,.0f}", False)),
        ("server CPU while connected and idle, % of one core (fanoutd: heartbeats, the slow-consumer guard)",
         _table(cells, systems, ["subscribers"], subs, lambda r: r.idle_cpu_pct, lambda v: f"{v:.1f}", False)),
    ]
    losses = ["| subscribers | system | lost per run (of sent x consumers) | connections closed by the server "
              "| fanoutd's own count (drops, cut subscribers) |", "|---|---|---|---|---|"]
    for key, row in sorted(_by_key(cells).items()):
        for s in systems:
            if s in row:
                runs = row[s].runs
                losses.append(f"| {key[0]:,} | {NAMES.get(s, s)} | "
                              + ", ".join(f"{r.lost:,}" if r.ok else "error" for r in runs) + " | "
                              + ", ".join(str(r.closed) for r in runs) + " | "
                              + (", ".join(f"{r.counted_losses():,.0f}" for r in runs) if s == "fanoutd" else "-")
                              + " |")
    out.append(("losses, every run", losses))
    return out


def latency_table(cells: Sequence[FleetCell], systems: Sequence[str]) -> list[str]:
    """One row per rate and quantile (p50, p99, p99.9), µs."""
    lines: list[str] = []
    by = _by_key(cells)
    for key in sorted(by):
        for q, label in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")):
            table = _table([c for c in cells if c.key == key], systems, ["msg/s", "quantile"],
                           lambda k, label=label: [_rate(k[0]), label], lambda r, q=q: r.latency_us.get(q),
                           lambda v: f"{v:.0f}", False)
            lines += table if not lines else table[2:]
    return lines


def errors(cells: Sequence[FleetCell]) -> list[str]:
    return [f"- {NAMES.get(c.system, c.system)} {c.key}: {e}" for c in cells for e in c.errors]


def _bars(ax: Any, systems: Sequence[str], labels: list[str], values: list[list[float]], rotation: int = 0) -> None:
    """Grouped bars on a log scale: one group per label, one bar per system (``values[system][label]``)."""
    width = 0.8 / max(1, len(systems))
    for i, (s, ys) in enumerate(zip(systems, values)):
        ax.bar([x + i * width for x in range(len(labels))], ys, width, label=NAMES.get(s, s))
    ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels, fontsize=8, rotation=rotation)
    ax.set_yscale("log")
    ax.legend(fontsize=8)


def plot(path: Path, cost: Sequence[FleetCell], scale: Sequence[FleetCell], lat: Sequence[FleetCell],
         systems: Sequence[str]) -> bool:
    """Bars of CPU per delivery, lines of deliveries/s over K, bars of latency; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [p for p in (cost, scale, lat) if p]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8), squeeze=False)
    axs = iter(axes[0])
    if cost:
        ax, by = next(axs), _by_key(cost)
        keys = sorted(by)
        _bars(ax, systems, [f"{_size(k[0])}\nx{k[1]}\n{_rate(k[2])}/s" for k in keys],
              [[(by[k][s].median(lambda r: r.cpu_us_per_delivery) or 0) if s in by[k] else 0 for k in keys]
               for s in systems])
        ax.set_ylabel("server CPU µs per delivered message (log; lower is better)")
        ax.set_title("Cost")
    if scale:
        ax, by = next(axs), _by_key(scale)
        keys = sorted(by)
        for s in systems:
            pts = [(k[0], by[k][s].median(lambda r: r.deliveries_per_s)) for k in keys if s in by[k]]
            pts = [(x, y) for x, y in pts if y]
            ax.plot([x for x, _ in pts], [y / 1e6 for _, y in pts], marker="o", label=NAMES.get(s, s))
        ax.set_xscale("log")
        ax.set_xlabel("subscribers")
        ax.set_ylabel("million deliveries/s, 100 B")
        ax.set_title("Scale")
        ax.legend(fontsize=8)
    if lat:
        ax, by = next(axs), _by_key(lat)
        keys = sorted(by)
        quantiles = (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"))
        _bars(ax, systems, [f"{_rate(k[0])}/s {label}" for k in keys for _, label in quantiles],
              [[(by[k][s].median(lambda r, q=q: r.latency_us.get(q)) or 0) if s in by[k] else 0
                for k in keys for q, _ in quantiles] for s in systems], rotation=30)
        ax.set_ylabel("µs (log; lower is better)")
        ax.set_title("Latency, 100 B, 1 subscriber")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
