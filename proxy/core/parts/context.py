"""``context``: what the request says about itself, in headers, must be within bounds.

```json
"context": {"headers": {"X-Task-Scope": {"in": ["reporting", "billing-read"], "signed": true},
                        "X-Data-Sensitivity": {"max": "low", "order": ["public", "low", "medium", "high"]}},
            "forward": false}
```

- ``in``: the header must be present, once, with one of the listed values (compared exactly).
- ``max`` with ``order``: the header's value is a level of ``order`` (lowest first) no higher than
  ``max``; a value not in ``order`` is refused, never guessed.
- ``signed``: the header must also be covered by the request's RFC 9421 signature (the ``signature``
  fact, gathered only for policies that ask for it), so a client cannot relabel a request after signing.
- ``forward`` (default true): false strips these headers before the upstream (``strip``).

A header that is absent is ``context_missing``; present more than once, or with a value out of bounds,
``context_denied``. The values are the client's own, so the part is not memoised: a memo keyed on them
could be churned by any client, and the check is a dictionary lookup per header anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from proxy.core.errors import PolicyError
from proxy.core.facts import Facts
from proxy.core.model import Decision, Reason
from proxy.core.part import Part, kind, object_fields, strings

__all__ = ["PART", "SIGNATURE", "Context", "HeaderRule", "compile_context"]

SIGNATURE = "signature"  # the gathered fact: the verified request signature (see covered_by)
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SHOWN = 64  # characters of a client's value quoted in a denial
# Fields that frame or route the message: never request context, and never the policy's to strip.
_RESERVED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)


@dataclass(frozen=True, slots=True)
class HeaderRule:
    name: str  # as written in the policy
    lower: str
    allowed: frozenset[str] | None  # ``in``; None for an ordered level
    ranks: Mapping[str, int]  # ``order``: level -> rank
    highest: int  # rank of ``max``
    signed: bool

    def judge(self, facts: Facts) -> Decision | None:
        values = facts.headers.getall(self.name, None)
        if values is None:
            return Decision.deny(Reason.CONTEXT_MISSING, f"header {self.name} is required")
        if len(values) != 1:
            return Decision.deny(Reason.CONTEXT_DENIED, f"header {self.name} is given {len(values)} times")
        value = values[0]
        if self.allowed is not None:
            if value not in self.allowed:
                return Decision.deny(Reason.CONTEXT_DENIED, f"{self.name} {_shown(value)} is not allowed")
        else:
            rank = self.ranks.get(value)
            if rank is None:
                return Decision.deny(
                    Reason.CONTEXT_DENIED, f"{self.name} {_shown(value)} is not a known level"
                )
            if rank > self.highest:
                return Decision.deny(
                    Reason.CONTEXT_DENIED, f"{self.name} {_shown(value)} is above the maximum"
                )
        if self.signed and not covered_by(facts.gathered.get(SIGNATURE), self.lower):
            return Decision.deny(
                Reason.CONTEXT_DENIED, f"header {self.name} is not covered by a valid request signature"
            )
        return None


def covered_by(signature: object, component: str) -> bool:
    """Whether a verified request signature covers header ``component`` (lower case).

    The ``signature`` part's gatherer stores a value with ``covered``, the frozenset of the lower-cased
    component identifiers the verified signature covers; a failed or absent verification is anything
    else (``UNAVAILABLE``, a failure value), and covers nothing.
    """
    covered = getattr(signature, "covered", None)
    return isinstance(covered, frozenset) and component in covered


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "...")


@dataclass(frozen=True, slots=True)
class Context:
    headers: tuple[HeaderRule, ...]
    needs: frozenset[str]  # "signature" only when some header must be signed
    strip: frozenset[str]  # lower-case names kept from the upstream (``forward: false``)
    requires: Mapping[str, str]  # the signature part, for the first signed header's field path

    def check(self, facts: Facts) -> Decision | None:
        for rule in self.headers:
            denied = rule.judge(facts)
            if denied is not None:
                return denied
        return None


def _header_rule(name: str, value: object, path: str) -> HeaderRule:
    doc = object_fields(value, path, ("in", "max", "order", "signed"))
    signed = doc.get("signed", False)
    if not isinstance(signed, bool):
        raise PolicyError(f"{path}.signed", f"must be true or false, not {kind(signed)}")
    if ("in" in doc) == ("max" in doc):
        raise PolicyError(path, "needs exactly one of 'in' (allowed values) or 'max' (with 'order')")
    if "in" in doc:
        if "order" in doc:
            raise PolicyError(f"{path}.order", "goes with 'max', not with 'in'")
        allowed = strings(doc["in"], f"{path}.in")
        if not allowed:
            raise PolicyError(f"{path}.in", "must not be empty")
        return HeaderRule(name, name.lower(), frozenset(allowed), {}, 0, signed)
    if "order" not in doc:
        raise PolicyError(f"{path}.order", "is required with 'max': the levels, lowest first")
    order = strings(doc["order"], f"{path}.order")
    if not order:
        raise PolicyError(f"{path}.order", "must not be empty")
    if len(set(order)) != len(order):
        twice = next(level for level in order if order.count(level) > 1)
        raise PolicyError(f"{path}.order", f"lists {twice!r} twice")
    highest = doc["max"]
    if not isinstance(highest, str):
        raise PolicyError(f"{path}.max", f"must be a string, not {kind(highest)}")
    if highest not in order:
        raise PolicyError(f"{path}.max", f"{highest!r} is not one of the levels in 'order'")
    ranks = {level: rank for rank, level in enumerate(order)}
    return HeaderRule(name, name.lower(), None, ranks, ranks[highest], signed)


def compile_context(value: object, path: str) -> Context:
    doc = object_fields(value, path, ("headers", "forward"))
    if "headers" not in doc:
        raise PolicyError(f"{path}.headers", "is required")
    headers = doc["headers"]
    if not isinstance(headers, dict) or not headers:
        raise PolicyError(f"{path}.headers", f"must be a non-empty object, not {kind(headers)}")
    forward = doc.get("forward", True)
    if not isinstance(forward, bool):
        raise PolicyError(f"{path}.forward", f"must be true or false, not {kind(forward)}")
    rules: list[HeaderRule] = []
    for name, spec in headers.items():
        where = f"{path}.headers.{name}"
        if not name or not _TOKEN.issuperset(name):
            raise PolicyError(where, f"{name!r} is not a header name")
        if name.lower() in _RESERVED:
            raise PolicyError(where, f"{name} frames or routes the message; it cannot be request context")
        if any(rule.lower == name.lower() for rule in rules):
            raise PolicyError(where, "names a header given already (names are case-insensitive)")
        rules.append(_header_rule(name, spec, where))
    signed = [rule for rule in rules if rule.signed]
    return Context(
        tuple(rules),
        frozenset({SIGNATURE}) if signed else frozenset(),
        frozenset() if forward else frozenset(rule.lower for rule in rules),
        {SIGNATURE: f"{path}.headers.{signed[0].name}.signed"} if signed else {},
    )


_HEADER = {
    "type": "object",
    "properties": {
        "in": {"type": "array", "minItems": 1, "items": {"type": "string"}, "description": "Allowed values"},
        "max": {"type": "string", "description": "The highest level allowed (with 'order')"},
        "order": {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"type": "string"},
            "description": "The levels, lowest first",
        },
        "signed": {
            "type": "boolean",
            "description": "The header must be covered by the request's RFC 9421 signature",
        },
    },
    "oneOf": [{"required": ["in"]}, {"required": ["max", "order"]}],
    "additionalProperties": False,
}

PART = Part(
    name="context",
    compile=compile_context,
    schema={
        "type": "object",
        "description": "Headers the request must carry, each once, with a listed value or a level up "
        "to a maximum; context_missing when absent, context_denied otherwise",
        "properties": {
            "headers": {"type": "object", "minProperties": 1, "additionalProperties": _HEADER},
            "forward": {
                "type": "boolean",
                "description": "Whether these headers reach the upstream (default true)",
            },
        },
        "required": ["headers"],
        "additionalProperties": False,
    },
    needs=frozenset({SIGNATURE}),
)
