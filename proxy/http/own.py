"""The proxy's own endpoints, under ``/.signalgate/`` on the proxy port: answered, never forwarded.

``POST /.signalgate/jobs/close`` with a key created with ``can_close_job``: a workflow closes its own
job (revoking every key of it) without an admin token. Closing only takes access away, so the key's
request policy and limits do not apply; the key itself must be valid (a wrong secret, a revoked or
suspended key of an open job, an expired key are refused as anywhere). Closing a closed job again is
answered as a success, so a workflow may retry after a lost answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from proxy.core.cache import Entry
from proxy.core.decide import check_key
from proxy.core.errors import NotFound, StoreUnavailable
from proxy.core.keys import PresentedKey
from proxy.core.model import Decision, Reason

__all__ = ["CLOSE_JOB_PATH", "OWN_PREFIX", "JobCloser", "close_own_job"]

OWN_PREFIX = "/.signalgate/"
CLOSE_JOB_PATH = "/.signalgate/jobs/close"

# Closes job ``job_id`` for key ``key_id`` and revokes the job's keys; the number revoked (0: it was
# closed already). Raises NotFound or StoreUnavailable.
JobCloser = Callable[[str, str], Awaitable[int]]


async def close_own_job(
    entry: Entry | None, presented: PresentedKey, now: datetime, closer: JobCloser
) -> Decision | dict[str, object]:
    """The refusal, or the answer's document: ``{job_id, status, keys_revoked}``."""
    record = entry.record if entry is not None else None
    denied = check_key(record, presented, now)
    if record is None or (denied is not None and denied.reason is not Reason.JOB_CLOSED):
        return denied or Decision.deny(Reason.KEY_INVALID, "unknown key")
    if record.job_id is None or not record.can_close_job:
        return Decision.deny(Reason.JOB_CLOSE_DENIED, "this key may not close its job")
    revoked = 0
    if not record.job_closed:  # open, or past its deadline and not swept yet: close it now
        try:
            revoked = await closer(record.job_id, record.id)
        except (NotFound, StoreUnavailable) as exc:
            return Decision.deny(
                Reason.AUTHORIZATION_UNAVAILABLE, f"job {record.job_id} cannot be closed now: {exc}"[:200]
            )
    return {"job_id": record.job_id, "status": "closed", "keys_revoked": revoked}
