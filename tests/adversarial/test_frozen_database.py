"""A database that stops answering (frozen) must be answered as a stopped one is, within a deadline.

PostgreSQL is reached through ``tests.faultrelay``: ``freeze`` passes no byte and closes nothing (a
server stopped with SIGSTOP, a stalled disk, a partition), ``drop`` closes every connection and refuses
new ones (a stopped server). Both must give the same answers: cached keys served until ``max_stale``,
then 503 ``authorization_unavailable``; uncached and unknown keys, and a cached key whose uses are
counted in PostgreSQL, 503 within ``database_timeout``; admin
writes 503 ``store_unavailable`` within ``admin_database_timeout``; nothing hangs, nothing is allowed
that should not be, and everything recovers once the database is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import aiohttp
import pytest

from proxy.core import keys
from tests.bounds import RECONNECT
from tests.faultrelay import FaultRelay
from tests.harness import Gate, client_from, gate, settings_for

MAX_STALE = 2.0
DEADLINE = 0.5  # database_timeout
ADMIN_DEADLINE = 1.0  # admin_database_timeout
# Room for a loaded test machine on top of each bound: the defect was a hang for as long as the freeze
# lasted, so any finite bound tells them apart.
SLACK = 1.5


async def _status(session: aiohttp.ClientSession, url: str, key: str) -> tuple[int, str]:
    async with session.get(url + "/x", headers={"X-API-Key": key}) as resp:
        return resp.status, await resp.text()


async def _within(bound: float, call: Awaitable[tuple[int, str]]) -> tuple[int, str]:
    try:
        return await asyncio.wait_for(call, bound)
    except TimeoutError:
        pytest.fail(f"no answer within {bound:g}s: the request hangs on the database")


async def _admin(g: Gate, method: str, path: str, **kwargs: object) -> tuple[int, str]:
    async with g.admin.request(method, g.runtime.admin_url + path, **kwargs) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.text()


async def _cached_until_refused(
    session: aiohttp.ClientSession, url: str, key: str, since: float
) -> tuple[int, str]:
    """Ask with a cached key back to back until it is refused (its answer). Every answer before must
    be 200, and none may be 200 for a request sent after ``max_stale``: staleness counts from before
    the outage, not from when it was noticed."""
    while True:
        sent = time.monotonic() - since
        status, text = await _status(session, url, key)
        if status != 200:
            return status, text
        assert sent <= MAX_STALE + 0.2, f"a cached key was still served {sent:.2f}s into the outage"


@pytest.mark.parametrize("fault", ["freeze", "drop"])
async def test_a_frozen_database_answers_as_a_stopped_one_within_max_stale_plus_the_deadline(
    db_dsn: str, upstream: str, fault: str
) -> None:
    async with FaultRelay(db_dsn) as relay:
        settings = settings_for(
            relay.dsn,
            upstream,
            None,
            max_stale=MAX_STALE,
            database_timeout=DEADLINE,
            admin_database_timeout=ADMIN_DEADLINE,
        )
        async with gate(settings) as g, client_from("127.0.0.1") as session:
            cached = await g.create_key()
            counted = await g.create_key(policy={"usage": {"max_uses": 100}})  # uses counted in PostgreSQL
            uncached = await g.create_key()
            unknown = keys.generate()[1]
            assert (await _status(session, g.url, cached["key"]))[0] == 200
            assert (await _status(session, g.url, counted["key"]))[0] == 200

            getattr(relay, fault)()
            since = time.monotonic()
            try:
                async with asyncio.TaskGroup() as group:
                    uncached_answer = group.create_task(
                        _within(DEADLINE + SLACK, _status(session, g.url, uncached["key"]))
                    )
                    unknown_answer = group.create_task(
                        _within(DEADLINE + SLACK, _status(session, g.url, unknown))
                    )
                    counted_answer = group.create_task(
                        _within(DEADLINE + SLACK, _status(session, g.url, counted["key"]))
                    )
                    revoke_answer = group.create_task(
                        _within(ADMIN_DEADLINE + SLACK, _admin(g, "POST", f"/v1/keys/{cached['id']}/revoke"))
                    )
                    create_answer = group.create_task(
                        _within(
                            ADMIN_DEADLINE + SLACK,
                            _admin(g, "POST", "/v1/keys", json={"name": "n", "owner": "o"}),
                        )
                    )
                    cached_answer = group.create_task(
                        _within(
                            MAX_STALE + DEADLINE + SLACK,
                            _cached_until_refused(session, g.url, cached["key"], since),
                        )
                    )
            finally:
                relay.restore()  # before anything else waits on the database
            for answer in (uncached_answer, unknown_answer, counted_answer, cached_answer):
                status, text = answer.result()
                assert status == 503 and "authorization_unavailable" in text, text
            for answer in (revoke_answer, create_answer):
                status, text = answer.result()
                assert status == 503 and "store_unavailable" in text, text

            await g.runtime.feed.wait_connected(RECONNECT)
            assert (await _status(session, g.url, cached["key"]))[0] == 200  # the revoke never happened
            assert (await _status(session, g.url, uncached["key"]))[0] == 200
            assert (await _status(session, g.url, unknown))[0] == 401
            assert (await _admin(g, "POST", f"/v1/keys/{cached['id']}/revoke"))[0] == 200
            assert (await _status(session, g.url, cached["key"]))[0] == 401
