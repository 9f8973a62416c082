"""Policy documents: validated and compiled once when written or loaded, evaluated per request.

A policy document is JSON with optional top-level parts; each part compiles into a small matcher and
``evaluate`` runs them in a fixed order, cheapest and most telling first: networks, regions, routes.
The first part that fails names the denial's reason. An absent part constrains nothing; an empty allow
list allows nothing. Unknown fields anywhere are errors, never ignored.

Route path grammar (matched against the normalised path, see ``proxy.paths``):

- a pattern starts with ``/`` and is split on ``/`` into segments;
- ``*`` matches exactly one non-empty segment;
- ``**`` matches zero or more segments (so ``/metrics/**`` matches ``/metrics``, ``/metrics/a/b``);
- any other segment matches itself literally, case-sensitively, in its percent-encoded form; its
  escapes are normalised as paths are (``%7E`` is ``~``, others upper-cased) and one a path may not
  hold (malformed, ``%2F``, ``%00``...) is an error, as is ``*`` inside a segment;
- a trailing ``/`` on the path or the pattern is not significant.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.countries import is_country
from proxy.errors import PolicyError
from proxy.model import ALLOW, Decision, IPAddress, Reason, RequestSignals
from proxy.patterns import Matcher, compile_route_pattern

__all__ = ["PARTS", "CompiledPolicy", "NetworkRule", "RegionRule", "RouteRule", "compile_policy", "evaluate"]

PARTS = ("networks", "regions", "routes")
_METHOD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~")

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4-mapped IPv6 addresses

# (network address as int, netmask as int) pairs, one tuple per IP version
_Nets = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class NetworkRule:
    allow4: _Nets | None  # None: no allow list given
    allow6: _Nets | None
    deny4: _Nets
    deny6: _Nets

    def permits(self, ip: IPAddress) -> bool:
        value = int(ip)
        if ip.version == 4:
            allow, deny = self.allow4, self.deny4
        else:
            allow, deny = self.allow6, self.deny6
        for net, mask in deny:
            if value & mask == net:
                return False
        if allow is None:
            return True
        return any(value & mask == net for net, mask in allow)


@dataclass(frozen=True, slots=True)
class RegionRule:
    allow: frozenset[str] | None
    deny: frozenset[str]
    unknown_allowed: bool

    def permits(self, country: str | None) -> bool:
        if country is None:
            return self.unknown_allowed
        if country in self.deny:
            return False
        return self.allow is None or country in self.allow


@dataclass(frozen=True, slots=True)
class RouteRule:
    methods: frozenset[str] | None  # None: any method
    pattern: str
    matcher: Matcher

    def permits(self, method: str, path: str) -> bool:
        return (self.methods is None or method in self.methods) and self.matcher.match(path) is not None


# Decisions remembered per compiled policy. A policy's decision is a function of the request signals
# alone, and a changed policy is a new CompiledPolicy, so a remembered decision can never outlive the
# policy that made it. Small, because every cached key has its own: at most cache_size x MEMO_SIZE.
MEMO_SIZE = 32


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    networks: NetworkRule | None = None
    regions: RegionRule | None = None
    routes: tuple[RouteRule, ...] | None = None
    memo: dict[RequestSignals, Decision] = field(default_factory=dict, compare=False, repr=False)


EMPTY = CompiledPolicy()


def evaluate(policy: CompiledPolicy, signals: RequestSignals) -> Decision:
    """The policy's decision for ``signals``; remembered, since the same client repeats the same calls."""
    memo = policy.memo
    decision = memo.get(signals)
    if decision is None:
        decision = _evaluate(policy, signals)
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[signals] = decision
    return decision


def _evaluate(policy: CompiledPolicy, signals: RequestSignals) -> Decision:
    if policy.networks is not None and not policy.networks.permits(signals.client_ip):
        return Decision.deny(
            Reason.NETWORK_DENIED, f"client {signals.client_ip} is not in an allowed network"
        )
    if policy.regions is not None:
        if not signals.geo_available:
            return Decision.deny(
                Reason.REGION_DENIED, "policy needs a region but no GeoIP database is configured"
            )
        if not policy.regions.permits(signals.country):
            return Decision.deny(
                Reason.REGION_DENIED, f"country {signals.country or 'unknown'} is not allowed"
            )
    if policy.routes is not None:
        method, path = signals.method, signals.path
        if not any(route.permits(method, path) for route in policy.routes):
            return Decision.deny(Reason.ROUTE_DENIED, f"{method} {path} matches no allowed route")
    return ALLOW


