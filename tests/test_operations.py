"""The operators' view end to end, in one process on real PostgreSQL and real sockets: the decision log
and its query, candidate (dry-run) policies and their promotion, and explain agreeing with the proxy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.admin.openapi import openapi_document
from tests.attestations import claims, ed25519_signer, sign_request
from tests.conformance import Conformance
from tests.geodata import DEFAULT_TEST_NETWORKS, write_country_mmdb
from tests.harness import Gate, client_from, gate, settings_for


@pytest.fixture(scope="module")
def geoip_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_country_mmdb(tmp_path_factory.mktemp("geo") / "country.mmdb", DEFAULT_TEST_NETWORKS)


@pytest.fixture
async def proxy(db_dsn: str, upstream: str, geoip_db: Path) -> AsyncIterator[Gate]:
    async with gate(settings_for(db_dsn, upstream, geoip_db, expose_reasons=False)) as g:
        yield g


async def call(
    g: Gate,
    source: str,
    path: str,
    key: str | None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> tuple[int, str, dict[str, Any]]:
    """One request through the proxy from ``source``: (status, request id, JSON body or {})."""
    sent = dict(headers or {})
    if key is not None:
        sent["X-API-Key"] = key
    async with client_from(source) as client, client.request(method, g.url + path, headers=sent) as resp:
        body = await resp.json() if resp.content_type == "application/json" else {}
        return resp.status, resp.headers["X-Request-Id"], body


async def drained(g: Gate) -> None:
    assert g.runtime.writer is not None
    await g.runtime.writer.drain()


async def test_a_refusal_is_found_by_the_request_id_the_client_saw(proxy: Gate) -> None:
    key = await proxy.create_key(owner="team-pay", policy={"networks": {"allow": ["127.0.3.0/24"]}})
    status, request_id, body = await call(proxy, "127.0.4.9", "/orders", key["key"])
    # The client learns nothing but "forbidden" and the request id...
    assert (status, body["reason"], body["request_id"]) == (403, "forbidden", request_id)
    allowed, allowed_id, _ = await call(proxy, "127.0.3.9", "/orders", key["key"])
    assert allowed == 200
    await drained(proxy)
    # ...which leads the operator to the reason and the failing signal's detail.
    status, page = await proxy.admin_call("GET", "/v1/decisions", params={"request_id": request_id})
    assert status == 200 and page["next"] is None
    (found,) = page["items"]
    assert found["request_id"] == request_id
    assert (found["decision"], found["reason"], found["status"]) == ("deny", "network_denied", 403)
    assert "127.0.4.9" in found["detail"]
    assert (found["key_id"], found["owner"], found["client_ip"], found["country"]) == (
        key["id"],
        "team-pay",
        "127.0.4.9",
        "KP",
    )
    assert (found["method"], found["path"], found["policy_revision"]) == ("GET", "/orders", key["revision"])
    assert found["upstream_status"] is None and found["sample_rate"] == 1.0
    status, page = await proxy.admin_call("GET", "/v1/decisions", params={"request_id": allowed_id})
    (ok,) = page["items"]
    assert (ok["decision"], ok["reason"], ok["upstream_status"], ok["status"]) == (
        "allow",
        "allowed",
        200,
        200,
    )
    assert ok["upstream_ms"] is not None and ok["upstream_ms"] <= ok["latency_ms"]


async def test_decisions_filter_and_page_by_cursor(proxy: Gate) -> None:
    first = await proxy.create_key(owner="team-a", policy={"routes": [{"path": "/ok/**"}]})
    second = await proxy.create_key(owner="team-b")
    ids = [(await call(proxy, "127.0.2.1", f"/ok/{n}", first["key"]))[1] for n in range(3)]
    ids += [(await call(proxy, "127.0.2.1", f"/no/{n}", first["key"]))[1] for n in range(2)]
    await call(proxy, "127.0.2.1", "/x", second["key"])
    await call(proxy, "127.0.2.1", "/x", None)  # no key: key_missing, no owner
    await drained(proxy)

    seen: list[str] = []
    params = {"key_id": first["id"], "limit": "2"}
    while True:
        status, page = await proxy.admin_call("GET", "/v1/decisions", params=params)
        assert status == 200 and len(page["items"]) <= 2
        seen += [item["request_id"] for item in page["items"]]
        if page["next"] is None:
            break
        params["cursor"] = page["next"]
    assert seen == ids[::-1]  # newest first, each once
    _, asc = await proxy.admin_call("GET", "/v1/decisions", params={"key_id": first["id"], "order": "asc"})
    assert [item["request_id"] for item in asc["items"]] == ids
    _, refused = await proxy.admin_call(
        "GET", "/v1/decisions", params={"owner": "team-a", "decision": "deny", "reason": "route_denied"}
    )
    assert sorted(item["request_id"] for item in refused["items"]) == sorted(ids[3:])
    _, team_b = await proxy.admin_call("GET", "/v1/decisions", params={"owner": "team-b"})
    assert [item["key_id"] for item in team_b["items"]] == [second["id"]]
    _, missing = await proxy.admin_call("GET", "/v1/decisions", params={"reason": "key_missing"})
    assert len(missing["items"]) == 1 and missing["items"][0]["owner"] is None
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    _, none = await proxy.admin_call("GET", "/v1/decisions", params={"since": future})
    assert none["items"] == []
    for bad, field in (
        ({"decision": "maybe"}, "decision"),
        ({"reason": "nope"}, "reason"),
        ({"since": "yesterday"}, "since"),
        ({"cursor": "!!"}, "cursor"),
        ({"key_id": "XYZ"}, "key_id"),
        ({"limit": "0"}, "limit"),
        ({"colour": "red"}, "colour"),
    ):
        status, body = await proxy.admin_call("GET", "/v1/decisions", params=bad)
        assert (status, body["field"]) == (422, field), bad


async def test_candidate_counts_equal_the_requests_and_promotion_applies(proxy: Gate) -> None:
    key = await proxy.create_key(
        policy={"routes": [{"methods": ["GET"], "path": "/v1/**"}]},
        candidate_policy={"networks": {"allow": ["127.0.5.0/24"]}},
    )
    assert key["candidate_since"] is not None
    made = {"agree": 0, "would_deny": [], "would_allow": []}
    for _ in range(3):  # both allow
        assert (await call(proxy, "127.0.5.1", "/v1/a", key["key"]))[0] == 200
        made["agree"] += 1
    for _ in range(4):  # the policy allows, the candidate would refuse (network)
        status, request_id, _ = await call(proxy, "127.0.6.1", "/v1/a", key["key"])
        assert status == 200  # the answer is the enforced policy's
        made["would_deny"].append(request_id)
    for _ in range(2):  # the policy refuses (route), the candidate (no routes part) would allow
        status, request_id, _ = await call(proxy, "127.0.5.1", "/v1/a", key["key"], method="POST")
        assert status == 403
        made["would_allow"].append(request_id)
    await drained(proxy)

    status, summary = await proxy.admin_call("GET", f"/v1/keys/{key['id']}/candidate")
    assert status == 200, summary
    assert (summary["evaluated"], summary["agree"], summary["would_deny"], summary["would_allow"]) == (
        9,
        3,
        4,
        2,
    )
    by = {(row["outcome"], row["reason"]): row for row in summary["by_reason"]}
    assert set(by) == {("would_deny", "network_denied"), ("would_allow", "route_denied")}
    assert set(by[("would_deny", "network_denied")]["request_ids"]) == set(made["would_deny"])
    assert set(by[("would_allow", "route_denied")]["request_ids"]) == set(made["would_allow"])
    assert summary["candidate_policy"] == {"networks": {"allow": ["127.0.5.0/24"]}}
    _, disagreeing = await proxy.admin_call("GET", "/v1/decisions", params={"candidate": "would_deny"})
    assert {item["request_id"] for item in disagreeing["items"]} == set(made["would_deny"])
    assert {item["candidate_reason"] for item in disagreeing["items"]} == {"network_denied"}

    status, promoted = await proxy.admin_call("POST", f"/v1/keys/{key['id']}/candidate/promote")
    assert status == 200, promoted
    assert promoted["policy"] == {"networks": {"allow": ["127.0.5.0/24"]}}
    assert (promoted["candidate_policy"], promoted["candidate_since"]) == (None, None)
    assert (await call(proxy, "127.0.6.1", "/v1/a", key["key"]))[0] == 403  # at once
    assert (await call(proxy, "127.0.5.1", "/v1/a", key["key"], method="POST"))[0] == 200
    status, body = await proxy.admin_call("POST", f"/v1/keys/{key['id']}/candidate/promote")
    assert (status, body["reason"]) == (409, "conflict")
    status, body = await proxy.admin_call("GET", f"/v1/keys/{key['id']}/candidate")
    assert (status, body["reason"]) == (404, "not_found")


async def test_a_candidate_is_validated_set_and_removed_like_a_policy(proxy: Gate) -> None:
    key = await proxy.create_key()
    status, body = await proxy.admin_call(
        "PATCH", f"/v1/keys/{key['id']}", json={"candidate_policy": {"networks": {"allow": ["10.0.0.1/8"]}}}
    )
    assert (status, body["field"]) == (422, "candidate_policy.networks.allow[0]")
    candidate = {"routes": [{"path": "/only/**"}]}
    status, body = await proxy.admin_call(
        "PATCH", f"/v1/keys/{key['id']}", json={"candidate_policy": candidate}
    )
    assert status == 200 and body["candidate_policy"] == candidate
    since = body["candidate_since"]
    status, again = await proxy.admin_call(
        "PATCH", f"/v1/keys/{key['id']}", json={"candidate_policy": candidate}
    )
    assert again["candidate_since"] == since  # the same document keeps its summary's start
    assert (await call(proxy, "127.0.2.1", "/elsewhere", key["key"]))[0] == 200  # never enforced
    status, body = await proxy.admin_call("PATCH", f"/v1/keys/{key['id']}", json={"candidate_policy": None})
    assert (status, body["candidate_policy"], body["candidate_since"]) == (200, None, None)


# --- explain agrees with the proxy ----------------------------------------------------------------

NOW = datetime.now(UTC)
# (name, key fields, source address, method, target, headers)
CASES: list[tuple[str, dict[str, Any], str, str, str, dict[str, str]]] = [
    ("allowed", {}, "127.0.2.1", "GET", "/v1/items", {}),
    ("network", {"policy": {"networks": {"allow": ["127.0.3.0/24"]}}}, "127.0.2.1", "GET", "/v1/x", {}),
    ("network ok", {"policy": {"networks": {"allow": ["127.0.3.0/24"]}}}, "127.0.3.5", "GET", "/v1/x", {}),
    ("region", {"policy": {"regions": {"allow": ["DE"]}}}, "127.0.4.2", "GET", "/v1/x", {}),
    ("region ok", {"policy": {"regions": {"allow": ["DE"]}}}, "127.0.3.2", "GET", "/v1/x", {}),
    ("region unknown", {"policy": {"regions": {"allow": ["DE"]}}}, "127.0.7.2", "GET", "/v1/x", {}),
    (
        "route",
        {"policy": {"routes": [{"methods": ["GET"], "path": "/v1/*"}]}},
        "127.0.2.1",
        "POST",
        "/v1/x",
        {},
    ),
    (
        "route ok",
        {"policy": {"routes": [{"methods": ["GET"], "path": "/v1/*"}]}},
        "127.0.2.1",
        "GET",
        "/v1/x",
        {},
    ),
    ("dot segments", {"policy": {"routes": [{"path": "/v1/**"}]}}, "127.0.2.1", "GET", "/v1/../admin", {}),
    ("path invalid", {}, "127.0.2.1", "GET", "/v1/a%2fb", {}),
    (
        "forwarded",
        {"policy": {"regions": {"allow": ["DE"]}}},
        "127.0.9.4",
        "GET",
        "/v1/x",
        {"X-Forwarded-For": "127.0.3.3"},
    ),
    ("forwarded bad", {}, "127.0.9.4", "GET", "/v1/x", {"X-Forwarded-For": "not-an-ip"}),
    (
        "forged forward",
        {"policy": {"regions": {"allow": ["DE"]}}},
        "127.0.2.4",
        "GET",
        "/v1/x",
        {"X-Forwarded-For": "127.0.3.3"},
    ),
    ("suspended", {"status": "suspended"}, "127.0.2.1", "GET", "/v1/x", {}),
    (
        "expired",
        {"expires_at": (NOW - timedelta(days=1)).isoformat(), "allow_expired": True},
        "127.0.2.1",
        "GET",
        "/v1/x",
        {},
    ),
    ("not yet", {"not_before": (NOW + timedelta(days=1)).isoformat()}, "127.0.2.1", "GET", "/v1/x", {}),
    (
        "all parts",
        {
            "policy": {
                "networks": {"allow": ["127.0.0.0/8"]},
                "regions": {"deny": ["KP"]},
                "routes": [{"methods": ["GET"], "path": "/v1/**"}],
            }
        },
        "127.0.4.4",
        "DELETE",
        "/v1/x",
        {},
    ),
]


async def test_explain_agrees_with_the_proxy_on_every_case(proxy: Gate) -> None:
    for name, fields, source, method, target, headers in CASES:
        status_fields = {k: v for k, v in fields.items() if k != "status"}
        key = await proxy.create_key(**status_fields)
        if fields.get("status"):
            await proxy.admin_call("PATCH", f"/v1/keys/{key['id']}", json={"status": fields["status"]})
        status, request_id, _ = await call(proxy, source, target, key["key"], method=method, headers=headers)
        await drained(proxy)
        _, page = await proxy.admin_call("GET", "/v1/decisions", params={"request_id": request_id})
        (seen,) = page["items"]  # the reason the proxy decided on, from its own log
        described = {"method": method, "path": target, "client_ip": source, "headers": headers}
        code, explained = await proxy.admin_call(
            "POST", "/v1/evaluate", json={"key_id": key["id"], "request": described}
        )
        assert code == 200, (name, explained)
        decision = explained["decision"]
        assert (decision["allowed"], decision["reason"], decision["status"]) == (
            seen["decision"] == "allow",
            seen["reason"],
            status,
        ), name
        if explained["stage"] in ("key", "policy"):
            assert [part["part"] for part in explained["parts"]] == list(fields.get("policy", {})), name


async def test_explain_reports_every_part_and_the_candidate(proxy: Gate) -> None:
    policy = {
        "networks": {"allow": ["10.0.0.0/8"]},
        "regions": {"allow": ["US"]},
        "routes": [{"methods": ["GET"], "path": "/v1/**"}],
    }
    described = {"method": "POST", "path": "/v2/x", "client_ip": "127.0.3.1"}
    status, explained = await proxy.admin_call(
        "POST", "/v1/evaluate", json={"policy": policy, "request": described}
    )
    assert status == 200, explained
    assert explained["decision"]["reason"] == "network_denied"  # the first failure decides...
    outcomes = {part["part"]: part["reason"] for part in explained["parts"]}
    assert outcomes == {"networks": "network_denied", "regions": "region_denied", "routes": "route_denied"}
    assert explained["request"]["facts"] == {"country": "DE"}  # gathered in the admin process too

    key = await proxy.create_key(
        policy={"routes": [{"path": "/v1/**"}]}, candidate_policy={"regions": {"allow": ["US"]}}
    )
    described = {"path": "/v1/x", "client_ip": "127.0.3.1", "time": "2030-01-01T00:00:00Z"}
    status, explained = await proxy.admin_call(
        "POST", "/v1/evaluate", json={"key_id": key["id"], "request": described}
    )
    assert explained["decision"]["allowed"] is True
    assert explained["candidate"]["outcome"] == "would_deny"
    assert explained["candidate"]["decision"]["reason"] == "region_denied"
    assert explained["key"]["outcome"]["allowed"] is True
    for body, field in (
        ({"request": described}, "$"),
        ({"key_id": key["id"], "policy": {}, "request": described}, "$"),
        ({"policy": {"networks": 1}, "request": described}, "policy.networks"),
        ({"policy": {}, "request": {"path": "/x"}}, "request.client_ip"),
        ({"policy": {}, "request": {"path": "/x", "client_ip": "1.2.3.4", "time": "soon"}}, "request.time"),
        (
            {"policy": {}, "request": {"path": "/x", "client_ip": "1.2.3.4", "headers": {"a b": "c"}}},
            'request.headers["a b"]',
        ),
    ):
        status, answer = await proxy.admin_call("POST", "/v1/evaluate", json=body)
        assert (status, answer.get("field")) == (422, field), body
    status, answer = await proxy.admin_call(
        "POST", "/v1/evaluate", json={"key_id": "0123456789abcdef", "request": described}
    )
    assert status == 404


async def test_metrics_count_the_requests_made(proxy: Gate) -> None:
    key = await proxy.create_key(labels={"metrics": "on"}, policy={"routes": [{"path": "/ok"}]})
    other = await proxy.create_key()
    for _ in range(3):
        await call(proxy, "127.0.2.1", "/ok", key["key"])
    await call(proxy, "127.0.2.1", "/no", key["key"])
    await call(proxy, "127.0.2.1", "/ok", other["key"])
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.get(f"{proxy.runtime.admin_url}/metrics") as resp,
    ):
        assert resp.status == 200 and resp.content_type == "text/plain"
        page = await resp.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }
    assert samples[("signalgate_requests_total", (("decision", "allow"), ("reason", "allowed")))] == 4
    assert samples[("signalgate_requests_total", (("decision", "deny"), ("reason", "route_denied")))] == 1
    per_key = {labels: v for (name, labels), v in samples.items() if name == "signalgate_key_requests_total"}
    assert per_key == {
        (("decision", "allow"), ("key_id", key["id"]), ("reason", "allowed")): 3,
        (("decision", "deny"), ("key_id", key["id"]), ("reason", "route_denied")): 1,
    }  # the unmarked key has no series of its own
    assert samples[("signalgate_decision_seconds_count", ())] == 5
    assert samples[("signalgate_upstream_seconds_count", ())] == 4
    assert samples[("signalgate_upstream_responses_total", (("class", "2xx"),))] == 4
    assert samples[("signalgate_change_feed_connected", (("worker", "0"),))] == 1
    assert samples[("signalgate_cache_misses_total", ())] >= 2
    assert samples[("signalgate_jwks_fetches_total", ())] == 0


async def test_the_log_keeps_a_burst_in_order_and_once(proxy: Gate) -> None:
    key = await proxy.create_key()
    results = await asyncio.gather(*(call(proxy, "127.0.2.1", f"/n/{n}", key["key"]) for n in range(40)))
    await drained(proxy)
    _, page = await proxy.admin_call("GET", "/v1/decisions", params={"key_id": key["id"], "limit": "1000"})
    assert sorted(item["request_id"] for item in page["items"]) == sorted(r[1] for r in results)


async def test_the_operators_answers_match_the_openapi_document(proxy: Gate) -> None:
    spec = Conformance(openapi_document())
    admin = proxy.runtime.admin_url
    key = await proxy.create_key(candidate_policy={"routes": [{"path": "/a"}]})
    request_id = (await call(proxy, "127.0.2.1", "/b", key["key"]))[1]
    await call(proxy, "127.0.2.1", "/no-key", None)
    await drained(proxy)

    async def check(method: str, template: str, path: str, **kwargs: Any) -> Any:
        async with proxy.admin.request(method, admin + path, **kwargs) as resp:
            return await spec.check(resp, method, template)

    page = await check("GET", "/v1/decisions", "/v1/decisions", params={"limit": "1"})
    assert page["next"] is not None
    await check("GET", "/v1/decisions", "/v1/decisions", params={"request_id": request_id})
    await check("GET", "/v1/decisions", "/v1/decisions", params={"order": "sideways"})  # 422
    summary = await check("GET", "/v1/keys/{id}/candidate", f"/v1/keys/{key['id']}/candidate")
    assert summary["would_deny"] == 1
    described = {"method": "GET", "path": "/b", "client_ip": "127.0.3.1"}
    await check("POST", "/v1/evaluate", "/v1/evaluate", json={"key_id": key["id"], "request": described})
    await check("POST", "/v1/evaluate", "/v1/evaluate", json={"policy": {}, "request": described})
    await check("POST", "/v1/evaluate", "/v1/evaluate", json={"policy": {}, "request": {"path": "/"}})  # 422
    await check("POST", "/v1/keys/{id}/candidate/promote", f"/v1/keys/{key['id']}/candidate/promote")
    await check("POST", "/v1/keys/{id}/candidate/promote", f"/v1/keys/{key['id']}/candidate/promote")  # 409
    await check("GET", "/v1/keys/{id}/candidate", f"/v1/keys/{key['id']}/candidate")  # 404
    async with aiohttp.ClientSession() as anonymous, anonymous.get(admin + "/metrics") as resp:
        declared = spec.document["paths"]["/metrics"]["get"]["responses"]["200"]
        assert resp.status == 200 and resp.content_type in declared["content"]
        assert resp.headers["X-Request-Id"]
    assert {status for _, _, status in spec.seen} == {200, 404, 409, 422}


async def test_a_candidate_takes_nothing_a_policy_would_take(proxy: Gate) -> None:
    """A candidate with a signature part verifies signatures but never records their nonces (the
    enforced policy's admission does that): promoted, it accepts a nonce it saw as a candidate once."""
    runner = ed25519_signer("runner-1")
    candidate = {"signature": {"keys": {"keys": [runner.jwk]}, "max_age_s": 60}}
    key = await proxy.create_key(candidate_policy=candidate)
    url = f"{proxy.url}/jobs"
    signed = sign_request(runner, "GET", url, {"X-API-Key": key["key"]})
    async with aiohttp.ClientSession() as client:
        for headers in (signed, signed, {"X-API-Key": key["key"]}):
            async with client.get(url, headers=headers) as resp:
                assert resp.status == 200  # the enforced policy (none) decides
        await drained(proxy)
        _, summary = await proxy.admin_call("GET", f"/v1/keys/{key['id']}/candidate")
        assert (summary["agree"], summary["would_deny"]) == (2, 1), summary  # the same nonce agreed twice
        assert [(r["outcome"], r["reason"]) for r in summary["by_reason"]] == [
            ("would_deny", "signature_missing")
        ]
        status, _ = await proxy.admin_call("POST", f"/v1/keys/{key['id']}/candidate/promote")
        assert status == 200
        async with client.get(url, headers=signed) as resp:
            assert resp.status == 200  # its nonce was never taken...
        async with client.get(url, headers=signed) as resp:
            assert resp.status == 403  # ...until now
            request_id = resp.headers["X-Request-Id"]
    await drained(proxy)
    _, page = await proxy.admin_call("GET", "/v1/decisions", params={"request_id": request_id})
    assert page["items"][0]["reason"] == "signature_replayed"


async def test_explain_verifies_attestations_and_signatures_like_the_proxy(proxy: Gate) -> None:
    runner = ed25519_signer("runner-1")
    key = await proxy.create_key(policy={"signature": {"keys": {"keys": [runner.jwk]}, "max_age_s": 60}})
    url = f"{proxy.url}/jobs"
    host = url.split("/")[2]
    signed = sign_request(runner, "GET", url, {"X-API-Key": key["key"]})
    forged = {**signed, "Signature": signed["Signature"].replace("sig1=:", "sig1=:AAAA")}
    for headers in ({"X-API-Key": key["key"]}, forged, signed):
        status, request_id, _ = await call(proxy, "127.0.2.1", "/jobs", None, headers=headers)
        await drained(proxy)
        _, page = await proxy.admin_call("GET", "/v1/decisions", params={"request_id": request_id})
        seen = page["items"][0]
        # The signature covers the key's header, as a careful client's does: explain needs it as sent.
        described = {"path": "/jobs", "client_ip": "127.0.2.1", "headers": {**headers, "Host": host}}
        _, explained = await proxy.admin_call(
            "POST", "/v1/evaluate", json={"key_id": key["id"], "request": described}
        )
        assert (explained["decision"]["reason"], explained["decision"]["status"]) == (seen["reason"], status)
    assert seen["reason"] == "allowed"  # the last: a good signature, verified by explain as by the proxy


async def test_explain_knows_the_issuers_as_they_are_now(proxy: Gate) -> None:
    """Issuers created, rotated and deleted after start: explain reads them again for each call."""
    old, new = ed25519_signer("k-old"), ed25519_signer("k-new")
    issuer = "https://mdm.acme.example"
    key = await proxy.create_key()
    body = {"name": "mdm", "kind": "device", "issuer": issuer, "audience": "sg", "algorithms": ["EdDSA"]}
    status, _ = await proxy.admin_call("POST", "/v1/issuers", json={**body, "jwks": {"keys": [old.jwk]}})
    assert status == 201
    status, _ = await proxy.admin_call(
        "PATCH", f"/v1/keys/{key['id']}", json={"policy": {"device": {"issuers": ["mdm"]}}}
    )
    assert status == 200

    async def both(token: str) -> tuple[str, str]:
        headers = {"X-Device-Attestation": token}
        request_id = (await call(proxy, "127.0.2.1", "/x", key["key"], headers=headers))[1]
        await drained(proxy)
        _, page = await proxy.admin_call("GET", "/v1/decisions", params={"request_id": request_id})
        described = {"path": "/x", "client_ip": "127.0.2.1", "headers": headers}
        _, explained = await proxy.admin_call(
            "POST", "/v1/evaluate", json={"key_id": key["id"], "request": described}
        )
        return page["items"][0]["reason"], explained["decision"]["reason"]

    token = old.token(claims(issuer, "sg", sub="laptop-7"))
    assert await both(token) == ("allowed", "allowed")
    status, _ = await proxy.admin_call("PATCH", "/v1/issuers/mdm", json={"jwks": {"keys": [new.jwk]}})
    assert status == 200
    assert await both(token) == ("device_attestation_untrusted", "device_attestation_untrusted")
    _, page = await proxy.admin_call(
        "GET", "/v1/decisions", params={"key_id": key["id"], "decision": "allow"}
    )
    assert page["items"][0]["device_subject"] == "mdm:laptop-7"  # the verified subject, recorded


@pytest.mark.parametrize(("candidate_signs", "outcome"), [(True, "agree"), (False, "would_allow")])
async def test_a_refusal_by_an_admission_counts_for_a_candidate_sharing_it(
    proxy: Gate, candidate_signs: bool, outcome: str
) -> None:
    """A replayed nonce is refused by the enforced policy's admission; a candidate with the same
    signature part would have been refused alike (agree), one without it would have allowed it."""
    runner = ed25519_signer("runner-1")
    signature = {"signature": {"keys": {"keys": [runner.jwk]}, "max_age_s": 60}}
    candidate = (
        {**signature, "routes": [{"path": "/**"}]} if candidate_signs else {"routes": [{"path": "/**"}]}
    )
    key = await proxy.create_key(policy=signature, candidate_policy=candidate)
    url = f"{proxy.url}/jobs"
    signed = sign_request(runner, "GET", url, {"X-API-Key": key["key"]})
    async with aiohttp.ClientSession() as client:
        async with client.get(url, headers=signed) as resp:
            assert resp.status == 200
        async with client.get(url, headers=signed) as resp:
            assert resp.status == 403
            replayed = resp.headers["X-Request-Id"]
    await drained(proxy)
    _, page = await proxy.admin_call("GET", "/v1/decisions", params={"request_id": replayed})
    (row,) = page["items"]
    assert (row["reason"], row["candidate"]) == ("signature_replayed", outcome)
