"""The asyncpg shell's door for keys, changes and settings: ``Store``, and ``open_when_reachable``.

``Store`` is one class for its callers, built in layers: a pool of connections with each operation's
deadline and the write protocol (``proxy.db.connections``), the key queries (``proxy.db.keys``), and
here the reads of the ``changes`` table, the settings and the decision log. asyncpg and OS errors
become ``proxy.core.errors`` in one place (``proxy.db.errors``). The other tables' modules (jobs,
issuers, usage) take a ``Store`` and write through its ``changing`` and ``connection``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from proxy.core.errors import StartupTimeout, StoreUnavailable
from proxy.db.changelog import (
    MAX_PAGE,
    PRUNED_SETTING,
    WRITE_LOCK_ID,
    Change,
    fetch_changes,
    fetch_latest_revision,
)
from proxy.db.decisions import DecisionFilter, candidate_summary, query_decisions
from proxy.db.errors import CONNECTION_ERRORS, translate_errors
from proxy.db.keys import Keys

__all__ = ["Store", "open_when_reachable"]

log = logging.getLogger("signalgate.store")


class Store(Keys):
    """A pool of connections and the queries signalgate needs."""

    # -- the decision log (proxy.db.decisions) ----------------------------------------------------

    async def decisions(
        self,
        where: DecisionFilter,
        *,
        limit: int,
        after: tuple[datetime, str] | None = None,
        ascending: bool = False,
    ) -> list[dict[str, Any]]:
        with translate_errors("read decisions"):
            return await query_decisions(self._pool, where, limit=limit, after=after, ascending=ascending)

    async def candidate_summary(self, key_id: str, since: datetime) -> dict[str, Any]:
        with translate_errors(f"summarise the candidate policy of key {key_id}"):
            return await candidate_summary(self._pool, key_id, since)

    # -- changes ----------------------------------------------------------------------------------

    async def changes_since(self, revision: int, limit: int = MAX_PAGE) -> list[Change]:
        async with self.connection("read changes") as conn:
            return await fetch_changes(conn, revision, limit)

    async def key_directory(self) -> tuple[set[str], int]:
        """Every key id, and the revision this snapshot reflects (one consistent read)."""
        async with (
            self.connection("read key directory") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            revision = await fetch_latest_revision(conn)
            ids = {row[0] for row in await conn.fetch("SELECT id FROM api_keys")}
        return ids, revision

    async def latest_revision(self) -> int:
        async with self.connection("read latest revision") as conn:
            return await fetch_latest_revision(conn)

    async def prune_changes(self, through: int) -> int:
        """Delete changes up to ``through``; feeds behind it will reset. Returns the rows deleted."""
        async with self.connection("prune changes") as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK_ID)
            status = await conn.execute("DELETE FROM changes WHERE revision <= $1", through)
            await conn.execute(
                """INSERT INTO settings (name, value) VALUES ($1, $2)
                   ON CONFLICT (name) DO UPDATE
                   SET value = greatest(settings.value::bigint, excluded.value::bigint)::text,
                       updated_at = now()""",
                PRUNED_SETTING,
                str(through),
            )
        return int(status.split()[-1])

    # -- settings ---------------------------------------------------------------------------------

    async def get_setting(self, name: str) -> str | None:
        async with self.connection(f"get setting {name}") as conn:
            value = await conn.fetchval("SELECT value FROM settings WHERE name = $1", name)
        return None if value is None else str(value)

    async def set_setting(self, name: str, value: str, *, only_if_absent: bool = False) -> bool:
        """Write a setting; with ``only_if_absent`` an existing value wins. True if written."""
        conflict = (
            "DO NOTHING" if only_if_absent else "DO UPDATE SET value = excluded.value, updated_at = now()"
        )
        async with self.connection(f"set setting {name}") as conn:
            written = await conn.fetchval(
                f"INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) {conflict} "
                "RETURNING true",
                name,
                value,
            )
        return bool(written)


WAIT_SETTING = "database_wait (SIGNALGATE_DATABASE_WAIT)"
RETRY_FIRST, RETRY_LONGEST = 0.25, 5.0  # seconds between attempts, doubling


async def open_when_reachable(
    dsn: str, wait: float, *, clock: Callable[[], float] = time.monotonic, **options: Any
) -> Store:
    """``Store.open``, retried with backoff while PostgreSQL is unreachable, for up to ``wait`` seconds;
    then ``StartupTimeout`` naming the setting. Any other failure (a refused login, a missing database)
    is raised at once: waiting would not mend it."""
    deadline = clock() + wait
    delay = RETRY_FIRST
    while True:
        try:
            return await Store.open(dsn, **options)
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, CONNECTION_ERRORS):
                raise
            left = deadline - clock()
            if left <= 0:
                raise StartupTimeout(
                    WAIT_SETTING, f"PostgreSQL still unreachable after {wait:g} s ({WAIT_SETTING}): {exc}"
                ) from exc
            pause = min(delay, left)
            log.warning(
                "%s; retrying in %.2g s, for %.0f s more (%s = %g s)", exc, pause, left, WAIT_SETTING, wait
            )
            await asyncio.sleep(pause)
            delay = min(delay * 2, RETRY_LONGEST)
