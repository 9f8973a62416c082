"""The seam every policy part plugs into: what a part declares, and what its compiled rule does.

A policy document is a JSON object whose top-level fields are parts (``networks``, ``regions``,
``routes``...). Each part is one module in ``proxy.core.parts`` exposing ``PART``, a ``Part`` value:

- ``name``: its field in the policy document;
- ``schema``: the JSON Schema of that field, for the OpenAPI document and the docs;
- ``compile(value, path) -> Rule``: validates the field once, when a policy is written or loaded,
  raising ``PolicyError`` with the field path (``policy.networks.allow[1]``) and the reason;
- ``needs``: the gathered facts its rule reads (``proxy.core.facts``), gathered only for policies
  that contain the part; a compiled rule may narrow them with its own ``needs`` attribute (a subset:
  ``context`` needs the request signature only when some header must be signed), so a policy that
  does not use a fact never pays for gathering it;
- ``memo_on``: the facts its verdict is a function of. A part with ``memo_on`` is memoised per compiled
  policy on those facts' values; ``None`` means it is checked on every request (it reads the time, a
  token, a counter...);
- ``admits``: for a part whose last word needs IO with an effect (count a use, record a nonce, take a
  rate-limit token, hold an in-flight slot), the name of the *admission* that gives it. Admissions run
  after every part's check passed, in part order, through the shell registered under that name in the
  composition root (``proxy.http.handler.Admission``); they may await, and may register a release for
  when the request is done. Explain and dry-run never run admissions.

A ``Rule`` has one method, ``check(facts) -> Decision | None``: ``None`` passes, a ``Decision`` is the
denial with its reason code and detail. No IO, no exceptions for a denial. A rule may also carry
``strip``, lower-case request header names the proxy must keep from the upstream (``context`` with
``forward: false``); the compiled policy gathers them. And a rule may name other parts it relies on,
``requires``: part name -> the field path that needs it (a ``context`` header marked ``signed`` needs
the ``signature`` part, whose keys verify the signature); a policy without that part is refused when
written, once that part is registered.

Registering a part is one line in ``proxy.core.parts.PARTS``; its position there is its place in the
evaluation order (cheapest and most telling first), which decides which reason a request refused by
several parts gets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.core.errors import PolicyError
from proxy.core.facts import BASIC, Facts
from proxy.core.model import Decision

__all__ = ["Part", "Rule", "kind", "object_fields", "strings"]


class Rule(Protocol):
    """A compiled part: judges one request's facts."""

    def check(self, facts: Facts, /) -> Decision | None: ...


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    compile: Callable[[object, str], Rule]
    schema: Mapping[str, Any]
    needs: frozenset[str] = frozenset()
    memo_on: tuple[str, ...] | None = None
    admits: str | None = None

    def __post_init__(self) -> None:
        if self.memo_on is not None:
            unknown = set(self.memo_on) - BASIC - self.needs
            if unknown:
                raise ValueError(f"part {self.name!r} memoises on facts it does not need: {sorted(unknown)}")


# --- helpers the parts share for validating their documents ----------------------------------------


def kind(value: object) -> str:
    """How a JSON value is named in an error message."""
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def object_fields(value: object, path: str, known: Sequence[str]) -> Mapping[str, Any]:
    """``value`` as an object whose fields are all in ``known``."""
    if not isinstance(value, dict):
        raise PolicyError(path, f"must be an object, not {kind(value)}")
    for name in value:
        if name not in known:
            raise PolicyError(f"{path}.{name}", f"unknown field; expected one of: {', '.join(known)}")
    return value


def strings(value: object, path: str) -> list[str]:
    """``value`` as a list of strings."""
    if not isinstance(value, list):
        raise PolicyError(path, f"must be a list, not {kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise PolicyError(f"{path}[{i}]", f"must be a string, not {kind(item)}")
    return value
