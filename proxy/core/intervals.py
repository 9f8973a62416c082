"""Sets of IP addresses as merged, sorted integer intervals, searched with ``bisect``: O(log n) per check.

Used by the ``networks`` policy part (allow and deny CIDRs) and by the trusted-proxy set
(``proxy.core.signals.TrustedProxies``).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["AddressSet", "Intervals"]


@dataclass(frozen=True, slots=True)
class Intervals:
    """Disjoint, sorted ``[start, end]`` ranges: ``starts[i]..ends[i]``."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @classmethod
    def of(cls, ranges: Iterable[tuple[int, int]]) -> Intervals:
        merged: list[list[int]] = []
        for start, end in sorted(ranges):
            if merged and start <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        return cls(tuple(s for s, _ in merged), tuple(e for _, e in merged))

    def __contains__(self, value: int) -> bool:
        i = bisect.bisect_right(self.starts, value) - 1
        return i >= 0 and value <= self.ends[i]

    def __len__(self) -> int:
        return len(self.starts)


@dataclass(frozen=True, slots=True)
class AddressSet:
    """The addresses of some networks, IPv4 and IPv6 apart (an address is in a network of its version)."""

    v4: Intervals
    v6: Intervals

    @classmethod
    def of(cls, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> AddressSet:
        nets = list(networks)
        return cls(
            Intervals.of((int(n.network_address), int(n.broadcast_address)) for n in nets if n.version == 4),
            Intervals.of((int(n.network_address), int(n.broadcast_address)) for n in nets if n.version == 6),
        )

    def __contains__(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return int(ip) in (self.v4 if ip.version == 4 else self.v6)

    def __bool__(self) -> bool:
        return bool(self.v4) or bool(self.v6)
