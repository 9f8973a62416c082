"""The admin API described as an OpenAPI 3.1 document, built in code so tests can hold it to the app.

Kept as a plain dict builder (no framework introspection): the tests check that every route the admin
app registers is documented here and nothing else is, and that real responses validate against these
schemas, so the document cannot quietly drift from the code. OpenAPI 3.1 schemas are JSON Schema
2020-12, which is what the tests validate them with.
"""

from __future__ import annotations

import copy
from typing import Any

from proxy.admin import openapi_jobs
from proxy.admin.openapi_base import APPLIED as _APPLIED
from proxy.admin.openapi_base import KEY_ID as _KEY_ID
from proxy.admin.openapi_base import NAME as _NAME
from proxy.admin.openapi_base import OPTIONAL_TIMESTAMP as _OPTIONAL_TIMESTAMP
from proxy.admin.openapi_base import OWNER as _OWNER
from proxy.admin.openapi_base import TIMESTAMP as _TIMESTAMP
from proxy.admin.openapi_base import body as _body
from proxy.admin.openapi_base import error as _error
from proxy.admin.openapi_base import errors as _errors
from proxy.admin.openapi_base import json_answer as _json
from proxy.admin.openapi_base import page_parameters as _page_parameters
from proxy.admin.openapi_base import ref as _ref
from proxy.admin.openapi_issuers import issuer_paths, issuer_schemas
from proxy.admin.openapi_ops import operations_paths, operations_schemas
from proxy.core.policy import policy_schema

__all__ = ["ERROR_REASONS", "openapi_document"]

_VERSION = {"type": "string", "description": "The version of the signalgate serving this answer"}

ERROR_REASONS = (
    "invalid_json",
    "body_too_large",
    "unsupported_media_type",
    "validation_failed",
    "not_found",
    "conflict",
    "unauthorized",
    "method_not_allowed",
    "store_unavailable",
    "internal_error",
    "http_error",
)


def _schemas() -> dict[str, Any]:
    key_properties: dict[str, Any] = {
        "id": _KEY_ID,
        "name": _NAME,
        "owner": _OWNER,
        "status": {"type": "string", "enum": ["active", "suspended", "revoked"]},
        "labels": _ref("Labels"),
        "policy": _ref("Policy"),
        "created_at": _TIMESTAMP,
        "updated_at": _TIMESTAMP,
        "not_before": _OPTIONAL_TIMESTAMP,
        "expires_at": _OPTIONAL_TIMESTAMP,
        "revision": {"type": "integer", "minimum": 0},
        **openapi_jobs.KEY_PROPERTIES,
        "candidate_policy": {
            "oneOf": [_ref("Policy"), {"type": "null"}],
            "description": "Evaluated beside the policy on every request and never enforced (dry run)",
        },
        "candidate_since": {**_OPTIONAL_TIMESTAMP, "description": "When the current candidate was set"},
    }
    key = {
        "type": "object",
        "description": "An API key as the admin API shows it: never the secret or its hash.",
        "properties": {**key_properties, "issuers": _ref("ResolvedIssuers")},  # shown by GET only
        "required": list(key_properties),
        "additionalProperties": False,
    }
    created_properties = {
        **copy.deepcopy(key_properties),
        "key": {
            "type": "string",
            "pattern": "^sg_[0-9a-f]{16}_[0-9a-f]{48}$",
            "description": "The full key. Shown only in this response; it cannot be retrieved again.",
        },
    }
    return {
        "Key": key,
        "KeyCreated": {
            "type": "object",
            "description": "A newly created key, with the full key shown once.",
            "properties": created_properties,
            "required": list(created_properties),
            "additionalProperties": False,
        },
        "KeyList": {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": _ref("Key")},
                "next": {
                    "type": ["string", "null"],
                    "description": "Pass as ?after= for the next page; null on the last page",
                },
            },
            "required": ["items", "next"],
            "additionalProperties": False,
        },
        "KeyCreate": {
            "type": "object",
            "properties": {
                "name": _NAME,
                "owner": _OWNER,
                "policy": _ref("Policy"),
                "candidate_policy": {"oneOf": [_ref("Policy"), {"type": "null"}]},
                "labels": _ref("Labels"),
                "not_before": _OPTIONAL_TIMESTAMP,
                "expires_at": {
                    **_OPTIONAL_TIMESTAMP,
                    "description": "RFC 3339 or null; must be in the future unless allow_expired",
                },
                "allow_expired": {
                    "type": "boolean",
                    "default": False,
                    "description": "Create the key even if expires_at has passed (tests); otherwise 422",
                },
                **openapi_jobs.KEY_CREATE_PROPERTIES,
            },
            "required": ["name", "owner"],
            "additionalProperties": False,
        },
        "KeyPatch": {
            "type": "object",
            "description": "Only the fields given change. Revocation is final: use the revoke endpoint.",
            "properties": {
                "name": _NAME,
                "labels": _ref("Labels"),
                "policy": _ref("Policy"),
                "candidate_policy": {
                    "oneOf": [_ref("Policy"), {"type": "null"}],
                    "description": "Set (or replace) the dry-run policy; null removes it",
                },
                "status": {"type": "string", "enum": ["active", "suspended"]},
                "not_before": _OPTIONAL_TIMESTAMP,
                "expires_at": _OPTIONAL_TIMESTAMP,
            },
            "minProperties": 1,
            "additionalProperties": False,
        },
        "Labels": {
            "type": "object",
            "maxProperties": 64,
            "propertyNames": {"pattern": "^[a-zA-Z0-9_.\\-/]{1,63}$"},
            "additionalProperties": {"type": "string", "maxLength": 256},
        },
        "Policy": dict(policy_schema()),
        "Error": {
            "type": "object",
            "properties": {
                "error": {"type": "string", "description": "Human message naming what was wrong"},
                "reason": {"type": "string", "enum": list(ERROR_REASONS)},
                "field": {"type": "string", "description": "Path of the rejected field (422 only)"},
            },
            "required": ["error", "reason"],
            "additionalProperties": False,
        },
        "Health": {
            "type": "object",
            "properties": {"status": {"const": "ok"}, "version": _VERSION},
            "required": ["status", "version"],
            "additionalProperties": False,
        },
        **issuer_schemas(_ref),
        "Readiness": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not_ready"]},
                "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
                "version": _VERSION,
            },
            "required": ["status", "version"],
            "additionalProperties": False,
        },
    }


