"""Attestations: signed JWTs about the client's device or workload, and the rules a policy holds them to.

Pure core, shared by the ``device`` and ``workload`` parts. The shell ``proxy.attest`` verifies a token's
signature against a registered issuer's keys and gathers a ``VerifiedToken`` (or a ``TokenFailure``
saying which check failed) under ``facts.gathered["device"]`` or ``["workload"]``, caching verified tokens
by their SHA-256 until they expire. What depends on the time or on the policy is checked here, on every
request, in this order, each failure with its own reason code:

1. ``untrusted``: the token's issuer is one the policy names (``issuers``);
2. ``invalid``: ``exp`` and ``iat`` are present, and the lifetime ``exp - iat`` is within the issuer's
   ``max_lifetime_s``;
3. ``expired``: not past ``exp``, not before ``nbf`` nor ``iat`` (each with ``clock_skew``), and ``iat``
   no older than the policy's ``max_age_s``;
4. ``audience``: ``aud`` contains ``signalgate:<key id>`` when the policy binds the token to the key
   (``bind_to_key``), else the issuer's ``audience``;
5. ``claims``: every claim matcher passes.

Claim matchers (``claims``: claim name -> matcher; a dotted name reaches into nested objects):

- a JSON scalar: the claim equals it (``true`` is not ``1``);
- a list of scalars: the claim equals one of them;
- ``{"min": x}`` / ``{"max": x}`` (one or both): a number compares numerically; a string is a dotted
  version compared part by part as integers (``"14.10"`` is above ``"14.9"``; a claim that is not such a
  version fails);
- ``{"glob": "refs/heads/release-*"}``: the whole string claim matches, ``*`` standing for any run of
  characters.

A claim that is missing fails its matcher.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from proxy.core.errors import PolicyError
from proxy.core.facts import UNAVAILABLE, Facts
from proxy.core.model import Decision, Reason
from proxy.core.part import Part, kind, object_fields, strings

__all__ = [
    "BIND_PREFIX",
    "ISSUER_NAME",
    "MAX_TOKEN_BYTES",
    "Check",
    "ClaimMatcher",
    "TokenFailure",
    "TokenRule",
    "VerifiedToken",
    "claim_value",
    "compile_claims",
    "compile_matcher",
    "token_part",
    "version_parts",
]

MAX_TOKEN_BYTES = 8192  # a larger token is refused before any base64 or JSON work
BIND_PREFIX = "signalgate:"  # aud value binding a token to one key: "signalgate:<key id>"
ISSUER_NAME = re.compile(r"[a-z0-9-]{1,64}")
MAX_AGE_LIMIT = 86400
_MISSING = object()
_SHOWN = 60  # characters of a claim value quoted in a decision's detail


class Check(StrEnum):
    """Which check an attestation failed; each maps to a reason code per part."""

    MISSING = "missing"
    INVALID = "invalid"
    UNTRUSTED = "untrusted"
    EXPIRED = "expired"
    AUDIENCE = "audience"
    CLAIMS = "claims"


_REASONS: dict[str, dict[Check, Reason]] = {
    "device": {
        Check.MISSING: Reason.DEVICE_ATTESTATION_MISSING,
        Check.INVALID: Reason.DEVICE_ATTESTATION_INVALID,
        Check.UNTRUSTED: Reason.DEVICE_ATTESTATION_UNTRUSTED,
        Check.EXPIRED: Reason.DEVICE_ATTESTATION_EXPIRED,
        Check.AUDIENCE: Reason.DEVICE_ATTESTATION_AUDIENCE,
        Check.CLAIMS: Reason.DEVICE_ATTESTATION_CLAIMS,
    },
    "workload": {
        Check.MISSING: Reason.WORKLOAD_ATTESTATION_MISSING,
        Check.INVALID: Reason.WORKLOAD_ATTESTATION_INVALID,
        Check.UNTRUSTED: Reason.WORKLOAD_ATTESTATION_UNTRUSTED,
        Check.EXPIRED: Reason.WORKLOAD_ATTESTATION_EXPIRED,
        Check.AUDIENCE: Reason.WORKLOAD_ATTESTATION_AUDIENCE,
        Check.CLAIMS: Reason.WORKLOAD_ATTESTATION_CLAIMS,
    },
}


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token whose signature verified with a key of the registered issuer ``issuer``."""

    issuer: str  # the issuer's local name
    kind: str  # device | workload
    subject: str  # ``sub``, "" when absent
    claims: Mapping[str, Any] = field(repr=False)
    iat: float | None
    exp: float | None
    nbf: float | None = None
    audiences: tuple[str, ...] = ()
    issuer_audience: str = ""
    max_lifetime_s: int = 3600
    kid: str | None = None
    alg: str = ""
    skew_s: int = 30  # tolerated clock skew (setting clock_skew)


