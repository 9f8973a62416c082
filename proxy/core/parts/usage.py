"""``usage``: a key that may be used ``max_uses`` times in all (``1``: a one-shot key).

``{"max_uses": 10}``. The count lives in PostgreSQL and is taken by the ``usage`` admission
(``proxy.db.usage``) when the request is about to be forwarded: one conditional ``UPDATE ... RETURNING``,
exact across workers and instances. The rule itself has nothing to judge from the request's facts; a
key whose uses are spent is refused ``uses_exhausted`` (429, no ``Retry-After``: it will never succeed
again). A key without this part makes no such round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.core.errors import PolicyError
from proxy.core.facts import Facts
from proxy.core.model import Decision
from proxy.core.part import Part, kind, object_fields

__all__ = ["MAX_USES", "PART", "Usage", "compile_usage", "positive_integer"]

MAX_USES = 2**62  # fits PostgreSQL's bigint with room for the increment


@dataclass(frozen=True, slots=True)
class Usage:
    max_uses: int

    def check(self, facts: Facts) -> Decision | None:
        return None  # the admission counts; nothing in the facts decides


def positive_integer(value: object, path: str, highest: int) -> int:
    """``value`` as an integer from 1 to ``highest`` (a JSON boolean is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(path, f"must be a whole number, not {kind(value)}")
    if not 1 <= value <= highest:
        raise PolicyError(path, f"must be from 1 to {highest}, not {value}")
    return value


def compile_usage(value: object, path: str) -> Usage:
    doc = object_fields(value, path, ("max_uses",))
    if "max_uses" not in doc:
        raise PolicyError(f"{path}.max_uses", "is required")
    return Usage(positive_integer(doc["max_uses"], f"{path}.max_uses", MAX_USES))


PART = Part(
    name="usage",
    compile=compile_usage,
    schema={
        "type": "object",
        "description": "The key may be used max_uses times in all, counted in PostgreSQL when a request "
        "is forwarded; then 429 uses_exhausted",
        "properties": {"max_uses": {"type": "integer", "minimum": 1, "maximum": MAX_USES}},
        "required": ["max_uses"],
        "additionalProperties": False,
    },
    memo_on=(),  # always passes: the admission decides
    admits="usage",
)
