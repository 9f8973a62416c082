"""Attestations and request signatures end to end: a whole signalgate (real PostgreSQL, real sockets), a
real upstream recording what reached it, issuers registered through the admin API (one of them fetched
from a JWKS server on loopback), tokens and signatures made here with real keys.

The two cases from the product brief are one readable test each: a CI/CD deploy allowed only from the
approved repository, branch and runner with a signed request, and a metrics read allowed only from a
managed, encrypted device.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.attestations import (
    GITHUB_ISS,
    claims,
    ed25519_signer,
    es256_signer,
    github_claims,
    jwks,
    jwks_server,
    rs256_signer,
    sign_request,
)
from tests.bounds import PROMPT
from tests.harness import Gate, gate, settings_for
from tests.upstream_app import EVENTS

MDM_ISS = "https://mdm.acme.example"


@pytest.fixture
async def proxy(db_dsn: str, upstream: str) -> AsyncIterator[Gate]:
    async with gate(settings_for(db_dsn, upstream, None, jwks_min_refresh=0.2)) as g:
        yield g


async def create_issuer(proxy: Gate, **body: Any) -> dict[str, Any]:
    status, created = await proxy.admin_call("POST", "/v1/issuers", json=body)
    assert status == 201, created
    return created


async def call(
    session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    async with session.request(method, url, headers=headers, data=body) as response:
        return response.status, await response.json()


def upstream_saw(document: dict[str, Any]) -> dict[str, str]:
    return {name.lower(): value for name, value in document["headers"]}


async def test_ci_cd_deploy_only_from_the_approved_repository_branch_and_runner_with_a_signed_request(
    proxy: Gate,
) -> None:
    github = rs256_signer("gha-key-1")  # GitHub signs its OIDC tokens with RS256
    runner = ed25519_signer("runner-1")  # the self-hosted runner's own key, for request signatures
    async with jwks_server(jwks(github)) as github_jwks, aiohttp.ClientSession() as client:
        await create_issuer(
            proxy,
            name="github-actions",
            kind="workload",
            issuer=GITHUB_ISS,
            audience="signalgate",
            algorithms=["RS256"],
            jwks_url=github_jwks.url,
        )
        key = await proxy.create_key(
            name="deployer",
            owner="platform",
            policy={
                "routes": [{"methods": ["POST"], "path": "/deploy/**"}],
                "workload": {
                    "issuers": ["github-actions"],
                    "max_age_s": 900,
                    "bind_to_key": True,
                    "claims": {
                        "repository_id": "690541837",
                        "repository": "acme/deployer",
                        "ref": {"glob": "refs/heads/release-*"},
                        "runner_environment": "self-hosted",
                        "event_name": ["push", "workflow_dispatch"],
                    },
                },
                "signature": {"keys": {"keys": [runner.jwk]}, "max_age_s": 60},
            },
        )
        url = f"{proxy.url}/deploy/prod"
        body = b'{"release": "2026.05.1"}'

        def deploy(token: str, *, signed: bool = True) -> dict[str, str]:
            headers = {
                "X-API-Key": key["key"],
                "X-Workload-Attestation": token,
                "Content-Type": "application/json",
            }
            return sign_request(runner, "POST", url, headers, body=body) if signed else headers

        approved = github.token(github_claims(key["id"]))
        status, seen = await call(client, "POST", url, deploy(approved), body)
        assert status == 200, seen
        upstream = upstream_saw(seen)
        assert upstream["x-signalgate-workload"] == "repo:acme/deployer:ref:refs/heads/release-2026.05"
        assert "x-workload-attestation" not in upstream and "x-api-key" not in upstream
        assert seen["length"] == len(body)

        for case, token, reason in [
            (
                "from a fork",
                github_claims(key["id"], repository="mallory/deployer", repository_id="1"),
                "workload_attestation_claims",
            ),
            (
                "from another branch",
                github_claims(key["id"], ref="refs/heads/main"),
                "workload_attestation_claims",
            ),
            (
                "on a hosted runner",
                github_claims(key["id"], runner_environment="github-hosted"),
                "workload_attestation_claims",
            ),
            ("for another key", github_claims("fedcba9876543210"), "workload_attestation_audience"),
        ]:
            status, refused = await call(client, "POST", url, deploy(github.token(token)), body)
            assert (status, refused["reason"]) == (403, reason), case

        status, refused = await call(client, "POST", url, deploy(approved, signed=False), body)
        assert (status, refused["reason"]) == (401, "signature_missing")

        replayed = deploy(approved)
        assert (await call(client, "POST", url, replayed, body))[0] == 200
        status, refused = await call(client, "POST", url, replayed, body)
        assert (status, refused["reason"]) == (403, "signature_replayed")


async def test_metrics_read_only_from_a_managed_encrypted_device(
    proxy: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="signalgate.decision")
    mdm = es256_signer("mdm-2026")
    await create_issuer(
        proxy,
        name="mdm-prod",
        kind="device",
        issuer=MDM_ISS,
        audience="signalgate",
        algorithms=["ES256"],
        jwks=jwks(mdm),
    )
    device_policy = {
        "issuers": ["mdm-prod"],
        "max_age_s": 300,
        "bind_to_key": True,
        "claims": {
            "managed": True,
            "disk_encrypted": True,
            "os": ["macos", "linux"],
            "os_version": {"min": "14.2"},
            "risk_score": {"max": 30},
        },
    }
    routes = [{"methods": ["GET"], "path": "/metrics/**"}]
    key = await proxy.create_key(
        name="prod-metrics", owner="sre", policy={"routes": routes, "device": device_policy}
    )
    other = await proxy.create_key(
        name="other", owner="sre", policy={"routes": routes, "device": device_policy}
    )
    posture = {
        "managed": True,
        "disk_encrypted": True,
        "os": "macos",
        "os_version": "14.10",
        "risk_score": 12,
    }

    def attestation(key_id: str, *, age: float = 0, **changes: Any) -> str:
        return mdm.token(
            claims(MDM_ISS, f"signalgate:{key_id}", sub="laptop-7f3a", age=age, **{**posture, **changes})
        )

    async with aiohttp.ClientSession() as client:

        async def read(token: str) -> tuple[int, dict[str, Any]]:
            headers = {"X-API-Key": key["key"], "X-Device-Attestation": token}
            return await call(client, "GET", f"{proxy.url}/metrics/cpu", headers)

        status, seen = await read(attestation(key["id"]))
        assert status == 200, seen
        assert upstream_saw(seen)["x-signalgate-device"] == "laptop-7f3a"
        logged = json.loads(next(r.getMessage() for r in caplog.records if r.name == "signalgate.decision"))
        assert (logged["decision"], logged["device"]) == ("allow", "mdm-prod:laptop-7f3a")

        assert await read(attestation(key["id"], managed=False)) == (
            403,
            _reason(403, "device_attestation_claims"),
        )
        assert (await read(attestation(key["id"], age=600)))[1]["reason"] == "device_attestation_expired"
        assert (await read(attestation(other["id"])))[1]["reason"] == "device_attestation_audience"
        status, missing = await call(client, "GET", f"{proxy.url}/metrics/cpu", {"X-API-Key": key["key"]})
        assert (status, missing["reason"]) == (401, "device_attestation_missing")


def _reason(status: int, reason: str) -> dict[str, Any]:
    return _Reason(reason)  # type: ignore[return-value]


class _Reason(dict):  # type: ignore[type-arg]
    """Compares equal to a refusal body with this reason (whatever its message and request id)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason=reason)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict) and other.get("reason") == self["reason"]


