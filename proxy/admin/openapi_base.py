"""The building blocks of the admin API's OpenAPI document, shared by the modules that describe its
resources (``proxy.admin.openapi`` assembles the document; ``proxy.admin.openapi_jobs`` adds jobs and
rotation).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APPLIED",
    "KEY_ID",
    "NAME",
    "OPTIONAL_TIMESTAMP",
    "OWNER",
    "TIMESTAMP",
    "body",
    "error",
    "errors",
    "json_answer",
    "page_parameters",
    "ref",
]

TIMESTAMP = {"type": "string", "format": "date-time", "description": "RFC 3339 with a timezone"}
OPTIONAL_TIMESTAMP = {"type": ["string", "null"], "format": "date-time", "description": "RFC 3339 or null"}
NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]+$",
    "description": "Human-readable name; no control characters",
}
OWNER = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "pattern": "^[ -~]+$",
    "description": "Owner, forwarded upstream in a header: printable ASCII",
}
KEY_ID = {"type": "string", "pattern": "^[0-9a-f]{16}$", "description": "16 lower-case hex digits"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


APPLIED = {"X-Signalgate-Applied": {"$ref": "#/components/headers/Applied"}}


def json_answer(schema: dict[str, Any], description: str, *, write: bool = False) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}}
    if write:
        headers.update(APPLIED)
    return {
        "description": description,
        "headers": headers,
        "content": {"application/json": {"schema": schema}},
    }


def error(description: str) -> dict[str, Any]:
    return json_answer(ref("Error"), description)


def errors(*codes: str) -> dict[str, Any]:
    responses = {code: {"$ref": f"#/components/responses/E{code}"} for code in codes}
    responses["default"] = error("Any other error, e.g. 405 or 500, in the same shape")
    return responses


def body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": ref(schema)}}}


def page_parameters(statuses: list[str]) -> list[dict[str, Any]]:
    """The query of a list: ``owner``, ``status``, ``limit`` and the ``after`` cursor."""
    return [
        {"name": "owner", "in": "query", "schema": OWNER},
        {"name": "status", "in": "query", "schema": {"type": "string", "enum": statuses}},
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
        },
        {
            "name": "after",
            "in": "query",
            "description": "The 'next' cursor from the previous page",
            "schema": KEY_ID,
        },
    ]
