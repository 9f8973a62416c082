"""Paired, interleaved measurement: the ratios the bench reports, made robust to a drifting machine.

On a small shared VM the same configuration measures ±15% apart from one run to the next, so a ratio
of two scenarios measured minutes apart is mostly drift. Here passthrough, hot and cold are all up at
once (separate processes on separate ports; a server that gets no requests is idle), each is checked
and warmed up, and then every round runs wrk against each of them in turn: A B C, then C B A, and so
on (``--fixed-order``: always A B C), so slow drift hits every scenario alike and the order within a
round cancels out over two rounds. Each round gives its own ratios (hot/passthrough throughput,
hot minus passthrough CPU per request, ...); the bench reports their median and their range.

The idle servers' CPU is recorded during every run (``Row.idle_cpu``); a row notes it if one of them
used more than ``run.IDLE_LIMIT`` cores. Database transactions per request are counted over one
extra ``--duration``-long run each of hot and cold after the warm-ups, not over the measured runs:
PostgreSQL publishes its counters up to 10 s late, and interleaved runs leave no quiet gap per
scenario to read them in.

nginx-direct is measured first, on its own, as in the sequential mode: it is a floor, not a ratio.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bench.report import Row, ratios, rounds_table, spread, spread_lines

if TYPE_CHECKING:
    from bench.run import Bench
    from bench.servers import Target

__all__ = ["PAIRED", "lines", "run", "summary"]

PAIRED = ("passthrough", "hot", "cold", "hot-nolog")


def run(bench: Bench, opts: argparse.Namespace) -> tuple[dict[str, Row], list[dict[str, Any]]]:
    """The scenarios' rows (each its median run) and every round's figures, for ``opts.scenarios``."""
    rows: dict[str, Row] = {}
    if "nginx-direct" in opts.scenarios:
        rows["nginx-direct"] = bench.measure(bench.servers.start("nginx-direct"))
    targets: list[Target] = []
    try:
        for name in PAIRED:
            if name in opts.scenarios:
                targets.append(bench.servers.start(name))
        for target in targets:
            bench.check(target)
        for target in targets:
            bench.warm(target)
        tx = _transactions(bench, targets)
        runs, rounds = _rounds(bench, targets, opts)
        for target in targets:
            rows[target.name] = bench.finish(target, runs[target.name], tx.get(target.name))
        hot = [target for target in targets if target.name == "hot"]
        if opts.profile and hot:
            bench.profile(hot[0])
    finally:
        for target in reversed(targets):
            target.cleanup.close()
    return rows, rounds


def _transactions(bench: Bench, targets: Sequence[Target]) -> dict[str, float]:
    """Database transactions per request of hot and cold, each over one ``--duration``-long run of its own.

    Not over the warm-up itself: a gate's first seconds also fill its connection pool, and every new
    asyncpg connection commits a few transactions of its own.
    """
    tx: dict[str, float] = {}
    users = [target for target in targets if target.db]
    reading = bench.db_transactions() if users else None
    for target in users:
        print(
            f"[{target.name}] counting database transactions over {bench.opts.duration}s of load", flush=True
        )
        load = bench.wrk(target, bench.opts.duration)
        after = bench.db_transactions()
        if reading is not None and after is not None and load.requests:
            tx[target.name] = (after - reading) / load.requests
        reading = after
    return tx


def _rounds(
    bench: Bench, targets: Sequence[Target], opts: argparse.Namespace
) -> tuple[dict[str, list[Row]], list[dict[str, Any]]]:
    runs: dict[str, list[Row]] = {target.name: [] for target in targets}
    rounds: list[dict[str, Any]] = []
    for number in range(1, opts.repeat + 1):
        order = list(targets) if opts.fixed_order or number % 2 else list(reversed(targets))
        print(f"round {number}/{opts.repeat}: " + " -> ".join(t.name for t in order), flush=True)
        got: dict[str, Row] = {}
        for target in order:
            got[target.name] = bench.one_run(target, idle=[t for t in targets if t is not target])
            runs[target.name].append(got[target.name])
        rounds.append(
            {
                "round": number,
                "order": [target.name for target in order],
                "runs": {target.name: got[target.name].summary() for target in targets},
                "ratios": ratios({target.name: got[target.name] for target in targets}),
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


def summary(rounds: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each per-round figure's median, min, max and values."""
    return spread([r["ratios"] for r in rounds])


def lines(rounds: Sequence[dict[str, Any]], found: dict[str, dict[str, Any]], *, fixed: bool) -> list[str]:
    """The rounds, one line each, then the per-round figures' medians and ranges."""
    if not rounds:
        return []
    order = "always in the same order" if fixed else "order reversed every other round"
    idle = max(r["idle_max_cores"] for r in rounds)
    return [
        f"{len(rounds)} rounds, {order} (P = passthrough, H = hot, C = cold):",
        *rounds_table(rounds),
        f"idle servers during the other scenarios' runs: at most {idle:.3f} cores",
        "",
        *spread_lines(found),
    ]
