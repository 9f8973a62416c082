"""Jobs, lifetimes and rotation end to end: admin API, proxy, PostgreSQL and upstream in one process,
the proxy's clock moved by the test instead of waiting.

The first test is the seed's secrets-rotation workflow, told as the story it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.harness import Gate, MovableClock, gate, settings_for
from tests.pgtools import Listener
from tests.upstream_app import EVENTS

CLOSE = "/.signalgate/jobs/close"


@pytest.fixture
async def proxy(db_dsn: str, upstream: str, clock: MovableClock) -> AsyncIterator[Gate]:
    async with gate(settings_for(db_dsn, upstream, None, job_key_ttl=900.0), clock) as g:
        yield g


def in_minutes(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


async def open_job(proxy: Gate, minutes: float = 30, **body: Any) -> dict[str, Any]:
    status, job = await proxy.admin_call(
        "POST",
        "/v1/jobs",
        json={"name": "rotate db creds", "owner": "secops", "deadline": in_minutes(minutes), **body},
    )
    assert status == 201, job
    return job


async def use(proxy: Gate, key: str, path: str = "/secrets/db", method: str = "GET") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, proxy.url + path, headers={"X-API-Key": key}) as resp,
    ):
        body = await resp.json()
        return resp.status, body.get("reason", "forwarded") if resp.status >= 400 else "forwarded"


async def test_a_rotation_workflow_token_lives_only_while_its_job_is_open(proxy: Gate) -> None:
    # The operator opens a job for tonight's credential rotation, due within 30 minutes, and issues
    # the workflow its token: bound to the job, allowed to close it, and only for the secrets API.
    job = await open_job(proxy, 30)
    token = await proxy.create_key(
        name="rotation workflow",
        owner="secops",
        job_id=job["id"],
        can_close_job=True,
        policy={"routes": [{"path": "/secrets/**"}]},
    )
    # Its lifetime is the job's short default (job_key_ttl, 15 min here), never past the deadline.
    expires = datetime.fromisoformat(token["expires_at"])
    assert expires <= datetime.fromisoformat(job["deadline"])
    assert (
        timedelta(minutes=14) < expires - datetime.fromisoformat(token["created_at"]) <= timedelta(minutes=15)
    )
    helper = await proxy.create_key(name="rotation helper", owner="secops", job_id=job["id"])

    # While the job runs, the workflow does its work.
    assert await use(proxy, token["key"]) == (200, "forwarded")
    assert await use(proxy, helper["key"]) == (200, "forwarded")

    # Done: the workflow closes its own job on the proxy port, with its own token (no admin token).
    async with (
        aiohttp.ClientSession() as session,
        session.post(proxy.url + CLOSE, headers={"X-API-Key": token["key"]}) as resp,
    ):
        closed = await resp.json()
    assert resp.status == 200, closed
    assert (closed["job_id"], closed["status"], closed["keys_revoked"]) == (job["id"], "closed", 2)

    # The very next request with either token is refused, and says why.
    assert await use(proxy, token["key"]) == (401, "job_closed")
    assert await use(proxy, helper["key"]) == (401, "job_closed")
    status, shown = await proxy.admin_call("GET", f"/v1/jobs/{job['id']}")
    assert (status, shown["status"], shown["closed_by"]) == (200, "closed", f"key:{token['id']}")
    assert {k["id"]: k["status"] for k in shown["keys"]} == {token["id"]: "revoked", helper["id"]: "revoked"}
    # No new token can be issued for it.
    status, refused = await proxy.admin_call(
        "POST", "/v1/keys", json={"name": "late", "owner": "secops", "job_id": job["id"]}
    )
    assert (status, refused["reason"]) == (409, "conflict")


async def test_an_operator_closes_a_job_and_its_keys_are_refused_at_once(proxy: Gate) -> None:
    job = await open_job(proxy)
    keys = [await proxy.create_key(job_id=job["id"]) for _ in range(3)]
    other = await proxy.create_key()
    assert [await use(proxy, k["key"]) for k in keys] == [(200, "forwarded")] * 3
    status, closed = await proxy.admin_call("POST", f"/v1/jobs/{job['id']}/close")
    assert status == 200 and closed["status"] == "closed" and closed["closed_by"] == "operator"
    assert sorted(closed["keys_revoked"]) == sorted(k["id"] for k in keys)
    assert [await use(proxy, k["key"]) for k in keys] == [(401, "job_closed")] * 3
    assert await use(proxy, other["key"]) == (200, "forwarded")
    status, again = await proxy.admin_call("POST", f"/v1/jobs/{job['id']}/close")  # idempotent
    assert (status, again["keys_revoked"], again["revision"]) == (200, [], closed["revision"])


async def test_a_job_past_its_deadline_is_refused_on_the_proxy_clock_and_swept_closed(
    proxy: Gate, clock: MovableClock, db_dsn: str
) -> None:
    job = await open_job(proxy, 10)
    key = await proxy.create_key(job_id=job["id"], ttl_s=3600)
    assert datetime.fromisoformat(key["expires_at"]) == datetime.fromisoformat(job["deadline"])
    assert await use(proxy, key["key"]) == (200, "forwarded")
    async with Listener(db_dsn) as listener:
        clock.offset = timedelta(minutes=11)  # the proxy and the sweep now live past the deadline
        # Refused by the worker's own clock, before anything is announced: the key expires with its job
        # and the job's deadline is checked too.
        assert (await use(proxy, key["key"]))[0] == 401
        # The control plane's sweep notices within its interval and closes the job, revoking its key.
        assert (await listener.next()).endswith(f":job:{job['id']}")
        assert (await listener.next()).endswith(f":key:{key['id']}")
    status, shown = await proxy.admin_call("GET", f"/v1/jobs/{job['id']}")
    assert (status, shown["status"], shown["closed_by"]) == (200, "closed", "deadline")
    assert await use(proxy, key["key"]) == (401, "job_closed")


async def test_closing_on_the_proxy_port_needs_a_key_that_may(
    proxy: Gate, upstream_app: web.Application
) -> None:
    job = await open_job(proxy)
    worker_key = await proxy.create_key(job_id=job["id"])
    plain = await proxy.create_key()
    closer = await proxy.create_key(job_id=job["id"], can_close_job=True)
    assert await use(proxy, worker_key["key"], CLOSE, "POST") == (403, "job_close_denied")
    assert await use(proxy, plain["key"], CLOSE, "POST") == (403, "job_close_denied")
    assert await use(proxy, closer["key"], CLOSE, "GET") == (400, "request_invalid")
    assert await use(proxy, closer["key"], "/.signalgate/anything", "POST") == (404, "no_upstream")
    wrong = closer["key"][:-1] + ("1" if closer["key"].endswith("0") else "0")  # never the key itself
    assert await use(proxy, wrong, CLOSE, "POST") == (401, "key_invalid")
    async with aiohttp.ClientSession() as session, session.post(proxy.url + CLOSE) as resp:
        assert (resp.status, (await resp.json())["reason"]) == (401, "key_missing")
    assert upstream_app[EVENTS].empty()  # none of it was forwarded
    assert await use(proxy, worker_key["key"]) == (200, "forwarded")  # the job is still open
    assert (await use(proxy, closer["key"], CLOSE, "POST"))[0] == 200
    assert (await use(proxy, closer["key"], CLOSE, "POST"))[0] == 200  # once more: closed already, fine


async def test_job_and_lifetime_input_is_checked_and_the_field_named(proxy: Gate) -> None:
    job = await open_job(proxy)
    bad_jobs = [
        ({"name": "n", "owner": "o", "deadline": in_minutes(-1)}, "deadline"),
        ({"name": "n", "owner": "o", "deadline": "tomorrow"}, "deadline"),
        ({"name": "n", "owner": "o"}, "deadline"),
        ({"name": "", "owner": "o", "deadline": in_minutes(5)}, "name"),
        ({"name": "n", "owner": "o", "deadline": in_minutes(5), "keys": 3}, "keys"),
    ]
    for body, field in bad_jobs:
        status, answer = await proxy.admin_call("POST", "/v1/jobs", json=body)
        assert (status, answer.get("field")) == (422, field), (body, answer)
    bad_keys = [
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": -5}, "ttl_s"),
        ({"ttl_s": 1.5}, "ttl_s"),
        ({"ttl_s": 60, "expires_at": in_minutes(5)}, "ttl_s"),
        ({"job_id": "0123456789abcdef"}, "job_id"),
        ({"job_id": "JOB"}, "job_id"),
        ({"can_close_job": True}, "can_close_job"),
        ({"job_id": job["id"], "can_close_job": "yes"}, "can_close_job"),
        ({"policy": {"usage": {"max_uses": 0}}}, "policy.usage.max_uses"),
        (
            {"policy": {"schedule": {"tz": "Europe/Berlin", "hours": ["08:00-25:00"]}}},
            "policy.schedule.hours[0]",
        ),
        ({"policy": {"schedule": {"tz": "Europe/Berlinn"}}}, "policy.schedule.tz"),
    ]
    for body, field in bad_keys:
        status, answer = await proxy.admin_call("POST", "/v1/keys", json={"name": "k", "owner": "o", **body})
        assert (status, answer.get("field")) == (422, field), (body, answer)
    key = await proxy.create_key(job_id=job["id"])
    for expires, why in ((None, "must expire"), (in_minutes(60), "after the deadline of job")):
        status, answer = await proxy.admin_call(
            "PATCH", f"/v1/keys/{key['id']}", json={"expires_at": expires}
        )
        assert (status, answer["field"]) == (422, "expires_at") and why in answer["error"]
    status, missing = await proxy.admin_call("GET", "/v1/jobs/0123456789abcdef")
    assert (status, missing["reason"]) == (404, "not_found")
    status, listed = await proxy.admin_call("GET", "/v1/jobs", params={"status": "open"})
    assert status == 200 and [j["id"] for j in listed["items"]] == [job["id"]]
    status, answer = await proxy.admin_call("GET", "/v1/jobs", params={"status": "done"})
    assert (status, answer["field"]) == (422, "status")


async def test_a_key_with_ttl_s_expires_on_the_proxy_clock(proxy: Gate, clock: MovableClock) -> None:
    key = await proxy.create_key(ttl_s=60)
    lifetime = datetime.fromisoformat(key["expires_at"]) - datetime.fromisoformat(key["created_at"])
    assert timedelta(seconds=59) < lifetime <= timedelta(seconds=60)
    assert await use(proxy, key["key"]) == (200, "forwarded")
    clock.offset = timedelta(seconds=61)
    assert await use(proxy, key["key"]) == (401, "key_expired")  # nothing announced: the clock says so


# --- rotation ------------------------------------------------------------------------------------


async def rotate(proxy: Gate, key_id: str, **body: Any) -> tuple[int, dict[str, Any]]:
    return await proxy.admin_call("POST", f"/v1/keys/{key_id}/rotate", json=body)


async def test_rotation_before_during_and_after_the_grace_period(proxy: Gate, clock: MovableClock) -> None:
    key = await proxy.create_key(policy={"usage": {"max_uses": 100}, "routes": [{"path": "/secrets/**"}]})
    old = key["key"]
    assert await use(proxy, old) == (200, "forwarded")  # before
    status, rotated = await rotate(proxy, key["id"], grace_s=300)
    new = rotated["key"]
    assert status == 200 and new != old and rotated["id"] == key["id"]
    assert rotated["policy"] == key["policy"] and rotated["previous_valid_until"] is not None
    # During: both secrets work, as the same key: one policy, one count of uses.
    assert await use(proxy, old) == (200, "forwarded")
    assert await use(proxy, new) == (200, "forwarded")
    assert await use(proxy, new, "/elsewhere") == (403, "route_denied")
    status, shown = await proxy.admin_call("GET", f"/v1/keys/{key['id']}")
    assert shown["uses"] == 3 and "key" not in shown
    # After: only the new one.
    clock.offset = timedelta(seconds=301)
    assert await use(proxy, old) == (401, "key_invalid")
    assert await use(proxy, new) == (200, "forwarded")


async def test_a_grace_period_reaching_past_expiry_ends_with_the_key(
    proxy: Gate, clock: MovableClock
) -> None:
    key = await proxy.create_key(ttl_s=120)
    status, rotated = await rotate(proxy, key["id"], grace_s=3600)
    assert status == 200 and rotated["previous_valid_until"] == rotated["expires_at"]
    clock.offset = timedelta(seconds=60)
    assert await use(proxy, key["key"]) == (200, "forwarded")
    clock.offset = timedelta(seconds=121)
    assert await use(proxy, key["key"]) == (401, "key_invalid")  # its grace ended with the key
    assert await use(proxy, rotated["key"]) == (401, "key_expired")


async def test_a_rotated_key_revoked_or_suspended_during_its_grace_refuses_both_secrets(proxy: Gate) -> None:
    suspended, revoked = await proxy.create_key(), await proxy.create_key()
    rotated = {k["id"]: (await rotate(proxy, k["id"], grace_s=600))[1] for k in (suspended, revoked)}
    await proxy.admin_call("PATCH", f"/v1/keys/{suspended['id']}", json={"status": "suspended"})
    await proxy.admin_call("POST", f"/v1/keys/{revoked['id']}/revoke")
    for key, reason in ((suspended, "key_suspended"), (revoked, "key_revoked")):
        assert await use(proxy, key["key"]) == (401, reason)
        assert await use(proxy, rotated[key["id"]]["key"]) == (401, reason)
    status, answer = await rotate(proxy, revoked["id"], grace_s=60)
    assert (status, answer["reason"]) == (409, "conflict")


async def test_rotation_without_a_grace_period_and_its_bad_input(proxy: Gate) -> None:
    key = await proxy.create_key()
    status, rotated = await proxy.admin_call("POST", f"/v1/keys/{key['id']}/rotate")  # no body: no grace
    assert status == 200 and rotated["previous_valid_until"] is None
    assert await use(proxy, key["key"]) == (401, "key_invalid")
    assert await use(proxy, rotated["key"]) == (200, "forwarded")
    for body in ({"grace_s": -1}, {"grace_s": 86401}, {"grace_s": "300"}, {"grace": 300}):
        status, answer = await rotate(proxy, key["id"], **body)
        assert status == 422 and answer["field"] in ("grace_s", "grace"), answer
    status, answer = await rotate(proxy, "0123456789abcdef", grace_s=1)
    assert (status, answer["reason"]) == (404, "not_found")
