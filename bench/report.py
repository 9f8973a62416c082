"""What the bench prints and stores: one row per scenario, the ratios against the targets, the profile.

In the paired mode (the default) every ratio is computed per round, from runs made moments apart, and
shown as the median of the rounds with their range; the sequential mode shows ratios of the medians.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import LoadResult

__all__ = [
    "HOT_CPU_TARGET_US",
    "HOT_RATIO_TARGET",
    "Row",
    "code_version",
    "machine",
    "ratio_lines",
    "ratios",
    "rounds_table",
    "spread",
    "spread_lines",
    "table",
]

HOT_RATIO_TARGET = 0.95  # hot throughput / passthrough throughput
HOT_CPU_TARGET_US = 150.0  # CPU per request on a cache hit


@dataclass
class Row:
    scenario: str
    load: LoadResult
    cpu_seconds: float
    processes: int
    db_tx_per_request: float | None = None
    notes: list[str] = field(default_factory=list)
    cpu_split: dict[str, float] = field(default_factory=dict)  # CPU seconds per measured process
    db_cpu: float | None = None  # CPU seconds of the embedded PostgreSQL meanwhile (hot and cold)
    other_cpu: float = 0.0  # CPU seconds used meanwhile by processes that are not ours, nginx or wrk
    other_top: dict[str, float] = field(default_factory=dict)  # the biggest of those, by process name
    steal: float = 0.0  # CPU seconds the hypervisor gave to other guests meanwhile
    runs: list[dict[str, Any]] = field(default_factory=list)  # every measured run, when repeated
    idle_cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds of the idle servers meanwhile
    log_bytes: int | None = None  # growth of the server's stdout+stderr log file meanwhile

    @property
    def db_us(self) -> float | None:
        if self.db_cpu is None or not self.load.requests:
            return None
        return round(1e6 * self.db_cpu / self.load.requests, 1)

    def summary(self) -> dict[str, Any]:
        """The figures of one run, for the list of runs of a repeated scenario."""
        return {
            "rps": round(self.load.rps, 1),
            "p50_ms": self.load.p50_ms,
            "p99_ms": self.load.p99_ms,
            "cpu_us_per_request": round(self.cpu_us, 1),
            "other_processes_cpu_seconds": round(self.other_cpu, 3),
            "other_processes_top": self.other_top,
            "steal_seconds": round(self.steal, 3),
            "idle_servers_cpu_seconds": self.idle_cpu,
            "log_bytes": self.log_bytes,
        }

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu_seconds / self.load.requests if self.load.requests else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "rps": round(self.load.rps, 1),
            "p50_ms": self.load.p50_ms,
            "p99_ms": self.load.p99_ms,
            "cpu_us_per_request": round(self.cpu_us, 1),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "processes": self.processes,
            "cpu_seconds_by_process": self.cpu_split,
            "postgres_cpu_us_per_request": self.db_us,
            "other_processes_cpu_seconds": round(self.other_cpu, 3),
            "db_tx_per_request": self.db_tx_per_request,
            "notes": self.notes,
            "runs": self.runs,
            "wrk": self.load.to_json(),
        }


def machine() -> dict[str, Any]:
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
    }


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (done.stdout or done.stderr).strip()


def code_version(root: Path) -> dict[str, Any]:
    """Which signalgate was measured: the commit, and the files under proxy/ and sql/ changed since."""
    git = ["git", "-C", str(root)]
    changed = _output([*git, "status", "--porcelain", "--", "proxy", "sql"]).splitlines()
    return {
        "commit": _output([*git, "rev-parse", "--short", "HEAD"]),
        "uncommitted": [line.strip() for line in changed if line.strip()],
        "nginx": _output(["nginx", "-v"]),
        "wrk": (_output(["wrk", "-v"]).splitlines() or [""])[0],
    }


def ratios(rows: dict[str, Row]) -> dict[str, float]:
    out: dict[str, float] = {}
    base = rows.get("passthrough")
    if base is not None and base.load.rps:
        for name in ("hot", "cold"):
            if name in rows:
                out[f"{name}/passthrough throughput"] = round(rows[name].load.rps / base.load.rps, 3)
        if "hot" in rows:
            out["hot - passthrough CPU µs/request"] = round(rows["hot"].cpu_us - base.cpu_us, 1)
    if "hot" in rows:
        out["hot CPU µs/request"] = round(rows["hot"].cpu_us, 1)
    return out


def _verdict(name: str, value: float) -> str:
    if name == "hot/passthrough throughput":
        return f"  (target >= {HOT_RATIO_TARGET}: {'met' if value >= HOT_RATIO_TARGET else 'MISSED'})"
    if name == "hot CPU µs/request":
        return f"  (target <= {HOT_CPU_TARGET_US:.0f}: {'met' if value <= HOT_CPU_TARGET_US else 'MISSED'})"
    return ""


def ratio_lines(found: dict[str, float]) -> list[str]:
    """The sequential mode's ratios (of the scenario medians), each with its target if it has one."""
    return [f"{name:<34}{value:>8}{_verdict(name, value)}" for name, value in found.items()]


