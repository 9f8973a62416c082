"""The asyncpg shell for attestation issuers and request-signature nonces (sql/005_attestations.sql).

Writes that change what a decision reads (an issuer created, changed, deleted, or a fetched key set
that differs from the stored one) go through ``Store.changing``: one transaction with a ``changes`` row
(entity ``issuer``), so every worker's change feed reloads the issuer (``IssuerSource``). The fetch
bookkeeping (when fetched, the last error, when due) decides nothing and is written without one.

Nonces: ``record_nonce`` inserts (key id, keyid, nonce) with its expiry, once; a pair already there
and not expired is a replay, whichever worker or instance recorded it. ``prune_nonces`` deletes the
expired ones (the control plane runs it periodically).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import asyncpg

from proxy.core.errors import NotFound, StoreUnavailable, ValidationError
from proxy.core.issuers import IssuerRecord
from proxy.db.changelog import Change
from proxy.db.store import Store

__all__ = ["REFRESH_CHANNEL", "UPDATABLE", "IssuerRows", "IssuerSource"]

log = logging.getLogger("signalgate.issuers")

REFRESH_CHANNEL = "signalgate_jwks_refresh"  # a worker met an unknown kid: payload is the issuer name
UPDATABLE = frozenset({"kind", "issuer", "audience", "algorithms", "max_lifetime_s", "jwks", "jwks_url"})
_COLUMNS = (
    "name, kind, issuer, audience, algorithms, max_lifetime_s, jwks, jwks_url, fetched_at, fetch_error,"
    " next_fetch_at, created_at, updated_at, revision"
)


def _record(row: asyncpg.Record) -> IssuerRecord:
    return IssuerRecord(
        name=row["name"],
        kind=row["kind"],
        issuer=row["issuer"],
        audience=row["audience"],
        algorithms=tuple(row["algorithms"]),
        max_lifetime_s=row["max_lifetime_s"],
        jwks=row["jwks"],
        jwks_url=row["jwks_url"],
        fetched_at=row["fetched_at"],
        fetch_error=row["fetch_error"],
        next_fetch_at=row["next_fetch_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        revision=row["revision"],
    )


class IssuerRows:
    """Issuer and nonce queries on a ``Store``'s pool."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, record: IssuerRecord) -> IssuerRecord:
        async with self._store.changing("issuer", record.name, "create") as (conn, revision):
            row = await conn.fetchrow(
                f"""INSERT INTO issuers (name, kind, issuer, audience, algorithms, max_lifetime_s, jwks,
                                         jwks_url, fetched_at, next_fetch_at, revision)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {_COLUMNS}""",
                record.name,
                record.kind,
                record.issuer,
                record.audience,
                list(record.algorithms),
                record.max_lifetime_s,
                record.jwks,
                record.jwks_url,
                record.fetched_at,
                record.next_fetch_at,
                revision,
            )
        return _record(row)

    async def get(self, name: str) -> IssuerRecord | None:
        async with self._store.connection(f"get issuer {name}") as conn:
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM issuers WHERE name = $1", name)
        return _record(row) if row is not None else None

    async def list(self) -> list[IssuerRecord]:
        async with self._store.connection("list issuers") as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM issuers ORDER BY name")
        return [_record(row) for row in rows]

    async def update(self, name: str, fields: Mapping[str, Any]) -> IssuerRecord:
        """Change some of ``UPDATABLE``; a new ``jwks_url`` comes with its fetched ``jwks`` and
        ``fetched_at``/``next_fetch_at``; a new inline ``jwks`` clears the URL."""
        unknown = sorted(set(fields) - UPDATABLE - {"fetched_at", "next_fetch_at"})
        if unknown:
            raise ValidationError(unknown[0], "cannot be updated")
        values = dict(fields)
        if "algorithms" in values:
            values["algorithms"] = list(values["algorithms"])
        if "jwks_url" in values:  # a new source: its fetch state starts over
            values.setdefault("fetched_at", None)
            values.setdefault("next_fetch_at", None)
            values["fetch_error"] = None
            values["fetch_started_at"] = None
        columns = sorted(values)
        assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(columns, start=3))
        async with self._store.changing("issuer", name, "update") as (conn, revision):
            row = await conn.fetchrow(
                f"""UPDATE issuers SET {assignments}, updated_at = now(), revision = $1
                    WHERE name = $2 RETURNING {_COLUMNS}""",
                revision,
                name,
                *(values[column] for column in columns),
            )
            if row is None:
                raise NotFound(f"no issuer named {name!r}")
        return _record(row)

    async def delete(self, name: str) -> int:
        """Delete; the revision of the change that announces it."""
        async with self._store.changing("issuer", name, "delete") as (conn, revision):
            if await conn.fetchval("DELETE FROM issuers WHERE name = $1 RETURNING name", name) is None:
                raise NotFound(f"no issuer named {name!r}")
        return revision

    # -- fetching (proxy.jwks) ------------------------------------------------------------------------

    async def claim_fetch(self, name: str, min_interval: float) -> tuple[str | None, float]:
        """(the issuer's URL, 0) when this process may fetch it now: no fetch of it was claimed,
        by any instance, within ``min_interval`` seconds; else (None, seconds until one may be).
        So an issuer's set is fetched at most once per interval, however many ask."""
        async with self._store.connection(f"claim fetch of issuer {name}") as conn:
            row = await conn.fetchrow(
                """WITH claimed AS (
                       UPDATE issuers SET fetch_started_at = now()
                       WHERE name = $1 AND jwks_url IS NOT NULL
                         AND (fetch_started_at IS NULL
                              OR fetch_started_at <= now() - make_interval(secs => $2))
                       RETURNING jwks_url)
                   SELECT (SELECT jwks_url FROM claimed) AS url,
                          (SELECT extract(epoch FROM fetch_started_at + make_interval(secs => $2) - now())
                           FROM issuers WHERE name = $1)::float8 AS wait""",
                name,
                min_interval,
            )
        if row["url"] is not None:
            return row["url"], 0.0
        return None, max(0.0, row["wait"] or 0.0)

    async def fetched(
        self, name: str, url: str, jwks: Mapping[str, Any] | None, error: str | None, next_fetch_at: datetime
    ) -> bool:
        """Record a fetch of ``url``: a set (``error`` None) or a failure (the last good set stays).
        A set that differs from the stored one is announced; True when it was."""
        if jwks is not None:
            try:
                async with self._store.changing("issuer", name, "refresh") as (conn, revision):
                    changed = await conn.fetchval(
                        """UPDATE issuers SET jwks = $3, fetched_at = now(), fetch_error = NULL,
                                              next_fetch_at = $4, updated_at = now(), revision = $5
                           WHERE name = $1 AND jwks_url = $2 AND jwks IS DISTINCT FROM $3 RETURNING true""",
                        name,
                        url,
                        jwks,
                        next_fetch_at,
                        revision,
                    )
                    if not changed:  # the same set: roll the announcement back, note the fetch alone
                        raise _Unchanged
                return True
            except _Unchanged:
                pass
        async with self._store.connection(f"record fetch of issuer {name}") as conn:
            await conn.execute(
                """UPDATE issuers SET fetch_error = $3, next_fetch_at = $4,
                                      fetched_at = CASE WHEN $3::text IS NULL THEN now() ELSE fetched_at END
                   WHERE name = $1 AND jwks_url = $2""",
                name,
                url,
                error,
                next_fetch_at,
            )
        return False

    async def request_refresh(self, name: str) -> None:
        """Ask the instance's fetcher to fetch ``name``'s set early (a token named an unknown kid)."""
        async with self._store.connection(f"request refresh of issuer {name}") as conn:
            await conn.execute("SELECT pg_notify($1, $2)", REFRESH_CHANNEL, name)

    # -- nonces ---------------------------------------------------------------------------------------

    async def record_nonce(self, key_id: str, keyid: str, nonce: str, expires_at: datetime) -> bool:
        """True when the nonce is new (or its earlier use expired); False for a replay."""
        async with self._store.connection("record a signature nonce") as conn:
            fresh = await conn.fetchval(
                """INSERT INTO signature_nonces (key_id, keyid, nonce, expires_at) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (key_id, keyid, nonce) DO UPDATE SET expires_at = excluded.expires_at
                   WHERE signature_nonces.expires_at <= now()
                   RETURNING true""",
                key_id,
                keyid,
                nonce,
                expires_at,
            )
        return bool(fresh)

    async def prune_nonces(self) -> int:
        async with self._store.connection("prune signature nonces") as conn:
            status = await conn.execute("DELETE FROM signature_nonces WHERE expires_at <= now()")
        return int(status.split()[-1])