@dataclass(frozen=True, slots=True)
class TokenFailure:
    check: Check
    detail: str


# --- claim matchers ---------------------------------------------------------------------------------


class ClaimMatcher:
    """One compiled matcher; ``why_not(value)`` is None when it passes, else the failure's words."""

    __slots__ = ("_equal", "_glob", "_max", "_min", "describe")

    def __init__(
        self,
        describe: str,
        *,
        equal: tuple[object, ...] | None = None,
        low: float | tuple[int, ...] | None = None,
        high: float | tuple[int, ...] | None = None,
        glob: re.Pattern[str] | None = None,
    ) -> None:
        self.describe = describe
        self._equal = equal
        self._min = low
        self._max = high
        self._glob = glob

    def why_not(self, value: object) -> str | None:
        if value is _MISSING:
            return "is missing"
        if self._equal is not None:
            if any(_same(value, allowed) for allowed in self._equal):
                return None
            return f"is {_show(value)}, not {self.describe}"
        if self._glob is not None:
            if isinstance(value, str) and self._glob.fullmatch(value) is not None:
                return None
            return f"is {_show(value)}, which does not match {self.describe}"
        bound = self._min if self._min is not None else self._max
        if isinstance(bound, tuple):
            here: float | tuple[int, ...] | None = version_parts(value) if isinstance(value, str) else None
            if here is None:
                return f"is {_show(value)}, not a dotted version to compare with {self.describe}"
        else:
            if not _is_number(value):
                return f"is {_show(value)}, not a number to compare with {self.describe}"
            here = float(value)  # type: ignore[arg-type]
        if self._min is not None and here < self._min:  # type: ignore[operator]
            return f"is {_show(value)}, below {self.describe}"
        if self._max is not None and here > self._max:  # type: ignore[operator]
            return f"is {_show(value)}, above {self.describe}"
        return None


def _same(value: object, allowed: object) -> bool:
    """JSON equality: a boolean never equals a number, 1 equals 1.0."""
    if isinstance(value, bool) or isinstance(allowed, bool):
        return type(value) is type(allowed) and value == allowed
    if _is_number(value) and _is_number(allowed):
        return value == allowed
    return type(value) is type(allowed) and value == allowed


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def version_parts(text: str) -> tuple[int, ...] | None:
    """``"14.10.1"`` as ``(14, 10, 1)``; None when it is not dot-separated decimal integers."""
    parts = text.split(".")
    if not all(part.isascii() and part.isdigit() and len(part) <= 9 for part in parts):
        return None
    values = [int(part) for part in parts]
    while len(values) > 1 and values[-1] == 0:  # 14.2 and 14.2.0 are one version
        values.pop()
    return tuple(values)


def _scalar(value: object) -> bool:
    return value is None or isinstance(value, str | bool) or _is_number(value)