def spread(per_round: Sequence[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """For each ratio: the median over the rounds, the min and max, and every round's value."""
    names = [name for name in per_round[0]] if per_round else []
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        values = [r[name] for r in per_round if name in r]
        out[name] = {
            "median": round(statistics.median(values), 3),
            "min": min(values),
            "max": max(values),
            "rounds": values,
        }
    return out


def spread_lines(found: dict[str, dict[str, Any]]) -> list[str]:
    """The paired mode's ratios: median of the per-round values, their range, the target if any."""
    lines = [f"{'per-round figures':<34}{'median':>8}{'min':>9}{'max':>9}"]
    for name, s in found.items():
        lines.append(f"{name:<34}{s['median']:>8}{s['min']:>9}{s['max']:>9}{_verdict(name, s['median'])}")
    return lines


def rounds_table(rounds: Sequence[dict[str, Any]]) -> list[str]:
    """One line per round: its order, each scenario's req/s and CPU µs/request, and the round's ratios."""
    if not rounds:
        return []
    names = list(rounds[0]["runs"])
    head = f"{'round':<7}{'order':<8}" + "".join(f"{n + ' req/s':>18}{'µs/req':>8}" for n in names)
    keys = list(rounds[0]["ratios"])
    short = {"hot/passthrough throughput": "hot/pt", "cold/passthrough throughput": "cold/pt",
             "hot - passthrough CPU µs/request": "hot-pt µs", "hot CPU µs/request": "hot µs"}  # fmt: skip
    head += "".join(f"{short.get(k, k):>11}" for k in keys)
    lines = [head]
    for r in rounds:
        order = "".join(n[0].upper() for n in r["order"])
        line = f"{r['round']:<7}{order:<8}"
        line += "".join(
            f"{r['runs'][n]['rps']:>18,.0f}{r['runs'][n]['cpu_us_per_request']:>8.0f}" for n in names
        )
        line += "".join(f"{r['ratios'][k]:>11}" for k in keys)
        lines.append(line)
    return lines


def table(rows: list[Row], extra: list[str], profile: dict[str, Any] | None) -> str:
    lines = [
        f"{'scenario':<14}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU µs/req':>12}{'procs':>7}"
        f"{'DB tx/req':>11}{'PG µs/req':>11}  notes"
    ]
    for row in rows:
        tx = "-" if row.db_tx_per_request is None else f"{row.db_tx_per_request:.2f}"
        db = "-" if row.db_us is None else f"{row.db_us:.1f}"
        lines.append(
            f"{row.scenario:<14}{row.load.rps:>10,.0f}{row.load.p50_ms:>9.2f}{row.load.p99_ms:>9.2f}"
            f"{row.cpu_us:>12.1f}{row.processes:>7}{tx:>11}{db:>11}  {'; '.join(row.notes)}"
        )
    lines += ["", *extra]
    if profile:
        lines += [
            "",
            f"hot scenario under py-spy ({profile['py_spy_mode']}): {profile['samples']} samples, "
            f"{profile['rps_while_profiling']:,.0f} req/s while sampling; top functions by own time:",
            f"{'own %':>6} {'total %':>8}  function",
        ]
        lines += [f"{f['own_pct']:>6.1f} {f['total_pct']:>8.1f}  {f['function']}" for f in profile["top_own"]]
    return "\n".join(lines)
