"""The asyncpg shell for keys and settings; with ``proxy.db.changelog``, the only SQL outside migrations.

Why every write looks the same: workers cache keys and learn about writes from the change feed
(``proxy.db.feed``), so a write must never be visible without its announcement nor announced without
being visible. Each write is one transaction that takes the writers' advisory lock, records a row in
``changes`` (its revision), queues ``pg_notify`` and changes the key row. PostgreSQL delivers the
notification only at commit, so a rolled-back write announces nothing; the lock makes revisions
commit in order, so a feed that has seen revision N has seen every revision below it.

asyncpg and OS errors are translated into ``proxy.core.errors`` in one place, ``translate_errors``.

Every operation has a deadline (``operation_timeout``: the data plane's ``database_timeout``, the
admin API's ``admin_database_timeout``); the other asyncpg shells of this package get theirs through
``Store.connection``. Past it the connection is terminated, not cancelled: a cancelled query leaves
asyncpg waiting for the server to acknowledge the cancel (forever, if it is frozen) and a rollback or
a pool release would wait as long. A connection is likewise terminated, rather than returned to the
pool, after a driver, socket or timeout error other than a statement the server refused (a
constraint, bad data), or a cancellation: a server that sent an unsolicited FATAL (``pg_ctl stop -m
fast``) leaves the connection in a state where asyncpg refuses the next operation with
``InternalClientError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import datetime
from importlib.resources.abc import Traversable
from typing import Any

import asyncpg

from proxy.core.errors import Conflict, NotFound, StartupTimeout, StoreUnavailable, ValidationError
from proxy.core.model import KeyRecord, KeyStatus
from proxy.db import migrate as migrations
from proxy.db.changelog import (
    MAX_PAGE,
    PRUNED_SETTING,
    WRITE_LOCK_ID,
    Change,
    fetch_changes,
    fetch_latest_revision,
    record_change,
)
from proxy.db.decisions import DecisionFilter, candidate_summary, query_decisions
from proxy.db.rows import KEY_FIELDS, UPDATABLE, column_value, key_record, moment

__all__ = ["CONNECTION_ERRORS", "Store", "init_connection", "open_when_reachable", "translate_errors"]

log = logging.getLogger("signalgate.store")

CLOSE_GRACE = 10.0  # seconds close() waits for busy connections
PING_TIMEOUT = 2.0  # seconds ping() waits for an answer
DEFAULT_TIMEOUT = 5.0  # seconds an operation may take (Store.open's ``operation_timeout``)

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    # asyncpg refusing to use a connection whose protocol state it no longer trusts (after an unsolicited
    # FATAL from a server shutting down, say): the connection is as good as lost
    asyncpg.InternalClientError,
)
# What a server says about one statement, leaving the connection and the session healthy.
_STATEMENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.DataError,
)

# Table constraints a write can break, as the API names them (sql/).
_CHECKS = {
    "api_keys_validity_window": ("expires_at", "must be after not_before"),
    "api_keys_job_id_fkey": ("job_id", "no job with this id"),
    "api_keys_close_needs_job": ("can_close_job", "only a key bound to a job may close it"),
    "api_keys_candidate_since": ("candidate_policy", "candidate_policy and candidate_since go together"),
}


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn asyncpg/OS errors raised inside the block into ours, chaining the original."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"{what}: {exc.detail or exc}") from exc
    except (asyncpg.CheckViolationError, asyncpg.ForeignKeyViolationError) as exc:
        field, reason = _CHECKS.get(exc.constraint_name or "", (exc.column_name or what, str(exc)))
        raise ValidationError(field, reason) from exc
    except (asyncpg.NotNullViolationError, asyncpg.DataError) as exc:
        raise ValidationError(exc.column_name or exc.constraint_name or what, str(exc)) from exc
    except CONNECTION_ERRORS as exc:
        raise StoreUnavailable(f"{what}: PostgreSQL unreachable ({type(exc).__name__}: {exc})") from exc
    except asyncpg.PostgresError as exc:
        raise StoreUnavailable(f"{what}: PostgreSQL error ({type(exc).__name__}: {exc})") from exc


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
        if _breaks_connection(exc):
            conn.terminate()
        raise
    finally:
        timer.cancel()


def _breaks_connection(exc: BaseException) -> bool:
    """Whether the connection may be unusable after ``exc``: a driver, socket or timeout error other
    than a statement the server refused, or a cancellation (an operation may be left half done). The
    caller's own exceptions between statements (NotFound, say) leave it as good as it was."""
    if isinstance(exc, _STATEMENT_ERRORS):
        return False
    return isinstance(exc, (*CONNECTION_ERRORS, asyncpg.PostgresError)) or not isinstance(exc, Exception)


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


