"""Jobs in PostgreSQL: open, read, close (revoking every key of the job), and the deadline sweep.

asyncpg shell, written like keys (``proxy.db.keys``): each write is one transaction that records its
revision in ``changes``. Closing a job records one change for the job and one ``revoke`` per key of
the job, each key's row revoked in the same transaction, so every worker of every instance evicts
exactly those keys from its cache and refuses them (``job_closed``) within the revocation bound. The
job's own change evicts nothing (``proxy.db.keysource``): whatever a decision reads of a job is read
with its keys, and those are announced one by one.

Races with key creation are closed by the writers' advisory lock: a key is created for a job only if
the job is still open when its transaction holds the lock (``Store.create_key``), and a closing job
revokes the keys it sees once it holds the lock, so no key of a closed job is ever left active.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from proxy.core.errors import NotFound, StoreUnavailable, ValidationError
from proxy.core.jobs import CLOSED_BY_DEADLINE, JobRecord, JobStatus
from proxy.db.changelog import MAX_PAGE, WRITE_LOCK_ID, record_change
from proxy.db.rows import aware
from proxy.db.store import Store

__all__ = ["SWEEP_INTERVAL", "Closed", "DeadlineSweeper", "Jobs"]

log = logging.getLogger("signalgate.jobs")

SWEEP_INTERVAL = 5.0  # longest wait between two looks for jobs past their deadline, seconds
_SWEEP_RETRY = 1.0  # after a failed sweep
_OVERDUE_PAGE = 100
_COLUMNS = "id, name, owner, deadline, status, created_at, closed_at, closed_by, revision"


@dataclass(frozen=True, slots=True)
class Closed:
    """What closing a job did: the job now, the newest revision written, the keys revoked."""

    job: JobRecord
    revision: int  # wait for this one to be applied before saying the keys are refused
    revoked: tuple[str, ...]
    changed: bool  # False: it was closed already, nothing was written


def _job(row: asyncpg.Record) -> JobRecord:
    return JobRecord(
        id=row["id"],
        name=row["name"],
        owner=row["owner"],
        deadline=row["deadline"],
        status=JobStatus(row["status"]),
        created_at=row["created_at"],
        revision=row["revision"],
        closed_at=aware(row["closed_at"]),
        closed_by=row["closed_by"],
    )


class Jobs:
    """The queries on jobs, over the store's connections (and within its deadline)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def open_job(self, *, job_id: str, name: str, owner: str, deadline: datetime) -> JobRecord:
        async with self._store.connection(f"open job {job_id}") as conn, conn.transaction():
            revision = await record_change(conn, "job", job_id, "open")
            row = await conn.fetchrow(
                f"""INSERT INTO jobs (id, name, owner, deadline, revision) VALUES ($1, $2, $3, $4, $5)
                    RETURNING {_COLUMNS}""",
                job_id,
                name,
                owner,
                deadline,
                revision,
            )
        log.info("opened job %s for owner %r, deadline %s", job_id, owner, deadline.isoformat())
        return _job(row)

    async def get_job(self, job_id: str) -> JobRecord | None:
        async with self._store.connection(f"get job {job_id}") as conn:
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM jobs WHERE id = $1", job_id)
        return _job(row) if row is not None else None

    async def list_jobs(
        self,
        *,
        owner: str | None = None,
        status: JobStatus | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[JobRecord]:
        """One page ordered by id; pass the last id of a page as ``after`` to get the next."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationError("limit", f"must be between 1 and {MAX_PAGE}, not {limit}")
        conditions: list[str] = []
        args: list[Any] = []
        for condition, value in (("owner =", owner), ("status =", status), ("id >", after)):
            if value is not None:
                args.append(value)
                conditions.append(f"{condition} ${len(args)}")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        args.append(limit)
        async with self._store.connection("list jobs") as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY id LIMIT ${len(args)}", *args
            )
        return [_job(row) for row in rows]

    async def close_job(self, job_id: str, by: str) -> Closed:
        """Close the job and revoke its keys, in one transaction; closing a closed job changes nothing."""
        async with self._store.connection(f"close job {job_id}") as conn, conn.transaction():
            # The writers' lock first, as every writer takes it: a key being created for this job
            # holds it and then needs the job row (its foreign key), so the row lock must come after.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK_ID)
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE", job_id)
            if row is None:
                raise NotFound(f"no job with id {job_id!r}")
            if row["status"] == JobStatus.CLOSED:
                return Closed(_job(row), row["revision"], (), changed=False)
            revision = await record_change(conn, "job", job_id, "close")
            row = await conn.fetchrow(
                f"""UPDATE jobs SET status = 'closed', closed_at = now(), closed_by = $3, revision = $1
                    WHERE id = $2 RETURNING {_COLUMNS}""",
                revision,
                job_id,
                by,
            )
            # Every key of the job, revoked ones too: their records now say the job is closed.
            key_ids = [r["id"] for r in await conn.fetch("SELECT id FROM api_keys WHERE job_id = $1", job_id)]
            last = revision
            for key_id in key_ids:
                last = await record_change(conn, "key", key_id, "revoke")
                await conn.execute(
                    """UPDATE api_keys SET status = 'revoked', updated_at = now(), revision = $1
                       WHERE id = $2""",
                    last,
                    key_id,
                )
        log.info("closed job %s (by %s): revoked %d keys, revision %d", job_id, by, len(key_ids), last)
        return Closed(_job(row), last, tuple(key_ids), changed=True)

    async def close_overdue(self, now: datetime) -> list[Closed]:
        """Close every open job whose deadline is at or before ``now``."""
        closed: list[Closed] = []
        while True:
            async with self._store.connection("find jobs past their deadline") as conn:
                rows = await conn.fetch(
                    "SELECT id FROM jobs WHERE status = 'open' AND deadline <= $1 ORDER BY deadline LIMIT $2",
                    now,
                    _OVERDUE_PAGE,
                )
            for row in rows:
                done = await self.close_job(row["id"], CLOSED_BY_DEADLINE)
                if done.changed:  # another instance's sweep may have been first
                    closed.append(done)
            if len(rows) < _OVERDUE_PAGE:
                return closed

    async def next_deadline(self) -> datetime | None:
        """The earliest deadline of an open job."""
        async with self._store.connection("read the next job deadline") as conn:
            value: datetime | None = await conn.fetchval(
                "SELECT min(deadline) FROM jobs WHERE status = 'open'"
            )
        return value


class DeadlineSweeper:
    """Closes jobs whose deadline passed; one per instance (the control plane runs it).

    It looks again at the next deadline or after ``SWEEP_INTERVAL``, whichever comes first, so a job
    opened through another instance is closed at most that late. The keys of a job past its deadline
    are refused from the deadline on regardless: every worker compares it with its own clock.
    """

    def __init__(self, jobs: Jobs, clock: Callable[[], datetime], interval: float = SWEEP_INTERVAL) -> None:
        self._jobs = jobs
        self._clock = clock
        self._interval = interval

    async def sweep(self) -> list[Closed]:
        return await self._jobs.close_overdue(self._clock())

    async def run(self) -> None:
        """Sweep until cancelled; nothing ends the sweeping but cancellation."""
        while True:
            try:
                await self.sweep()
                upcoming = await self._jobs.next_deadline()
            except StoreUnavailable as exc:
                log.warning("job deadline sweep failed (%s); retrying in %gs", exc, _SWEEP_RETRY)
                wait = _SWEEP_RETRY
            else:
                wait = self._interval
                if upcoming is not None:
                    wait = min(max((upcoming - self._clock()).total_seconds(), 0.01), wait)
            await asyncio.sleep(wait)  # time passing is the event: the next deadline
