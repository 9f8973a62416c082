"""The one authorization function: the key's own state, then its policy.

Used by the proxy's hot path, explain and dry-run (through ``proxy.core.judge``), so all of them agree.
"""

from __future__ import annotations

from datetime import datetime

from proxy.core.facts import Facts
from proxy.core.keys import PresentedKey, matches
from proxy.core.model import Decision, KeyRecord, KeyStatus, Reason
from proxy.core.policy import CompiledPolicy, evaluate

__all__ = ["authorize", "check_key", "key_state"]


def check_key(record: KeyRecord | None, presented: PresentedKey, now: datetime) -> Decision | None:
    """A denial when the key itself may not be used now; None when it may.

    The secret is the current one, or the one a rotation replaced while its grace period runs. Either
    way the key's own state then applies (its job, status, validity window): a grace period never
    outlives the key's expiry, a revocation or a suspension.
    """
    if record is None:
        return _WRONG_SECRET
    if not matches(presented, record.secret_hash):
        previous = record.previous_hash
        if previous is None or not matches(presented, previous):
            return _WRONG_SECRET
        until = record.previous_until
        if until is None or now >= until:
            ended = until.isoformat() if until is not None else "at once"
            return Decision.deny(Reason.KEY_INVALID, f"this secret was rotated out; its grace ended {ended}")
    return key_state(record, now)


def key_state(record: KeyRecord, now: datetime) -> Decision | None:
    """A denial when the key's job, status or validity window forbids its use at ``now``; None when
    not (explain, given a key id, judges the key as if its secret had been presented)."""
    if record.job_id is not None:
        if record.job_closed:
            return Decision.deny(Reason.JOB_CLOSED, f"job {record.job_id} is closed")
        if record.job_deadline is not None and now >= record.job_deadline:
            return Decision.deny(
                Reason.JOB_CLOSED,
                f"job {record.job_id} passed its deadline {record.job_deadline.isoformat()}",
            )
    if record.status is not KeyStatus.ACTIVE:
        if record.status is KeyStatus.REVOKED:
            return Decision.deny(Reason.KEY_REVOKED, "key was revoked")
        return Decision.deny(Reason.KEY_SUSPENDED, "key is suspended")
    if record.not_before is not None and now < record.not_before:
        return Decision.deny(Reason.KEY_NOT_YET_VALID, f"key is valid from {record.not_before.isoformat()}")
    if record.expires_at is not None and now >= record.expires_at:
        return Decision.deny(Reason.KEY_EXPIRED, f"key expired at {record.expires_at.isoformat()}")
    return None


_WRONG_SECRET = Decision.deny(Reason.KEY_INVALID, "unknown key or wrong secret")


def authorize(
    record: KeyRecord | None,
    policy: CompiledPolicy | None,
    presented: PresentedKey,
    facts: Facts,
) -> Decision:
    """The key's own state at ``facts.now``, then its policy on ``facts``."""
    denied = check_key(record, presented, facts.now)
    if denied is not None:
        return denied
    if policy is None:  # a record always comes with its compiled policy; fail closed if not
        return Decision.deny(Reason.INTERNAL_ERROR, "key has no compiled policy")
    return evaluate(policy, facts)
