"""The OpenAPI document is well formed, matches the admin router exactly, and real answers fit it."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator

from proxy.admin.api import make_admin_app
from proxy.admin.openapi import openapi_document
from proxy.db.store import Store
from tests.conformance import Conformance, resolve

TOKEN = "openapi-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# The parts of the OpenAPI 3.1 meta-schema this document uses, strict enough to catch misspelt keys.
_REF = {"type": "object", "required": ["$ref"], "properties": {"$ref": {"type": "string"}}}
_MEDIA = {
    "type": "object",
    "patternProperties": {r"^[a-z]+/[a-z0-9.+-]+$": {"type": "object", "required": ["schema"]}},
    "additionalProperties": False,
}
_RESPONSE = {
    "oneOf": [
        _REF,
        {
            "type": "object",
            "required": ["description"],
            "properties": {
                "description": {"type": "string"},
                "headers": {"type": "object"},
                "content": _MEDIA,
            },
            "additionalProperties": False,
        },
    ]
}
_PARAMETER = {
    "type": "object",
    "required": ["name", "in", "schema"],
    "properties": {
        "name": {"type": "string"},
        "in": {"enum": ["query", "header", "path", "cookie"]},
        "required": {"type": "boolean"},
        "description": {"type": "string"},
        "schema": {"type": "object"},
    },
    "additionalProperties": False,
}
_OPERATION = {
    "type": "object",
    "required": ["operationId", "responses"],
    "properties": {
        "operationId": {"type": "string"},
        "summary": {"type": "string"},
        "security": {"type": "array", "items": {"type": "object"}},
        "parameters": {"type": "array", "items": _PARAMETER},
        "requestBody": {
            "type": "object",
            "required": ["content"],
            "properties": {"required": {"type": "boolean"}, "content": _MEDIA},
            "additionalProperties": False,
        },
        "responses": {
            "type": "object",
            "minProperties": 1,
            "patternProperties": {r"^([1-5][0-9][0-9]|default)$": _RESPONSE},
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
OPENAPI_SUBSET = {
    "type": "object",
    "required": ["openapi", "info", "paths", "components"],
    "properties": {
        "openapi": {"type": "string", "pattern": r"^3\.1\.\d+$"},
        "jsonSchemaDialect": {"type": "string"},
        "info": {
            "type": "object",
            "required": ["title", "version"],
            "properties": {"title": {"type": "string"}, "version": {"type": "string"}},
        },
        "security": {"type": "array", "items": {"type": "object"}},
        "paths": {
            "type": "object",
            "patternProperties": {
                "^/": {
                    "type": "object",
                    "properties": {"parameters": {"type": "array", "items": _PARAMETER}}
                    | {method: _OPERATION for method in METHODS},
                    "additionalProperties": False,
                }
            },
            "additionalProperties": False,
        },
        "components": {
            "type": "object",
            "properties": {
                "schemas": {"type": "object", "additionalProperties": {"type": "object"}},
                "responses": {"type": "object", "additionalProperties": _RESPONSE},
                "headers": {"type": "object"},
                "securitySchemes": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {"enum": ["apiKey", "http", "mutualTLS", "oauth2", "openIdConnect"]}
                        },
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}


@pytest.fixture
def document() -> dict[str, Any]:
    return openapi_document()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def walk_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from walk_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_refs(item)


def schema_locations(document: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every place a JSON Schema sits in the document, with a readable location."""
    for name, schema in document["components"]["schemas"].items():
        yield f"components.schemas.{name}", schema
    for name, header in document["components"]["headers"].items():
        yield f"components.headers.{name}", header["schema"]
    responses = list(document["components"]["responses"].items())
    for method, path, operation in operations(document):
        for parameter in operation.get("parameters", []) + document["paths"][path].get("parameters", []):
            yield f"{method} {path} parameter {parameter['name']}", parameter["schema"]
        for media, content in operation.get("requestBody", {}).get("content", {}).items():
            yield f"{method} {path} request {media}", content["schema"]
        responses.extend((f"{method} {path} {code}", r) for code, r in operation["responses"].items())
    for where, response in responses:
        for media, content in response.get("content", {}).items():
            yield f"{where} {media}", content["schema"]


