"""The ``changes`` table: how every write is announced, and how the feed reads the announcements back.

asyncpg shell, shared by ``proxy.db.connections`` (writes record a change) and ``proxy.db.feed``
(workers catch up from it). ``record_change`` runs inside the writer's transaction: it takes the
writers' advisory lock, so revisions commit in order, adds the row and queues the NOTIFY, which
PostgreSQL delivers only at commit. Callers translate asyncpg errors (``proxy.db.errors.translate_errors``).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

__all__ = [
    "CHANNEL",
    "MAX_PAGE",
    "PRUNED_SETTING",
    "WRITE_LOCK_ID",
    "Change",
    "fetch_changes",
    "fetch_changes_checked",
    "fetch_latest_revision",
    "fetch_pruned_through",
    "record_change",
]

CHANNEL = "signalgate_changes"
# settings row naming the highest revision deleted from `changes`; a feed behind it must reset
PRUNED_SETTING = "changes.pruned_through"
WRITE_LOCK_ID = 0x73_67_77_72_69_74_65_73  # "sgwrites": serialises writers so revisions commit in order
MAX_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class Change:
    revision: int
    entity: str  # "key"
    entity_id: str
    action: str  # create | update | revoke | delete


async def fetch_changes(conn: asyncpg.Connection, after: int, limit: int = MAX_PAGE) -> list[Change]:
    """Changes with a revision above ``after``, oldest first (used by the store and the feed)."""
    rows = await conn.fetch(
        "SELECT revision, entity, entity_id, action FROM changes"
        " WHERE revision > $1 ORDER BY revision LIMIT $2",
        after,
        limit,
    )
    return [Change(row["revision"], row["entity"], row["entity_id"], row["action"]) for row in rows]


async def fetch_changes_checked(
    conn: asyncpg.Connection, after: int, limit: int = MAX_PAGE
) -> tuple[int, list[Change]]:
    """The pruned-through mark and the changes above ``after``, read in one statement.

    One statement is one snapshot: a prune committing between two separate reads could otherwise pass
    the pruned check and then delete changes the fetch was about to return, and they would be skipped.
    """
    rows = await conn.fetch(
        """SELECT mark.pruned, c.revision, c.entity, c.entity_id, c.action
           FROM (SELECT coalesce((SELECT value::bigint FROM settings WHERE name = $3), 0) AS pruned) AS mark
           LEFT JOIN LATERAL (
               SELECT revision, entity, entity_id, action FROM changes
               WHERE revision > $1 ORDER BY revision LIMIT $2
           ) AS c ON true
           ORDER BY c.revision""",
        after,
        limit,
        PRUNED_SETTING,
    )
    changes = [
        Change(row["revision"], row["entity"], row["entity_id"], row["action"])
        for row in rows
        if row["revision"] is not None
    ]
    return int(rows[0]["pruned"]), changes


async def fetch_latest_revision(conn: asyncpg.Connection) -> int:
    """The newest revision written, counting revisions whose rows were pruned."""
    latest = await conn.fetchval("SELECT coalesce(max(revision), 0) FROM changes")
    return max(int(latest), await fetch_pruned_through(conn))


async def fetch_pruned_through(conn: asyncpg.Connection) -> int:
    value = await conn.fetchval("SELECT value FROM settings WHERE name = $1", PRUNED_SETTING)
    return int(value) if value is not None else 0


async def record_change(conn: asyncpg.Connection, entity: str, entity_id: str, action: str) -> int:
    """Take the writers' lock, add a `changes` row and queue its notification; the new revision."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK_ID)
    revision: int = await conn.fetchval(
        """WITH change AS (
               INSERT INTO changes (entity, entity_id, action) VALUES ($1, $2, $3) RETURNING revision
           )
           SELECT revision, pg_notify($4, revision::text || ':' || $1 || ':' || $2) FROM change""",
        entity,
        entity_id,
        action,
        CHANNEL,
    )
    return revision
