"""The decision log in PostgreSQL (sql/007): rows from traces, batched idempotent inserts, daily
partitions and their retention, and the queries the admin API answers from.

Inserts go through a temporary staging table filled with COPY (``copy_records_to_table``) and then
``INSERT ... SELECT ... ON CONFLICT DO NOTHING``: a batch written twice (a replayed spool, a COPY whose
commit was not seen before a timeout) lands once, since (request_id, at) is the primary key and
request ids are unique. The staging table is a session's own, so the writer uses a dedicated
connection (``proxy.db.recorder``), never the pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from proxy.core.trace import Trace

__all__ = [
    "COLUMNS",
    "DecisionFilter",
    "candidate_summary",
    "drop_expired",
    "ensure_partitions",
    "insert_rows",
    "maintain_partitions",
    "partition_days",
    "query_decisions",
    "row",
]

log = logging.getLogger("signalgate.decisions")

COLUMNS = (
    "request_id",
    "at",
    "key_id",
    "owner",
    "client_ip",
    "country",
    "device_subject",
    "workload_subject",
    "method",
    "path",
    "decision",
    "reason",
    "detail",
    "policy_revision",
    "status",
    "upstream_status",
    "latency_ms",
    "upstream_ms",
    "candidate",
    "candidate_reason",
    "candidate_detail",
    "sample_rate",
)
AT = COLUMNS.index("at")
CLIENT_IP = COLUMNS.index("client_ip")
_LIST = ", ".join(COLUMNS)
_STAGING = "signalgate_decisions_staging"
# Any fixed bigint shared by every signalgate process; spells "sgdecisi" in ASCII.
PARTITION_LOCK = 0x73_67_64_65_63_69_73_69
MAX_TEXT = 1024  # characters of a client-influenced text kept


def _text(value: str | None) -> str | None:
    """Client-influenced text as PostgreSQL can store it: no NUL, no lone surrogate, bounded."""
    if value is None:
        return None
    if not value.isascii():
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value.replace("\x00", "\\x00")[:MAX_TEXT]


def row(trace: Trace) -> tuple[Any, ...]:
    """The ``decisions`` row of one trace, in ``COLUMNS`` order (off the hot path: the writer's task)."""
    decision = trace.decision
    candidate = trace.candidate
    at = trace.at or datetime.now(UTC)
    return (
        trace.request_id,
        at,
        trace.key_id,
        trace.owner,
        # packed: asyncpg's inet codec takes bytes without a text round trip (str() alone costs 1.6 us)
        trace.client.packed if trace.client is not None else None,
        trace.country,
        trace.attested.get("device"),
        trace.attested.get("workload"),
        _text(trace.method) or "",
        _text(trace.path) or "",
        "allow" if decision.allowed else "deny",
        str(decision.reason),
        _text(decision.detail) or None,
        trace.policy_revision,
        trace.status,
        trace.upstream_status,
        round(trace.seconds * 1000, 3),
        round(trace.upstream_seconds * 1000, 3) if trace.upstream_seconds is not None else None,
        trace.candidate_outcome,
        str(candidate.reason) if candidate is not None else None,
        (_text(candidate.detail) or None) if candidate is not None else None,
        trace.sample_rate,
    )


def partition_days(rows: Iterable[Sequence[Any]]) -> set[date]:
    return {r[AT].astimezone(UTC).date() for r in rows}


def _partition(day: date) -> str:
    return f"decisions_{day:%Y%m%d}"


async def ensure_partitions(conn: asyncpg.Connection, days: Iterable[date]) -> None:
    """Create the daily partitions of ``days`` that do not exist (under a lock: writers race)."""
    for day in sorted(set(days)):
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", _partition(day))
            if not exists:
                end = start + timedelta(days=1)
                await conn.execute(
                    f"CREATE TABLE {_partition(day)} PARTITION OF decisions"
                    f" FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
                )
                log.info("created decision log partition %s", _partition(day))


async def drop_expired(conn: asyncpg.Connection, keep_days: int, today: date) -> list[str]:
    """Drop the daily partitions older than ``keep_days`` before ``today``; their names."""
    oldest = today - timedelta(days=keep_days)
    names = await conn.fetch(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'decisions'::regclass ORDER BY c.relname"""
    )
    dropped = []
    for (name,) in names:
        try:
            day = datetime.strptime(name.removeprefix("decisions_"), "%Y%m%d").date()
        except ValueError:
            continue  # not one of ours
        if day < oldest:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
                await conn.execute(f"DROP TABLE IF EXISTS {name}")
            dropped.append(name)
    return dropped


async def insert_rows(conn: asyncpg.Connection, rows: Sequence[Sequence[Any]]) -> int:
    """Insert ``rows`` once each (a row already there is skipped); the number inserted."""
    async with conn.transaction():
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} (LIKE decisions INCLUDING DEFAULTS)"
            " ON COMMIT DELETE ROWS"
        )
        await conn.copy_records_to_table(_STAGING, records=rows, columns=COLUMNS)
        status = await conn.execute(
            f"INSERT INTO decisions ({_LIST}) SELECT {_LIST} FROM {_STAGING} ON CONFLICT DO NOTHING"
        )
    return int(status.split()[-1])


AHEAD = 2  # days of partitions created ahead of today
MAINTAIN_EVERY = 3600.0  # seconds between two passes of the partition keeper


async def maintain_partitions(pool: asyncpg.Pool, keep_days: int, every: float = MAINTAIN_EVERY) -> None:
    """Until cancelled: create today's partitions and ``AHEAD`` days more, drop the expired ones."""
    while True:
        today = datetime.now(UTC).date()
        try:
            async with pool.acquire() as conn:
                await ensure_partitions(conn, (today + timedelta(days=n) for n in range(AHEAD + 1)))
                dropped = await drop_expired(conn, keep_days, today)
            if dropped:
                log.info(
                    "dropped decision log partitions older than %d days: %s", keep_days, ", ".join(dropped)
                )
        except Exception as exc:  # PostgreSQL down or anything else: never end the keeping
            log.warning("decision log partitions not maintained (%r); trying again in a minute", exc)
            await asyncio.sleep(min(every, 60.0))
            continue
        await asyncio.sleep(every)


# --- queries ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecisionFilter:
    key_id: str | None = None
    owner: str | None = None
    decision: str | None = None
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    request_id: str | None = None
    candidate: str | None = None


async def query_decisions(
    pool: asyncpg.Pool,
    where: DecisionFilter,
    *,
    limit: int,
    after: tuple[datetime, str] | None = None,
    ascending: bool = False,
) -> list[dict[str, Any]]:
    """One page ordered by (at, request_id), newest first unless ``ascending``; ``after`` is the
    (at, request_id) of the last row of the previous page."""
    conditions: list[str] = []
    args: list[Any] = []
    for column in ("key_id", "owner", "decision", "reason", "request_id", "candidate"):
        value = getattr(where, column)
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    if where.since is not None:
        args.append(where.since)
        conditions.append(f"at >= ${len(args)}")
    if where.until is not None:
        args.append(where.until)
        conditions.append(f"at < ${len(args)}")
    if after is not None:
        args.extend(after)
        conditions.append(f"(at, request_id) {'>' if ascending else '<'} (${len(args) - 1}, ${len(args)})")
    order = "ASC" if ascending else "DESC"
    args.append(limit)
    query = (
        f"SELECT {_LIST} FROM decisions {'WHERE ' + ' AND '.join(conditions) if conditions else ''}"
        f" ORDER BY at {order}, request_id {order} LIMIT ${len(args)}"
    )
    async with pool.acquire() as conn:
        rows = await conn.fetch(query, *args)
    return [_public(r) for r in rows]


def _public(record: asyncpg.Record) -> dict[str, Any]:
    out = dict(record)
    out["at"] = record["at"].isoformat()
    out["client_ip"] = str(record["client_ip"]) if record["client_ip"] is not None else None
    return out


SAMPLES = 5  # request ids shown per (outcome, reason) in a candidate summary


async def candidate_summary(pool: asyncpg.Pool, key_id: str, since: datetime) -> dict[str, Any]:
    """What the key's candidate policy would have changed since ``since``: decisions it saw (sampled
    allowed decisions count for 1 / sample_rate), how many it agreed with, and its disagreements by
    outcome and reason (the candidate's reason for ``would_deny``, the policy's for ``would_allow``)
    with the latest request ids of each."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"""SELECT candidate AS outcome,
                       CASE WHEN candidate = 'would_allow' THEN reason ELSE candidate_reason END AS reason,
                       count(*) AS n, sum(1.0 / sample_rate) AS weight,
                       (array_agg(request_id ORDER BY at DESC))[1:{SAMPLES}] AS samples,
                       min(at) AS first, max(at) AS last
                FROM decisions WHERE key_id = $1 AND at >= $2 AND candidate IS NOT NULL
                GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2""",
            key_id,
            since,
        )
    summary: dict[str, Any] = {"evaluated": 0, "agree": 0, "would_deny": 0, "would_allow": 0, "by_reason": []}
    for r in rows:
        weight = round(float(r["weight"]))
        summary["evaluated"] += weight
        if r["outcome"] == "agree":
            summary["agree"] += weight
            continue
        summary[r["outcome"]] += r["n"]
        summary["by_reason"].append(
            {
                "outcome": r["outcome"],
                "reason": r["reason"],
                "count": r["n"],
                "request_ids": list(r["samples"]),
                "first": r["first"].isoformat(),
                "last": r["last"].isoformat(),
            }
        )
    return summary
