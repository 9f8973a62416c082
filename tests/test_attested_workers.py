"""Attestations and signatures across processes: ``signalgate serve`` with 2 workers, and 2 instances on
one database. A replayed signature is refused by whichever worker or instance gets it (the nonce is
recorded in PostgreSQL), and an issuer deleted while its tokens are in use stops them on every worker
within the revocation bound."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.attestations import claims, ed25519_signer, jwks, sign_request
from tests.bounds import LOAD
from tests.harness import ADMIN_TOKEN
from tests.procs import BOUND, Served, create_key, ready, serve, sticky_sessions, workers_env

ISS = "https://mdm.example"


@pytest.fixture
def env(db_dsn: str, upstream: str, tmp_path: Path) -> dict[str, str]:
    return workers_env(db_dsn, upstream, tmp_path / "state", log_level="info")


async def send(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, str, str]:
    """(status, reason, worker): the X-Request-Id prefix names the worker process."""
    async with session.get(url, headers=headers) as response:
        body = await response.read()
        reason = "" if response.status == 200 else json.loads(body)["reason"]
        return response.status, reason, response.headers["X-Request-Id"][:12]


async def test_a_replayed_signature_is_refused_by_another_worker(env: dict[str, str]) -> None:
    runner = ed25519_signer("runner-1")
    async with serve(env) as served:
        await ready(served)
        plain = await create_key(served)
        signed_key = await create_key(served, policy={"signature": {"keys": {"keys": [runner.jwk]}}})
        sessions = await sticky_sessions(served.proxy_url, plain["key"], per_worker=1)
        try:
            (first, first_worker), (second, second_worker) = sessions
            assert first_worker != second_worker
            url = f"{served.proxy_url}/jobs/42"
            headers = sign_request(runner, "GET", url, {"X-API-Key": signed_key["key"]})
            assert await send(first, url, headers) == (200, "", first_worker)
            assert await send(second, url, headers) == (403, "signature_replayed", second_worker)
            assert await send(first, url, headers) == (403, "signature_replayed", first_worker)
        finally:
            for session, _ in sessions:
                await session.close()


async def test_a_replayed_signature_is_refused_by_another_instance(env: dict[str, str]) -> None:
    runner = ed25519_signer("runner-1")
    async with (
        serve({**env, "SIGNALGATE_WORKERS": "1"}) as one,
        serve({**env, "SIGNALGATE_WORKERS": "1"}) as two,
    ):
        await ready(one)
        await ready(two)
        key = await create_key(one, policy={"signature": {"keys": {"keys": [runner.jwk]}}})
        async with aiohttp.ClientSession() as client:
            # The same signed request to both: the URL is covered, so sign for the host both share.
            headers = sign_request(
                runner, "GET", "http://api.example/jobs/42", {"X-API-Key": key["key"], "Host": "api.example"}
            )
            headers["Host"] = "api.example"
            assert (await send(client, f"{one.proxy_url}/jobs/42", headers))[:2] == (200, "")
            assert (await send(client, f"{two.proxy_url}/jobs/42", headers))[:2] == (
                403,
                "signature_replayed",
            )


async def test_an_issuer_deleted_while_its_tokens_are_in_use_stops_them_on_every_worker(
    env: dict[str, str],
) -> None:
    mdm = ed25519_signer("mdm-1")
    async with serve(env) as served:
        await ready(served)
        status, created = await served.admin(
            "POST",
            "/v1/issuers",
            json={
                "name": "mdm",
                "kind": "device",
                "issuer": ISS,
                "audience": "sg",
                "algorithms": ["EdDSA"],
                "jwks": jwks(mdm),
            },
        )
        assert status == 201, created
        key = await create_key(served, policy={"device": {"issuers": ["mdm"]}})
        plain = await create_key(served)
        sessions = await sticky_sessions(served.proxy_url, plain["key"], per_worker=2)
        headers = {
            "X-API-Key": key["key"],
            "X-Device-Attestation": mdm.token(claims(ISS, "sg", lifetime=600)),
        }
        url = f"{served.proxy_url}/metrics"
        seen: list[list[tuple[float, int, str, str]]] = [[] for _ in sessions]
        warm = asyncio.Event()
        stop_at: list[float] = []

        async def loop(i: int) -> None:
            session, _ = sessions[i]
            while not stop_at or time.monotonic() < stop_at[0]:
                sent = time.monotonic()
                seen[i].append((sent, *await send(session, url, headers)))
                if all(len(answers) >= 20 for answers in seen):
                    warm.set()

        try:
            loops = [asyncio.create_task(loop(i)) for i in range(len(sessions))]
            await asyncio.wait_for(warm.wait(), LOAD)  # every worker verified the token and serves it cached
            status, _ = await admin_delete(served, "/v1/issuers/mdm")
            returned = time.monotonic()
            assert status == 204
            stop_at.append(returned + BOUND + 0.5)
            await asyncio.wait_for(asyncio.gather(*loops), LOAD)
        finally:
            for session, _ in sessions:
                await session.close()
    for (_, worker), answers in zip(sessions, seen, strict=True):
        assert {w for *_, w in answers} == {worker}
        first = next(n for n, (_, status, _, _) in enumerate(answers) if status != 200)
        assert all(status == 200 for _, status, _, _ in answers[:first])
        assert all(reason == "device_attestation_untrusted" for _, _, reason, _ in answers[first:]), answers[
            first:
        ]
        late = [a for a in answers if a[1] == 200 and a[0] > returned + BOUND]
        assert not late, f"worker {worker} allowed {len(late)} requests after the bound"
    assert len({worker for _, worker in sessions}) == 2


async def admin_delete(served: Served, path: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.delete(served.admin_url + path) as resp,
    ):
        return resp.status, await resp.read()