_ERRORS = {
    "400": "The body is not valid JSON (reason invalid_json)",
    "401": "Missing or wrong admin token (reason unauthorized)",
    "404": "No key (issuer) with this id (name), or a malformed one (reason not_found)",
    "409": "The change conflicts with the current state, e.g. a revoked key's status, an issuer's "
    "(kind, issuer) taken by another (reason conflict)",
    "413": "The body is larger than the configured limit (reason body_too_large)",
    "415": "The body is not application/json, or its charset is not UTF-8 (reason unsupported_media_type)",
    "422": "A field is invalid; 'field' names it (reason validation_failed)",
    "503": "The key store is unavailable (reason store_unavailable)",
}


_DELETED = {
    "description": "Deleted",
    "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}, **_APPLIED},
}


def _paths() -> dict[str, Any]:
    public: list[dict[str, list[str]]] = []
    key_id = {"name": "id", "in": "path", "required": True, "schema": _KEY_ID}
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: the process answers",
                "security": public,
                "responses": {"200": _json(_ref("Health"), "Alive"), **_errors()},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: the store and every other dependency answer",
                "security": public,
                "responses": {
                    "200": _json(_ref("Readiness"), "Ready"),
                    "503": _json(_ref("Readiness"), "Not ready; 'checks' says which check failed"),
                    **_errors(),
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": public,
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document"), **_errors()},
            }
        },
        "/v1/keys": {
            "post": {
                "operationId": "createKey",
                "summary": "Create a key; the full key is in the response and never again",
                "requestBody": _body("KeyCreate"),
                "responses": {
                    "201": _json(_ref("KeyCreated"), "Created", write=True),
                    **_errors("400", "401", "413", "415", "422", "503"),
                },
            },
            "get": {
                "operationId": "listKeys",
                "summary": "List keys ordered by id, one page at a time",
                "parameters": _page_parameters(["active", "suspended", "revoked"]),
                "responses": {"200": _json(_ref("KeyList"), "One page"), **_errors("401", "422", "503")},
            },
        },
        "/v1/keys/{id}": {
            "parameters": [key_id],
            "get": {
                "operationId": "getKey",
                "summary": "Show one key",
                "responses": {"200": _json(_ref("Key"), "The key"), **_errors("401", "404", "503")},
            },
            "patch": {
                "operationId": "updateKey",
                "summary": "Change name, labels, policy, validity window, or suspend / resume",
                "requestBody": _body("KeyPatch"),
                "responses": {
                    "200": _json(_ref("Key"), "The updated key", write=True),
                    **_errors("400", "401", "404", "409", "413", "415", "422", "503"),
                },
            },
            "delete": {
                "operationId": "deleteKey",
                "summary": "Delete a key and its record",
                "responses": {"204": _DELETED, **_errors("401", "404", "503")},
            },
        },
        "/v1/keys/{id}/revoke": {
            "parameters": [key_id],
            "post": {
                "operationId": "revokeKey",
                "summary": "Revoke a key for good (idempotent)",
                "responses": {
                    "200": _json(_ref("Key"), "The revoked key", write=True),
                    **_errors("401", "404", "503"),
                },
            },
        },
        **issuer_paths(_json, _ref, _body, _errors, _DELETED),
    }


def openapi_document(version: str = "unknown") -> dict[str, Any]:
    """A fresh copy of the document each call, so callers may change theirs freely; ``version`` is the
    installed signalgate's (``info.version``)."""
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "signalgate admin API",
            "version": version,
            "description": "Manage signalgate API keys, attestation issuers and jobs; read the decision "
            "log, try candidate policies, explain decisions, scrape metrics. "
            "Errors are JSON: {error, reason, field?}.",
        },
        "security": [{"bearer": []}],
        "paths": {**_paths(), **openapi_jobs.paths(), **operations_paths()},
        "components": {
            "schemas": {**_schemas(), **openapi_jobs.schemas(), **operations_schemas()},
            "responses": {f"E{code}": _error(text) for code, text in _ERRORS.items()},
            "headers": {
                "RequestId": {
                    "description": "Echoes a well-formed incoming X-Request-Id or a new one",
                    "schema": {"type": "string"},
                },
                "Applied": {
                    "description": "all-workers: every worker of this instance enforced the write before "
                    "this answer; pending: not within 1 s (a worker's change feed is down; it catches up "
                    "on reconnect and fails closed after max_stale meanwhile)",
                    "schema": {"type": "string", "enum": ["all-workers", "pending"]},
                },
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "The admin token"}
            },
        },
    }
    return copy.deepcopy(document)