# --- compilation ---------------------------------------------------------------------------------


def _object(value: object, path: str, known: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(path, f"must be an object, not {_kind(value)}")
    for name in value:
        if name not in known:
            raise PolicyError(f"{path}.{name}", f"unknown field; expected one of: {', '.join(known)}")
    return value


def _strings(value: object, path: str) -> list[str]:
    if not isinstance(value, list):
        raise PolicyError(path, f"must be a list, not {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise PolicyError(f"{path}[{i}]", f"must be a string, not {_kind(item)}")
    return value


def _kind(value: object) -> str:
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


def _networks(values: list[str], path: str) -> tuple[_Nets, _Nets]:
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
        if net.version == 6 and net.subnet_of(_MAPPED):  # clients in it are judged as IPv4 (signals.py)
            net = ipaddress.IPv4Network((int(net.network_address) & 0xFFFF_FFFF, net.prefixlen - 96))
        (v4 if net.version == 4 else v6).append((int(net.network_address), int(net.netmask)))
    return tuple(v4), tuple(v6)


def _compile_networks(value: object, path: str) -> NetworkRule:
    doc = _object(value, path, ("allow", "deny"))
    allow4: _Nets | None = None
    allow6: _Nets | None = None
    if "allow" in doc:
        allow4, allow6 = _networks(_strings(doc["allow"], f"{path}.allow"), f"{path}.allow")
    deny4, deny6 = _networks(_strings(doc.get("deny", []), f"{path}.deny"), f"{path}.deny")
    return NetworkRule(allow4, allow6, deny4, deny6)


def _countries(value: object, path: str) -> frozenset[str]:
    codes = _strings(value, path)
    for i, code in enumerate(codes):
        if not is_country(code):
            raise PolicyError(
                f"{path}[{i}]", f"{code!r} is not an ISO 3166-1 alpha-2 country code (e.g. 'US', 'DE')"
            )
    return frozenset(codes)


def _compile_regions(value: object, path: str) -> RegionRule:
    doc = _object(value, path, ("allow", "deny", "unknown"))
    allow = _countries(doc["allow"], f"{path}.allow") if "allow" in doc else None
    deny = _countries(doc.get("deny", []), f"{path}.deny")
    unknown = doc.get("unknown", "deny" if allow is not None else "allow")
    if unknown not in ("allow", "deny"):
        raise PolicyError(f"{path}.unknown", f"must be 'allow' or 'deny', not {unknown!r}")
    return RegionRule(allow, deny, unknown == "allow")


def _compile_routes(value: object, path: str) -> tuple[RouteRule, ...]:
    if not isinstance(value, list):
        raise PolicyError(path, f"must be a list, not {_kind(value)}")
    rules = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        doc = _object(item, where, ("methods", "path"))
        if "path" not in doc:
            raise PolicyError(f"{where}.path", "is required")
        pattern = doc["path"]
        if not isinstance(pattern, str):
            raise PolicyError(f"{where}.path", f"must be a string, not {_kind(pattern)}")
        methods: frozenset[str] | None = None
        if "methods" in doc:
            names = _strings(doc["methods"], f"{where}.methods")
            if not names:
                raise PolicyError(f"{where}.methods", "must not be empty (leave it out to allow any method)")
            upper = [m.upper() for m in names]
            for j, m in enumerate(upper):
                if not m or not _METHOD_CHARS.issuperset(m):
                    raise PolicyError(f"{where}.methods[{j}]", f"{names[j]!r} is not an HTTP method")
            methods = None if "*" in upper else frozenset(upper)
        rules.append(RouteRule(methods, pattern, compile_route_pattern(pattern, f"{where}.path")))
    return tuple(rules)


def compile_policy(doc: object, path: str = "policy") -> CompiledPolicy:
    """Validate and compile; raises PolicyError naming the field path and the reason."""
    doc = _object(doc, path, PARTS)
    return CompiledPolicy(
        networks=_compile_networks(doc["networks"], f"{path}.networks") if "networks" in doc else None,
        regions=_compile_regions(doc["regions"], f"{path}.regions") if "regions" in doc else None,
        routes=_compile_routes(doc["routes"], f"{path}.routes") if "routes" in doc else None,
    )
