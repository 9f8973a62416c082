"""The policy parts, registered in evaluation order: cheapest and most telling first.

Adding a part: one module here exposing ``PART`` (see ``proxy.core.part``), one line below, its
reason codes in ``proxy.core.model.Reason``, and, when it needs a gathered fact, the shell that gathers
it registered in the composition root (``proxy.wiring``).
"""

from __future__ import annotations

from proxy.core.part import Part
from proxy.core.parts import (
    context,
    device,
    in_flight,
    networks,
    rate,
    regions,
    routes,
    schedule,
    signature,
    usage,
    workload,
)

__all__ = ["PARTS", "by_name"]

PARTS: tuple[Part, ...] = (
    networks.PART,
    regions.PART,
    routes.PART,
    schedule.PART,
    context.PART,
    device.PART,
    workload.PART,
    signature.PART,
    # Parts with admissions last, in admission order: what can be given back (a rate token, an
    # in-flight slot) before the one that cannot (a use), so a request refused by a limit spends no use.
    rate.PART,
    in_flight.PART,
    usage.PART,
)

by_name: dict[str, Part] = {part.name: part for part in PARTS}
