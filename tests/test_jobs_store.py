"""Jobs, rotation and uses against a real PostgreSQL: every write with its change, exact counting."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from proxy.core import keys
from proxy.core.errors import Conflict, NotFound, ValidationError
from proxy.core.jobs import CLOSED_BY_DEADLINE, CLOSED_BY_OPERATOR, JobStatus, closed_by_key
from proxy.core.model import KeyStatus
from proxy.db.jobs import DeadlineSweeper, Jobs
from proxy.db.store import Store
from proxy.db.usage import take_use
from tests.pgtools import Listener, counts, new_key


def soon(minutes: float = 10) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


async def open_job(jobs: Jobs, deadline: datetime | None = None) -> str:
    job = await jobs.open_job(
        job_id=keys.new_key_id(), name="rotate db creds", owner="secops", deadline=deadline or soon()
    )
    return job.id


# --- jobs ----------------------------------------------------------------------------------------


async def test_a_job_opens_with_its_change_and_its_keys_read_its_state(store: Store, db_dsn: str) -> None:
    jobs = Jobs(store)
    async with Listener(db_dsn) as listener:
        job_id = await open_job(jobs)
        assert (await listener.next()).endswith(f":job:{job_id}")
    job = await jobs.get_job(job_id)
    assert job is not None and job.status is JobStatus.OPEN and job.closed_at is None
    assert job.revision == await store.latest_revision()
    key = await new_key(store, job_id=job_id, can_close_job=True)
    assert (key.job_id, key.job_deadline, key.job_closed, key.can_close_job) == (
        job_id,
        job.deadline,
        False,
        True,
    )
    assert await store.get_key(key.id) == key
    assert [k.id for k in await store.list_keys(job_id=job_id)] == [key.id]


async def test_closing_revokes_every_key_of_the_job_each_with_its_change(store: Store, db_dsn: str) -> None:
    jobs = Jobs(store)
    job_id = await open_job(jobs)
    job_keys = sorted([(await new_key(store, job_id=job_id)).id for _ in range(3)])
    bystander = await new_key(store)
    async with Listener(db_dsn) as listener:
        closed = await jobs.close_job(job_id, CLOSED_BY_OPERATOR)
        announced = [await listener.next() for _ in range(4)]
    assert closed.changed and closed.revoked == tuple(job_keys)
    assert (closed.job.status, closed.job.closed_by) == (JobStatus.CLOSED, "operator")
    assert [a.split(":", 1)[1] for a in announced] == [f"job:{job_id}"] + [f"key:{k}" for k in job_keys]
    assert closed.revision == int(announced[-1].split(":")[0]) == await store.latest_revision()
    for key_id in job_keys:
        key = await store.get_key(key_id)
        assert key is not None and key.status is KeyStatus.REVOKED and key.job_closed
    assert (await store.get_key(bystander.id)).status is KeyStatus.ACTIVE  # type: ignore[union-attr]

    again = await jobs.close_job(job_id, closed_by_key(job_keys[0]))  # idempotent, announces nothing
    assert not again.changed and again.revoked == () and again.job.closed_by == "operator"
    assert again.revision == closed.job.revision < closed.revision
    with pytest.raises(NotFound):
        await jobs.close_job("0000000000000000", CLOSED_BY_OPERATOR)


async def test_no_key_is_created_for_a_closed_or_unknown_job(store: Store, db_dsn: str) -> None:
    jobs = Jobs(store)
    job_id = await open_job(jobs)
    await jobs.close_job(job_id, CLOSED_BY_OPERATOR)
    before = await counts(db_dsn)
    with pytest.raises(Conflict, match="closed or past its deadline"):
        await new_key(store, job_id=job_id)
    with pytest.raises(ValidationError) as caught:
        await new_key(store, job_id="0123456789abcdef")
    assert caught.value.path == "job_id"
    with pytest.raises(ValidationError) as caught:
        await new_key(store, can_close_job=True)
    assert caught.value.path == "can_close_job"
    assert await counts(db_dsn) == before  # nothing written, nothing announced


async def test_a_key_created_while_its_job_closes_is_revoked_or_refused(store: Store) -> None:
    """The writers' lock orders a creation and a closing: no key of a closed job is left active."""
    jobs = Jobs(store)
    for _ in range(10):
        job_id = await open_job(jobs)
        outcomes = await asyncio.gather(
            *(new_key(store, job_id=job_id) for _ in range(5)),
            jobs.close_job(job_id, CLOSED_BY_OPERATOR),
            return_exceptions=True,
        )
        assert all(not isinstance(o, Exception) or isinstance(o, Conflict) for o in outcomes), outcomes
        left = [k for k in await store.list_keys(job_id=job_id) if k.status is not KeyStatus.REVOKED]
        assert left == []


