"""The OpenAPI description of jobs, key rotation, and the key fields they add (``proxy.admin.jobs``,
``proxy.admin.rotation``); ``proxy.admin.openapi`` merges it into the document."""

from __future__ import annotations

from typing import Any

from proxy.admin.bodies import MAX_TTL
from proxy.admin.openapi_base import (
    KEY_ID,
    NAME,
    OPTIONAL_TIMESTAMP,
    OWNER,
    TIMESTAMP,
    body,
    error,
    errors,
    json_answer,
    page_parameters,
    ref,
)
from proxy.admin.rotation import MAX_GRACE

__all__ = ["KEY_CREATE_PROPERTIES", "KEY_PROPERTIES", "paths", "schemas"]

_OPTIONAL_ID = {"type": ["string", "null"], "pattern": "^[0-9a-f]{16}$"}

# What every key shows of its job, its uses and its rotation.
KEY_PROPERTIES: dict[str, Any] = {
    "job_id": {**_OPTIONAL_ID, "description": "The job the key is bound to; null for none"},
    "can_close_job": {
        "type": "boolean",
        "description": "The key may close its job (POST /.signalgate/jobs/close)",
    },
    "previous_valid_until": {
        **OPTIONAL_TIMESTAMP,
        "description": "Until when the secret a rotation replaced is still accepted; null: it is not",
    },
    "uses": {"type": "integer", "minimum": 0, "description": "Requests forwarded under a usage limit"},
    "uses_left": {
        "type": ["integer", "null"],
        "minimum": 0,
        "description": "policy.usage.max_uses minus uses; null without a usage limit",
    },
}

# What a key's creation may say about its lifetime and its job.
KEY_CREATE_PROPERTIES: dict[str, Any] = {
    "ttl_s": {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_TTL,
        "description": "Seconds the key lives from its creation (instead of expires_at)",
    },
    "job_id": {
        **KEY_ID,
        "description": "Bind the key to an open job: it expires after ttl_s, or the job_key_ttl setting, and "
        "never after the job's deadline; closing the job revokes it",
    },
    "can_close_job": {"type": "boolean", "description": "The key may close its job itself (needs job_id)"},
}

_JOB_PROPERTIES: dict[str, Any] = {
    "id": KEY_ID,
    "name": NAME,
    "owner": OWNER,
    "deadline": TIMESTAMP,
    "status": {"type": "string", "enum": ["open", "closed"]},
    "created_at": TIMESTAMP,
    "closed_at": OPTIONAL_TIMESTAMP,
    "closed_by": {
        "type": ["string", "null"],
        "pattern": "^(operator|deadline|key:[0-9a-f]{16})$",
        "description": "operator, deadline, or key:<id> for a key that closed its own job",
    },
    "revision": {"type": "integer", "minimum": 0},
}


def _object(properties: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def schemas() -> dict[str, Any]:
    return {
        "Job": _object(_JOB_PROPERTIES, "A job: its keys live only while it is open."),
        "JobWithKeys": _object(
            {**_JOB_PROPERTIES, "keys": {"type": "array", "items": ref("Key")}}, "A job and every key of it."
        ),
        "JobClosed": _object(
            {**_JOB_PROPERTIES, "keys_revoked": {"type": "array", "items": KEY_ID}},
            "The closed job and the keys this call revoked (none when it was closed already).",
        ),
        "JobList": _object(
            {
                "items": {"type": "array", "items": ref("Job")},
                "next": {"type": ["string", "null"], "description": "Pass as ?after= for the next page"},
            },
            "One page of jobs, ordered by id.",
        ),
        "JobCreate": {
            "type": "object",
            "properties": {
                "name": NAME,
                "owner": OWNER,
                "deadline": {
                    **TIMESTAMP,
                    "description": "RFC 3339, in the future: the job closes itself then",
                },
            },
            "required": ["name", "owner", "deadline"],
            "additionalProperties": False,
        },
        "KeyRotate": {
            "type": "object",
            "properties": {
                "grace_s": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": MAX_GRACE,
                    "default": 0,
                    "description": "Seconds the replaced secret stays valid (never past the key's expiry)",
                }
            },
            "additionalProperties": False,
        },
    }


_NO_JOB = error("No job with this id, or a malformed id (reason not_found)")


def paths() -> dict[str, Any]:
    job_id = {"name": "id", "in": "path", "required": True, "schema": KEY_ID}
    return {
        "/v1/jobs": {
            "post": {
                "operationId": "openJob",
                "summary": "Open a job; keys created with its job_id live only while it is open",
                "requestBody": body("JobCreate"),
                "responses": {
                    "201": json_answer(ref("Job"), "Opened", write=True),
                    **errors("400", "401", "413", "415", "422", "503"),
                },
            },
            "get": {
                "operationId": "listJobs",
                "summary": "List jobs ordered by id, one page at a time",
                "parameters": page_parameters(["open", "closed"]),
                "responses": {"200": json_answer(ref("JobList"), "One page"), **errors("401", "422", "503")},
            },
        },
        "/v1/jobs/{id}": {
            "parameters": [job_id],
            "get": {
                "operationId": "getJob",
                "summary": "Show one job with its keys",
                "responses": {
                    "200": json_answer(ref("JobWithKeys"), "The job"),
                    "404": _NO_JOB,
                    **errors("401", "503"),
                },
            },
        },
        "/v1/jobs/{id}/close": {
            "parameters": [job_id],
            "post": {
                "operationId": "closeJob",
                "summary": "Close a job for good and revoke every key of it (idempotent)",
                "responses": {
                    "200": json_answer(ref("JobClosed"), "Closed; its keys are refused", write=True),
                    "404": _NO_JOB,
                    **errors("401", "503"),
                },
            },
        },
        "/v1/keys/{id}/rotate": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": KEY_ID}],
            "post": {
                "operationId": "rotateKey",
                "summary": "A new secret for the key, shown once; the old one stays valid grace_s seconds",
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": ref("KeyRotate")}},
                },
                "responses": {
                    "200": json_answer(
                        ref("KeyCreated"), "The key with its new secret, shown once", write=True
                    ),
                    **errors("400", "401", "404", "409", "413", "415", "422", "503"),
                },
            },
        },
    }