def test_document_has_the_openapi_31_structure(document: dict[str, Any]) -> None:
    Draft202012Validator.check_schema(OPENAPI_SUBSET)
    errors = sorted(Draft202012Validator(OPENAPI_SUBSET).iter_errors(document), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The admin token",
    }
    assert document["security"] == [{"bearer": []}]
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))
    for name in ("Key", "KeyCreated", "KeyList", "KeyCreate", "KeyPatch", "Policy", "Error"):
        assert name in document["components"]["schemas"]


def test_every_ref_resolves_and_every_template_parameter_is_declared(document: dict[str, Any]) -> None:
    for ref in walk_refs(document):
        assert isinstance(resolve(document, ref), dict), ref
    for method, path, operation in operations(document):
        declared = {
            p["name"]
            for p in operation.get("parameters", []) + document["paths"][path].get("parameters", [])
            if p["in"] == "path"
        }
        assert declared == set(re.findall(r"\{(\w+)\}", path)), (method, path)


def test_every_schema_is_a_valid_2020_12_schema(document: dict[str, Any]) -> None:
    locations = list(schema_locations(document))
    assert len(locations) > 30
    for where, schema in locations:
        try:
            Draft202012Validator.check_schema(schema)
        except Exception as exc:
            pytest.fail(f"{where}: {exc}")


def test_public_operations_need_no_token(document: dict[str, Any]) -> None:
    public = {path for method, path, op in operations(document) if op.get("security") == []}
    assert public == {"/healthz", "/readyz", "/v1/openapi.json", "/metrics"}


# --- the document against the running app -------------------------------------------------------


@pytest.fixture
async def client(store: Store) -> AsyncIterator[TestClient[Any, Any]]:
    app = make_admin_app(store=store, token_hash=hashlib.sha256(TOKEN.encode()).digest())
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as test_client:
        yield test_client


async def test_router_and_document_list_the_same_routes(client: TestClient, document: dict[str, Any]) -> None:
    routed = {(route.method, route.resource.canonical) for route in client.app.router.routes()}  # type: ignore[union-attr]
    documented = {(method, path) for method, path, _ in operations(document)}
    assert routed == documented


async def test_real_responses_match_their_documented_schemas(
    client: TestClient, document: dict[str, Any]
) -> None:
    spec = Conformance(document)
    keys_path, key_path = "/v1/keys", "/v1/keys/{id}"
    good = {
        "name": "conformance",
        "owner": "team-a",
        "labels": {"env": "prod"},
        "policy": {
            "networks": {"allow": ["10.0.0.0/8"], "deny": ["10.1.0.0/16"]},
            "regions": {"allow": ["DE"], "unknown": "deny"},
            "routes": [{"methods": ["GET"], "path": "/v1/**"}],
        },
        "not_before": "2026-01-01T00:00:00Z",
        "expires_at": "2030-01-01T00:00:00Z",
    }
    created = await spec.check(await client.post(keys_path, json=good, headers=AUTH), "POST", keys_path)
    assert created["key"].startswith("sg_")
    key_id = created["id"]
    await spec.check(
        await client.post(keys_path, json={"name": "second", "owner": "o"}, headers=AUTH), "POST", keys_path
    )

    page = await spec.check(
        await client.get(keys_path, params={"limit": "1"}, headers=AUTH), "GET", keys_path
    )
    assert len(page["items"]) == 1 and page["next"] is not None
    await spec.check(await client.get(keys_path, headers=AUTH), "GET", keys_path)
    await spec.check(await client.get(f"/v1/keys/{key_id}", headers=AUTH), "GET", key_path)
    await spec.check(
        await client.patch(f"/v1/keys/{key_id}", json={"status": "suspended"}, headers=AUTH),
        "PATCH",
        key_path,
    )
    await spec.check(
        await client.post(f"/v1/keys/{key_id}/revoke", headers=AUTH), "POST", "/v1/keys/{id}/revoke"
    )
    conflict = await client.patch(f"/v1/keys/{key_id}", json={"status": "active"}, headers=AUTH)
    assert (await spec.check(conflict, "PATCH", key_path))["reason"] == "conflict"

    invalid = await client.post(keys_path, json={"name": "x", "owner": "o", "nope": 1}, headers=AUTH)
    assert (await spec.check(invalid, "POST", keys_path))["field"] == "nope"
    bad_json = await client.post(keys_path, data=b"{", headers={**AUTH, "Content-Type": "application/json"})
    assert (await spec.check(bad_json, "POST", keys_path))["reason"] == "invalid_json"
    not_json = await client.post(keys_path, data=b"name=x", headers=AUTH)  # application/octet-stream
    assert (await spec.check(not_json, "POST", keys_path))["reason"] == "unsupported_media_type"
    unauthorized = await client.get(keys_path)
    assert (await spec.check(unauthorized, "GET", keys_path))["reason"] == "unauthorized"
    missing = await client.get("/v1/keys/0123456789abcdef", headers=AUTH)
    assert (await spec.check(missing, "GET", key_path))["reason"] == "not_found"
    wrong_method = await client.put(keys_path, headers=AUTH)
    assert (await spec.check(wrong_method, "GET", keys_path))["reason"] == "method_not_allowed"

    await spec.check(await client.get("/healthz"), "GET", "/healthz")
    await spec.check(await client.get("/readyz"), "GET", "/readyz")
    served = await spec.check(await client.get("/v1/openapi.json"), "GET", "/v1/openapi.json")
    assert served == document
    await spec.check(await client.delete(f"/v1/keys/{key_id}", headers=AUTH), "DELETE", key_path)

    assert {status for _, _, status in spec.seen} >= {200, 201, 204, 400, 401, 404, 405, 409, 422}


