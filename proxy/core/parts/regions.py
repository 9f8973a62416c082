"""``regions``: the client's country (ISO 3166-1 alpha-2, from the GeoIP database) must be allowed.

Deny beats allow. ``unknown`` decides for an address without a country: by default ``deny`` when an
``allow`` list is given, ``allow`` otherwise. With no GeoIP database (or a failed lookup) the country is
``UNAVAILABLE`` and the part denies: a region rule never silently passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.core.countries import is_country
from proxy.core.errors import PolicyError
from proxy.core.facts import UNAVAILABLE, Facts
from proxy.core.model import Decision, Reason
from proxy.core.part import Part, object_fields, strings

__all__ = ["PART", "RegionRule"]

_NO_GEOIP = Decision.deny(Reason.REGION_DENIED, "policy needs a region but no GeoIP database is configured")


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

    def check(self, facts: Facts) -> Decision | None:
        country = facts.gathered.get("country", UNAVAILABLE)
        if country is UNAVAILABLE:
            return _NO_GEOIP
        assert country is None or isinstance(country, str)
        if self.permits(country):
            return None
        return Decision.deny(Reason.REGION_DENIED, f"country {country or 'unknown'} is not allowed")


def _countries(value: object, path: str) -> frozenset[str]:
    codes = strings(value, path)
    for i, code in enumerate(codes):
        if not is_country(code):
            raise PolicyError(
                f"{path}[{i}]", f"{code!r} is not an ISO 3166-1 alpha-2 country code (e.g. 'US', 'DE')"
            )
    return frozenset(codes)


def compile_regions(value: object, path: str) -> RegionRule:
    doc = object_fields(value, path, ("allow", "deny", "unknown"))
    allow = _countries(doc["allow"], f"{path}.allow") if "allow" in doc else None
    deny = _countries(doc.get("deny", []), f"{path}.deny")
    unknown = doc.get("unknown", "deny" if allow is not None else "allow")
    if unknown not in ("allow", "deny"):
        raise PolicyError(f"{path}.unknown", f"must be 'allow' or 'deny', not {unknown!r}")
    return RegionRule(allow, deny, unknown == "allow")


_COUNTRIES = {"type": "array", "items": {"type": "string", "pattern": "^[A-Z]{2}$"}}

PART = Part(
    name="regions",
    compile=compile_regions,
    schema={
        "type": "object",
        "description": "Client country (GeoIP) allowed and not denied; 'unknown' decides for no country",
        "properties": {
            "allow": _COUNTRIES,
            "deny": _COUNTRIES,
            "unknown": {"type": "string", "enum": ["allow", "deny"]},
        },
        "additionalProperties": False,
    },
    needs=frozenset({"country"}),
    memo_on=("country",),
)