async def test_a_body_altered_after_signing_never_reaches_the_upstream_whole(
    proxy: Gate, upstream_app: web.Application
) -> None:
    runner = ed25519_signer("runner-1")
    key = await proxy.create_key(policy={"signature": {"keys": {"keys": [runner.jwk]}}})
    url = f"{proxy.url}/transfer"
    signed_body = b'{"amount": 100, "to": "alice"}' * 5000  # ~150 KB: several chunks
    forged = signed_body.replace(b"alice", b"malic")
    headers = sign_request(runner, "POST", url, {"X-API-Key": key["key"]}, body=signed_body)
    async with aiohttp.ClientSession() as client:
        status, refused = await call(client, "POST", url, headers, forged)
        assert (status, refused["reason"]) == (403, "content_digest_mismatch")
        events = upstream_app[EVENTS]
        assert (await asyncio.wait_for(events.get(), PROMPT))[0] == "echo-start"
        event, detail = await asyncio.wait_for(events.get(), PROMPT)
        assert event == "echo-aborted", (event, detail)
        assert int(detail.split(" after ")[1].split()[0]) < len(forged)  # its end never arrived

        good = sign_request(runner, "POST", url, {"X-API-Key": key["key"]}, body=signed_body)
        status, seen = await call(client, "POST", url, good, signed_body)
        assert status == 200 and seen["length"] == len(signed_body)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "signature_missing"),
        ("unknown keyid", "signature_invalid"),
        ("@method not covered", "signature_invalid"),
        ("created too old", "signature_expired"),
        ("replayed to the same worker", "signature_replayed"),
    ],
)
async def test_signed_requests_refused(proxy: Gate, case: str, reason: str) -> None:
    runner = ed25519_signer("runner-1")
    key = await proxy.create_key(policy={"signature": {"keys": {"keys": [runner.jwk]}, "max_age_s": 60}})
    url = f"{proxy.url}/jobs"
    base = {"X-API-Key": key["key"]}
    if case == "missing":
        headers = base
    elif case == "unknown keyid":
        headers = sign_request(ed25519_signer("runner-2"), "GET", url, base)
    elif case == "@method not covered":
        headers = sign_request(runner, "GET", url, base, components=("@target-uri",))
    elif case == "created too old":
        headers = sign_request(runner, "GET", url, base, created=datetime.now(UTC) - timedelta(seconds=120))
    else:
        headers = sign_request(runner, "GET", url, base)
        async with aiohttp.ClientSession() as client:
            assert (await call(client, "GET", url, headers))[0] == 200
    async with aiohttp.ClientSession() as client:
        status, refused = await call(client, "GET", url, headers)
    assert refused["reason"] == reason, (case, refused)
    assert status == (401 if reason == "signature_missing" else 403)


