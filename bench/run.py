"""signalgate benchmark: nginx direct, passthrough, and signalgate with a warm and a cold key cache.

Usage: .venv/bin/python bench/run.py [--duration 5] [--repeat 5] [--connections 64] [--threads 2]
                                     [--workers 1] [--profile] [--sequential]
                                     [--scenarios nginx-direct,passthrough,hot,cold]
By default passthrough, hot and cold run side by side and are measured in interleaved rounds
(``bench/paired.py``), so their ratios come from runs made moments apart; ``--sequential`` measures
one scenario after another. See bench/README.md for what each scenario measures and how CPU per
request is computed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import paired, procs, seed, spy, upstream  # noqa: E402
from bench.load import LoadResult, run_wrk  # noqa: E402
from bench.report import Row, code_version, machine, ratio_lines, ratios, table  # noqa: E402
from bench.servers import Servers, Target  # noqa: E402

__all__ = ["SCENARIOS", "Bench", "main"]

SCENARIOS = ("nginx-direct", "passthrough", "hot", "cold", "hot-nolog")
DEFAULT_SCENARIOS = SCENARIOS[:4]  # hot-nolog (hot without the decision log) on request
STATS_DELAY = 11.0
RESULTS = Path(__file__).resolve().parent / "results"
BUSY = 0.15  # cores other processes may use during a run before the row says the machine was busy
IDLE_LIMIT = 0.02  # cores an idle server may use during another's run before the row says so


class Bench:
    """Checks, warm-ups and measured runs against the targets ``Servers`` starts."""

    def __init__(self, opts: argparse.Namespace, tmp: Path, servers: Servers) -> None:
        self.opts = opts
        self.tmp = tmp
        self.servers = servers
        self.profile_result: dict[str, Any] | None = None
        self.profile_copy: Path | None = None  # where the raw py-spy stacks are kept

    def check(self, target: Target) -> None:
        """One request by hand: it must come back with the upstream's body."""
        script = target.script
        status, body = procs.http_get(target.url, {script.header: script.key} if script.key else None)
        if script.keys_file is not None:
            first = self.servers.cold_keys_file.read_text().split("\n", 1)[0]
            status, body = procs.http_get(target.url, {script.header: first})
        if status != 200 or body != upstream.BODY:
            raise RuntimeError(
                f"{target.name}: a check request got {status} {body[:200]!r}, not the upstream body"
            )

    def warm(self, target: Target) -> LoadResult:
        o = self.opts
        print(f"[{target.name}] warm-up {o.warmup}s with wrk -t{o.threads} -c{o.connections}", flush=True)
        return self.wrk(target, o.warmup)

    def wrk(self, target: Target, seconds: float) -> LoadResult:
        o = self.opts
        return run_wrk(
            target.url,
            target.script,
            self.tmp,
            duration=seconds,
            connections=o.connections,
            threads=o.threads,
        )

    def measure(self, target: Target) -> Row:
        """Sequential mode: check, warm up, then ``--repeat`` measured runs of this target alone."""
        self.check(target)
        self.warm(target)
        tx_before = self.db_transactions() if target.db else None
        runs = [self.one_run(target) for _ in range(self.opts.repeat)]
        tx_after = self.db_transactions() if target.db else None
        requests = sum(run.load.requests for run in runs)
        tx = None
        if tx_before is not None and tx_after is not None and requests:
            tx = (tx_after - tx_before) / requests
        return self.finish(target, runs, tx)

    def finish(self, target: Target, runs: Sequence[Row], tx_per_request: float | None) -> Row:
        """The scenario's row: its median run by throughput, with every run and the notes."""
        row = sorted(runs, key=lambda r: r.load.rps)[len(runs) // 2]
        row.runs = [run.summary() for run in runs]
        if tx_per_request is not None:
            row.db_tx_per_request = round(tx_per_request, 3)
        row.notes = [note for run in runs for note in run.notes if note.startswith("INVALID")]
        busy = [run.other_cpu / run.load.seconds for run in runs if run.other_cpu > BUSY * run.load.seconds]
        if busy:
            worst = max(runs, key=lambda run: run.other_cpu / run.load.seconds)
            row.notes.append(
                f"busy machine in {len(busy)}/{len(runs)} runs: others used up to {max(busy):.2f} cores "
                f"({', '.join(worst.other_top)})"
            )
        stolen = [run.steal / run.load.seconds for run in runs if run.steal > BUSY * run.load.seconds]
        if stolen:
            row.notes.append(
                f"busy host in {len(stolen)}/{len(runs)} runs: up to {max(stolen):.2f} cores stolen"
            )
        idle: dict[str, float] = {}
        for run in runs:
            for name, seconds in run.idle_cpu.items():
                idle[name] = max(idle.get(name, 0.0), seconds / run.load.seconds)
        noisy = ", ".join(f"{name} {cores:.2f}" for name, cores in idle.items() if cores > IDLE_LIMIT)
        if noisy:
            row.notes.append(f"idle servers not idle during its runs (cores, max): {noisy}")
        logged = [run.log_bytes / run.load.requests for run in runs if run.log_bytes and run.load.requests]
        if logged:
            row.notes.append(f"log {statistics.median(logged):.0f} bytes/request")
        if target.listeners and target.listeners < self.opts.workers:
            row.notes.append(f"only {target.listeners} process(es) listening, --workers {self.opts.workers}")
        row.notes += target.notes
        if len(runs) > 1:
            row.notes.insert(0, "median of " + " / ".join(f"{run.load.rps:,.0f}" for run in runs) + " req/s")
        if len(row.cpu_split) > 1:
            shown = ", ".join(f"{name}: {sec:.2f}s" for name, sec in row.cpu_split.items())
            print(f"[{target.name}] CPU by process (median run): {shown}", flush=True)
        return row

    def one_run(self, target: Target, idle: Sequence[Target] = ()) -> Row:
        """One measured wrk run; the CPU of ``idle`` (servers up but not loaded) is recorded apart."""
        o = self.opts
        db = target.db and bool(self.servers.db_pid)
        side = [self.servers.nginx_pid, self.servers.db_pid] if db else [self.servers.nginx_pid]
        side_before, machine_before = procs.CpuSnapshot(side, exclude=frozenset()), procs.all_cpu_seconds()
        steal_before = procs.steal_seconds()
        idle_before = [procs.CpuSnapshot(t.roots) for t in idle]
        log_before = _size(target.log)
        before = procs.CpuSnapshot(target.roots)
        load = self.wrk(target, o.duration)
        after = procs.CpuSnapshot(target.roots)
        log_after = _size(target.log)
        idle_after = [procs.CpuSnapshot(t.roots) for t in idle]
        steal_after = procs.steal_seconds()
        side_after, machine_after = procs.CpuSnapshot(side, exclude=frozenset()), procs.all_cpu_seconds()
        row = Row(target.name, load, after.since(before), after.processes)
        row.cpu_split = {name: round(seconds, 3) for name, seconds in after.split(before).items()}
        row.log_bytes = None if log_before is None or log_after is None else log_after - log_before
        if db:
            row.db_cpu = sum(v for k, v in side_after.split(side_before).items() if "nginx" not in k)
        row.idle_cpu = {
            t.name: round(a.since(b), 3) for t, b, a in zip(idle, idle_before, idle_after, strict=True)
        }
        noisy = {
            name: sec / load.seconds for name, sec in row.idle_cpu.items() if sec > IDLE_LIMIT * load.seconds
        }
        if noisy:
            row.notes.append(
                "idle servers not idle: " + ", ".join(f"{n} {c:.2f} cores" for n, c in noisy.items())
            )
        ours = after.pids | side_after.pids | {os.getpid()}
        for snapshot in idle_after:
            ours |= snapshot.pids
        row.other_cpu, row.other_top = procs.others_cpu_seconds(machine_before, machine_after, ours)
        if row.other_cpu > BUSY * load.seconds:
            top = ", ".join(f"{name} {sec / load.seconds:.2f}" for name, sec in row.other_top.items())
            row.notes.append(
                f"busy machine: other processes used {row.other_cpu / load.seconds:.2f} cores ({top})"
            )
        row.steal = steal_after - steal_before
        if row.steal > BUSY * load.seconds:
            row.notes.append(f"busy host: {row.steal / load.seconds:.2f} cores stolen by the hypervisor")
        if load.failed:
            row.notes.append(f"INVALID: {load.errors}")
        print(
            f"[{target.name}] {load.rps:,.0f} req/s, p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms, "
            f"{row.cpu_us:.0f} µs CPU/request {' '.join(row.notes)}",
            flush=True,
        )
        return row

    def db_transactions(self) -> int | None:
        if not self.servers.dsn:
            return None
        # An idle backend publishes its last statistics up to 10 s late (PGSTAT_IDLE_INTERVAL).
        time.sleep(STATS_DELAY)
        return asyncio.run(seed.database_transactions(self.servers.dsn))

    def profile(self, target: Target) -> None:
        """``--profile``: one more hot run under py-spy, after the measured ones."""
        o = self.opts
        self.profile_result = spy.profile(
            target.roots[0],
            target.url,
            target.script,
            self.tmp,
            duration=o.duration,
            connections=o.connections,
            threads=o.threads,
            nonblocking=o.nonblocking,
            keep=self.profile_copy,
        )


def _size(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return path.stat().st_size
    except OSError:
        return None


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="one scenario after another (the old mode) instead of paired interleaved rounds",
    )
    parser.add_argument("--duration", type=float, help="seconds per measured run (5; sequential: 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first")
    parser.add_argument("--repeat", type=int, help="rounds, or runs per scenario (5; sequential: 1)")
    parser.add_argument(
        "--fixed-order", action="store_true", help="paired: ABC every round instead of ABC CBA ABC ..."
    )
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=1, help="proxy processes (SIGNALGATE_WORKERS)")
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated, of {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--cold-keys", type=int, default=20_000)
    parser.add_argument("--cache-size", type=int, default=16, help="SIGNALGATE_CACHE_SIZE for cold")
    parser.add_argument("--log-level", default="warning", help="SIGNALGATE_LOG_LEVEL (info logs decisions)")
    parser.add_argument(
        "--decision-log",
        choices=["on", "off"],
        default="on",
        help="SIGNALGATE_DECISION_LOG: every decision into PostgreSQL (on by default, as in production)",
    )
    parser.add_argument("--profile", action="store_true", help="also sample the hot scenario with py-spy")
    parser.add_argument("--nonblocking", action="store_true", help="py-spy --nonblocking (see spy.py)")
    opts = parser.parse_args(argv)
    if opts.duration is None:
        opts.duration = 10.0 if opts.sequential else 5.0
    if opts.repeat is None:
        opts.repeat = 1 if opts.sequential else 5
    if opts.repeat < 1:
        parser.error("--repeat must be at least 1")
    opts.scenarios = [s.strip() for s in opts.scenarios.split(",") if s.strip()]
    unknown = set(opts.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    return opts


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _sequential(bench: Bench, opts: argparse.Namespace) -> tuple[dict[str, Row], list[str]]:
    rows: dict[str, Row] = {}
    for name in SCENARIOS:
        if name in opts.scenarios:
            target = bench.servers.start(name)
            try:
                rows[name] = bench.measure(target)
                if name == "hot" and opts.profile:
                    bench.profile(target)
            finally:
                target.cleanup.close()
    return rows, []


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    missing = upstream.missing_tools()
    if missing:
        print(
            f"missing tools: {', '.join(missing)}. Install them with:\n  {upstream.INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    when = datetime.now(UTC)
    out = RESULTS / f"{when.strftime('%Y%m%dT%H%M%SZ')}-w{opts.workers}.json"
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sg-bench-") as tmp_name, contextlib.ExitStack() as stack:
        servers = Servers(opts, Path(tmp_name), stack)
        bench = Bench(opts, Path(tmp_name), servers)
        bench.profile_copy = out.with_name(out.stem + "-hot-profile.txt")
        servers.start_upstream()
        if {"hot", "hot-nolog", "cold"} & set(opts.scenarios):
            servers.start_database(want_cold="cold" in opts.scenarios)
        if opts.sequential:
            rows, rounds = _sequential(bench, opts)
        else:
            rows, rounds = paired.run(bench, opts)
        profile = bench.profile_result
    document: dict[str, Any] = {
        "date": when.isoformat(timespec="seconds"),
        "machine": machine(),
        "code": code_version(ROOT),
        "options": vars(opts),
        "mode": "sequential" if opts.sequential else "paired",
        "results": [row.to_json() for row in rows.values()],
    }
    if opts.sequential:
        found: dict[str, Any] = ratios(rows)
        extra = ratio_lines(found)
    else:
        found = paired.summary(rounds)
        extra = paired.lines(rounds, found, fixed=opts.fixed_order)
        document["rounds"] = rounds
    document["ratios"] = found
    document["profile"] = profile
    print("\n" + table(list(rows.values()), extra, profile))
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"\nresults written to {out}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; everything the bench started has been stopped", file=sys.stderr)
        raise SystemExit(130) from None
