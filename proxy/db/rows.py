"""Key rows and ``KeyRecord`` values: the columns a key is read with, and each field's column value.

Part of the asyncpg shell (``proxy.db.keys`` writes and reads keys with these; ``proxy.db.jobs`` reads
a job's keys). A key record carries what other tables know about it, read with it in one statement:
its job's deadline and state, and its count of uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg

from proxy.core.errors import ValidationError
from proxy.core.model import KeyRecord, KeyStatus

__all__ = ["KEY_FIELDS", "UPDATABLE", "aware", "column_value", "key_record", "moment"]

UPDATABLE = frozenset(
    {"name", "owner", "labels", "policy", "candidate_policy", "status", "not_before", "expires_at"}
)

_COLUMNS = (
    "id, name, owner, labels, status, secret_hash, policy, not_before, expires_at,"
    " created_at, updated_at, revision, job_id, can_close_job, previous_hash, previous_until,"
    " candidate_policy, candidate_since"
)
# What a key record carries from other tables, as subqueries (they also work in RETURNING, where the
# row just written is ``api_keys``): its job's deadline and state, and its uses.
KEY_FIELDS = (
    _COLUMNS
    + ", (SELECT deadline FROM jobs WHERE jobs.id = api_keys.job_id) AS job_deadline"
    + ", coalesce((SELECT status = 'closed' FROM jobs WHERE jobs.id = api_keys.job_id), false) AS job_closed"
    + ", coalesce((SELECT uses FROM key_uses WHERE key_uses.key_id = api_keys.id), 0) AS uses"
)


def key_record(row: asyncpg.Record) -> KeyRecord:
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        owner=row["owner"],
        status=KeyStatus(row["status"]),
        secret_hash=bytes(row["secret_hash"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        not_before=aware(row["not_before"]),
        expires_at=aware(row["expires_at"]),
        labels=dict(row["labels"]),
        policy=dict(row["policy"]),
        revision=row["revision"],
        previous_hash=bytes(row["previous_hash"]) if row["previous_hash"] is not None else None,
        previous_until=aware(row["previous_until"]),
        job_id=row["job_id"],
        job_deadline=aware(row["job_deadline"]),
        job_closed=row["job_closed"],
        can_close_job=row["can_close_job"],
        uses=row["uses"],
        candidate_policy=None if row["candidate_policy"] is None else dict(row["candidate_policy"]),
        candidate_since=row["candidate_since"],
    )


def aware(value: datetime | None) -> datetime | None:
    """asyncpg reads +/-infinity as a naive datetime.max/min; comparing it with the clock would raise."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def moment(field: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(field, f"must be a timezone-aware datetime or null, not {value!r}")
    return value


def column_value(field: str, value: Any) -> Any:
    if field == "candidate_policy" and value is None:
        return None
    if field in ("labels", "policy", "candidate_policy"):
        if not isinstance(value, Mapping):
            raise ValidationError(field, f"must be an object, not {type(value).__name__}")
        return dict(value)
    if field == "status":
        try:
            return KeyStatus(value).value
        except ValueError:
            raise ValidationError(field, f"unknown status {value!r}") from None
    if field in ("not_before", "expires_at"):
        return moment(field, value)
    if field == "job_id" and value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, not {type(value).__name__}")
    return value
