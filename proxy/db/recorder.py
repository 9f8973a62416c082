"""One worker's decision log writer: traces in memory, written to PostgreSQL in batches, never lost.

The hot path only calls ``add(trace)``: a list append. A background task wakes every
``interval`` seconds, turns the traces into rows and writes them:

- to PostgreSQL, through its own connection, with COPY into a staging table and an idempotent insert
  (``proxy.db.decisions.insert_rows``), each batch within ``timeout``;
- to the spool (``proxy.db.spool``) when that fails or times out, and, so that the order holds, for
  as long as the spool has rows waiting. Retries of PostgreSQL back off from ``RETRY`` to
  ``RETRY_MAX`` seconds; once it answers, the spool is replayed in order, in batches, each batch
  inserted before the read offset moves past it, and emptied at its end. A batch inserted twice
  (its commit was not seen, or the worker died before the offset moved) lands once.

``close()`` (SIGTERM, after the listener has drained) writes what is left to PostgreSQL or, failing
that within ``timeout``, to the spool. Memory is bounded by ``max_pending`` for allowed decisions
(refusals are always queued); a dropped one is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from proxy.core.errors import StoreUnavailable, ValidationError
from proxy.core.trace import Trace
from proxy.db.decisions import ensure_partitions, insert_rows, partition_days, row
from proxy.db.errors import translate_errors
from proxy.db.spool import Spool

__all__ = ["DecisionWriter"]

log = logging.getLogger("signalgate.decisions")

RETRY = 0.5  # seconds before trying PostgreSQL again after a failure, doubling
RETRY_MAX = 10.0
REPLAY_BATCH = 5000
MAX_PENDING = 200_000


class DecisionWriter:
    def __init__(
        self,
        dsn: str,
        spool: Spool,
        *,
        interval: float = 0.5,
        timeout: float = 5.0,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dsn = dsn
        self.spool = spool
        self._interval = interval
        self._timeout = timeout
        self._max_pending = max_pending
        self._pending: list[Trace] = []
        self._conn: asyncpg.Connection | None = None
        self._days: set[Any] = set()  # partitions known to exist
        self._retry_at = 0.0  # monotonic time before which PostgreSQL is not tried again
        self._retry = RETRY
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one pass at a time: the order of the rows depends on it
        # counts, for the metrics
        self.written = 0  # rows inserted straight from memory
        self.spooled = 0  # rows written to the spool
        self.replayed = 0  # rows inserted from the spool
        self.dropped_pending = 0  # allowed decisions not queued: memory bound reached
        self.invalid = 0  # rows PostgreSQL refused one by one (logged)
        # the spool's drop counts, copied on the loop once its thread is done with them
        self._spool_dropped: dict[str, int] = {}
        self._spool_corrupt = 0

    # -- the hot path -------------------------------------------------------------------------------

    def add(self, trace: Trace) -> None:
        pending = self._pending
        if len(pending) >= self._max_pending and trace.decision.allowed and not trace.disagrees:
            self.dropped_pending += 1
            return
        pending.append(trace)

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def dropped(self) -> dict[str, int]:
        dropped = dict(self._spool_dropped)
        if self.dropped_pending:
            dropped["memory"] = self.dropped_pending
        if self.invalid:
            dropped["invalid"] = self.invalid
        if self._spool_corrupt:
            dropped["corrupt"] = self._spool_corrupt
        return dropped

    def _spool_counts(self) -> None:
        self._spool_dropped = dict(self.spool.dropped)
        self._spool_corrupt = self.spool.corrupt

    async def start(self) -> None:
        await asyncio.to_thread(self.spool.open)
        if self.spool.waiting:
            log.info("spool %s: %d bytes to replay", self.spool.path, self.spool.size)
        self._task = asyncio.create_task(self._run(), name="signalgate-decision-writer")

    async def close(self) -> None:
        """Stop the task, then write what is left: to PostgreSQL, else to the spool.

        A pass in progress finishes first (the lock): cancelled in the middle of an insert, it would
        lose the batch it had taken.
        """
        async with self._lock:
            if self._task is not None:
                self._task.cancel()  # it sleeps, or waits for the lock: it holds no batch
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._task = None
            self._retry_at = 0.0  # one last try, whatever the backoff says
            await self._flush(replay=False)
        await asyncio.to_thread(self.spool.close)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout):
                    await self._conn.close()
            self._conn = None

    async def drain(self) -> None:
        """Write what is queued now (and replay the spool if PostgreSQL answers), without waiting for
        the next pass: for tests and for a caller that must see its decisions in PostgreSQL."""
        async with self._lock:
            await self._flush(replay=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                async with self._lock:
                    await self._flush(replay=True)
            except Exception:  # a bug must not end the writing: log it, keep the rows in the spool
                log.exception("decision log: writing a batch failed")

    # -- one pass -----------------------------------------------------------------------------------

    async def _flush(self, *, replay: bool) -> None:
        batch, self._pending = self._pending, []
        rows = [row(trace) for trace in batch]
        if not self.spool.waiting and rows and await self._insert(rows):
            self.written += len(rows)
            return
        if rows:
            self.spooled += await asyncio.to_thread(self.spool.append, rows)
            self._spool_counts()
        if replay and self.spool.waiting:
            await self._replay()

    async def _replay(self) -> None:
        spool = self.spool
        while spool.waiting:
            rows, offset = await asyncio.to_thread(spool.read, REPLAY_BATCH)
            self._spool_counts()
            if rows and not await self._insert(rows):
                return
            self.replayed += len(rows)
            await asyncio.to_thread(spool.advance, offset)
        log.info("spool %s: replayed into PostgreSQL", spool.path)

    async def _insert(self, rows: Sequence[Sequence[Any]]) -> bool:
        """Insert ``rows``; False (and PostgreSQL left alone for a while) when it cannot be done now."""
        if self._clock() < self._retry_at:
            return False
        try:
            async with asyncio.timeout(self._timeout):
                await self._insert_now(rows)
        except (StoreUnavailable, TimeoutError) as exc:
            self._failed(exc)
            return False
        except ValidationError as exc:  # a row PostgreSQL refuses: find it, keep the others
            log.error("decision log: a batch was refused (%s); inserting its rows one by one", exc)
            if not await self._insert_each(rows):
                return False
        self._retry = RETRY
        return True

    async def _insert_now(self, rows: Sequence[Sequence[Any]]) -> None:
        with translate_errors("write decisions"):
            conn = self._conn
            if conn is None or conn.is_closed():
                conn = self._conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
                self._days.clear()
            days = partition_days(rows) - self._days
            if days:
                await ensure_partitions(conn, days)
                self._days |= days
            await insert_rows(conn, rows)

    async def _insert_each(self, rows: Sequence[Sequence[Any]]) -> bool:
        """Insert row by row, dropping (and counting) those refused; False if PostgreSQL went away
        meanwhile (the whole batch then goes to the spool: the rows already in are skipped later)."""
        for one in rows:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._insert_now([one])
            except ValidationError as exc:
                self.invalid += 1
                log.error("decision log: dropping row of request %s: %s", one[0], exc)
            except (StoreUnavailable, TimeoutError) as exc:
                self._failed(exc)
                return False
        return True

    def _failed(self, exc: BaseException) -> None:
        if self._conn is not None:
            self._conn.terminate()  # it may be in the middle of a statement
            self._conn = None
        self._retry_at = self._clock() + self._retry
        log.warning(
            "decision log: PostgreSQL unavailable (%s); spooling to %s, retrying in %.1fs",
            str(exc) or repr(exc),
            self.spool.path,
            self._retry,
        )
        self._retry = min(self._retry * 2, RETRY_MAX)
