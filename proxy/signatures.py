"""RFC 9421 request signatures verified with ``http-message-signatures``: the shell behind the
``signature`` fact.

Why that package: it builds the signature base of RFC 9421 (derived components, structured-field
serialisation, ``;sf``/``;key``/``;bs`` parameters) on ``http-sf`` and verifies with ``cryptography``,
and it needs only the request's method, URI and header fields, never its body, so it fits a proxy
that streams bodies. What it leaves to its caller is ours: it checks neither ``Content-Digest`` nor
nonces, and by default accepts a day-old signature. So the verifier here is told to skip its own
clock checks (``created``/``expires`` are judged by the ``signature`` part against the policy's
``max_age_s`` and the injected clock), the nonce goes to the ``nonce`` admission, and the body is
checked against ``Content-Digest`` as it streams (``proxy.core.digest``).

Per request (``SignatureVerifier``, the gatherer registered as ``signature`` in ``proxy.wiring``):

1. ``Signature-Input`` and ``Signature`` present (else ``signature_missing``), one signature in them;
   parsed with ``http-sf`` to find its ``keyid`` among the policy's keys (``facts.policy``);
2. the package rebuilds the signature base from the request as the client addressed it (scheme and
   authority from trusted X-Forwarded-* headers when the peer is a trusted proxy) and verifies it with
   the key, the algorithm fixed by the key's type;
3. the request's ``Content-Digest`` is parsed (sha-256, sha-512); with no body it is checked at once.

The answer is a ``proxy.core.signed`` value; the package's exceptions are translated here only.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import http_sf
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from http_message_signatures import HTTPMessageVerifier, HTTPSignatureKeyResolver
from http_message_signatures.algorithms import (
    ECDSA_P256_SHA256,
    ED25519,
    RSA_PSS_SHA512,
    HTTPSignatureAlgorithm,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException

from proxy.core.digest import ALGORITHMS, digest_matches
from proxy.core.facts import Facts
from proxy.core.jwk import PublicJwk, signature_algorithm_of
from proxy.core.model import Reason
from proxy.core.parts.signature import SignatureRule
from proxy.core.signed import SignatureFailure, VerifiedSignature

__all__ = ["SignatureVerifier", "public_key", "translate_signature_error"]

_ALGORITHMS: dict[str, type[HTTPSignatureAlgorithm]] = {
    "ed25519": ED25519,
    "ecdsa-p256-sha256": ECDSA_P256_SHA256,
    "rsa-pss-sha512": RSA_PSS_SHA512,
}
_WHOLE_FIELD = frozenset({"sf", "bs"})  # parameters that still cover a field whole
_KEYS_KEPT = 1024  # cryptography key objects kept, by JWK


def translate_signature_error(exc: Exception) -> SignatureFailure:
    """The one place the package's (and a malformed field's) exceptions become a failed check."""
    if isinstance(exc, HTTPMessageSignaturesException):
        return SignatureFailure(Reason.SIGNATURE_INVALID, f"{exc}"[:200] or type(exc).__name__)
    return SignatureFailure(Reason.SIGNATURE_INVALID, f"malformed: {type(exc).__name__}")


class _Verifier(HTTPMessageVerifier):
    """The package's verifier without its own clock: freshness is the signature part's to judge."""

    require_created = False

    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        return None


@dataclass(frozen=True, slots=True)
class _Message:
    """A request as the package reads it: method, absolute URI, header field lines."""

    method: str
    url: str
    headers: _Fields


class _Fields(list[tuple[str, str]]):
    __slots__ = ()

    def items(self) -> _Fields:
        return self

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(field.lower() == name.lower() for field, _ in self)


class _OneKey(HTTPSignatureKeyResolver):
    def __init__(self, keyid: str, key: object) -> None:
        self._keyid = keyid
        self._key = key

    def resolve_public_key(self, key_id: str) -> object:
        return self._key if key_id == self._keyid else None


def public_key(jwk: PublicJwk) -> object:
    """The ``cryptography`` public key of a checked JWK (``proxy.core.jwk``)."""
    members = jwk.members
    if jwk.kty == "OKP":
        return ed25519.Ed25519PublicKey.from_public_bytes(_b64(members["x"]))
    if jwk.kty == "EC":
        x, y = (int.from_bytes(_b64(members[c]), "big") for c in ("x", "y"))
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    n, e = (int.from_bytes(_b64(members[c]), "big") for c in ("n", "e"))
    return rsa.RSAPublicNumbers(e, n).public_key()


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SignatureVerifier:
    """The gatherer of the ``signature`` fact."""

    __slots__ = ("_attestation_headers", "_key_header", "_keys", "_skew")

    def __init__(self, *, key_header: str, attestation_headers: Iterable[str] = (), skew_s: int = 30) -> None:
        self._key_header = key_header.lower()
        self._attestation_headers = tuple(name.lower() for name in attestation_headers)
        self._skew = skew_s
        self._keys: dict[str, object] = {}  # JWK canonical JSON -> cryptography key

    def __call__(self, facts: Facts) -> object:
        rule = facts.policy.rule("signature") if facts.policy is not None else None
        if not isinstance(rule, SignatureRule):
            return SignatureFailure(Reason.SIGNATURE_INVALID, "the key's policy names no signing keys")
        headers = facts.headers
        inputs = headers.getall("Signature-Input", ())
        signatures = headers.getall("Signature", ())
        if not inputs or not signatures:
            return SignatureFailure(Reason.SIGNATURE_MISSING, "no Signature-Input and Signature headers")
        try:
            return self._verify(facts, rule, ", ".join(inputs))
        except (HTTPMessageSignaturesException, ValueError, TypeError, KeyError, UnicodeError) as exc:
            return translate_signature_error(exc)

    def _verify(self, facts: Facts, rule: SignatureRule, inputs: str) -> VerifiedSignature | SignatureFailure:
        parsed = _dictionary(inputs)
        if len(parsed) != 1:
            return SignatureFailure(Reason.SIGNATURE_INVALID, f"{len(parsed)} signatures, one expected")
        ((members, params),) = parsed.values()
        keyid = params.get("keyid")
        if not isinstance(keyid, str):
            return SignatureFailure(Reason.SIGNATURE_INVALID, "no keyid parameter")
        jwk = rule.key(keyid)
        if jwk is None:
            return SignatureFailure(Reason.SIGNATURE_INVALID, f"unknown keyid {keyid[:100]!r}")
        algorithm = signature_algorithm_of(jwk)
        assert algorithm is not None  # the policy's keys were checked to have one
        if params.get("alg", algorithm) != algorithm:
            return SignatureFailure(
                Reason.SIGNATURE_INVALID, f"alg {params['alg']!r} does not fit key {keyid!r} ({algorithm})"
            )
        verifier = _Verifier(
            signature_algorithm=_ALGORITHMS[algorithm], key_resolver=_OneKey(keyid, self._key(jwk))
        )
        verifier.verify(self._message(facts), max_age=None)
        covered = frozenset(
            name.lower()
            for name, component in members
            if isinstance(name, str) and _WHOLE_FIELD.issuperset(component)
        )
        has_body = _has_body(facts)
        digests = self._digests(facts) if has_body or "content-digest" in covered else ()
        if isinstance(digests, SignatureFailure):
            return digests
        if digests and not has_body and not digest_matches(digests, b""):
            return SignatureFailure(
                Reason.CONTENT_DIGEST_MISMATCH, "the empty body does not match Content-Digest"
            )
        created, expires, nonce = params.get("created"), params.get("expires"), params.get("nonce")
        return VerifiedSignature(
            keyid=keyid,
            alg=algorithm,
            covered=covered,
            created=created if type(created) is int else None,
            expires=expires if type(expires) is int else None,
            nonce=nonce if isinstance(nonce, str) else None,
            must_cover=self._must_cover(facts, has_body),
            has_body=has_body,
            digests=digests if has_body else (),
            skew_s=self._skew,
        )

    def _key(self, jwk: PublicJwk) -> object:
        key = self._keys.get(jwk.canonical)
        if key is None:
            if len(self._keys) >= _KEYS_KEPT:
                self._keys.clear()
            key = self._keys[jwk.canonical] = public_key(jwk)
        return key

    def _message(self, facts: Facts) -> _Message:
        headers = facts.headers
        scheme = facts.scheme
        authority = headers.get("Host", "")
        if facts.peer_trusted:  # what the client addressed, as a trusted proxy in front reports it
            scheme = headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip() or scheme
            authority = headers.get("X-Forwarded-Host", authority).split(",")[0].strip() or authority
        target = facts.target
        url = target if "://" in target[:16] else f"{scheme}://{authority}{target}"
        fields = _Fields(headers.items())  # type: ignore[attr-defined]  # the request's multidict
        return _Message(facts.method, url, fields)

    def _must_cover(self, facts: Facts, has_body: bool) -> frozenset[str]:
        headers = facts.headers
        names = set()
        if headers.get(self._key_header, None) is not None:
            names.add(self._key_header)
        elif headers.get("authorization", None) is not None:
            names.add("authorization")
        names.update(name for name in self._attestation_headers if headers.get(name, None) is not None)
        if has_body:
            names.add("content-digest")
        return frozenset(names)

    def _digests(self, facts: Facts) -> tuple[tuple[str, bytes], ...] | SignatureFailure:
        values = facts.headers.getall("Content-Digest", ())
        if not values:
            return ()
        parsed = _dictionary(", ".join(values))
        digests = []
        for algorithm, (value, _) in parsed.items():
            if algorithm not in ALGORITHMS:
                continue  # RFC 9530: a recipient ignores algorithms it does not support
            if not isinstance(value, bytes) or len(value) != ALGORITHMS[algorithm]().digest_size:
                return SignatureFailure(Reason.SIGNATURE_INVALID, f"Content-Digest {algorithm} is malformed")
            digests.append((algorithm, value))
        if not digests:
            return SignatureFailure(Reason.SIGNATURE_INVALID, "Content-Digest has no sha-256 or sha-512")
        return tuple(digests)


def _dictionary(value: str) -> dict[str, Any]:
    """A structured-field Dictionary: member name -> (value, parameters)."""
    return cast(dict[str, Any], http_sf.parse(value.encode("ascii"), tltype="dictionary"))


def _has_body(facts: Facts) -> bool:
    headers = facts.headers
    if headers.get("Transfer-Encoding", None) is not None:
        return True
    length = headers.get("Content-Length", "0").strip()
    return not (length.isdigit() and int(length) == 0)
