"""The ``api_keys`` queries of ``Store``: create, read, page, update, rotate, promote a candidate policy,
revoke and delete a key.

Every write runs in the write protocol (``Connections.changing``, ``proxy.db.connections``): its
change row and the key row commit together, so the change feed announces exactly the writes that
happened. Rows become ``KeyRecord`` values with ``proxy.db.rows``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg

from proxy.core.errors import Conflict, NotFound, ValidationError
from proxy.core.model import KeyRecord, KeyStatus
from proxy.db.changelog import MAX_PAGE
from proxy.db.connections import Connections
from proxy.db.rows import KEY_FIELDS, UPDATABLE, column_value, key_record, moment

__all__ = ["Keys"]


class Keys(Connections):
    """The key queries on the pool; ``Store`` is one of these (``proxy.db.store``)."""

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
