"""``max_in_flight``: how many requests of one key may be under way at once: ``"max_in_flight": 20``.

Counted per worker process by the ``in_flight`` admission (``proxy.limits``), which enforces the
worker's share. A slot is taken when the request is about to be forwarded and given back exactly once
when it is done: answered, refused, failed upstream, or abandoned by its client. Over the limit: 429
``too_many_in_flight`` at once, never queued.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.core.facts import Facts
from proxy.core.model import Decision
from proxy.core.part import Part
from proxy.core.parts.usage import positive_integer

__all__ = ["MAX_IN_FLIGHT", "PART", "InFlight", "compile_in_flight"]

MAX_IN_FLIGHT = 1_000_000


@dataclass(frozen=True, slots=True)
class InFlight:
    limit: int

    def check(self, facts: Facts) -> Decision | None:
        return None  # the admission holds a slot; nothing in the facts decides


def compile_in_flight(value: object, path: str) -> InFlight:
    return InFlight(positive_integer(value, path, MAX_IN_FLIGHT))


PART = Part(
    name="max_in_flight",
    compile=compile_in_flight,
    schema={
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_IN_FLIGHT,
        "description": "Requests of this key under way at once (per worker, each enforcing its share); "
        "over it 429 too_many_in_flight",
    },
    memo_on=(),  # always passes: the admission decides
    admits="in_flight",
)