async def test_attestation_headers_never_reach_the_upstream_and_the_log_names_the_check(
    proxy: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="signalgate.decision")
    mdm = ed25519_signer("k1")
    await create_issuer(
        proxy, name="mdm", kind="device", issuer=MDM_ISS, audience="sg", algorithms=["EdDSA"], jwks=jwks(mdm)
    )
    plain = await proxy.create_key()  # no attestation parts: the headers are still stripped
    strict = await proxy.create_key(
        policy={"device": {"issuers": ["mdm"], "claims": {"posture.firewall": True}}}
    )
    token = mdm.token(claims(MDM_ISS, "sg", posture={"firewall": False}))
    async with aiohttp.ClientSession() as client:
        headers = {"X-API-Key": plain["key"], "X-Device-Attestation": token, "X-Signalgate-Device": "forged"}
        status, seen = await call(client, "GET", f"{proxy.url}/x", headers)
        assert status == 200
        assert not {"x-device-attestation", "x-signalgate-device"} & set(upstream_saw(seen))
        status, refused = await call(client, "GET", f"{proxy.url}/x", {**headers, "X-API-Key": strict["key"]})
    assert refused["reason"] == "device_attestation_claims"
    assert refused["error"] == "device claims: claim posture.firewall is False, not True"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "signalgate.decision"]
    refusal = next(line for line in lines if line["reason"] == "device_attestation_claims")
    assert refusal["detail"] == "device claims: claim posture.firewall is False, not True"
    assert "device" not in refusal  # no verified subject for a refused attestation
    allowed = next(line for line in lines if line["decision"] == "allow")
    assert "device" not in allowed  # the plain key's policy verified nothing


async def test_an_issuer_change_is_enforced_on_the_next_request(proxy: Gate) -> None:
    old, new = ed25519_signer("k-old"), ed25519_signer("k-new")
    await create_issuer(
        proxy,
        name="mdm",
        kind="device",
        issuer=MDM_ISS,
        audience="sg",
        algorithms=["EdDSA"],
        jwks=jwks(old, new),
    )
    key = await proxy.create_key(policy={"device": {"issuers": ["mdm"]}})
    token = old.token(claims(MDM_ISS, "sg"))
    async with aiohttp.ClientSession() as client:
        headers = {"X-API-Key": key["key"], "X-Device-Attestation": token}
        assert (await call(client, "GET", f"{proxy.url}/x", headers))[0] == 200  # and now cached
        status, _ = await proxy.admin_call("PATCH", "/v1/issuers/mdm", json={"jwks": jwks(new)})
        assert status == 200
        status, refused = await call(client, "GET", f"{proxy.url}/x", headers)
        assert (status, refused["reason"]) == (403, "device_attestation_untrusted")
        fresh = {**headers, "X-Device-Attestation": new.token(claims(MDM_ISS, "sg"))}
        assert (await call(client, "GET", f"{proxy.url}/x", fresh))[0] == 200
        assert (await proxy.admin_call("DELETE", "/v1/issuers/mdm"))[0] == 204
        status, refused = await call(client, "GET", f"{proxy.url}/x", fresh)
        assert (status, refused["reason"]) == (403, "device_attestation_untrusted")


async def test_a_wrong_secret_verifies_no_token(proxy: Gate) -> None:
    """The key is checked first: a caller without the secret cannot make the proxy verify tokens."""
    mdm = ed25519_signer("k1")
    await create_issuer(
        proxy, name="mdm", kind="device", issuer=MDM_ISS, audience="sg", algorithms=["EdDSA"], jwks=jwks(mdm)
    )
    key = await proxy.create_key(policy={"device": {"issuers": ["mdm"]}})
    forged = key["key"][:-4] + secrets.token_hex(2)
    async with aiohttp.ClientSession() as client:
        status, refused = await call(
            client, "GET", f"{proxy.url}/x", {"X-API-Key": forged, "X-Device-Attestation": "not-even-a-token"}
        )
    assert (status, refused["reason"]) == (401, "key_invalid")
