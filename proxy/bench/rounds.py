"""Measured runs, and the paired interleaved rounds that make ratios robust to a drifting machine.

On a small shared VM the same configuration measures ±15% apart from one run to the next, so a ratio
of two scenarios measured minutes apart is mostly drift. So every scenario's server is up at once
(separate processes on separate ports; a server that gets no requests is idle), each is checked and
warmed up, and then every round loads each of them in turn, A B C, then C B A, and so on, so slow drift
hits every scenario alike and the order within a round cancels out over two rounds. Each round gives
its own ratios; the report shows their median and range.

During every run the CPU of the idle servers is recorded (a row notes it if one used more than
``IDLE_LIMIT`` cores), and so is the CPU of processes that are not the bench's (``busy machine``) and
the hypervisor's steal time (``busy host``): such runs are not comparable.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.bench import procs, seed
from proxy.bench.load import LoadResult, Plan, Shape, run_load
from proxy.bench.report import Row, spread
from proxy.bench.scenarios import ratios
from proxy.bench.servers import Server

__all__ = ["BUSY", "IDLE_LIMIT", "Meter", "Progress", "Target"]

BUSY = 0.15  # cores other processes may use during a run before the row says the machine was busy
IDLE_LIMIT = 0.02  # cores an idle server may use during another's run before the row says so
STATS_DELAY = 11.0  # PostgreSQL publishes an idle backend's counters up to 10 s late


class Progress:
    """Lines as the bench goes, and on a terminal a ticking line while each load runs."""

    def __init__(self, live: bool | None = None) -> None:
        self.live = os.isatty(1) if live is None else live

    def say(self, line: str) -> None:
        if self.live:
            print("\r\033[K", end="")
        print(line, flush=True)

    def ticker(self, label: str, total: float) -> Callable[[float], None]:
        def tick(elapsed: float) -> None:
            if self.live:
                done = int(20 * elapsed / total) if total else 20
                print(
                    f"\r\033[K{label} [{'#' * done}{'.' * (20 - done)}] {elapsed:4.1f}/{total:.0f}s",
                    end="",
                    flush=True,
                )

        return tick


@dataclass
class Target:
    """A server and the load it gets."""

    server: Server
    plan: Plan

    @property
    def name(self) -> str:
        return self.server.name


class Meter:
    """Runs the load against targets and measures what each run cost."""

    def __init__(
        self,
        generator: str,
        shape: Shape,
        progress: Progress,
        *,
        db_pid: int = 0,
        upstream_pid: int = 0,
        dsn: str = "",
    ) -> None:
        self.generator = generator
        self.shape = shape
        self.progress = progress
        self.db_pid = db_pid
        self.upstream_pid = upstream_pid
        self.dsn = dsn

    def load(self, target: Target, seconds: float, label: str) -> LoadResult:
        shape = Shape(seconds, self.shape.connections, self.shape.threads, self.shape.rate)
        return run_load(self.generator, target.plan, shape, progress=self.progress.ticker(label, seconds))

    def warm(self, target: Target, seconds: float) -> None:
        if seconds > 0:
            result = self.load(target, seconds, f"[{target.name}] warm-up")
            self.progress.say(f"[{target.name}] warmed up: {result.rps:,.0f} req/s")

    def run(self, target: Target, idle: Sequence[Target] = (), label: str = "") -> Row:
        """One measured run; the CPU of ``idle`` (servers up but not loaded) is recorded apart."""
        database = [self.db_pid] if self.db_pid else []  # PostgreSQL's CPU is reported apart
        db_before, machine_before = procs.CpuSnapshot(database, exclude=frozenset()), procs.all_cpu_seconds()
        steal_before = procs.steal_seconds()
        idle_before = [procs.CpuSnapshot(t.server.roots) for t in idle]
        log_before = _size(target.server.log)
        before = procs.CpuSnapshot(target.server.roots)
        load = self.load(target, self.shape.duration, label or f"[{target.name}]")
        after = procs.CpuSnapshot(target.server.roots)
        log_after = _size(target.server.log)
        idle_after = [procs.CpuSnapshot(t.server.roots) for t in idle]
        steal_after = procs.steal_seconds()
        db_after, machine_after = procs.CpuSnapshot(database, exclude=frozenset()), procs.all_cpu_seconds()
        upstream = procs.CpuSnapshot([self.upstream_pid] if self.upstream_pid else [], exclude=frozenset())
        seen = after.since(before) if after.processes else -1.0
        row = Row(target.name, load, seen, after.processes)
        row.cpu_split = {name: round(seconds, 3) for name, seconds in after.split(before).items()}
        row.log_bytes = None if log_before is None or log_after is None else log_after - log_before
        if target.server.db and self.db_pid:
            row.db_cpu = db_after.since(db_before)
        row.idle_cpu = {
            t.name: round(a.since(b), 3) for t, b, a in zip(idle, idle_before, idle_after, strict=True)
        }
        ours = after.pids | db_after.pids | upstream.pids | {os.getpid()}
        for snapshot in idle_after:
            ours |= snapshot.pids
        row.other_cpu, row.other_top = procs.others_cpu_seconds(machine_before, machine_after, ours)
        row.steal = steal_after - steal_before
        cpu = "-" if row.cpu_seconds < 0 else f"{row.cpu_us:.0f} µs CPU/req"
        self.progress.say(
            f"{label or '[' + target.name + ']'} {load.rps:,.0f} req/s, p50 {load.percentile(50):.2f} ms, "
            f"p99 {load.percentile(99):.2f} ms, {cpu}"
            + (f", {load.refused} refused" if load.refused else "")
            + (f", {load.errors} errors" if load.errors else "")
        )
        return row

    def transactions(self, targets: Sequence[Target]) -> dict[str, float]:
        """Database transactions per request of each signalgate target, over one run of its own.

        Not over the warm-up: a gate's first seconds also fill its connection pool, and every new
        asyncpg connection commits a few transactions of its own.
        """
        users = [t for t in targets if t.server.db]
        if not users or not self.dsn:
            return {}
        tx: dict[str, float] = {}
        reading = self._transactions()
        for target in users:
            load = self.load(target, self.shape.duration, f"[{target.name}] counting database transactions")
            after = self._transactions()
            if load.requests:
                tx[target.name] = (after - reading) / load.requests
            reading = after
        return tx

    def _transactions(self) -> int:
        self.progress.say(f"waiting {STATS_DELAY:.0f}s for PostgreSQL's statistics ...")
        time.sleep(STATS_DELAY)
        return asyncio.run(seed.database_transactions(self.dsn))

    def rounds(
        self, targets: Sequence[Target], repeat: int
    ) -> tuple[dict[str, list[Row]], list[dict[str, Any]]]:
        """``repeat`` rounds, each loading every target once, the order reversed every other round."""
        runs: dict[str, list[Row]] = {t.name: [] for t in targets}
        rounds: list[dict[str, Any]] = []
        for number in range(1, repeat + 1):
            order = list(targets) if number % 2 else list(reversed(targets))
            self.progress.say(f"round {number}/{repeat}: " + " -> ".join(t.name for t in order))
            got: dict[str, Row] = {}
            for target in order:
                # The upstream is never idle: every proxy's load passes through it. A scenario on the
                # same server as this one (other keys) is not another server.
                idle = [t for t in targets if t.server.roots != target.server.roots and t.name != "upstream"]
                got[target.name] = self.run(target, idle, f"[{target.name}] round {number}/{repeat}")
                runs[target.name].append(got[target.name])
            rounds.append(
                {
                    "round": number,
                    "order": [t.name for t in order],
                    "runs": {name: row.summary() for name, row in got.items()},
                    "ratios": ratios({name: row.figures() for name, row in got.items()}),
                    "idle_max_cores": round(
                        max(
                            (max(r.idle_cpu.values(), default=0.0) / r.load.seconds for r in got.values()),
                            default=0.0,
                        ),
                        4,
                    ),
                }
            )
        return runs, rounds


def finish(target: Target, runs: Sequence[Row], tx: float | None = None) -> Row:
    """The scenario's row: its median run by throughput, with every run and notes on what disturbed it."""
    row = sorted(runs, key=lambda r: r.load.rps)[len(runs) // 2]
    row.runs = [run.summary() for run in runs]
    row.db_tx_per_request = None if tx is None else round(tx, 3)
    row.notes = []
    busy = [run.other_cpu / run.load.seconds for run in runs if run.other_cpu > BUSY * run.load.seconds]
    if busy:
        worst = max(runs, key=lambda run: run.other_cpu / run.load.seconds)
        row.notes.append(
            f"busy machine in {len(busy)}/{len(runs)} runs: others used up to {max(busy):.2f} cores "
            f"({', '.join(worst.other_top)})"
        )
    stolen = [run.steal / run.load.seconds for run in runs if run.steal > BUSY * run.load.seconds]
    if stolen:
        row.notes.append(f"busy host in {len(stolen)}/{len(runs)} runs: up to {max(stolen):.2f} cores stolen")
    idle: dict[str, float] = {}
    for run in runs:
        for name, seconds in run.idle_cpu.items():
            idle[name] = max(idle.get(name, 0.0), seconds / run.load.seconds)
    noisy = ", ".join(f"{name} {cores:.2f}" for name, cores in idle.items() if cores > IDLE_LIMIT)
    if noisy:
        row.notes.append(f"idle servers not idle during its runs (cores, max): {noisy}")
    logged = [run.log_bytes / run.load.requests for run in runs if run.log_bytes and run.load.requests]
    if logged and statistics.median(logged) >= 1:
        row.notes.append(f"log {statistics.median(logged):.0f} bytes/request")
    if row.db_us is not None:
        row.notes.append(f"PostgreSQL {row.db_us:.0f} µs/req")
    row.notes += target.server.notes
    return row


def summary(rounds: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return spread([r["ratios"] for r in rounds])


def _size(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return path.stat().st_size
    except OSError:
        return None
