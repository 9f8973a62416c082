"""``rate``: requests per second per key, with a burst: ``{"per_second": 50, "burst": 100}``.

A leaky bucket of ``burst`` requests draining at ``per_second``, kept per worker process by the
``rate`` admission (``proxy.limits``, aiolimiter), which enforces the worker's share of the limit. Over
it: 429 ``rate_limited`` at once, never queued, with ``Retry-After`` and the IETF ``RateLimit-Policy``
and ``RateLimit`` fields. ``burst`` defaults to ``per_second`` (at least 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from proxy.core.errors import PolicyError
from proxy.core.facts import Facts
from proxy.core.model import Decision
from proxy.core.part import Part, kind, object_fields
from proxy.core.parts.usage import positive_integer

__all__ = ["MAX_RATE", "PART", "Rate", "compile_rate"]

MAX_RATE = 1_000_000


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    burst: int

    def check(self, facts: Facts) -> Decision | None:
        return None  # the admission takes a token; nothing in the facts decides


def compile_rate(value: object, path: str) -> Rate:
    doc = object_fields(value, path, ("per_second", "burst"))
    if "per_second" not in doc:
        raise PolicyError(f"{path}.per_second", "is required")
    per_second = doc["per_second"]
    if isinstance(per_second, bool) or not isinstance(per_second, int | float):
        raise PolicyError(f"{path}.per_second", f"must be a number, not {kind(per_second)}")
    if not (math.isfinite(per_second) and 0 < per_second <= MAX_RATE):
        raise PolicyError(f"{path}.per_second", f"must be above 0 and at most {MAX_RATE}, not {per_second}")
    default_burst = max(1, math.floor(per_second))
    burst = positive_integer(doc.get("burst", default_burst), f"{path}.burst", MAX_RATE)
    return Rate(float(per_second), burst)


PART = Part(
    name="rate",
    compile=compile_rate,
    schema={
        "type": "object",
        "description": "Requests per second with a burst (a leaky bucket per worker, each enforcing its "
        "share); over it 429 rate_limited with Retry-After and RateLimit fields",
        "properties": {
            "per_second": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_RATE},
            "burst": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_RATE,
                "description": "Default: per_second (at least 1)",
            },
        },
        "required": ["per_second"],
        "additionalProperties": False,
    },
    memo_on=(),  # always passes: the admission decides
    admits="rate",
)