async def test_the_sweep_closes_jobs_past_their_deadline_by_its_clock(store: Store) -> None:
    jobs = Jobs(store)
    early, late = await open_job(jobs, soon(5)), await open_job(jobs, soon(60))
    key = await new_key(store, job_id=early)
    clock = [datetime.now(UTC)]
    sweeper = DeadlineSweeper(jobs, lambda: clock[0])
    assert await sweeper.sweep() == []
    assert await jobs.next_deadline() == (await jobs.get_job(early)).deadline  # type: ignore[union-attr]
    clock[0] += timedelta(minutes=10)
    closed = await sweeper.sweep()
    assert [c.job.id for c in closed] == [early] and closed[0].job.closed_by == CLOSED_BY_DEADLINE
    assert closed[0].revoked == (key.id,)
    assert (await jobs.get_job(late)).status is JobStatus.OPEN  # type: ignore[union-attr]
    assert await sweeper.sweep() == []  # another instance's sweep finds nothing left to do


async def test_the_sweep_task_closes_a_job_when_its_deadline_comes(store: Store, db_dsn: str) -> None:
    jobs = Jobs(store)
    job_id = await open_job(jobs, datetime.now(UTC) + timedelta(seconds=0.3))
    async with Listener(db_dsn) as listener:
        task = asyncio.create_task(DeadlineSweeper(jobs, lambda: datetime.now(UTC), interval=30.0).run())
        try:
            # It sleeps until the deadline, not for its whole interval (Listener.next waits up to 5 s).
            assert (await listener.next()).endswith(f":job:{job_id}")
        finally:
            task.cancel()
            await asyncio.wait([task])
    assert (await jobs.get_job(job_id)).closed_by == CLOSED_BY_DEADLINE  # type: ignore[union-attr]


async def test_jobs_list_in_pages_with_filters(store: Store) -> None:
    jobs = Jobs(store)
    ids = sorted([await open_job(jobs) for _ in range(5)])
    await jobs.close_job(ids[0], CLOSED_BY_OPERATOR)
    assert [j.id for j in await jobs.list_jobs(limit=2)] == ids[:2]
    assert [j.id for j in await jobs.list_jobs(after=ids[1])] == ids[2:]
    assert [j.id for j in await jobs.list_jobs(status=JobStatus.CLOSED)] == ids[:1]
    assert await jobs.list_jobs(owner="nobody") == []
    with pytest.raises(ValidationError):
        await jobs.list_jobs(limit=0)


async def test_the_database_keeps_a_closed_job_consistent(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO jobs (id, name, owner, deadline, status, revision)"
                " VALUES ('0123456789abcdef', 'n', 'o', now(), 'closed', 1)"
            )
    finally:
        await conn.close()


# --- rotation ------------------------------------------------------------------------------------


async def test_rotation_keeps_the_old_hash_for_the_grace_period_only(store: Store, db_dsn: str) -> None:
    created = await new_key(store, expires_at=soon(60 * 24))
    _, _, new_hash = keys.generate(created.id)
    async with Listener(db_dsn) as listener:
        rotated = await store.rotate_key(created.id, new_hash, 300)
        assert (await listener.next()).endswith(f":key:{created.id}")
    assert rotated.secret_hash == new_hash and rotated.previous_hash == created.secret_hash
    assert rotated.previous_until is not None
    assert timedelta(seconds=299) < rotated.previous_until - rotated.updated_at <= timedelta(seconds=300)
    assert (rotated.id, rotated.policy, rotated.revision > created.revision) == (
        created.id,
        created.policy,
        True,
    )

    _, _, newer_hash = keys.generate(created.id)
    again = await store.rotate_key(created.id, newer_hash, 0)  # no grace: only the newest secret
    assert (again.previous_hash, again.previous_until) == (None, None)


async def test_a_grace_period_never_outlives_the_key(store: Store) -> None:
    expires = soon(1)
    created = await new_key(store, expires_at=expires)
    rotated = await store.rotate_key(created.id, keys.generate(created.id)[2], 3600)
    assert rotated.previous_until == expires


async def test_a_revoked_key_cannot_be_rotated(store: Store) -> None:
    created = await new_key(store)
    await store.revoke_key(created.id)
    with pytest.raises(Conflict, match="revoked"):
        await store.rotate_key(created.id, keys.generate(created.id)[2], 60)
    with pytest.raises(NotFound):
        await store.rotate_key("0123456789abcdef", keys.generate()[2], 60)


# --- uses ----------------------------------------------------------------------------------------


async def test_uses_are_counted_exactly_under_concurrency_from_several_pools(
    store: Store, db_dsn: str
) -> None:
    """50 concurrent uses of a 10-use key through two pools (as two instances would): exactly 10."""
    key = await new_key(store, policy={"usage": {"max_uses": 10}})
    other = await Store.open(db_dsn)
    try:
        results = await asyncio.gather(*(take_use(store if n % 2 else other, key.id, 10) for n in range(50)))
    finally:
        await other.close()
    assert sorted(r for r in results if r is not None) == list(range(1, 11))
    assert results.count(None) == 40
    shown = await store.get_key(key.id)
    assert shown is not None and shown.public()["uses"] == 10 and shown.public()["uses_left"] == 0
    assert await take_use(store, key.id, 11) == 11  # a raised limit counts on


async def test_uses_go_with_their_key(store: Store, db_dsn: str) -> None:
    key = await new_key(store, policy={"usage": {"max_uses": 1}})
    assert await take_use(store, key.id, 1) == 1
    await store.delete_key(key.id)
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM key_uses") == 0
    finally:
        await conn.close()
