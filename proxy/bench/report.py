"""What the bench prints and stores: one row per scenario, the ratios per round, the machine.

A row is a scenario's median run (by req/s) with every run kept in the JSON. Ratios are computed per
round from runs made moments apart and shown as the median of the rounds with their range.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.bench.load import LoadResult

__all__ = ["Row", "machine", "ratio_lines", "spread", "table", "versions"]


@dataclass
class Row:
    scenario: str
    load: LoadResult
    cpu_seconds: float
    processes: int
    notes: list[str] = field(default_factory=list)
    cpu_split: dict[str, float] = field(default_factory=dict)  # CPU seconds per measured process
    db_cpu: float | None = None  # CPU seconds of the embedded PostgreSQL meanwhile (signalgate rows)
    other_cpu: float = 0.0  # CPU seconds used meanwhile by processes that are not the bench's
    other_top: dict[str, float] = field(default_factory=dict)  # the biggest of those, by process name
    steal: float = 0.0  # CPU seconds the hypervisor gave to other guests meanwhile
    idle_cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds of the idle servers meanwhile
    log_bytes: int | None = None  # growth of the server's stdout+stderr log file meanwhile
    db_tx_per_request: float | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)  # every measured run, when repeated

    @property
    def cpu_us(self) -> float:
        """CPU µs per request of the server's processes; NaN when its CPU could not be seen."""
        if self.cpu_seconds < 0 or not self.load.requests:
            return float("nan")
        return 1e6 * self.cpu_seconds / self.load.requests

    @property
    def db_us(self) -> float | None:
        if self.db_cpu is None or not self.load.requests:
            return None
        return round(1e6 * self.db_cpu / self.load.requests, 1)

    def figures(self) -> dict[str, float]:
        return {"rps": self.load.rps, "cpu": self.cpu_us}

    def summary(self) -> dict[str, Any]:
        """One run's figures, for the list of runs of a scenario."""
        return {
            "rps": round(self.load.rps, 1),
            "p50_ms": round(self.load.percentile(50), 3),
            "p99_ms": round(self.load.percentile(99), 3),
            "cpu_us_per_request": _number(self.cpu_us),
            "refused": self.load.refused,
            "errors": self.load.errors,
            "other_processes_cpu_seconds": round(self.other_cpu, 3),
            "other_processes_top": self.other_top,
            "steal_seconds": round(self.steal, 3),
            "idle_servers_cpu_seconds": self.idle_cpu,
            "log_bytes": self.log_bytes,
        }

    def to_json(self) -> dict[str, Any]:
        load = self.load
        return {
            "scenario": self.scenario,
            "rps": round(load.rps, 1),
            "p50_ms": round(load.percentile(50), 3),
            "p90_ms": round(load.percentile(90), 3),
            "p99_ms": round(load.percentile(99), 3),
            "p99_9_ms": round(load.percentile(99.9), 3),
            "requests": load.requests,
            "ok": load.ok,
            "refused": load.refused,
            "errors": load.errors,
            "cpu_us_per_request": _number(self.cpu_us),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "processes": self.processes,
            "cpu_seconds_by_process": self.cpu_split,
            "postgres_cpu_us_per_request": self.db_us,
            "db_tx_per_request": self.db_tx_per_request,
            "notes": self.notes,
            "runs": self.runs,
            "load": load.to_json(),
        }


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 1)


def machine(load_at_start: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """The machine, with its load average (1, 5, 15 minutes) at the start of the run and now."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_start": [round(x, 2) for x in load_at_start] if load_at_start else None,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }


def _output(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return ((done.stdout or done.stderr).strip().splitlines() or [""])[0]


def versions() -> dict[str, str]:
    """Which signalgate and which peers were measured (the commit when run from a checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    root = Path(__file__).resolve().parents[2]
    found = {
        "nginx": _output(["nginx", "-v"]),
        "caddy": _output(["caddy", "version"]),
        "wrk": _output(["wrk", "-v"]),
    }
    with contextlib.suppress(PackageNotFoundError):
        found["signalgate"] = version("signalgate")
        found["aiohttp"] = version("aiohttp")
    if (root / ".git").exists():
        found["commit"] = _output(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
        dirty = _output(["git", "-C", str(root), "status", "--porcelain", "--", "proxy", "sql"])
        found["uncommitted"] = "yes" if dirty else "no"
    return found


def spread(per_round: Sequence[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """For each ratio: the median over the rounds, the min and max, and every round's value."""
    names: list[str] = []
    for found in per_round:
        names += [name for name in found if name not in names]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        values = [r[name] for r in per_round if name in r and not math.isnan(r[name])]
        if values:
            out[name] = {
                "median": round(statistics.median(values), 3),
                "min": min(values),
                "max": max(values),
                "rounds": values,
            }
    return out


def ratio_lines(found: dict[str, dict[str, Any]]) -> list[str]:
    lines = [f"{'ratio (per round)':<30}{'median':>8}{'min':>8}{'max':>8}"]
    for name, s in found.items():
        lines.append(f"{name:<30}{s['median']:>8.3f}{s['min']:>8.3f}{s['max']:>8.3f}")
    return lines


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def table(rows: Sequence[Row]) -> list[str]:
    """The scenario table: throughput, latency percentiles, errors and refusals, CPU per request."""
    lines = [
        f"{'scenario':<13}{'req/s':>9}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'p99.9 ms':>9}"
        f"{'errors':>8}{'refused':>9}{'CPU µs/req':>11}{'DB tx/req':>10}  notes"
    ]
    for row in rows:
        load = row.load
        tx = "-" if row.db_tx_per_request is None else f"{row.db_tx_per_request:.2f}"
        cpu = "-" if math.isnan(row.cpu_us) else f"{row.cpu_us:.1f}"
        lines.append(
            f"{row.scenario:<13}{load.rps:>9,.0f}{_ms(load.percentile(50)):>8}{_ms(load.percentile(90)):>8}"
            f"{_ms(load.percentile(99)):>8}{_ms(load.percentile(99.9)):>9}{load.errors:>8,}{load.refused:>9,}"
            f"{cpu:>11}{tx:>10}  {'; '.join(row.notes)}"
        )
    return lines