class Store:
    """A pool of connections and the queries signalgate needs."""

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
    ) -> Store:
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

    # -- keys -------------------------------------------------------------------------------------

    async def create_key(
        self,
        *,
        key_id: str,
        name: str,
        owner: str,
        secret_hash: bytes,
        policy: Mapping[str, Any],
        labels: Mapping[str, str],
        not_before: datetime | None,
        expires_at: datetime | None,
        job_id: str | None = None,
        can_close_job: bool = False,
        candidate_policy: Mapping[str, Any] | None = None,
    ) -> KeyRecord:
        """A new active key; Conflict if the id is taken, or if its job is closed or past its deadline
        (checked under the writers' lock, so a job being closed cannot miss a key created meanwhile)."""
        try:
            return await self._write_key(
                key_id,
                "create",
                f"""INSERT INTO api_keys (id, name, owner, labels, status, secret_hash, policy,
                                          not_before, expires_at, revision, job_id, can_close_job,
                                          candidate_policy, candidate_since)
                    SELECT $2, $3, $4, $5, 'active', $6, $7, $8, $9, $1, $10, $11,
                           $12, CASE WHEN $12::jsonb IS NULL THEN NULL ELSE now() END
                    WHERE $10::text IS NULL OR NOT EXISTS (
                        SELECT 1 FROM jobs WHERE id = $10 AND (status = 'closed' OR deadline <= now()))
                    RETURNING {KEY_FIELDS}""",
                key_id,
                column_value("name", name),
                column_value("owner", owner),
                column_value("labels", labels),
                bytes(secret_hash),
                column_value("policy", policy),
                moment("not_before", not_before),
                moment("expires_at", expires_at),
                job_id,
                can_close_job,
                column_value("candidate_policy", candidate_policy),
            )
        except NotFound:  # the guard held the row back: the job is closed (an unknown job fails its FK)
            raise Conflict(f"job {job_id} is closed or past its deadline: no new keys") from None

    async def rotate_key(self, key_id: str, secret_hash: bytes, grace_s: int) -> KeyRecord:
        """Replace the key's secret; the old one stays valid ``grace_s`` seconds, never past the key's
        expiry (0: not at all). Only one old secret is kept: rotating again drops the older one."""
        try:
            return await self._write_key(
                key_id,
                "rotate",
                f"""UPDATE api_keys
                    SET previous_hash = CASE WHEN $4 > 0 THEN secret_hash END,
                        previous_until = CASE WHEN $4 > 0
                                         THEN least(now() + make_interval(secs => $4), expires_at) END,
                        secret_hash = $3, updated_at = now(), revision = $1
                    WHERE id = $2 AND status <> 'revoked' RETURNING {KEY_FIELDS}""",
                key_id,
                bytes(secret_hash),
                grace_s,
            )
        except NotFound:
            if await self.get_key(key_id) is not None:
                raise Conflict(f"key {key_id} is revoked; a revoked key cannot be rotated") from None
            raise

    async def get_key(self, key_id: str) -> KeyRecord | None:
        async with self.connection(f"get key {key_id}") as conn:
            row = await conn.fetchrow(f"SELECT {KEY_FIELDS} FROM api_keys WHERE id = $1", key_id)
        return key_record(row) if row is not None else None

    async def list_keys(
        self,
        *,
        owner: str | None = None,
        status: KeyStatus | None = None,
        limit: int = 100,
        after: str | None = None,
        job_id: str | None = None,
    ) -> list[KeyRecord]:
        """One page ordered by id; pass the last id of a page as ``after`` to get the next."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationError("limit", f"must be between 1 and {MAX_PAGE}, not {limit}")
        conditions: list[str] = []
        args: list[Any] = []
        for column, value in (("owner", owner), ("status", status), ("job_id", job_id)):
            if value is not None:
                args.append(column_value(column, value))
                conditions.append(f"{column} = ${len(args)}")
        if after is not None:
            args.append(after)
            conditions.append(f"id > ${len(args)}")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        args.append(limit)
        query = f"SELECT {KEY_FIELDS} FROM api_keys {where} ORDER BY id LIMIT ${len(args)}"
        async with self.connection("list keys") as conn:
            rows = await conn.fetch(query, *args)
        return [key_record(row) for row in rows]

    async def update_key(self, key_id: str, fields: Mapping[str, Any]) -> KeyRecord:
        """Change some of name, owner, labels, policy, candidate_policy, status, not_before, expires_at.

        Setting ``candidate_policy`` (re)starts its ``candidate_since`` unless it is the same document;
        null removes the candidate.
        """
        unknown = sorted(set(fields) - UPDATABLE)
        if unknown:
            raise ValidationError(unknown[0], "cannot be updated")
        if not fields:
            raise ValidationError("fields", "nothing to update")
        columns = sorted(fields)
        values = [column_value(column, fields[column]) for column in columns]
        assignments = ", ".join(f"{column} = ${index}" for index, column in enumerate(columns, start=3))
        if "candidate_policy" in fields:
            n = columns.index("candidate_policy") + 3
            assignments += (
                f", candidate_since = CASE WHEN ${n}::jsonb IS NULL THEN NULL"
                f" WHEN candidate_policy IS NOT DISTINCT FROM ${n}::jsonb THEN candidate_since ELSE now() END"
            )
        # Revocation is final: the row lock taken by UPDATE makes this check race-free against a revoke.
        final = " AND status <> 'revoked'" if "status" in fields else ""
        try:
            return await self._write_key(
                key_id,
                "update",
                f"""UPDATE api_keys SET {assignments}, updated_at = now(), revision = $1
                    WHERE id = $2{final} RETURNING {KEY_FIELDS}""",
                key_id,
                *values,
            )
        except NotFound:
            if final and await self.get_key(key_id) is not None:
                raise Conflict(
                    f"key {key_id} is revoked; revocation is final and its status cannot change"
                ) from None
            raise

    async def promote_candidate(self, key_id: str) -> KeyRecord:
        """The candidate policy becomes the policy, and the key has no candidate; Conflict without one."""
        try:
            return await self._write_key(
                key_id,
                "update",
                f"""UPDATE api_keys SET policy = candidate_policy, candidate_policy = NULL,
                           candidate_since = NULL, updated_at = now(), revision = $1
                    WHERE id = $2 AND candidate_policy IS NOT NULL RETURNING {KEY_FIELDS}""",
                key_id,
            )
        except NotFound:
            if await self.get_key(key_id) is not None:
                raise Conflict(f"key {key_id} has no candidate policy to promote") from None
            raise

    async def revoke_key(self, key_id: str) -> KeyRecord:
        return await self._write_key(
            key_id,
            "revoke",
            f"""UPDATE api_keys SET status = 'revoked', updated_at = now(), revision = $1
                WHERE id = $2 RETURNING {KEY_FIELDS}""",
            key_id,
        )

    async def delete_key(self, key_id: str) -> int:
        """Delete; the revision of the change that announces it."""
        row = await self._write(
            key_id,
            "delete",
            "DELETE FROM api_keys WHERE id = $2 RETURNING id, $1::bigint AS revision",
            key_id,
        )
        return int(row["revision"])

    async def _write_key(self, key_id: str, action: str, statement: str, *args: Any) -> KeyRecord:
        return key_record(await self._write(key_id, action, statement, *args))

    async def _write(self, key_id: str, action: str, statement: str, *args: Any) -> asyncpg.Record:
        """Run ``statement`` ($1 = the new revision) in the one-transaction write protocol."""
        async with self.changing("key", key_id, action) as (conn, revision):
            row = await conn.fetchrow(statement, revision, *args)
            if row is None:
                raise NotFound(f"key {key_id} not found")
        return row

    # -- the write protocol and reads, for the other tables' modules (proxy.db.issuers) ------------

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