def compile_matcher(value: object, path: str) -> ClaimMatcher:
    if isinstance(value, list):
        if not value:
            raise PolicyError(path, "must list at least one allowed value")
        for i, item in enumerate(value):
            if not _scalar(item):
                raise PolicyError(
                    f"{path}[{i}]", f"must be a string, number, boolean or null, not {kind(item)}"
                )
        return ClaimMatcher(f"one of {_show(value)}", equal=tuple(value))
    if isinstance(value, dict):
        doc = object_fields(value, path, ("min", "max", "glob"))
        if not doc:
            raise PolicyError(path, "must hold 'min', 'max' or 'glob'")
        if "glob" in doc:
            if len(doc) > 1:
                raise PolicyError(path, "'glob' cannot be combined with 'min' or 'max'")
            pattern = doc["glob"]
            if not isinstance(pattern, str) or not pattern:
                raise PolicyError(f"{path}.glob", f"must be a non-empty string, not {kind(pattern)}")
            regex = re.compile(".*".join(re.escape(piece) for piece in pattern.split("*")), re.DOTALL)
            return ClaimMatcher(f"glob {pattern!r}", glob=regex)
        bounds: dict[str, float | tuple[int, ...]] = {}
        for name in ("min", "max"):
            if name not in doc:
                continue
            bound = doc[name]
            if _is_number(bound):
                bounds[name] = float(bound)
            elif isinstance(bound, str) and version_parts(bound) is not None:
                bounds[name] = version_parts(bound)  # type: ignore[assignment]
            else:
                raise PolicyError(
                    f"{path}.{name}", f"must be a number or a dotted version like '14.2', not {_show(bound)}"
                )
        if len({type(bound) for bound in bounds.values()}) > 1:
            raise PolicyError(path, "'min' and 'max' must both be numbers or both be versions")
        if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:  # type: ignore[operator]
            raise PolicyError(path, "'min' is above 'max': nothing could match")
        words = " and ".join(f"{'at least' if n == 'min' else 'at most'} {doc[n]!r}" for n in bounds)
        return ClaimMatcher(words, low=bounds.get("min"), high=bounds.get("max"))
    if _scalar(value):
        return ClaimMatcher(_show(value), equal=(value,))
    raise PolicyError(
        path, f"must be a value, a list of values or an object with min/max/glob, not {kind(value)}"
    )


def compile_claims(value: object, path: str) -> tuple[tuple[str, tuple[str, ...], ClaimMatcher], ...]:
    if not isinstance(value, dict):
        raise PolicyError(path, f"must be an object of claim matchers, not {kind(value)}")
    compiled = []
    for name, matcher in value.items():
        parts = tuple(name.split("."))
        if not name or not all(parts):
            raise PolicyError(f"{path}.{name}", "is not a claim name (dotted names reach nested claims)")
        compiled.append((name, parts, compile_matcher(matcher, f"{path}.{name}")))
    return tuple(compiled)


def claim_value(claims: Mapping[str, Any], name: str, parts: tuple[str, ...]) -> object:
    """The claim ``name`` (a literal name first, then dotted parts into nested objects)."""
    if name in claims:
        return claims[name]
    value: object = claims
    for part in parts:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


# --- the rule of a device or workload part ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenRule:
    kind: str  # device | workload: the gathered fact it reads, the reason codes it gives
    issuers: tuple[str, ...]
    max_age_s: int | None
    bind_to_key: bool
    claims: tuple[tuple[str, tuple[str, ...], ClaimMatcher], ...]

    def deny(self, check: Check, detail: str) -> Decision:
        return Decision.deny(_REASONS[self.kind][check], f"{self.kind} {check}: {detail}")

    def check(self, facts: Facts) -> Decision | None:
        token = facts.gathered.get(self.kind, UNAVAILABLE)
        if isinstance(token, TokenFailure):
            return self.deny(token.check, token.detail)
        if not isinstance(token, VerifiedToken):  # UNAVAILABLE: no verifier in this process; fail closed
            return Decision.deny(
                Reason.AUTHORIZATION_UNAVAILABLE, f"{self.kind}: attestations cannot be verified here"
            )
        return self.judge(token, facts.now.timestamp(), facts.key_id)

    def judge(self, token: VerifiedToken, now: float, key_id: str) -> Decision | None:
        if token.issuer not in self.issuers or token.kind != self.kind:
            return self.deny(Check.UNTRUSTED, f"issuer {token.issuer!r} is not one of {list(self.issuers)}")
        if token.exp is None or token.iat is None:
            return self.deny(Check.INVALID, f"claim {'exp' if token.exp is None else 'iat'} is required")
        if token.exp - token.iat > token.max_lifetime_s:
            return self.deny(
                Check.INVALID,
                f"lifetime exp - iat = {token.exp - token.iat:.0f}s is over the issuer's "
                f"max_lifetime_s {token.max_lifetime_s}",
            )
        skew = token.skew_s
        if now >= token.exp + skew:
            return self.deny(Check.EXPIRED, f"claim exp: expired {now - token.exp:.0f}s ago")
        if token.nbf is not None and now + skew < token.nbf:
            return self.deny(Check.EXPIRED, f"claim nbf: not valid for another {token.nbf - now:.0f}s")
        if now + skew < token.iat:
            return self.deny(Check.EXPIRED, f"claim iat: issued {token.iat - now:.0f}s in the future")
        if self.max_age_s is not None and now - token.iat > self.max_age_s:
            return self.deny(
                Check.EXPIRED,
                f"claim iat: issued {now - token.iat:.0f}s ago, over max_age_s {self.max_age_s}",
            )
        wanted = f"{BIND_PREFIX}{key_id}" if self.bind_to_key else token.issuer_audience
        if wanted not in token.audiences:
            return self.deny(Check.AUDIENCE, f"claim aud {_show(list(token.audiences))} lacks {wanted!r}")
        for name, parts, matcher in self.claims:
            why = matcher.why_not(claim_value(token.claims, name, parts))
            if why is not None:
                return self.deny(Check.CLAIMS, f"claim {name} {why}")
        return None


