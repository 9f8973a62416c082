"""``routes``: the request's method and normalised path must match one entry.

Path grammar (matched against the normalised path, see ``proxy.core.paths``):

- a pattern starts with ``/`` and is split on ``/`` into segments;
- ``*`` matches exactly one non-empty segment;
- ``**`` matches zero or more segments (so ``/metrics/**`` matches ``/metrics``, ``/metrics/a/b``);
- any other segment matches itself literally, case-sensitively, in its percent-encoded form; its
  escapes are normalised as paths are (``%7E`` is ``~``, others upper-cased) and one a path may not
  hold (malformed, ``%2F``, ``%00``...) is an error, as is ``*`` inside a segment;
- a trailing ``/`` on the path or the pattern is not significant.

``methods`` is case-insensitive; leave it out, or give ``["*"]``, for any method.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.core.errors import PolicyError
from proxy.core.facts import Facts
from proxy.core.model import Decision, Reason
from proxy.core.part import Part, kind, object_fields, strings
from proxy.core.patterns import Matcher, compile_route_pattern

__all__ = ["PART", "RouteRule", "Routes"]

_METHOD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~")


@dataclass(frozen=True, slots=True)
class RouteRule:
    methods: frozenset[str] | None  # None: any method
    pattern: str
    matcher: Matcher

    def permits(self, method: str, path: str) -> bool:
        return (self.methods is None or method in self.methods) and self.matcher.match(path) is not None


@dataclass(frozen=True, slots=True)
class Routes:
    rules: tuple[RouteRule, ...]

    def check(self, facts: Facts) -> Decision | None:
        method, path = facts.method, facts.path
        for route in self.rules:
            if route.permits(method, path):
                return None
        return Decision.deny(Reason.ROUTE_DENIED, f"{method} {path} matches no allowed route")


def compile_routes(value: object, path: str) -> Routes:
    if not isinstance(value, list):
        raise PolicyError(path, f"must be a list, not {kind(value)}")
    rules = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        doc = object_fields(item, where, ("methods", "path"))
        if "path" not in doc:
            raise PolicyError(f"{where}.path", "is required")
        pattern = doc["path"]
        if not isinstance(pattern, str):
            raise PolicyError(f"{where}.path", f"must be a string, not {kind(pattern)}")
        methods: frozenset[str] | None = None
        if "methods" in doc:
            names = strings(doc["methods"], f"{where}.methods")
            if not names:
                raise PolicyError(f"{where}.methods", "must not be empty (leave it out to allow any method)")
            upper = [m.upper() for m in names]
            for j, m in enumerate(upper):
                if not m or not _METHOD_CHARS.issuperset(m):
                    raise PolicyError(f"{where}.methods[{j}]", f"{names[j]!r} is not an HTTP method")
            methods = None if "*" in upper else frozenset(upper)
        rules.append(RouteRule(methods, pattern, compile_route_pattern(pattern, f"{where}.path")))
    return Routes(tuple(rules))


PART = Part(
    name="routes",
    compile=compile_routes,
    schema={
        "type": "array",
        "description": "Method and normalised path must match one entry; an empty list allows nothing",
        "items": {
            "type": "object",
            "properties": {
                "methods": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "string"},
                    "description": "Default: any method",
                },
                "path": {
                    "type": "string",
                    "pattern": "^/",
                    "description": "'*' is one segment, '**' any number of segments",
                },
            },
            "required": ["path"],
            "additionalProperties": False,
        },
    },
    memo_on=("method", "path"),
)
