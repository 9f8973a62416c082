"""The ``/v1/issuers`` part of the admin API's OpenAPI document (``proxy.admin.openapi``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.admin.issuerbodies import MAX_LIFETIME, MAX_TEXT
from proxy.core.jwk import JOSE_ALGORITHMS

__all__ = ["issuer_paths", "issuer_schemas"]

_NAME = {"type": "string", "pattern": "^[a-z0-9-]{1,64}$", "description": "Local handle policies refer to"}
_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT}
_ALGORITHMS = {
    "type": "array",
    "minItems": 1,
    "uniqueItems": True,
    "items": {"type": "string", "enum": list(JOSE_ALGORITHMS)},
    "description": "JWS algorithms its tokens may use (no 'none', no HS*)",
}
_LIFETIME = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_LIFETIME,
    "default": 3600,
    "description": "Longest token lifetime (exp - iat) accepted",
}
_JWKS = {
    "type": "object",
    "description": "A JWK set of public keys: RSA of 2048 bits or more, EC P-256/P-384, Ed25519",
    "properties": {"keys": {"type": "array", "minItems": 1, "items": {"type": "object"}}},
    "required": ["keys"],
}
_URL = {"type": "string", "pattern": "^https?://", "description": "Fetched by signalgate, never from a token"}
_STAMP = {"type": ["string", "null"], "format": "date-time"}


def issuer_schemas(ref: Callable[[str], dict[str, str]]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "name": _NAME,
        "kind": {"type": "string", "enum": ["device", "workload"]},
        "issuer": {**_TEXT, "description": "The exact 'iss' of its tokens"},
        "audience": {**_TEXT, "description": "What 'aud' must contain (unless the policy binds to the key)"},
        "algorithms": _ALGORITHMS,
        "max_lifetime_s": _LIFETIME,
        "keys": {"type": "array", "items": ref("IssuerKey")},
        "created_at": _STAMP,
        "updated_at": _STAMP,
        "revision": {"type": "integer", "minimum": 0},
        "jwks": _JWKS,
        "jwks_url": _URL,
        "last_fetched_at": {**_STAMP, "description": "Last successful fetch of jwks_url"},
        "last_fetch_error": {"type": ["string", "null"], "description": "Why the last fetch failed"},
        "next_fetch_at": {**_STAMP, "description": "When the set is due again (Cache-Control, bounded)"},
        "ignored_keys": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Fetched keys left out",
        },
    }
    writable = ("kind", "issuer", "audience", "algorithms", "max_lifetime_s", "jwks", "jwks_url")
    return {
        "IssuerKey": {
            "type": "object",
            "properties": {
                "kid": {"type": ["string", "null"]},
                "kty": {"type": "string", "enum": ["RSA", "EC", "OKP"]},
                "crv": {"type": ["string", "null"]},
                "alg": {"type": "string", "description": "The algorithms it verifies"},
                "bits": {"type": ["integer", "null"]},
            },
            "required": ["kid", "kty", "crv", "alg", "bits"],
            "additionalProperties": False,
        },
        "Issuer": {
            "type": "object",
            "description": "A trusted signer of device or workload attestations; either jwks or jwks_url",
            "properties": properties,
            "required": [
                "name",
                "kind",
                "issuer",
                "audience",
                "algorithms",
                "max_lifetime_s",
                "keys",
                "created_at",
                "updated_at",
                "revision",
            ],
            "additionalProperties": False,
        },
        "IssuerList": {
            "type": "object",
            "properties": {"items": {"type": "array", "items": ref("Issuer")}},
            "required": ["items"],
            "additionalProperties": False,
        },
        "IssuerCreate": {
            "type": "object",
            "properties": {"name": _NAME, **{name: properties[name] for name in writable}},
            "required": ["name", "kind", "issuer", "audience", "algorithms"],
            "oneOf": [{"required": ["jwks"]}, {"required": ["jwks_url"]}],
            "additionalProperties": False,
        },
        "IssuerPatch": {
            "type": "object",
            "description": "Only the fields given change; jwks replaces a jwks_url and the reverse",
            "properties": {name: properties[name] for name in writable},
            "minProperties": 1,
            "additionalProperties": False,
        },
        "ResolvedIssuers": {
            "type": "object",
            "description": "The issuers the key's policy names, as they are now (null: no such issuer)",
            "additionalProperties": {"oneOf": [{"type": "null"}, {"type": "object"}]},
        },
    }


def issuer_paths(
    json: Callable[..., dict[str, Any]],
    ref: Callable[[str], dict[str, str]],
    body: Callable[[str], dict[str, Any]],
    errors: Callable[..., dict[str, Any]],
    deleted: dict[str, Any],
) -> dict[str, Any]:
    name = {"name": "name", "in": "path", "required": True, "schema": _NAME}
    return {
        "/v1/issuers": {
            "post": {
                "operationId": "createIssuer",
                "summary": "Register an issuer; a jwks_url is fetched now (a failure is a 422)",
                "requestBody": body("IssuerCreate"),
                "responses": {
                    "201": json(ref("Issuer"), "Created", write=True),
                    **errors("400", "401", "409", "413", "415", "422", "503"),
                },
            },
            "get": {
                "operationId": "listIssuers",
                "summary": "List issuers by name",
                "responses": {"200": json(ref("IssuerList"), "Every issuer"), **errors("401", "422", "503")},
            },
        },
        "/v1/issuers/{name}": {
            "parameters": [name],
            "get": {
                "operationId": "getIssuer",
                "summary": "Show one issuer: its keys (kid, kty, alg) and, for a URL, its last fetch",
                "responses": {"200": json(ref("Issuer"), "The issuer"), **errors("401", "404", "503")},
            },
            "patch": {
                "operationId": "updateIssuer",
                "summary": "Change an issuer; tokens signed by a key it no longer has are refused",
                "requestBody": body("IssuerPatch"),
                "responses": {
                    "200": json(ref("Issuer"), "The updated issuer", write=True),
                    **errors("400", "401", "404", "409", "413", "415", "422", "503"),
                },
            },
            "delete": {
                "operationId": "deleteIssuer",
                "summary": "Delete an issuer: its tokens are refused from the next request on",
                "responses": {"204": deleted, **errors("401", "404", "503")},
            },
        },
    }
