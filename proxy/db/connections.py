"""The pool under ``Store``: its connections, each operation's deadline, and the write protocol.

Why every write looks the same: workers cache keys and learn about writes from the change feed
(``proxy.db.feed``), so a write must never be visible without its announcement nor announced without
being visible. Each write is one transaction (``Connections.changing``) that takes the writers'
advisory lock, records a row in ``changes`` (its revision), queues ``pg_notify`` and changes the row.
PostgreSQL delivers the notification only at commit, so a rolled-back write announces nothing; the
lock makes revisions commit in order, so a feed that has seen revision N has seen every revision below
it.

Every operation has a deadline (``operation_timeout``: the data plane's ``database_timeout``, the
admin API's ``admin_database_timeout``); the other asyncpg shells of this package get theirs through
``Store.connection``. Past it the connection is terminated, not cancelled: a cancelled query leaves
asyncpg waiting for the server to acknowledge the cancel (forever, if it is frozen) and a rollback or
a pool release would wait as long. A connection is likewise terminated, rather than returned to the
pool, after a driver, socket or timeout error other than a statement the server refused (a
constraint, bad data), or a cancellation (``proxy.db.errors.breaks_connection``): a server that sent an
unsolicited FATAL (``pg_ctl stop -m fast``) leaves the connection in a state where asyncpg refuses the
next operation with ``InternalClientError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from importlib.resources.abc import Traversable
from typing import Any, Self

import asyncpg

from proxy.core.errors import StoreUnavailable, ValidationError
from proxy.db import migrate as migrations
from proxy.db.changelog import record_change
from proxy.db.errors import breaks_connection, translate_errors

__all__ = ["Connections", "init_connection"]

log = logging.getLogger("signalgate.store")

CLOSE_GRACE = 10.0  # seconds close() waits for busy connections
PING_TIMEOUT = 2.0  # seconds ping() waits for an answer
DEFAULT_TIMEOUT = 5.0  # seconds an operation may take (Store.open's ``operation_timeout``)


@contextlib.asynccontextmanager
async def _deadline(conn: asyncpg.Connection, seconds: float, budget: float) -> AsyncIterator[None]:
    """Terminate ``conn`` if the block runs past ``seconds`` or fails with an error that may have left
    it unusable; the block's error is then a TimeoutError naming the deadline (``budget``)."""
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        conn.terminate()  # every operation waiting on it fails at once, a rollback included

    timer = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        yield
    except BaseException as exc:
        if expired:
            raise TimeoutError(f"no answer from PostgreSQL within {budget:g}s") from exc
        if breaks_connection(exc):
            conn.terminate()
        raise
    finally:
        timer.cancel()


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb and json columns in and out as Python values."""
    for name in ("jsonb", "json"):
        await conn.set_type_codec(
            name, schema="pg_catalog", encoder=_dump_json, decoder=json.loads, format="text"
        )


def _dump_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release (one more round trip per query on the cold path).

    Nothing here leaves session state on a pooled connection: no SET, LISTEN (the feed has its own
    connection) or cursor, and the migrations' session advisory lock is released in a ``finally``.
    asyncpg still rolls back a transaction left open before calling this.
    """


class Connections:
    """A pool of connections, each operation on it under a deadline; ``Store`` adds the queries."""

    def __init__(self, pool: asyncpg.Pool, sql_dir: Traversable, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._pool = pool
        self._sql_dir = sql_dir
        self._timeout = timeout

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        operation_timeout: float = DEFAULT_TIMEOUT,
        sql_dir: Traversable = migrations.SQL_DIR,
    ) -> Self:
        """``connect_timeout`` bounds opening the pool; ``operation_timeout`` every operation after that."""
        with translate_errors("open store"):
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                init=init_connection,
                reset=_no_session_state,
                timeout=connect_timeout,
                server_settings={"application_name": "signalgate"},
            )
        return cls(pool, sql_dir, operation_timeout)

    @property
    def pool(self) -> asyncpg.Pool:
        """The connection pool itself. The other asyncpg shells of this package use ``connection`` and
        ``changing``, which put each operation under the store's deadline."""
        return self._pool

    async def close(self) -> None:
        """Close the pool, waiting a little for connections in use; then terminate the rest."""
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                await self._pool.close()
        except TimeoutError:
            log.warning("connections still busy after %.1fs; terminating the pool", CLOSE_GRACE)
            self._pool.terminate()

    async def migrate(self) -> list[str]:
        """Apply pending migrations from the store's SQL directory; the names applied."""
        with translate_errors("migrate"):
            async with self._pool.acquire() as conn:
                return await migrations.migrate(conn, self._sql_dir)

    async def ping(self) -> bool:
        """Whether PostgreSQL answers a trivial query through the pool within ``PING_TIMEOUT`` seconds."""
        try:
            async with self.connection("ping", within=PING_TIMEOUT) as conn:
                await conn.fetchval("SELECT 1")
        except StoreUnavailable as exc:
            log.warning("PostgreSQL does not answer: %s", exc)
            return False
        return True

    async def ready(self) -> bool:
        """True when PostgreSQL answers and every migration is applied."""
        try:
            async with self.connection("readiness check") as conn:
                await conn.fetchval("SELECT 1")
                missing = await migrations.pending(conn, self._sql_dir)
        except (StoreUnavailable, ValidationError) as exc:
            log.warning("store not ready: %s", exc)
            return False
        if missing:
            log.warning("store not ready: migrations pending: %s", ", ".join(missing))
        return not missing

    @contextlib.asynccontextmanager
    async def changing(
        self, entity: str, entity_id: str, action: str
    ) -> AsyncIterator[tuple[asyncpg.Connection, int]]:
        """One write in the write protocol: a connection in a transaction whose change row (the
        revision) is already recorded; the caller's statements commit with it, or nothing does."""
        async with self.connection(f"{action} {entity} {entity_id}") as conn, conn.transaction():
            revision = await record_change(conn, entity, entity_id, action)
            yield conn, revision
        log.info("%s %s %s at revision %d", action, entity, entity_id, revision)

    @contextlib.asynccontextmanager
    async def connection(
        self, what: str, *, within: float | None = None
    ) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for a read or a write that announces nothing, errors translated, within
        the store's deadline (or ``within`` seconds): past it the connection is terminated."""
        budget = self._timeout if within is None else within
        loop = asyncio.get_running_loop()
        started = loop.time()
        with translate_errors(what):
            try:
                conn = await self._pool.acquire(timeout=budget)
            except TimeoutError as exc:  # no connection could be had or made in time
                raise TimeoutError(f"no connection to PostgreSQL within {budget:g}s") from exc
            try:
                async with _deadline(conn, max(0.0, budget - (loop.time() - started)), budget):
                    yield conn
            finally:
                await self._pool.release(conn)
