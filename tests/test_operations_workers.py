"""The operators' view across real worker processes: the decision log survives a PostgreSQL outage and a
SIGKILLed worker with every decision exactly once; the metrics page counts every worker's requests; a
promoted candidate is enforced by every worker at once."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.db.embedded import EmbeddedPostgres
from tests.pgtools import FAST_SETTINGS, eventually, server_dir
from tests.procs import Served, create_key, serve, sticky_sessions, workers_env

# The decisions made while PostgreSQL is down reach a spool: each worker's writer fails to write to the
# stopped server and spools them at its next flush; a second or two.
SPOOLED = 30.0
# After PostgreSQL is back: the workers reconnect (with backoff), a replacement takes over the killed
# worker's spool, and every spooled decision is written; well under a minute on a loaded machine.
REPLAYED = 90.0


def settings(dsn: str, upstream: str, state: Path, **more: str) -> dict[str, str]:
    return workers_env(dsn, upstream, state, **{"decision_flush_interval": "0.1", **more})


async def request(url: str, source: str, key: str, path: str = "/x") -> tuple[int, str, str]:
    """(status, request id, the id's worker prefix), on a new connection from ``source``."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url + path, headers={"X-API-Key": key}) as resp,
    ):
        await resp.read()
        request_id = resp.headers["X-Request-Id"]
        return resp.status, request_id, request_id[:12]


async def scrape(served: Served) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as session, session.get(served.admin_url + "/metrics") as resp:
        assert resp.status == 200
        page = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


# --- nothing lost -------------------------------------------------------------------------------


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of this test's own, which it stops and starts (same port both times)."""
    with server_dir() as base:
        server = EmbeddedPostgres(base / "data", settings=FAST_SETTINGS)
        server.start()
        try:
            yield server
        finally:
            server.stop()


async def test_no_decision_is_lost_through_an_outage_and_a_killed_worker(
    own_postgres: EmbeddedPostgres, upstream: str, tmp_path: Path
) -> None:
    env = settings(own_postgres.dsn, upstream, tmp_path / "state", max_stale="300")
    made: dict[str, int] = {}  # request id -> status the client got
    async with serve(env) as served:
        key = await create_key(served, policy={"networks": {"allow": ["127.0.3.0/24"]}})

        async def burst(n: int) -> list[str]:
            answers = await asyncio.gather(
                *(request(served.proxy_url, f"127.0.{3 + i % 2}.{1 + i}", key["key"]) for i in range(n))
            )
            made.update({request_id: status for status, request_id, _ in answers})
            return [worker for _, _, worker in answers]

        await burst(20)  # with PostgreSQL up: keys cached by the workers that served them
        await asyncio.to_thread(own_postgres.stop)
        workers = await burst(40)  # allowed from the cache, refused by the policy, or 503: all recorded
        unknown = await request(served.proxy_url, "127.0.3.1", "sg_" + "0" * 16 + "_" + "0" * 48)
        made[unknown[1]] = unknown[0]
        assert Counter(made.values())[403] >= 20 and 200 in made.values()

        async def accounted() -> bool:  # written before the outage, or in a spool now
            samples = await scrape(served)
            done = total(samples, "signalgate_decisions_written_total") + total(
                samples, "signalgate_decisions_spooled_total"
            )
            return done == len(made) and total(samples, "signalgate_decision_log_pending") == 0

        await asyncio.wait_for(eventually(accounted), SPOOLED)
        samples = await scrape(served)
        spooling = [
            int(dict(labels)["worker"])
            for (name, labels), value in samples.items()
            if name == "signalgate_decision_spool_bytes" and value > 0
        ]
        assert spooling, samples
        victim = served.pids[spooling[0]]
        os.kill(victim, signal.SIGKILL)  # its spool stays behind, locked by nobody
        mark = served.err.mark()
        await served.err.expect(rf"worker {spooling[0]} \(pid {victim}\) exited unexpectedly", start=mark)
        await asyncio.to_thread(own_postgres.start)

        conn = await asyncpg.connect(own_postgres.dsn)
        try:

            async def landed() -> bool:
                return await conn.fetchval("SELECT count(*) FROM decisions") >= len(made)

            await asyncio.wait_for(eventually(landed), REPLAYED)
            rows = await conn.fetch(
                "SELECT request_id, status, count(*) OVER (PARTITION BY request_id) AS n FROM decisions"
            )
        finally:
            await conn.close()
        assert {r["request_id"]: r["status"] for r in rows} == made  # every decision...
        assert {r["n"] for r in rows} == {1}  # ...exactly once
        assert len(set(workers)) == 2, "the kernel sent the burst to one worker only"
        replayed = await scrape(served)
        assert total(replayed, "signalgate_decisions_replayed_total") > 0


# --- metrics and promotion across workers ---------------------------------------------------------


async def test_metrics_count_every_workers_requests_and_sigterm_writes_the_log(
    db_dsn: str, upstream: str, tmp_path: Path
) -> None:
    # No batch before the end: what reaches PostgreSQL is what SIGTERM made the workers write.
    async with serve(
        settings(db_dsn, upstream, tmp_path / "state", decision_flush_interval="3600")
    ) as served:
        key = await create_key(served, labels={"metrics": "on"}, policy={"routes": [{"path": "/ok"}]})
        answers = [await request(served.proxy_url, "127.0.2.1", key["key"], "/ok") for _ in range(30)]
        answers += [await request(served.proxy_url, "127.0.2.1", key["key"], "/no") for _ in range(10)]
        by_worker = Counter(worker for _, _, worker in answers)
        assert len(by_worker) == 2, by_worker  # both workers answered some
        samples = await scrape(served)
        assert samples[("signalgate_requests_total", (("decision", "allow"), ("reason", "allowed")))] == 30
        assert (
            samples[("signalgate_requests_total", (("decision", "deny"), ("reason", "route_denied")))] == 10
        )
        assert total(samples, "signalgate_key_requests_total") == 40
        assert samples[("signalgate_decision_seconds_count", ())] == 40
        assert samples[("signalgate_upstream_responses_total", (("class", "2xx"),))] == 30
        assert {
            labels for (name, labels), value in samples.items() if name == "signalgate_change_feed_connected"
        } == {(("worker", "0"),), (("worker", "1"),)}
        assert total(samples, "signalgate_decision_log_pending") == 40
    conn = await asyncpg.connect(db_dsn)
    try:
        logged = await conn.fetch("SELECT request_id FROM decisions")
    finally:
        await conn.close()
    assert sorted(r["request_id"] for r in logged) == sorted(request_id for _, request_id, _ in answers)


async def test_a_promoted_candidate_is_enforced_by_every_worker_at_once(
    db_dsn: str, upstream: str, tmp_path: Path
) -> None:
    async with serve(settings(db_dsn, upstream, tmp_path / "state")) as served:
        key = await create_key(served, candidate_policy={"routes": [{"path": "/only"}]})
        sessions = await sticky_sessions(served.proxy_url, key["key"], 1)  # one kept-alive client per worker
        try:
            status, promoted = await served.admin("POST", f"/v1/keys/{key['id']}/candidate/promote")
            assert status == 200 and promoted["policy"] == {"routes": [{"path": "/only"}]}
            for session, _ in sessions:  # the very next request on each worker
                async with session.get(served.proxy_url + "/x", headers={"X-API-Key": key["key"]}) as resp:
                    assert resp.status == 403
        finally:
            for session, _ in sessions:
                await session.close()
