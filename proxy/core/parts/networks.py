"""``networks``: the client address must be inside some ``allow`` CIDR (when given) and in no ``deny``.

IPv4 and IPv6; deny beats allow. An IPv4-mapped client is judged as IPv4 (``proxy.core.signals``), so an
IPv4-mapped CIDR compiles to the IPv4 network it maps. CIDRs compile to merged, sorted address intervals
searched with ``bisect``: a check costs O(log n) whatever the number of CIDRs.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass

from proxy.core.errors import PolicyError
from proxy.core.facts import Facts
from proxy.core.intervals import Intervals
from proxy.core.model import Decision, Reason
from proxy.core.part import Part, object_fields, strings

__all__ = ["PART", "NetworkRule"]

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4-mapped IPv6 addresses


@dataclass(frozen=True, slots=True)
class NetworkRule:
    allow4: Intervals | None  # None: no allow list given
    allow6: Intervals | None
    deny4: Intervals
    deny6: Intervals

    def permits(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        value = int(ip)
        if ip.version == 4:
            allow, deny = self.allow4, self.deny4
        else:
            allow, deny = self.allow6, self.deny6
        if deny and value in deny:
            return False
        return allow is None or value in allow

    def check(self, facts: Facts) -> Decision | None:
        if self.permits(facts.client_ip):
            return None
        return Decision.deny(Reason.NETWORK_DENIED, f"client {facts.client_ip} is not in an allowed network")


def _ranges(values: list[str], path: str) -> tuple[Intervals, Intervals]:
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    for i, text in enumerate(values):
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            hint = ""
            with contextlib.suppress(ValueError):
                hint = f" (did you mean {ipaddress.ip_network(text, strict=False)}?)"
            raise PolicyError(f"{path}[{i}]", f"{text!r} is not a valid CIDR: {exc}{hint}") from exc
        if net.version == 6 and net.subnet_of(_MAPPED):  # clients in it are judged as IPv4
            net = ipaddress.IPv4Network((int(net.network_address) & 0xFFFF_FFFF, net.prefixlen - 96))
        (v4 if net.version == 4 else v6).append((int(net.network_address), int(net.broadcast_address)))
    return Intervals.of(v4), Intervals.of(v6)


def compile_networks(value: object, path: str) -> NetworkRule:
    doc = object_fields(value, path, ("allow", "deny"))
    allow4: Intervals | None = None
    allow6: Intervals | None = None
    if "allow" in doc:
        allow4, allow6 = _ranges(strings(doc["allow"], f"{path}.allow"), f"{path}.allow")
    deny4, deny6 = _ranges(strings(doc.get("deny", []), f"{path}.deny"), f"{path}.deny")
    return NetworkRule(allow4, allow6, deny4, deny6)


_CIDRS = {
    "type": "array",
    "items": {"type": "string", "description": "CIDR, e.g. 10.0.0.0/8 or 2001:db8::/32"},
}

PART = Part(
    name="networks",
    compile=compile_networks,
    schema={
        "type": "object",
        "description": "Client address inside some allow CIDR (when given) and inside no deny CIDR",
        "properties": {"allow": _CIDRS, "deny": _CIDRS},
        "additionalProperties": False,
    },
    memo_on=("client_ip",),
)
