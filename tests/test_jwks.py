"""Issuers whose keys come from a jwks_url, against a JWKS server on loopback: a key rotation picked up
without a restart, a flood of made-up kids costing a handful of fetches, a server that goes down
leaving the last good set in force, and Cache-Control max-age honoured within the bounds."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from proxy.admin.issuerclient import run_issuers
from proxy.jwks import max_age_of
from tests.attestations import b64, claims, ed25519_signer, jwks, jwks_server
from tests.bounds import PROMPT
from tests.clis import invoke
from tests.harness import Gate, gate, settings_for

ISS = "https://ci.example"


@pytest.fixture
async def proxy(db_dsn: str, upstream: str, request: pytest.FixtureRequest) -> AsyncIterator[Gate]:
    min_refresh = getattr(request, "param", 0.2)
    async with gate(
        settings_for(db_dsn, upstream, None, jwks_min_refresh=min_refresh, jwks_max_refresh=3600)
    ) as g:
        yield g


async def setup(proxy: Gate, url: str) -> dict[str, Any]:
    status, created = await proxy.admin_call(
        "POST",
        "/v1/issuers",
        json={
            "name": "ci",
            "kind": "workload",
            "issuer": ISS,
            "audience": "sg",
            "algorithms": ["EdDSA"],
            "jwks_url": url,
        },
    )
    assert status == 201, created
    return await proxy.create_key(policy={"workload": {"issuers": ["ci"]}})


async def status_of(
    client: aiohttp.ClientSession, proxy: Gate, key: dict[str, Any], token: str
) -> tuple[int, str]:
    headers = {"X-API-Key": key["key"], "X-Workload-Attestation": token}
    async with client.get(f"{proxy.url}/build", headers=headers) as response:
        body = await response.json()
        return response.status, body.get("reason", "")


async def until_allowed(client: aiohttp.ClientSession, proxy: Gate, key: dict[str, Any], token: str) -> None:
    """Each refusal waits for the worker's change feed to apply something new, then tries again."""
    for _ in range(20):
        revision = proxy.runtime.feed.revision
        if (await status_of(client, proxy, key, token))[0] == 200:
            return
        await asyncio.wait_for(proxy.runtime.feed.advanced(revision), PROMPT)
    raise AssertionError("never allowed")


async def test_a_key_rotation_is_picked_up_without_a_restart(proxy: Gate) -> None:
    old, new = ed25519_signer("2026-04"), ed25519_signer("2026-05")
    async with jwks_server(jwks(old), max_age=3600) as server, aiohttp.ClientSession() as client:
        key = await setup(proxy, server.url)
        assert await status_of(client, proxy, key, old.token(claims(ISS, "sg"))) == (200, "")
        server.keys = jwks(new)  # the issuer rotates: new kid served, the old one removed
        fresh = new.token(claims(ISS, "sg"))
        # The unknown kid is refused at first, and asks the instance's fetcher for an early fetch.
        assert await status_of(client, proxy, key, fresh) == (403, "workload_attestation_untrusted")
        await until_allowed(client, proxy, key, fresh)
        assert await status_of(client, proxy, key, old.token(claims(ISS, "sg"))) == (
            403,
            "workload_attestation_untrusted",
        )
        _, shown = await proxy.admin_call("GET", "/v1/issuers/ci")
        assert [k["kid"] for k in shown["keys"]] == ["2026-05"] and shown["last_fetch_error"] is None


def forged(kid: str) -> str:
    """A token naming a made-up kid (its signature is never looked at: the kid is unknown first)."""
    head = b64(json.dumps({"alg": "EdDSA", "kid": kid}).encode())
    body = b64(json.dumps(claims(ISS, "sg")).encode())
    return f"{head}.{body}.{b64(secrets.token_bytes(64))}"


@pytest.mark.parametrize("proxy", [30.0], indirect=True)
async def test_a_flood_of_unknown_kids_costs_a_handful_of_fetches(proxy: Gate) -> None:
    known = ed25519_signer("k1")
    async with jwks_server(jwks(known), max_age=3600) as server:
        key = await setup(proxy, server.url)
        fetches_at_creation = server.fetches
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(connector=connector) as client:

            async def hammer(count: int) -> list[tuple[int, str]]:
                return [
                    await status_of(client, proxy, key, forged(secrets.token_hex(8))) for _ in range(count)
                ]

            results = [r for batch in await asyncio.gather(*(hammer(250) for _ in range(40))) for r in batch]
        assert len(results) == 10_000
        assert set(results) == {(403, "workload_attestation_untrusted")}
        refresher = proxy.runtime.refresher
        assert refresher is not None
        await asyncio.wait_for(refresher.wait_fetches(1), PROMPT)  # the one early fetch the flood may cause
        early = server.fetches - fetches_at_creation
        assert 1 <= early <= 2, early  # at most one per jwks_min_refresh (30 s) for the whole flood
        async with aiohttp.ClientSession() as client:
            assert (await status_of(client, proxy, key, known.token(claims(ISS, "sg"))))[0] == 200


async def test_the_last_good_set_stays_when_the_server_is_down(proxy: Gate) -> None:
    known = ed25519_signer("k1")
    async with jwks_server(jwks(known), max_age=3600) as server, aiohttp.ClientSession() as client:
        key = await setup(proxy, server.url)
        refresher = proxy.runtime.refresher
        assert refresher is not None
        server.failing = True
        done = refresher.fetches
        # An unknown kid asks for a fetch; it fails.
        assert (await status_of(client, proxy, key, forged("k2")))[1] == "workload_attestation_untrusted"
        await asyncio.wait_for(refresher.wait_fetches(done + 1), PROMPT)
        assert await status_of(client, proxy, key, known.token(claims(ISS, "sg"))) == (200, "")
        _, shown = await proxy.admin_call("GET", "/v1/issuers/ci")
        assert [k["kid"] for k in shown["keys"]] == ["k1"]
        assert "HTTP 503" in shown["last_fetch_error"]
        code, out, _ = await invoke(run_issuers, proxy, "list")
        assert code == 0 and "url (last fetch failed)" in out


@pytest.mark.parametrize(
    ("max_age", "expected"),
    [(5, 60.0), (600, 600.0), (10**7, 3600.0), (None, 300.0)],
)
async def test_cache_control_max_age_is_honoured_within_bounds(
    db_dsn: str, upstream: str, max_age: int | None, expected: float
) -> None:
    settings = settings_for(db_dsn, upstream, None, jwks_min_refresh=60, jwks_max_refresh=3600)
    async with gate(settings) as proxy, jwks_server(jwks(ed25519_signer()), max_age=max_age) as server:
        await setup(proxy, server.url)
        shown = (await proxy.admin_call("GET", "/v1/issuers/ci"))[1]
        due = datetime.fromisoformat(shown["next_fetch_at"]) - datetime.fromisoformat(
            shown["last_fetched_at"]
        )
        assert abs(due.total_seconds() - expected) < 2, shown


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("public, max-age=600", 600.0),
        ('max-age="60"', 60.0),
        ("no-store", 0.0),
        ("private", None),
        ("s-maxage=5", None),
    ],
)
def test_max_age_is_read_from_cache_control(header: str, seconds: float | None) -> None:
    assert max_age_of(header) == seconds
