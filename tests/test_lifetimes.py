"""A key's own lifetime in the pure core: rotation's grace period and the job a key belongs to.

``check_key`` is asked at fixed times, so "after the grace period" needs no waiting.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from proxy.core import keys
from proxy.core.decide import check_key
from proxy.core.model import KeyStatus, Reason
from tests.values import NOW, record

KEY_ID, NEW_KEY, NEW_HASH = keys.generate()
_, OLD_KEY, OLD_HASH = keys.generate(KEY_ID)
_, STRANGER_KEY, _ = keys.generate(KEY_ID)
GRACE_END = NOW + timedelta(seconds=300)
ROTATED = {"previous_hash": OLD_HASH, "previous_until": GRACE_END}
SECOND = timedelta(seconds=1)

# (name, the key's fields, which secret is presented, when, expected reason)
ROTATION = [
    ("new secret", ROTATED, NEW_KEY, NOW, Reason.ALLOWED),
    ("old secret during the grace period", ROTATED, OLD_KEY, NOW, Reason.ALLOWED),
    ("old secret at the grace period's last moment", ROTATED, OLD_KEY, GRACE_END - SECOND, Reason.ALLOWED),
    ("old secret when the grace period ends", ROTATED, OLD_KEY, GRACE_END, Reason.KEY_INVALID),
    ("new secret after the grace period", ROTATED, NEW_KEY, GRACE_END + SECOND, Reason.ALLOWED),
    ("a secret never issued", ROTATED, STRANGER_KEY, NOW, Reason.KEY_INVALID),
    ("no grace: the old secret is refused at once", {}, OLD_KEY, NOW, Reason.KEY_INVALID),
    (
        "grace reaching past expiry: old secret refused at expiry",
        {**ROTATED, "expires_at": NOW + 60 * SECOND},
        OLD_KEY,
        NOW + 60 * SECOND,
        Reason.KEY_EXPIRED,
    ),
    (
        "grace reaching past expiry: new secret refused too",
        {**ROTATED, "expires_at": NOW + 60 * SECOND},
        NEW_KEY,
        NOW + 60 * SECOND,
        Reason.KEY_EXPIRED,
    ),
    (
        "revoked during the grace period: old secret",
        {**ROTATED, "status": KeyStatus.REVOKED},
        OLD_KEY,
        NOW,
        Reason.KEY_REVOKED,
    ),
    (
        "revoked during the grace period: new secret",
        {**ROTATED, "status": KeyStatus.REVOKED},
        NEW_KEY,
        NOW,
        Reason.KEY_REVOKED,
    ),
    (
        "suspended during the grace period",
        {**ROTATED, "status": KeyStatus.SUSPENDED},
        OLD_KEY,
        NOW,
        Reason.KEY_SUSPENDED,
    ),
    (
        "old secret before not_before",
        {**ROTATED, "not_before": NOW + SECOND},
        OLD_KEY,
        NOW,
        Reason.KEY_NOT_YET_VALID,
    ),
]


@pytest.mark.parametrize(
    ("name", "fields", "presented", "when", "reason"), ROTATION, ids=[r[0] for r in ROTATION]
)
def test_rotation(name: str, fields: dict, presented: str, when: object, reason: Reason) -> None:
    denied = check_key(record(NEW_HASH, KEY_ID, **fields), keys.parse(presented), when)  # type: ignore[arg-type]
    assert (denied.reason if denied else Reason.ALLOWED) is reason, denied


def test_a_rotated_out_secret_is_told_apart_from_a_wrong_one() -> None:
    old = check_key(record(NEW_HASH, KEY_ID, **ROTATED), keys.parse(OLD_KEY), GRACE_END)
    wrong = check_key(record(NEW_HASH, KEY_ID, **ROTATED), keys.parse(STRANGER_KEY), NOW)
    assert old is not None and "rotated out" in old.detail and GRACE_END.isoformat() in old.detail
    assert wrong is not None and wrong.detail == "unknown key or wrong secret"


JOB = "fedcba9876543210"
DEADLINE = NOW + timedelta(minutes=10)
JOBS = [
    ("open job", {"job_id": JOB, "job_deadline": DEADLINE}, NOW, Reason.ALLOWED),
    (
        "deadline passed, not swept yet",
        {"job_id": JOB, "job_deadline": DEADLINE},
        DEADLINE,
        Reason.JOB_CLOSED,
    ),
    ("closed job", {"job_id": JOB, "job_deadline": DEADLINE, "job_closed": True}, NOW, Reason.JOB_CLOSED),
    (
        "closed job whose keys were revoked says job_closed",
        {"job_id": JOB, "job_deadline": DEADLINE, "job_closed": True, "status": KeyStatus.REVOKED},
        NOW,
        Reason.JOB_CLOSED,
    ),
    (
        "key of an open job revoked alone",
        {"job_id": JOB, "job_deadline": DEADLINE, "status": KeyStatus.REVOKED},
        NOW,
        Reason.KEY_REVOKED,
    ),
]


@pytest.mark.parametrize(("name", "fields", "when", "reason"), JOBS, ids=[j[0] for j in JOBS])
def test_keys_of_a_job(name: str, fields: dict, when: object, reason: Reason) -> None:
    denied = check_key(record(NEW_HASH, KEY_ID, **fields), keys.parse(NEW_KEY), when)  # type: ignore[arg-type]
    assert (denied.reason if denied else Reason.ALLOWED) is reason, denied
    if denied is not None:
        assert denied.status == 401 and (JOB in denied.detail or reason is Reason.KEY_REVOKED)


def test_a_wrong_secret_learns_nothing_of_the_job() -> None:
    closed = record(NEW_HASH, KEY_ID, job_id=JOB, job_deadline=DEADLINE, job_closed=True)
    denied = check_key(closed, keys.parse(STRANGER_KEY), NOW)
    assert denied is not None and denied.reason is Reason.KEY_INVALID
