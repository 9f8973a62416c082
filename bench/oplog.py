"""In-process cost of the operators' view per request: the decision line, the metrics tally and the
decision log (the hot path's append and the writer's work per row, off the hot path).

    .venv/bin/python -m bench.oplog [--dsn postgresql://...]

Each figure is the median of several ``timeit`` runs, in microseconds per request (or per row). With
``--dsn`` (a migrated database) it also inserts batches the way the writer does (COPY into a staging
table, then an idempotent insert) and reports the client-side time per row.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from proxy.core.model import ALLOW
from proxy.core.record import Recorder
from proxy.core.tally import Tally
from proxy.core.trace import Trace
from proxy.db.decisions import ensure_partitions, insert_rows, partition_days, row
from proxy.db.recorder import DecisionWriter
from proxy.db.spool import Spool
from proxy.logs import BufferedLineHandler, DecisionLines, decision_line


def sample_trace(n: int = 0) -> Trace:
    trace = Trace(f"5f2c9a0e41b3{n:010x}", "/v1/orders/42")
    trace.at = datetime.now(UTC)
    trace.method, trace.status, trace.seconds = "GET", 200, 0.000412
    trace.client = ipaddress.IPv4Address("10.20.3.4")
    trace.country, trace.key_id, trace.owner, trace.policy_revision = "DE", "0123456789abcdef", "team-pay", 7
    trace.decision, trace.decision_seconds = ALLOW, 0.000021
    trace.upstream_status, trace.upstream_seconds = 200, 0.000310
    return trace


def previous_line(trace: Trace) -> str:
    """The decision line as it was encoded before (json.dumps of the same fields, without the revision)."""
    decision = trace.decision
    return json.dumps(
        {
            "request_id": trace.request_id,
            "key_id": trace.key_id,
            "owner": trace.owner,
            "client_ip": str(trace.client) if trace.client is not None else None,
            "country": trace.country,
            "method": trace.method,
            "path": trace.path,
            "decision": "allow" if decision.allowed else "deny",
            "reason": str(decision.reason),
            "detail": decision.detail or None,
            "status": trace.status,
            "latency_ms": round(trace.seconds * 1000, 3),
        }
    )


def per_call(fn: Callable[[], object], number: int = 20000, repeat: int = 7) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - lives for the run (the handler writes to its fd)


def lines_to_devnull() -> DecisionLines:
    logger = logging.getLogger("bench.oplog.decision")
    logger.handlers[:] = [BufferedLineHandler(DEVNULL)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return DecisionLines(logger)


async def hot_path(out: dict[str, float]) -> None:
    trace = sample_trace()
    out["line, json.dumps (before)"] = per_call(lambda: previous_line(trace))
    out["line, orjson (now)"] = per_call(lambda: decision_line(trace))
    lines = lines_to_devnull()
    with tempfile.TemporaryDirectory() as state:
        writer = DecisionWriter(
            "postgresql://unused", Spool(Path(state), "bench", 1 << 30), max_pending=1 << 62
        )
        variants = {
            "record: metrics only": Recorder(Tally()),
            "record: metrics + line": Recorder(Tally(), lines=lines),
            "record: metrics + log": Recorder(Tally(), log=writer),
            "record: metrics + line + log": Recorder(Tally(), lines=lines, log=writer),
        }
        for name, recorder in variants.items():
            out[name] = per_call(lambda recorder=recorder: recorder.record(trace))
            writer._pending.clear()
        out["writer, per row: trace to row"] = per_call(lambda: row(trace))
        spool = Spool(Path(state) / "s", "bench", 1 << 34)
        spool.open()
        rows = [row(sample_trace(n)) for n in range(5000)]
        started = time.perf_counter()
        for _ in range(5):
            spool.append(rows)  # encode, one write, fsync
        out["writer, per row: spooled (encode + write + fsync per 5000)"] = (
            (time.perf_counter() - started) / (5 * len(rows)) * 1e6
        )
        spool.close()


async def database(dsn: str, out: dict[str, float]) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        batches = [[row(sample_trace(b * 5000 + n)) for n in range(5000)] for b in range(10)]
        await ensure_partitions(conn, partition_days(batches[0]))
        started, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            await insert_rows(conn, batch)
        out["writer, per row: COPY + insert, batches of 5000 (client wall time)"] = (
            (time.perf_counter() - started) / 50000 * 1e6
        )
        out["writer, per row: COPY + insert, batches of 5000 (client CPU)"] = (
            (time.process_time() - cpu) / 50000 * 1e6
        )
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="a migrated signalgate database to insert rows into")
    opts = parser.parse_args()
    out: dict[str, float] = {}
    asyncio.run(hot_path(out))
    if opts.dsn:
        asyncio.run(database(opts.dsn, out))
    width = max(map(len, out))
    for name, micros in out.items():
        print(f"{name:<{width}}  {micros:7.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