def compile_token_rule(kind_name: str, value: object, path: str) -> TokenRule:
    doc = object_fields(value, path, ("issuers", "max_age_s", "bind_to_key", "claims"))
    if "issuers" not in doc:
        raise PolicyError(f"{path}.issuers", "is required: the names of the issuers whose tokens count")
    issuers = strings(doc["issuers"], f"{path}.issuers")
    if not issuers:
        raise PolicyError(f"{path}.issuers", "must name at least one issuer")
    for i, name in enumerate(issuers):
        if ISSUER_NAME.fullmatch(name) is None:
            raise PolicyError(f"{path}.issuers[{i}]", f"{name!r} is not an issuer name ([a-z0-9-]{{1,64}})")
    max_age = doc.get("max_age_s")
    if max_age is not None and (
        not isinstance(max_age, int) or isinstance(max_age, bool) or not 1 <= max_age <= MAX_AGE_LIMIT
    ):
        raise PolicyError(
            f"{path}.max_age_s", f"must be whole seconds from 1 to {MAX_AGE_LIMIT}, not {max_age!r}"
        )
    bind = doc.get("bind_to_key", False)
    if not isinstance(bind, bool):
        raise PolicyError(f"{path}.bind_to_key", f"must be true or false, not {kind(bind)}")
    claims = compile_claims(doc.get("claims", {}), f"{path}.claims")
    return TokenRule(kind_name, tuple(dict.fromkeys(issuers)), max_age, bind, claims)


_ISSUER_NAME_SCHEMA = {"type": "string", "pattern": "^[a-z0-9-]{1,64}$"}
_MATCHER_SCHEMA: Mapping[str, Any] = {
    "description": "A value the claim must equal, a list of allowed values, or {min, max} / {glob}",
    "oneOf": [
        {"type": ["string", "number", "boolean", "null"]},
        {"type": "array", "minItems": 1, "items": {"type": ["string", "number", "boolean", "null"]}},
        {
            "type": "object",
            "properties": {
                "min": {"type": ["number", "string"]},
                "max": {"type": ["number", "string"]},
                "glob": {"type": "string", "minLength": 1},
            },
            "additionalProperties": False,
            "minProperties": 1,
        },
    ],
}


def token_part(kind_name: str, header: str) -> Part:
    """The ``device`` or ``workload`` part: a token from a registered issuer of that kind, judged above."""
    return Part(
        name=kind_name,
        compile=lambda value, path: compile_token_rule(kind_name, value, path),
        schema={
            "type": "object",
            "description": f"A signed {kind_name} attestation (JWT in {header}) from a named issuer",
            "properties": {
                "issuers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "string", "pattern": "^[a-z0-9-]{1,64}$"},
                },
                "max_age_s": {"type": "integer", "minimum": 1, "maximum": MAX_AGE_LIMIT},
                "bind_to_key": {"type": "boolean", "description": "aud must contain signalgate:<key id>"},
                "claims": {"type": "object", "additionalProperties": _MATCHER_SCHEMA},
            },
            "required": ["issuers"],
            "additionalProperties": False,
        },
        needs=frozenset({kind_name}),
        memo_on=None,  # reads the time and a token: checked on every request
    )
