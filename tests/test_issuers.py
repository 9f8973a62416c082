"""Issuers through the admin API and the CLI: create, list, show, update, delete; the 422s naming the
field or the key; a jwks_url fetched at creation from a JWKS server on loopback; responses held to the
OpenAPI document; key policies naming issuers, and keys shown with their issuers resolved."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.admin.issuerclient import run_issuers
from proxy.admin.openapi import openapi_document
from tests.attestations import b64, ed25519_signer, es256_signer, jwks, jwks_server, rs256_signer
from tests.clis import invoke
from tests.conformance import Conformance
from tests.harness import ADMIN_TOKEN, Gate, gate, settings_for

ED = ed25519_signer("ed-1")
ES = es256_signer("es-1")
RS = rs256_signer("rs-1")


@pytest.fixture
async def proxy(db_dsn: str, upstream: str) -> AsyncIterator[Gate]:
    async with gate(settings_for(db_dsn, upstream, None)) as g:
        yield g


def issuer(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "mdm-prod",
        "kind": "device",
        "issuer": "https://mdm.example",
        "audience": "signalgate",
        "algorithms": ["EdDSA", "ES256"],
        "jwks": jwks(ED, ES),
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


async def test_create_list_show_update_delete(proxy: Gate) -> None:
    status, created = await proxy.admin_call("POST", "/v1/issuers", json=issuer())
    assert status == 201, created
    assert [(k["kid"], k["kty"], k["alg"]) for k in created["keys"]] == [
        ("ed-1", "OKP", "EdDSA"),
        ("es-1", "EC", "ES256"),
    ]
    assert created["max_lifetime_s"] == 3600 and created["jwks"] == jwks(ED, ES)
    assert (await proxy.admin_call("GET", "/v1/issuers"))[1]["items"] == [created]
    assert (await proxy.admin_call("GET", "/v1/issuers/mdm-prod"))[1] == created
    status, updated = await proxy.admin_call(
        "PATCH", "/v1/issuers/mdm-prod", json={"jwks": jwks(ES), "max_lifetime_s": 600}
    )
    assert (
        status == 200 and [k["kid"] for k in updated["keys"]] == ["es-1"] and updated["max_lifetime_s"] == 600
    )
    assert updated["revision"] > created["revision"]
    # narrowing the algorithms: the stored keys must still fit them
    status, refused = await proxy.admin_call("PATCH", "/v1/issuers/mdm-prod", json={"algorithms": ["EdDSA"]})
    assert (status, refused["field"]) == (422, "jwks.keys[0]") and "'es-1'" in refused["error"]
    assert (await proxy.admin_call("DELETE", "/v1/issuers/mdm-prod"))[0] == 204
    assert (await proxy.admin_call("GET", "/v1/issuers/mdm-prod"))[0] == 404
    assert (await proxy.admin_call("DELETE", "/v1/issuers/mdm-prod"))[0] == 404


SMALL_RSA = {"kty": "RSA", "kid": "weak", "n": b64(b"\xc1" + bytes(127)), "e": "AQAB"}


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (
            issuer(jwks={"keys": [{"kty": "oct", "kid": "shared", "k": "c2VjcmV0"}]}),
            "jwks.keys[0]",
            "'shared' is a symmetric",
        ),
        (
            issuer(algorithms=["RS256"], jwks={"keys": [SMALL_RSA]}),
            "jwks.keys[0]",
            "'weak' is an RSA key of 1024 bits",
        ),
        (issuer(algorithms=["ES384"], jwks=jwks(ES)), "jwks.keys[0]", "kid 'es-1' (EC P-256) fits none"),
        (issuer(algorithms=["none"]), "algorithms[0]", "'none' is not one of"),
        (issuer(algorithms=["HS256"]), "algorithms[0]", "never allowed"),
        (issuer(algorithms=[]), "algorithms", "non-empty"),
        (issuer(jwks_url="https://mdm.example/jwks"), "jwks", "exactly one"),
        (issuer(jwks=None), "jwks", "exactly one"),
        (issuer(name="MDM Prod"), "name", "a-z 0-9"),
        (issuer(kind="laptop"), "kind", "device' or 'workload"),
        (issuer(max_lifetime_s=0), "max_lifetime_s", "1 to"),
        (issuer(jwks=None, jwks_url="ftp://mdm.example/jwks"), "jwks_url", "http"),
        (issuer(color="red"), "color", "unknown field"),
        ({"name": "x"}, "kind", "is required"),
    ],
)
async def test_bad_issuers_are_refused_naming_the_field(
    proxy: Gate, body: dict[str, Any], field: str, words: str
) -> None:
    status, refused = await proxy.admin_call("POST", "/v1/issuers", json=body)
    assert status == 422, refused
    assert refused["field"] == field and words in refused["error"], refused


async def test_one_issuer_per_kind_and_iss(proxy: Gate) -> None:
    assert (await proxy.admin_call("POST", "/v1/issuers", json=issuer()))[0] == 201
    status, refused = await proxy.admin_call("POST", "/v1/issuers", json=issuer(name="mdm-two"))
    assert (status, refused["reason"]) == (409, "conflict")
    status, _ = await proxy.admin_call("POST", "/v1/issuers", json=issuer(name="mdm-two", kind="workload"))
    assert status == 201  # the same iss for the other kind is another issuer


async def test_a_jwks_url_is_fetched_at_creation(proxy: Gate) -> None:
    async with jwks_server(jwks(RS), max_age=120) as server:
        body = issuer(name="gha", kind="workload", algorithms=["RS256"], jwks=None, jwks_url=server.url)
        status, created = await proxy.admin_call("POST", "/v1/issuers", json=body)
        assert status == 201, created
        assert server.fetches >= 1
        assert (
            created["keys"][0]["kid"] == "rs-1"
            and created["last_fetched_at"]
            and created["last_fetch_error"] is None
        )
        assert "jwks" not in created and created["jwks_url"] == server.url
        server.failing = True
        status, refused = await proxy.admin_call(
            "POST", "/v1/issuers", json={**body, "name": "gha-2", "issuer": "x"}
        )
        assert (status, refused["field"]) == (422, "jwks_url") and "HTTP 503" in refused["error"]
        server.failing = False
        server.keys = {"keys": [SMALL_RSA]}
        status, refused = await proxy.admin_call(
            "POST", "/v1/issuers", json={**body, "name": "gha-3", "issuer": "y"}
        )
        assert (status, refused["field"]) == (422, "jwks_url.keys[0]") and "1024 bits" in refused["error"]
    status, refused = await proxy.admin_call(
        "POST", "/v1/issuers", json={**body, "name": "gha-4", "issuer": "z"}
    )
    assert (status, refused["field"]) == (422, "jwks_url") and "cannot fetch" in refused["error"]


async def test_key_policies_name_existing_issuers_and_keys_show_them_resolved(proxy: Gate) -> None:
    assert (await proxy.admin_call("POST", "/v1/issuers", json=issuer()))[0] == 201
    status, refused = await proxy.admin_call(
        "POST", "/v1/keys", json={"name": "k", "owner": "o", "policy": {"device": {"issuers": ["mdm-test"]}}}
    )
    assert (status, refused["field"]) == (
        422,
        "policy.device.issuers[0]",
    ) and "no issuer named 'mdm-test'" in refused["error"]
    status, refused = await proxy.admin_call(
        "POST",
        "/v1/keys",
        json={"name": "k", "owner": "o", "policy": {"workload": {"issuers": ["mdm-prod"]}}},
    )
    assert (status, refused["field"]) == (422, "policy.workload.issuers[0]") and "device issuer" in refused[
        "error"
    ]
    key = await proxy.create_key(policy={"device": {"issuers": ["mdm-prod"]}})
    shown = (await proxy.admin_call("GET", f"/v1/keys/{key['id']}"))[1]
    assert shown["issuers"]["mdm-prod"]["issuer"] == "https://mdm.example"
    assert [k["kid"] for k in shown["issuers"]["mdm-prod"]["keys"]] == ["ed-1", "es-1"]
    await proxy.admin_call("DELETE", "/v1/issuers/mdm-prod")
    assert (await proxy.admin_call("GET", f"/v1/keys/{key['id']}"))[1]["issuers"] == {"mdm-prod": None}
    plain = await proxy.create_key()
    assert "issuers" not in (await proxy.admin_call("GET", f"/v1/keys/{plain['id']}"))[1]


async def test_issuer_answers_match_the_openapi_document(proxy: Gate) -> None:
    spec = Conformance(openapi_document())
    admin, base = proxy.admin, proxy.runtime.admin_url
    many, one = "/v1/issuers", "/v1/issuers/{name}"
    await spec.check(await admin.post(f"{base}{many}", json=issuer()), "POST", many)
    await spec.check(await admin.post(f"{base}{many}", json=issuer()), "POST", many)  # 409
    await spec.check(await admin.post(f"{base}{many}", json=issuer(algorithms=["HS256"])), "POST", many)
    await spec.check(await admin.get(f"{base}{many}"), "GET", many)
    await spec.check(await admin.get(f"{base}/v1/issuers/mdm-prod"), "GET", one)
    await spec.check(await admin.patch(f"{base}/v1/issuers/mdm-prod", json={"audience": "sg"}), "PATCH", one)
    await spec.check(await admin.get(f"{base}/v1/issuers/nope"), "GET", one)
    key = await proxy.create_key(policy={"device": {"issuers": ["mdm-prod"]}})
    await spec.check(await admin.get(f"{base}/v1/keys/{key['id']}"), "GET", "/v1/keys/{id}")
    await spec.check(await admin.delete(f"{base}/v1/issuers/mdm-prod"), "DELETE", one)
    await spec.check(await admin.get(f"{base}/v1/keys/{key['id']}"), "GET", "/v1/keys/{id}")
    assert {status for _, _, status in spec.seen} >= {200, 201, 204, 404, 409, 422}


async def test_the_cli_manages_issuers(proxy: Gate, tmp_path: Any) -> None:
    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps(jwks(ED)))
    code, out, err = await invoke(
        run_issuers, proxy,
        "create", "--name", "mdm-prod", "--kind", "device", "--issuer", "https://mdm.example",
        "--audience", "signalgate", "--algorithm", "EdDSA", "--jwks", f"@{keys}",
    )  # fmt: skip
    assert code == 0, err
    assert "Created issuer mdm-prod." in out and "ed-1 OKP EdDSA" in out
    code, out, _ = await invoke(run_issuers, proxy, "list")
    assert code == 0 and out.splitlines()[1].split() == [
        "mdm-prod",
        "device",
        "https://mdm.example",
        "1",
        "inline",
    ]
    code, out, _ = await invoke(run_issuers, proxy, "update", "mdm-prod", "--audience", "sg", "--json")
    assert code == 0 and json.loads(out)["audience"] == "sg"
    code, out, err = await invoke(run_issuers, proxy, "update", "mdm-prod", "--algorithm", "ES256")
    assert code == 1 and "jwks.keys[0]" in err and "(HTTP 422)" in err
    code, out, _ = await invoke(run_issuers, proxy, "show", "mdm-prod")
    assert code == 0 and "audience:" in out and "sg" in out
    code, _, err = await invoke(run_issuers, proxy, "create", "--name", "x")
    assert code == 2 and "required" in err
    code, out, _ = await invoke(run_issuers, proxy, "delete", "mdm-prod")
    assert code == 0 and "refused from now on" in out
    code, _, err = await invoke(run_issuers, proxy, "show", "mdm-prod")
    assert code == 1 and "no issuer named 'mdm-prod'" in err


async def test_issuer_writes_leave_audit_lines(proxy: Gate, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="signalgate.audit")
    assert (await proxy.admin_call("POST", "/v1/issuers", json=issuer()))[0] == 201
    assert (await proxy.admin_call("PATCH", "/v1/issuers/mdm-prod", json={"max_lifetime_s": 600}))[0] == 200
    assert (await proxy.admin_call("DELETE", "/v1/issuers/mdm-prod"))[0] == 204
    lines = [r.getMessage() for r in caplog.records if r.name == "signalgate.audit"]
    by = f"by admin token {hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()[:8]}: "
    assert lines[0].startswith(f'issuer mdm-prod created {by}kind null -> "device"; ')
    assert lines[1] == f"issuer mdm-prod updated {by}max_lifetime_s 3600 -> 600"
    assert lines[2].startswith(f'issuer mdm-prod deleted {by}kind "device" -> null; ')
    assert len(lines) == 3 and not any(ADMIN_TOKEN in line for line in lines)
