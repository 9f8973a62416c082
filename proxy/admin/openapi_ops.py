"""The OpenAPI description of the operators' endpoints (``proxy.admin.operations``): the decision log,
candidate policies, explain and metrics. Merged into the document by ``proxy.admin.openapi``."""

from __future__ import annotations

from typing import Any

from proxy.admin.openapi_base import KEY_ID, OWNER, TIMESTAMP, body, errors, json_answer, ref
from proxy.core.model import Reason

__all__ = ["operations_paths", "operations_schemas"]

_REASON = {"type": "string", "enum": [str(reason) for reason in Reason]}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}
_OUTCOME = {"type": "string", "enum": ["agree", "would_allow", "would_deny"]}
_REQUEST_ID = {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def _decision_value() -> dict[str, Any]:
    return _object(
        {
            "allowed": {"type": "boolean"},
            "reason": _REASON,
            "detail": {"type": "string"},
            "status": {"type": "integer"},
        }
    )


def operations_schemas() -> dict[str, Any]:
    part = _object({"part": {"type": "string"}, **_decision_value()["properties"]})
    return {
        "Decision": _object(
            {
                "request_id": {"type": "string"},
                "at": TIMESTAMP,
                "key_id": {"type": ["string", "null"], "pattern": "^[0-9a-f]{16}$"},
                "owner": _NULLABLE_TEXT,
                "client_ip": _NULLABLE_TEXT,
                "country": _NULLABLE_TEXT,
                "device_subject": {
                    **_NULLABLE_TEXT,
                    "description": "issuer:sub of the verified device attestation",
                },
                "workload_subject": {
                    **_NULLABLE_TEXT,
                    "description": "issuer:sub of the verified workload attestation",
                },
                "method": {"type": "string"},
                "path": {"type": "string", "description": "Normalised (a refused raw path: as received)"},
                "decision": {"type": "string", "enum": ["allow", "deny"]},
                "reason": _REASON,
                "detail": _NULLABLE_TEXT,
                "policy_revision": {
                    **_NULLABLE_INT,
                    "description": "The key record's revision it was made under",
                },
                "status": {"type": "integer", "description": "The status the client got"},
                "upstream_status": _NULLABLE_INT,
                "latency_ms": {"type": "number"},
                "upstream_ms": {"type": ["number", "null"]},
                "candidate": {
                    "type": ["string", "null"],
                    "enum": ["agree", "would_allow", "would_deny", None],
                },
                "candidate_reason": {"type": ["string", "null"]},
                "candidate_detail": _NULLABLE_TEXT,
                "sample_rate": {
                    "type": "number",
                    "description": "Below 1 for an allowed decision kept by sampling: it stands for 1/rate",
                },
            }
        ),
        "DecisionPage": _object(
            {
                "items": {"type": "array", "items": ref("Decision")},
                "next": {"type": ["string", "null"], "description": "Pass as ?cursor= for the next page"},
            }
        ),
        "CandidateSummary": _object(
            {
                "key_id": KEY_ID,
                "policy": ref("Policy"),
                "candidate_policy": ref("Policy"),
                "since": TIMESTAMP,
                "decision_log": {"type": "boolean", "description": "Whether this instance records decisions"},
                "evaluated": {"type": "integer", "description": "Decisions the candidate was evaluated on"},
                "agree": {"type": "integer"},
                "would_deny": {
                    "type": "integer",
                    "description": "Allowed requests the candidate would refuse",
                },
                "would_allow": {
                    "type": "integer",
                    "description": "Refused requests the candidate would allow",
                },
                "by_reason": {
                    "type": "array",
                    "items": _object(
                        {
                            "outcome": {"type": "string", "enum": ["would_allow", "would_deny"]},
                            "reason": _REASON,
                            "count": {"type": "integer"},
                            "request_ids": {"type": "array", "items": {"type": "string"}},
                            "first": TIMESTAMP,
                            "last": TIMESTAMP,
                        }
                    ),
                },
            }
        ),
        "Evaluate": _object(
            {
                "key_id": KEY_ID,
                "policy": ref("Policy"),
                "request": _object(
                    {
                        "method": {"type": "string", "default": "GET"},
                        "path": {"type": "string", "description": "The request target, query included"},
                        "client_ip": {"type": "string", "description": "The TCP peer the request comes from"},
                        "headers": {
                            "type": "object",
                            "description": "As the proxy would receive them (X-Forwarded-For, attestation "
                            "tokens...)",
                            "additionalProperties": {
                                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
                            },
                        },
                        "time": {**TIMESTAMP, "description": "When; default now"},
                    },
                    required=["path", "client_ip"],
                ),
            },
            required=["request"],
        ),
        "Explanation": _object(
            {
                "decision": _decision_value(),
                "stage": {
                    "type": "string",
                    "enum": ["target", "client", "key", "policy"],
                    "description": "The step that made the decision",
                },
                "request": _object(
                    {
                        "method": {"type": "string"},
                        "path": {"type": ["string", "null"], "description": "Normalised"},
                        "client_ip": {"type": ["string", "null"], "description": "As the proxy resolves it"},
                        "facts": {"type": "object", "description": "Gathered facts, e.g. country"},
                    }
                ),
                "key": {
                    "oneOf": [
                        {"type": "null"},
                        _object(
                            {
                                "id": KEY_ID,
                                "owner": OWNER,
                                "status": {"type": "string"},
                                "revision": {"type": "integer"},
                                "outcome": _decision_value(),
                            }
                        ),
                    ]
                },
                "parts": {"type": "array", "items": part},
                "candidate": {
                    "oneOf": [
                        {"type": "null"},
                        _object(
                            {
                                "decision": _decision_value(),
                                "outcome": {"oneOf": [_OUTCOME, {"type": "null"}]},
                                "parts": {"type": "array", "items": part},
                            }
                        ),
                    ]
                },
            }
        ),
    }


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    parameter = {"name": name, "in": "query", "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


def operations_paths() -> dict[str, Any]:
    key_id = {"name": "id", "in": "path", "required": True, "schema": KEY_ID}
    public: list[dict[str, list[str]]] = []
    return {
        "/v1/decisions": {
            "get": {
                "operationId": "listDecisions",
                "summary": "The decision log, newest first, one page at a time",
                "parameters": [
                    _query("key_id", KEY_ID),
                    _query("owner", OWNER),
                    _query("decision", {"type": "string", "enum": ["allow", "deny"]}),
                    _query("reason", _REASON),
                    _query("candidate", _OUTCOME, "How the key's candidate policy compared"),
                    _query("since", TIMESTAMP, "At or after (RFC 3339)"),
                    _query("until", TIMESTAMP, "Before (RFC 3339)"),
                    _query("request_id", _REQUEST_ID, "The X-Request-Id a client got"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
                    _query("cursor", {"type": "string"}, "The 'next' of the previous page"),
                    _query("order", {"type": "string", "enum": ["desc", "asc"], "default": "desc"}),
                ],
                "responses": {
                    "200": json_answer(ref("DecisionPage"), "One page"),
                    **errors("401", "422", "503"),
                },
            }
        },
        "/v1/keys/{id}/candidate": {
            "parameters": [key_id],
            "get": {
                "operationId": "getCandidate",
                "summary": "What the key's candidate policy would have changed since it was set",
                "responses": {
                    "200": json_answer(ref("CandidateSummary"), "The summary"),
                    **errors("401", "404", "503"),
                },
            },
        },
        "/v1/keys/{id}/candidate/promote": {
            "parameters": [key_id],
            "post": {
                "operationId": "promoteCandidate",
                "summary": "Make the candidate policy the key's policy (the key then has no candidate)",
                "responses": {
                    "200": json_answer(ref("Key"), "The key with its new policy", write=True),
                    **errors("401", "404", "409", "503"),
                },
            },
        },
        "/v1/evaluate": {
            "post": {
                "operationId": "evaluate",
                "summary": "Explain the decision on a described request, with every part's outcome",
                "requestBody": body("Evaluate"),
                "responses": {
                    "200": json_answer(ref("Explanation"), "The decision and how it was made"),
                    **errors("400", "401", "404", "413", "415", "422", "503"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of the whole instance (no token)",
                "security": public,
                "responses": {
                    "200": {
                        "description": "The Prometheus text exposition format, version 0.0.4",
                        "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}},
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **errors(),
                },
            }
        },
    }
