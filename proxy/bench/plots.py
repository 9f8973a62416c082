"""PNG plots of a bench document (matplotlib, from the bench extra).

- ``latency``: latency percentile curves, one line per scenario: the x axis spreads the tail
  (50%, 90%, 99%, 99.9%, 99.99% equally spaced), the y axis is logarithmic.
- ``throughput``: requests/s and CPU µs per request side by side, one bar per scenario, peers in grey
  and signalgate in blue; the whiskers span the scenario's runs (min to max over the rounds), the
  number is the median run's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["available", "plot_latency", "plot_throughput"]

PEER = "#9a9a9a"
OURS = "#2b6cb0"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tail(p: float) -> float:
    """Percentile to the x axis: -log10(1 - p/100), so 90 -> 1, 99 -> 2, 99.9 -> 3."""
    return -math.log10(max(1e-6, 1 - p / 100))


def plot_latency(document: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 6), dpi=110)
    results = document["results"]
    palette = [*plt.get_cmap("tab10").colors, "#000000", "#9a9a00", "#00a0a0"]
    for i, row in enumerate(results):
        points = [(float(p), ms) for p, ms in row["load"]["percentiles_ms"] if float(p) < 100]
        if not points:
            continue
        xs = [_tail(p) for p, _ in points]
        ys = [max(ms, 1e-3) for _, ms in points]
        style = "--" if row["scenario"] in document.get("peers", []) else "-"
        colour = palette[i % len(palette)]
        ax.plot(xs, ys, style, marker="o", markersize=3, color=colour, label=row["scenario"])
    ticks = [50, 90, 99, 99.9, 99.99]
    ax.set_xticks([_tail(p) for p in ticks], [f"{p:g}%" for p in ticks])
    ax.set_yscale("log")
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title(_title(document, "Latency by percentile"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _title(document: dict[str, Any], what: str) -> str:
    load = document.get("load", {})
    mach = document.get("machine", {})
    return (
        f"{what}: {load.get('connections')} connections, {load.get('generator')}, "
        f"{mach.get('nproc')} cores, {document.get('date', '')[:10]}"
    )


def plot_throughput(document: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    rows = [r for r in document["results"] if r["scenario"] != "revocation"]
    names = [r["scenario"] for r in rows]
    peers = set(document.get("peers", []))
    colours = [PEER if n in peers else OURS for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 2), dpi=110, sharey=True)
    ys = list(range(len(rows)))[::-1]
    for ax, field, label in (
        (left, "rps", "requests/s"),
        (right, "cpu_us_per_request", "CPU µs per request"),
    ):
        values = [r[field] or 0.0 for r in rows]
        lows, highs = [], []
        for r, v in zip(rows, values, strict=True):
            spread = [run[field if field == "rps" else "cpu_us_per_request"] for run in r.get("runs", [])]
            spread = [s for s in spread if s is not None] or [v]
            lows.append(max(0.0, v - min(spread)))
            highs.append(max(0.0, max(spread) - v))
        ax.barh(ys, values, color=colours, xerr=[lows, highs], error_kw={"ecolor": "#333", "capsize": 2})
        ends = [v + high for v, high in zip(values, highs, strict=True)]
        for y, v, end in zip(ys, values, ends, strict=True):
            ax.text(end, y, f"  {v:,.0f}", va="center", fontsize=8)
        ax.set_xlabel(label)
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_xlim(0, max([*ends, 1]) * 1.2)
    left.set_yticks(ys, names)
    fig.suptitle(_title(document, "Throughput and CPU per request (grey: references, blue: signalgate)"))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