async def test_job_and_rotation_answers_match_their_documented_schemas(
    client: TestClient, document: dict[str, Any]
) -> None:
    spec = Conformance(document)
    jobs_path, job_path, close_path = "/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/close"
    rotate_path, keys_path = "/v1/keys/{id}/rotate", "/v1/keys"
    deadline = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    body = {"name": "rotation", "owner": "secops", "deadline": deadline}
    job = await spec.check(await client.post(jobs_path, json=body, headers=AUTH), "POST", jobs_path)
    key = await spec.check(
        await client.post(
            keys_path,
            json={"name": "w", "owner": "secops", "job_id": job["id"], "can_close_job": True, "ttl_s": 600},
            headers=AUTH,
        ),
        "POST",
        keys_path,
    )
    assert key["job_id"] == job["id"] and key["uses_left"] is None
    rotated = await spec.check(
        await client.post(f"/v1/keys/{key['id']}/rotate", json={"grace_s": 60}, headers=AUTH),
        "POST",
        rotate_path,
    )
    assert rotated["key"] != key["key"] and rotated["previous_valid_until"] is not None
    await spec.check(await client.post(f"/v1/keys/{key['id']}/rotate", headers=AUTH), "POST", rotate_path)
    bad = await client.post(f"/v1/keys/{key['id']}/rotate", json={"grace_s": -1}, headers=AUTH)
    assert (await spec.check(bad, "POST", rotate_path))["field"] == "grace_s"

    listed = await spec.check(
        await client.get(jobs_path, params={"limit": "1"}, headers=AUTH), "GET", jobs_path
    )
    assert [j["id"] for j in listed["items"]] == [job["id"]]
    shown = await spec.check(await client.get(f"/v1/jobs/{job['id']}", headers=AUTH), "GET", job_path)
    assert [k["id"] for k in shown["keys"]] == [key["id"]]
    closed = await spec.check(
        await client.post(f"/v1/jobs/{job['id']}/close", headers=AUTH), "POST", close_path
    )
    assert closed["keys_revoked"] == [key["id"]]
    revoked = await client.post(f"/v1/keys/{key['id']}/rotate", json={}, headers=AUTH)
    assert (await spec.check(revoked, "POST", rotate_path))["reason"] == "conflict"
    late = await client.post(keys_path, json={"name": "x", "owner": "o", "job_id": job["id"]}, headers=AUTH)
    assert (await spec.check(late, "POST", keys_path))["reason"] == "conflict"
    past = await client.post(jobs_path, json={**body, "deadline": "2020-01-01T00:00:00Z"}, headers=AUTH)
    assert (await spec.check(past, "POST", jobs_path))["field"] == "deadline"
    missing = await client.get("/v1/jobs/0123456789abcdef", headers=AUTH)
    assert (await spec.check(missing, "GET", job_path))["reason"] == "not_found"
    missing = await client.post("/v1/jobs/0123456789abcdef/close", headers=AUTH)
    assert (await spec.check(missing, "POST", close_path))["reason"] == "not_found"
    assert {status for _, _, status in spec.seen} >= {200, 201, 404, 409, 422}
