"""Attestation tokens verified with PyJWT: the shell behind the ``device`` and ``workload`` facts.

Why PyJWT (``pyjwt[crypto]``, on ``cryptography``): the maintained standard JOSE library for Python, and
it lets every rule of ``proxy.core.attestation`` be enforced without hand-written JWS code: a ``PyJWK``
is bound to one algorithm (a token whose header ``alg`` differs is refused before any signature work,
so ``none``, ``HS256`` keyed with a public key's PEM and RS/PS/ES/EdDSA mix-ups all fail), EC curves are
checked against the algorithm, and an unknown ``crit`` extension is refused.

Per token (``TokenVerifier``, a gatherer registered as ``device`` / ``workload`` in ``proxy.wiring``):

1. at most one header value, at most ``MAX_TOKEN_BYTES`` (before any base64 or JSON work);
2. the cache: a token verified before (by SHA-256) with an issuer that has not changed since is
   reused until its ``exp``: one hash per request, then the core's time, audience and claim checks;
3. header and claims read unverified (PyJWT) only to find the issuer: ``iss`` must name a registered
   issuer of this kind, ``alg`` be one of its algorithms, ``kid`` one of its keys (no ``kid``: only an
   issuer with exactly one key). A key URL in the token (``jku``, ``x5u``, an embedded ``jwk``) is never
   read. An unknown ``kid`` of a fetched set asks for an early refetch (``on_unknown_kid``);
4. the signature, with the key bound to that algorithm (PyJWS); the claims' types.

Failures are ``TokenFailure`` values naming the check; PyJWT's exceptions are translated here only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.exceptions import InvalidAlgorithmError, InvalidSignatureError, PyJWTError

from proxy.core.attestation import MAX_TOKEN_BYTES, Check, TokenFailure, VerifiedToken
from proxy.core.facts import UNAVAILABLE, Facts
from proxy.core.issuers import IssuerRecord, usable_keys
from proxy.core.jwk import jose_algorithms_of

__all__ = ["DEFAULT_CACHE_SIZE", "TokenVerifier", "TrustStore", "TrustedIssuer", "translate_jwt_error"]

log = logging.getLogger("signalgate.attest")

DEFAULT_CACHE_SIZE = 10_000
_VERIFY = jwt.PyJWS(options={"verify_signature": True, "enforce_minimum_key_length": True})


def translate_jwt_error(exc: Exception) -> TokenFailure:
    """The one place PyJWT's (and a malformed token's) exceptions become a failed check."""
    if isinstance(exc, InvalidSignatureError):
        return TokenFailure(Check.INVALID, "signature does not verify")
    if isinstance(exc, InvalidAlgorithmError):
        return TokenFailure(Check.INVALID, f"algorithm: {exc}")
    if isinstance(exc, PyJWTError):
        return TokenFailure(Check.INVALID, f"format: {exc}"[:200])
    return TokenFailure(Check.INVALID, f"format: {type(exc).__name__}")  # ValueError, TypeError...


@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    """A registered issuer with its keys ready to verify: kid -> {algorithm: PyJWK}."""

    record: IssuerRecord
    keys: dict[str | None, dict[str, jwt.PyJWK]] = field(repr=False)
    from_url: bool = False

    @classmethod
    def of(cls, record: IssuerRecord) -> TrustedIssuer:
        keys: dict[str | None, dict[str, jwt.PyJWK]] = {}
        usable, problems = usable_keys(record)
        for problem in problems:
            log.warning("issuer %s: key left out: %s", record.name, problem)
        for key in usable:
            prepared: dict[str, jwt.PyJWK] = {}
            for algorithm in jose_algorithms_of(key):
                if algorithm in record.algorithms:
                    try:
                        prepared[algorithm] = jwt.PyJWK(dict(key.members), algorithm)
                    except PyJWTError as exc:
                        log.warning(
                            "issuer %s: key %s left out for %s: %s", record.name, key.kid, algorithm, exc
                        )
            if prepared:
                keys[key.kid] = prepared
        return cls(record, keys, record.jwks_url is not None)


class TrustStore:
    """The issuers one worker trusts, by name and by (kind, iss); replaced one issuer at a time."""

    __slots__ = ("_by_iss", "_by_name", "settled")

    def __init__(self) -> None:
        self._by_name: dict[str, TrustedIssuer] = {}
        self._by_iss: dict[tuple[str, str], TrustedIssuer] = {}
        self.settled = False  # the set is known (loaded, and not reset since)

    def set_settled(self, settled: bool) -> None:
        self.settled = settled

    def replace(self, name: str, record: IssuerRecord | None) -> None:
        """Trust ``record`` under ``name`` (None: trust nothing by that name any more). An unchanged
        record keeps its TrustedIssuer, and so the tokens verified with it stay cached."""
        old = self._by_name.get(name)
        if record is not None and old is not None and old.record.decides_alike(record):
            return
        if old is not None:
            del self._by_name[name]
            self._by_iss.pop((old.record.kind, old.record.issuer), None)
        if record is not None:
            trusted = TrustedIssuer.of(record)
            self._by_name[name] = trusted
            self._by_iss[(record.kind, record.issuer)] = trusted

    def get(self, name: str) -> TrustedIssuer | None:
        return self._by_name.get(name)

    def find(self, kind: str, iss: str) -> TrustedIssuer | None:
        return self._by_iss.get((kind, iss))

    def names(self) -> list[str]:
        return sorted(self._by_name)


class TokenVerifier:
    """The gatherer of one attestation fact (``device`` or ``workload``) from its request header."""

    __slots__ = ("_cache", "_cache_size", "_clock", "_header", "_kind", "_on_unknown_kid", "_skew", "_trust")

    def __init__(
        self,
        trust: TrustStore,
        kind: str,
        header: str,
        *,
        skew_s: int = 30,
        cache_size: int = DEFAULT_CACHE_SIZE,
        on_unknown_kid: Callable[[str], None] = lambda name: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._trust = trust
        self._kind = kind
        self._header = header
        self._skew = skew_s
        self._cache_size = cache_size
        self._on_unknown_kid = on_unknown_kid
        self._clock = clock
        # SHA-256 of a token -> (what it verified as, the issuer it verified with)
        self._cache: dict[bytes, tuple[VerifiedToken, TrustedIssuer]] = {}

    def __call__(self, facts: Facts) -> object:
        values = facts.headers.getall(self._header, ())
        if not values:
            return TokenFailure(Check.MISSING, f"no {self._header} header")
        if len(values) > 1:
            return TokenFailure(Check.INVALID, f"format: {len(values)} {self._header} headers, one expected")
        if not self._trust.settled:
            return UNAVAILABLE  # the issuers are being reloaded after missed changes: 503, not a guess
        return self.verify(values[0])

    def verify(self, token: str) -> VerifiedToken | TokenFailure:
        if len(token) > MAX_TOKEN_BYTES:
            return TokenFailure(Check.INVALID, f"size: {len(token)} bytes, at most {MAX_TOKEN_BYTES}")
        try:
            digest = hashlib.sha256(token.encode("ascii")).digest()
        except UnicodeEncodeError:
            return TokenFailure(Check.INVALID, "format: not ASCII")
        cached = self._cache.get(digest)
        if cached is not None:
            verified, issuer = cached
            if self._trust.get(verified.issuer) is issuer:
                return verified
            del self._cache[digest]  # its issuer changed or went away since
        result = self._verify(token)
        if isinstance(result, VerifiedToken):
            self._remember(digest, result)
        return result

    def _remember(self, digest: bytes, verified: VerifiedToken) -> None:
        issuer = self._trust.get(verified.issuer)
        if issuer is None or verified.exp is None or verified.exp + self._skew <= self._clock():
            return
        cache = self._cache
        if len(cache) >= self._cache_size:
            now = self._clock()
            for stale in [
                d for d, (v, _) in cache.items() if v.exp is not None and v.exp + self._skew <= now
            ]:
                del cache[stale]
            while len(cache) >= self._cache_size:  # still full of live tokens: drop the oldest
                del cache[next(iter(cache))]
        cache[digest] = (verified, issuer)

    def _verify(self, token: str) -> VerifiedToken | TokenFailure:
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except (PyJWTError, ValueError, TypeError) as exc:
            return translate_jwt_error(exc)
        iss = claims.get("iss")
        if not isinstance(iss, str):
            return TokenFailure(Check.UNTRUSTED, "claim iss is missing")
        issuer = self._trust.find(self._kind, iss)
        if issuer is None:
            other = "device" if self._kind == "workload" else "workload"
            if self._trust.find(other, iss) is not None:
                return TokenFailure(Check.UNTRUSTED, f"issuer {iss!r} is registered for {other} tokens")
            return TokenFailure(Check.UNTRUSTED, f"issuer {iss[:100]!r} is not registered")
        record = issuer.record
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in record.algorithms:
            return TokenFailure(Check.INVALID, f"algorithm {alg!r} is not one of {list(record.algorithms)}")
        kid = header.get("kid")
        if kid is None:
            if len(issuer.keys) != 1:
                return TokenFailure(
                    Check.UNTRUSTED, f"no kid, and issuer {record.name} has {len(issuer.keys)} keys"
                )
            (keys,) = issuer.keys.values()
        else:
            found = issuer.keys.get(kid) if isinstance(kid, str) else None
            if found is None:
                if issuer.from_url:
                    self._on_unknown_kid(record.name)
                return TokenFailure(
                    Check.UNTRUSTED, f"unknown kid {str(kid)[:100]!r} for issuer {record.name}"
                )
            keys = found
        key = keys.get(alg)
        if key is None:
            return TokenFailure(
                Check.INVALID, f"algorithm {alg} does not fit key {kid!r} ({', '.join(keys)})"
            )
        try:
            _VERIFY.decode_complete(token, key=key, algorithms=[alg])
        except (PyJWTError, ValueError, TypeError) as exc:
            return translate_jwt_error(exc)
        return _verified(record, claims, kid, alg, self._skew)


def _verified(
    record: IssuerRecord, claims: dict[str, Any], kid: str | None, alg: str, skew: int
) -> VerifiedToken | TokenFailure:
    times: dict[str, float | None] = {}
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            return TokenFailure(Check.INVALID, f"claim {name} must be a number, not {json.dumps(value)[:40]}")
        times[name] = float(value) if value is not None else None
    aud = claims.get("aud", [])
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        return TokenFailure(Check.INVALID, "claim aud must be a string or a list of strings")
    sub = claims.get("sub", "")
    return VerifiedToken(
        issuer=record.name,
        kind=record.kind,
        subject=sub if isinstance(sub, str) else "",
        claims=claims,
        iat=times["iat"],
        exp=times["exp"],
        nbf=times["nbf"],
        audiences=tuple(audiences),
        issuer_audience=record.audience,
        max_lifetime_s=record.max_lifetime_s,
        kid=kid,
        alg=alg,
        skew_s=skew,
    )