class _Unchanged(Exception):
    """A fetched set equal to the stored one: the announcing transaction is rolled back."""


class IssuerSource:
    """A worker's view of the issuers: loaded at start, each change reloaded before the change feed
    counts it as applied (``on_change`` returns the reload for the feed to await), so once a worker has
    applied an issuer's deletion, no token it signed is accepted there.

    ``apply(name, record or None)`` hands each loaded record (None: gone) to the worker's trust store
    (``proxy.attest.TrustStore``); ``settled(False)`` while the set is not known after a reset, so
    tokens are refused with 503 until it is reloaded.
    """

    RELOAD_BACKOFF = (0.05, 2.0)

    def __init__(
        self,
        rows: IssuerRows,
        apply: Callable[[str, IssuerRecord | None], None],
        settled: Callable[[bool], None],
    ) -> None:
        self._rows = rows
        self._apply = apply
        self._settled = settled
        self._known: set[str] = set()
        self._reload: asyncio.Task[None] | None = None

    async def load(self) -> None:
        records = await self._rows.list()
        for record in records:
            self._apply(record.name, record)
        for name in self._known - {record.name for record in records}:
            self._apply(name, None)
        self._known = {record.name for record in records}
        self._settled(True)

    def on_change(self, change: Change) -> Awaitable[None] | None:
        if change.action == "delete":
            self._apply(change.entity_id, None)  # at once: nothing to read
            self._known.discard(change.entity_id)
            return None
        return self._reload_one(change.entity_id)

    async def _reload_one(self, name: str) -> None:
        try:
            record = await self._rows.get(name)
        except StoreUnavailable:  # fail closed: the feed resets us, the issuer is refused meanwhile
            self._apply(name, None)
            raise
        self._apply(name, record)
        if record is None:
            self._known.discard(name)
        else:
            self._known.add(name)

    def on_reset(self) -> None:
        """Changes were missed: refuse every token until the whole set is read again."""
        self._settled(False)
        if self._reload is not None:
            self._reload.cancel()
        self._reload = asyncio.ensure_future(self._reload_all())

    async def _reload_all(self) -> None:
        delay = self.RELOAD_BACKOFF[0]
        while True:
            try:
                await self.load()
                return
            except StoreUnavailable as exc:
                log.warning("issuers not reloaded (%s); retrying in %gs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.RELOAD_BACKOFF[1])

    async def close(self) -> None:
        reload, self._reload = self._reload, None
        if reload is not None:
            reload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reload


class RefreshAsker:
    """A worker's way to ask the instance's fetcher for an early fetch of an issuer's set (a token
    named an unknown kid): at most once per ``min_interval`` per issuer from this worker, without
    waiting for it (the request that met the unknown kid is refused meanwhile)."""

    def __init__(self, rows: IssuerRows, min_interval: float, clock: Callable[[], float]) -> None:
        self._rows = rows
        self._min = min_interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def __call__(self, name: str) -> None:
        now = self._clock()
        if now - self._last.get(name, -self._min) < self._min:
            return
        self._last[name] = now
        task = asyncio.ensure_future(self._ask(name))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _ask(self, name: str) -> None:
        try:
            await self._rows.request_refresh(name)
        except StoreUnavailable as exc:
            log.warning("cannot ask for a refresh of issuer %s: %s", name, exc)
