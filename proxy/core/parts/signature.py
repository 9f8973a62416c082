"""``signature``: proof of possession, an RFC 9421 HTTP Message Signature by one of the policy's keys.

``keys`` is a JWK set of public keys, each with a ``kid`` (the signature's ``keyid``): Ed25519
(``ed25519``), EC P-256 (``ecdsa-p256-sha256``) or RSA of at least 2048 bits (``rsa-pss-sha512``).
The shell ``proxy.signatures`` verifies the request's signature against them and gathers the result
(``proxy.core.signed``); this rule then requires, on every request:

- the signature covers ``@method``, the target (``@target-uri``, or ``@authority``, ``@path`` and
  ``@query`` together), the API key's header, the attestation headers the request carries, and
  ``content-digest`` when the request has a body (whose digest the forwarder checks as the body
  streams, ``proxy.core.digest``);
- ``created`` is present, no older than ``max_age_s`` and not in the future beyond the clock skew;
  ``expires``, when present, has not passed;
- a ``nonce`` is present. That it was not seen before within the window is the ``nonce`` admission's
  to decide (``Part.admits``): a shared table in PostgreSQL, so a replay to another worker or instance
  is refused too (``signature_replayed``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from proxy.core.errors import PolicyError, ValidationError
from proxy.core.facts import UNAVAILABLE, Facts
from proxy.core.jwk import JOSE_ALGORITHMS, SIGNATURE_ALGORITHMS, PublicJwk, jose_algorithms_of, parse_jwks
from proxy.core.jwk import signature_algorithm_of as _algorithm_of
from proxy.core.model import Decision, Reason
from proxy.core.part import Part, kind, object_fields
from proxy.core.signed import SignatureFailure, VerifiedSignature, covers_target

__all__ = ["DEFAULT_MAX_AGE", "PART", "SignatureRule", "compile_signature"]

DEFAULT_MAX_AGE = 60
MAX_AGE_LIMIT = 3600


@dataclass(frozen=True, slots=True)
class SignatureRule:
    keys: tuple[PublicJwk, ...]
    max_age_s: int
    by_kid: Mapping[str, PublicJwk] = field(compare=False, repr=False)

    def key(self, keyid: str) -> PublicJwk | None:
        return self.by_kid.get(keyid)

    def check(self, facts: Facts) -> Decision | None:
        signed = facts.gathered.get("signature", UNAVAILABLE)
        if isinstance(signed, SignatureFailure):
            return Decision.deny(signed.reason, f"signature: {signed.detail}")
        if not isinstance(signed, VerifiedSignature):  # no verifier in this process: fail closed
            return Decision.deny(
                Reason.AUTHORIZATION_UNAVAILABLE, "signature: request signatures cannot be verified here"
            )
        return self.judge(signed, facts.now.timestamp())

    def judge(self, signed: VerifiedSignature, now: float) -> Decision | None:
        if signed.keyid not in self.by_kid:
            return _invalid(f"keyid {signed.keyid!r} is not one of the policy's keys")
        covered = signed.covered
        if "@method" not in covered:
            return _invalid("does not cover @method")
        if not covers_target(covered):
            return _invalid("does not cover @target-uri (nor @authority, @path and @query)")
        uncovered = sorted(signed.must_cover - covered)
        if uncovered:
            return _invalid(f"does not cover {uncovered[0]}")
        if signed.created is None:
            return _invalid("has no created parameter")
        skew = signed.skew_s
        age = now - signed.created
        if age > self.max_age_s:
            return _expired(f"created {age:.0f}s ago, over max_age_s {self.max_age_s}")
        if -age > skew:
            return _expired(f"created {-age:.0f}s in the future")
        if signed.expires is not None and now >= signed.expires + skew:
            return _expired(f"expired {now - signed.expires:.0f}s ago")
        if not signed.nonce:
            return _invalid("has no nonce")
        return None


def _invalid(detail: str) -> Decision:
    return Decision.deny(Reason.SIGNATURE_INVALID, f"signature: {detail}")


def _expired(detail: str) -> Decision:
    return Decision.deny(Reason.SIGNATURE_EXPIRED, f"signature: {detail}")


def _fits(key: PublicJwk) -> tuple[str, ...]:
    """What a policy key may say in its ``alg``: its RFC 9421 algorithm, or a JOSE name for its type."""
    algorithm = _algorithm_of(key)
    return (algorithm, *jose_algorithms_of(key)) if algorithm else ()


def compile_signature(value: object, path: str) -> SignatureRule:
    doc = object_fields(value, path, ("keys", "max_age_s"))
    if "keys" not in doc:
        raise PolicyError(f"{path}.keys", 'is required: a JWK set {"keys": [...]} of public keys with kids')
    try:
        keys = parse_jwks(
            doc["keys"],
            f"{path}.keys",
            algorithms=SIGNATURE_ALGORITHMS + JOSE_ALGORITHMS,
            fits=_fits,
            require_kid=True,
        )
    except PolicyError:
        raise
    except ValidationError as exc:
        raise PolicyError(exc.path, exc.reason) from None
    max_age = doc.get("max_age_s", DEFAULT_MAX_AGE)
    if not isinstance(max_age, int) or isinstance(max_age, bool) or not 1 <= max_age <= MAX_AGE_LIMIT:
        raise PolicyError(
            f"{path}.max_age_s",
            f"must be whole seconds from 1 to {MAX_AGE_LIMIT}, not {max_age!r} ({kind(max_age)})",
        )
    return SignatureRule(keys, max_age, {key.kid: key for key in keys if key.kid is not None})


PART = Part(
    name="signature",
    compile=compile_signature,
    schema={
        "type": "object",
        "description": "An RFC 9421 request signature by one of these keys (Ed25519, EC P-256, RSA-PSS)",
        "properties": {
            "keys": {
                "type": "object",
                "description": "A JWK set of public keys, each with a kid (the signature's keyid)",
                "properties": {"keys": {"type": "array", "minItems": 1, "items": {"type": "object"}}},
                "required": ["keys"],
                "additionalProperties": False,
            },
            "max_age_s": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_AGE_LIMIT,
                "default": DEFAULT_MAX_AGE,
            },
        },
        "required": ["keys"],
        "additionalProperties": False,
    },
    needs=frozenset({"signature"}),
    memo_on=None,  # reads the time and the request's signature
    admits="nonce",  # a (keyid, nonce) pair is accepted once within its window
)
