"""Attestation issuers as stored: who may sign device or workload tokens, and with which keys.

Pure values. An issuer has a local ``name`` (what policies refer to), a ``kind`` (``device`` or
``workload``), the exact ``iss`` its tokens carry, the ``audience`` they must name, the JWS
``algorithms`` it may use, the longest token lifetime it may issue, and exactly one source of keys: an
inline JWK set, or a ``jwks_url`` that signalgate fetches (``proxy.jwks``), whose last good set is
kept in ``jwks``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from proxy.core.errors import ValidationError
from proxy.core.jwk import PublicJwk, jose_algorithms_of, parse_jwk

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_LIFETIME",
    "ISSUER_KINDS",
    "IssuerRecord",
    "refresh_after",
    "usable_keys",
]

ISSUER_KINDS = ("device", "workload")
DEFAULT_MAX_LIFETIME = 3600
DEFAULT_MAX_AGE = 300.0  # seconds a fetched set without Cache-Control max-age is kept (within bounds)


def refresh_after(max_age: float | None, low: float, high: float) -> float:
    """Seconds until a fetched set is due again: its max-age (or the default) held within [low, high]."""
    return min(max(DEFAULT_MAX_AGE if max_age is None else max_age, low), high)


@dataclass(frozen=True, slots=True)
class IssuerRecord:
    name: str
    kind: str
    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    max_lifetime_s: int = DEFAULT_MAX_LIFETIME
    jwks: Mapping[str, Any] | None = field(default=None, repr=False)  # inline, or the last good fetch
    jwks_url: str | None = None
    fetched_at: datetime | None = None
    fetch_error: str | None = None
    next_fetch_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    revision: int = 0

    def decides_alike(self, other: IssuerRecord) -> bool:
        """Whether ``other`` verifies exactly the tokens this one does (fetch bookkeeping aside)."""
        return (
            self.name,
            self.kind,
            self.issuer,
            self.audience,
            self.algorithms,
            self.max_lifetime_s,
            self.jwks,
        ) == (
            other.name,
            other.kind,
            other.issuer,
            other.audience,
            other.algorithms,
            other.max_lifetime_s,
            other.jwks,
        )

    def public(self) -> dict[str, Any]:
        """The issuer as the admin API shows it: each key's kid, kty, alg, never more of its members."""
        keys, problems = usable_keys(self)
        shown: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "issuer": self.issuer,
            "audience": self.audience,
            "algorithms": list(self.algorithms),
            "max_lifetime_s": self.max_lifetime_s,
            "keys": [_key_shown(key, self.algorithms) for key in keys],
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "revision": self.revision,
        }
        if self.jwks_url is not None:
            shown["jwks_url"] = self.jwks_url
            shown["last_fetched_at"] = self.fetched_at.isoformat() if self.fetched_at else None
            shown["last_fetch_error"] = self.fetch_error
            shown["next_fetch_at"] = self.next_fetch_at.isoformat() if self.next_fetch_at else None
        else:
            shown["jwks"] = self.jwks
        if problems:
            shown["ignored_keys"] = problems
        return shown


def _key_shown(key: PublicJwk, algorithms: tuple[str, ...]) -> dict[str, Any]:
    usable = [alg for alg in jose_algorithms_of(key) if alg in algorithms]
    return {
        "kid": key.kid,
        "kty": key.kty,
        "crv": key.crv,
        "alg": key.alg or ",".join(usable),
        "bits": key.bits,
    }


def usable_keys(record: IssuerRecord) -> tuple[tuple[PublicJwk, ...], list[str]]:
    """The issuer's keys that fit its algorithms, and why each other one is left out.

    Written sets were checked whole when written; a fetched set may hold keys for algorithms the issuer
    does not allow (a provider adding a key type): those are left out, the others still count.
    """
    members = (record.jwks or {}).get("keys", [])
    keys: list[PublicJwk] = []
    problems: list[str] = []
    seen: set[str | None] = set()
    for i, member in enumerate(members if isinstance(members, list) else []):
        try:
            key = parse_jwk(member, f"jwks.keys[{i}]", algorithms=record.algorithms)
        except ValidationError as exc:
            problems.append(str(exc))
            continue
        if key.kid in seen:
            problems.append(f"jwks.keys[{i}]: kid {key.kid!r} appears twice")
            continue
        seen.add(key.kid)
        keys.append(key)
    return tuple(keys), problems
