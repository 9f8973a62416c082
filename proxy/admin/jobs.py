"""Admin routes for jobs, and what a job means for its keys' lifetimes.

- ``POST /v1/jobs`` ``{name, owner, deadline}`` opens a job (``deadline`` in the future);
- ``GET /v1/jobs?owner=&status=&limit=&after=`` lists them; ``GET /v1/jobs/{id}`` shows one with its keys;
- ``POST /v1/jobs/{id}/close`` closes it (idempotent): every key of the job is revoked through the
  change feed, and the answer comes once every worker of this instance refuses them.

A key created with ``job_id`` (``proxy.admin.api`` asks ``key_expiry``) lives ``ttl_s``, or the
``job_key_ttl`` setting, never past the job's deadline; its expiry cannot be moved past it later either.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from proxy.admin.bodies import CreateSpec, parse_name, parse_owner, parse_timestamp
from proxy.admin.common import (
    APPLIED_HEADER,
    STORE,
    applied,
    expect_continue_only,
    listed,
    path_key_id,
    read_json,
)
from proxy.core import keys
from proxy.core.errors import Conflict, NotFound, ValidationError
from proxy.core.jobs import CLOSED_BY_OPERATOR, JobStatus
from proxy.core.model import KeyRecord
from proxy.db.changelog import MAX_PAGE
from proxy.db.jobs import Jobs

__all__ = ["JOBS", "JOB_FIELDS", "JobSpec", "check_job_expiry", "key_expiry", "parse_job", "setup"]

log = logging.getLogger("signalgate.admin")

JOBS = web.AppKey("jobs", Jobs)
JOB_KEY_TTL = web.AppKey("job_key_ttl", float)
JOB_FIELDS = ("name", "owner", "deadline")


@dataclass(frozen=True, slots=True)
class JobSpec:
    name: str
    owner: str
    deadline: datetime


def parse_job(body: object, now: datetime) -> JobSpec:
    """Check a ``POST /v1/jobs`` body: every field is required, the deadline in the future. A job's
    name and owner follow a key's rules (the owner of its keys goes upstream in a header)."""
    if not isinstance(body, dict):
        raise ValidationError("$", "request body must be a JSON object")
    for name in body:
        if name not in JOB_FIELDS:
            raise ValidationError(name, f"unknown field (expected some of: {', '.join(JOB_FIELDS)})")
    for name in JOB_FIELDS:
        if name not in body:
            raise ValidationError(name, "is required")
    deadline = parse_timestamp(body["deadline"], "deadline")
    if deadline <= now:
        raise ValidationError("deadline", f"must be in the future, got {deadline.isoformat()}")
    return JobSpec(parse_name(body["name"]), parse_owner(body["owner"]), deadline)


def setup(app: web.Application, *, job_key_ttl: float) -> None:
    """Add the job routes to the admin ``app`` (its store already set)."""
    app[JOBS] = Jobs(app[STORE])
    app[JOB_KEY_TTL] = job_key_ttl
    router = app.router
    expect = expect_continue_only  # no plain-text 417 outside the API's JSON answers
    router.add_post("/v1/jobs", open_job, expect_handler=expect)
    router.add_get("/v1/jobs", list_jobs, allow_head=False, expect_handler=expect)
    router.add_get("/v1/jobs/{id}", get_job, allow_head=False, expect_handler=expect)
    router.add_post("/v1/jobs/{id}/close", close_job, expect_handler=expect)


# --- what a job means for a key ------------------------------------------------------------------


async def key_expiry(request: web.Request, spec: CreateSpec, now: datetime) -> datetime | None:
    """The expiry of a key about to be created: ``expires_at``, or ``ttl_s`` from now; for a key of a
    job, ``job_key_ttl`` when neither is given, and never past the job's deadline."""
    expires_at = spec.expires_at
    if spec.ttl_s is not None:
        expires_at = now + timedelta(seconds=spec.ttl_s)
    if spec.job_id is None:
        return expires_at
    job = await request.app[JOBS].get_job(spec.job_id)
    if job is None:
        raise ValidationError("job_id", f"no job with id {spec.job_id!r}")
    if job.status is JobStatus.CLOSED or job.deadline <= now:
        raise Conflict(f"job {job.id} is closed or past its deadline: no new keys")
    if expires_at is None:
        expires_at = now + timedelta(seconds=request.app[JOB_KEY_TTL])
    return min(expires_at, job.deadline)


def check_job_expiry(current: KeyRecord, fields: Mapping[str, Any]) -> None:
    """A key of a job keeps an expiry no later than the job's deadline (PATCH)."""
    if current.job_id is None or "expires_at" not in fields:
        return
    expires_at = fields["expires_at"]
    if expires_at is None:
        raise ValidationError("expires_at", f"the key belongs to job {current.job_id}: it must expire")
    if current.job_deadline is not None and expires_at > current.job_deadline:
        deadline = current.job_deadline.isoformat()
        raise ValidationError(
            "expires_at", f"must not be after the deadline of job {current.job_id}, {deadline}"
        )


# --- handlers ----------------------------------------------------------------------------------


def _job_id(request: web.Request) -> str:
    return path_key_id(request, "job")


async def open_job(request: web.Request) -> web.Response:
    spec = parse_job(await read_json(request), datetime.now(UTC))
    job = await request.app[JOBS].open_job(
        job_id=keys.new_key_id(), name=spec.name, owner=spec.owner, deadline=spec.deadline
    )
    enforced = await applied(request, job.revision)
    return web.json_response(
        job.public(), status=201, headers={"Location": f"/v1/jobs/{job.id}", APPLIED_HEADER: enforced}
    )


async def list_jobs(request: web.Request) -> web.Response:
    return await listed(request, JobStatus, request.app[JOBS].list_jobs)


async def get_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    job = await request.app[JOBS].get_job(job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id!r}")
    job_keys = await request.app[STORE].list_keys(job_id=job_id, limit=MAX_PAGE)
    return web.json_response({**job.public(), "keys": [key.public() for key in job_keys]})


async def close_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    closed = await request.app[JOBS].close_job(job_id, CLOSED_BY_OPERATOR)
    enforced = await applied(request, closed.revision)
    return web.json_response(
        {**closed.job.public(), "keys_revoked": list(closed.revoked)}, headers={APPLIED_HEADER: enforced}
    )
