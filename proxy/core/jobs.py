"""Jobs: a unit of work (a rotation run, an agent's task) whose keys live only while it is open.

A job is opened with a deadline; keys issued for it (``job_id``) get a short lifetime never past that
deadline, and closing the job revokes them all. Closing is final and happens once: by an operator, by
one of its keys that may close it (``can_close_job``), or by its deadline passing. Between the
deadline and the sweep that records the closing, the fast path refuses the job's keys on its own clock
(``proxy.core.decide.check_key``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = ["CLOSED_BY_DEADLINE", "CLOSED_BY_OPERATOR", "JobRecord", "JobStatus", "closed_by_key"]

CLOSED_BY_OPERATOR = "operator"
CLOSED_BY_DEADLINE = "deadline"


def closed_by_key(key_id: str) -> str:
    return f"key:{key_id}"


class JobStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    name: str
    owner: str
    deadline: datetime
    status: JobStatus
    created_at: datetime
    revision: int
    closed_at: datetime | None = None
    closed_by: str | None = None  # operator, deadline or key:<id>

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "owner": self.owner,
            "deadline": self.deadline.isoformat(),
            "status": str(self.status),
            "created_at": self.created_at.isoformat(),
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
            "closed_by": self.closed_by,
            "revision": self.revision,
        }
