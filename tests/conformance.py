"""Real admin API answers held to the OpenAPI document: each response validated against the schema the
document declares for its operation and status (``Conformance``), and the JSON-pointer helpers for it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import ClientResponse
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["Conformance", "pointer", "resolve"]

DOC_URI = "urn:signalgate:admin-openapi"


def pointer(*parts: str) -> str:
    """A JSON pointer (RFC 6901) to ``parts``, escaping ``~`` and ``/``."""
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def resolve(document: dict[str, Any], ref: str) -> Any:
    """What a local ``$ref`` (``#/...``) points to in ``document``."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _checker() -> FormatChecker:
    """Formats checked strictly: a date-time must be ISO 8601 with a ``T`` and a time zone."""
    checker = FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        parsed = datetime.fromisoformat(value)
        return parsed.tzinfo is not None and "T" in value

    return checker


class Conformance:
    """Validates real responses against the schema the document declares for that answer."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = Resource(contents=document, specification=DRAFT202012)
        self.registry = Registry().with_resource(DOC_URI, resource)
        self.checker = _checker()
        self.seen: set[tuple[str, str, int]] = set()

    async def check(self, response: ClientResponse, method: str, template: str) -> Any:
        operation = self.document["paths"][template][method.lower()]
        code = str(response.status)
        location = (
            "paths",
            template,
            method.lower(),
            "responses",
            code if code in operation["responses"] else "default",
        )
        declared = operation["responses"][location[-1]]
        if "$ref" in declared:
            location = tuple(declared["$ref"][2:].split("/"))
            declared = resolve(self.document, declared["$ref"])
        assert "X-Request-Id" in declared.get("headers", {})
        assert response.headers.get("X-Request-Id")
        self.seen.add((method, template, response.status))
        if "content" not in declared:
            assert await response.read() == b""
            return None
        body = await response.json()
        ref = f"{DOC_URI}#{pointer(*location, 'content', 'application/json', 'schema')}"
        validator = Draft202012Validator({"$ref": ref}, registry=self.registry, format_checker=self.checker)
        errors = list(validator.iter_errors(body))
        assert not errors, f"{method} {template} {code}: " + "; ".join(
            f"{e.json_path}: {e.message}" for e in errors
        )
        return body
