"""The local run: start the harness and every scenario's server, warm up, measure in paired rounds.

Used by ``signalgate bench`` (all scenarios, or ``--scenarios``) and ``signalgate bench check`` (its
short fixed set). Everything started lives under one temporary directory and one ``ExitStack``, and is
stopped on the way out, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.bench import peers, revocation, rounds, seed, spy
from proxy.bench.load import Plan, Shape
from proxy.bench.report import Row
from proxy.bench.rounds import Meter, Progress, Target
from proxy.bench.scenarios import Scenario
from proxy.bench.servers import ADMIN_TOKEN, Harness

__all__ = ["Outcome", "Setup", "run_local"]


@dataclass(frozen=True)
class Setup:
    scenarios: tuple[Scenario, ...]
    shape: Shape
    generator: str
    repeat: int = 5
    warmup: float = 2.0
    workers: int = 1
    sizes: dict[str, int] = field(default_factory=lambda: dict(seed.SIZES))
    transactions: bool = True  # count database transactions per request (costs 11 s per reading)
    revocations: bool = True
    profile: Path | None = None  # sample the hot gate with py-spy after the rounds; raw stacks kept here
    nonblocking: bool = False  # py-spy --nonblocking


@dataclass
class Outcome:
    rows: list[Row]
    rounds: list[dict[str, Any]]
    ratios: dict[str, dict[str, Any]]
    skipped: dict[str, str]  # scenario -> why
    upstream: str
    revocation: dict[str, Any] | None = None
    titles: dict[str, str] = field(default_factory=dict)
    peers: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_local(setup: Setup, progress: Progress) -> Outcome:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    skipped: dict[str, str] = {}
    chosen: list[Scenario] = []
    for scenario in setup.scenarios:
        gone = peers.missing(scenario.tools)
        if gone:
            hint = "; ".join(peers.INSTALL[tool] for tool in gone)
            skipped[scenario.name] = f"{', '.join(gone)} not installed ({hint})"
            progress.say(f"skipping {scenario.name}: {skipped[scenario.name]}")
        else:
            chosen.append(scenario)
    with tempfile.TemporaryDirectory(prefix="sg-bench-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        harness = Harness(tmp, stack, workers=setup.workers, say=progress.say)
        harness.start_upstream()
        progress.say(f"upstream: {harness.upstream_kind} on {harness.upstream}")
        harness.make_keys(setup.sizes)
        if any(scenario.gate for scenario in chosen):
            harness.start_database()
        targets: list[Target] = []
        for scenario in chosen:
            progress.say(f"starting {scenario.name}: {scenario.title}")
            server = scenario.start(harness)
            plan = Plan(
                server.url,
                seed.BENCH_PATH,
                keys_file=harness.key_files[scenario.keys],
                addresses_file=harness.addresses,
            )
            targets.append(Target(server, plan))
        meter = Meter(
            setup.generator,
            setup.shape,
            progress,
            db_pid=harness.db_pid,
            upstream_pid=harness.upstream_pid,
            dsn=harness.dsn,
        )
        for target in targets:
            meter.warm(target, setup.warmup)
        tx = (
            meter.transactions([t for t in targets if t.name in ("hot", "cold", "zipf", "hot-usage")])
            if setup.transactions
            else {}
        )
        runs, found_rounds = meter.rounds(targets, setup.repeat)
        rows = [rounds.finish(t, runs[t.name], tx.get(t.name)) for t in targets]
        revoked = None
        hot = next((t for t in targets if t.name == "hot"), None)
        victims = harness.keys.sets.get("victims", []) if harness.keys else []
        if setup.revocations and hot is not None and victims:
            other = next((t for t in targets if t.server.admin and t.server.roots != hot.server.roots), None)
            progress.say(
                f"revocations during load: {len(victims)} keys at most, for {setup.shape.duration:.0f}s"
            )
            row, revoked = revocation.measure(
                meter, hot, other.server.admin if other else None, ADMIN_TOKEN, victims
            )
            row.notes.append(f"during {revoked['revocations']} revocations")
            rows.append(row)
        profiled = None
        if setup.profile is not None and hot is not None:
            profiled = spy.profile(
                hot.server.roots[0],
                setup.generator,
                hot.plan,
                setup.shape,
                tmp,
                nonblocking=setup.nonblocking,
                keep=setup.profile,
            )
        return Outcome(
            rows=rows,
            rounds=found_rounds,
            ratios=rounds.summary(found_rounds),
            skipped=skipped,
            upstream=harness.upstream_kind,
            revocation=revoked,
            titles={s.name: s.title for s in chosen}
            | ({"revocation": "hot during revocations"} if revoked else {}),
            peers=[s.name for s in chosen if s.peer],
            profile=profiled,
        )
