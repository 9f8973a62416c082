"""Token verification (proxy.attest, PyJWT) per rule, as a table: real keys, real signatures, and the
forged tokens that have broken JWT libraries before (alg none, HS256 keyed with the public key,
algorithm mix-ups, unknown crit, a key URL in the header). Then the cache of verified tokens."""

from __future__ import annotations

import base64
import ipaddress
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.attest import TokenVerifier, TrustStore
from proxy.core.attestation import Check, TokenFailure, VerifiedToken
from proxy.core.facts import UNAVAILABLE, Facts
from proxy.core.issuers import IssuerRecord
from tests.attestations import (
    Signer,
    b64,
    claims,
    ed25519_signer,
    es256_signer,
    jwks,
    rs256_signer,
)

ISS = "https://mdm.example/"
ED = ed25519_signer("ed-1")
ES = es256_signer("es-1")
RS = rs256_signer("rs-1", "RS256")
PS = rs256_signer("rs-1", "PS256")  # the same RSA key, tokens signed with PSS
OTHER = ed25519_signer("ed-1")  # same kid, another key: an impostor


def store(*records: IssuerRecord) -> TrustStore:
    trust = TrustStore()
    for record in records:
        trust.replace(record.name, record)
    trust.set_settled(True)
    return trust


def mdm(**changes: Any) -> IssuerRecord:
    base: dict[str, Any] = {
        "name": "mdm-prod",
        "kind": "device",
        "issuer": ISS,
        "audience": "signalgate",
        "algorithms": ("EdDSA", "ES256", "RS256", "PS256"),
        "jwks": jwks(ED, ES, RS),
    }
    base.update(changes)
    return IssuerRecord(**base)


def good(**extra: Any) -> dict[str, Any]:
    return claims(ISS, "signalgate", **extra)


def _segments(token: str) -> list[str]:
    return token.split(".")


def _header(token: str, **changes: Any) -> str:
    head, payload, signature = _segments(token)
    decoded = json.loads(base64.urlsafe_b64decode(head + "=="))
    decoded.update(changes)
    return ".".join(
        [b64(json.dumps({k: v for k, v in decoded.items() if v is not None}).encode()), payload, signature]
    )


def tampered_payload(token: str) -> str:
    head, payload, signature = _segments(token)
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=="))
    decoded["sub"] = "someone-else"
    return ".".join([head, b64(json.dumps(decoded).encode()), signature])


def tampered_signature(token: str) -> str:
    head, payload, signature = _segments(token)
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[0] ^= 0x01
    return ".".join([head, payload, b64(bytes(raw))])


def alg_none(token: str) -> str:
    _, payload, _ = _segments(token)
    return ".".join([b64(json.dumps({"alg": "none", "kid": "ed-1"}).encode()), payload, ""])


def hs256_with_public_pem(payload: dict[str, Any]) -> str:
    """The classic key-confusion forgery: HMAC keyed with the issuer's RSA public key in PEM."""
    pem = RS.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rs-1"}).encode())
    body = b64(json.dumps(payload).encode())
    import hashlib
    import hmac

    mac = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def rs256_header_on_ec_key() -> str:
    """A token signed by the EC key but claiming RS256 (with the EC key's kid)."""
    return _header(ES.token(good()), alg="RS256")


def jku_token() -> str:
    """Signed by an attacker's key, pointing at the attacker's key set and embedding the key."""
    attacker = ed25519_signer("ed-1")
    return attacker.token(good(), headers={"jku": "https://evil.example/jwks", "jwk": attacker.jwk})


ROWS: list[tuple[str, Callable[[], str], IssuerRecord, Check | None, str]] = [
    # (case, token maker, issuer, failed check or None (verified), words in the detail)
    ("Ed25519", lambda: ED.token(good()), mdm(), None, ""),
    ("ES256", lambda: ES.token(good()), mdm(), None, ""),
    ("RS256", lambda: RS.token(good()), mdm(), None, ""),
    ("PS256", lambda: PS.token(good()), mdm(), None, ""),
    ("no kid, one key", lambda: ED.token(good(), headers={"kid": None}), mdm(jwks=jwks(ED)), None, ""),
    (
        "no kid, two keys",
        lambda: ED.token(good(), headers={"kid": None}),
        mdm(jwks=jwks(ED, ES)),
        Check.UNTRUSTED,
        "2 keys",
    ),
    (
        "unknown kid",
        lambda: ED.token(good(), headers={"kid": "ed-9"}),
        mdm(),
        Check.UNTRUSTED,
        "unknown kid 'ed-9'",
    ),
    ("another key with a known kid", lambda: OTHER.token(good()), mdm(), Check.INVALID, "signature"),
    (
        "unknown issuer",
        lambda: ED.token({**good(), "iss": "https://evil.example/"}),
        mdm(),
        Check.UNTRUSTED,
        "not registered",
    ),
    ("issuer of the wrong kind", lambda: ED.token(good()), mdm(kind="workload"), Check.UNTRUSTED, "workload"),
    (
        "no iss",
        lambda: ED.token({k: v for k, v in good().items() if k != "iss"}),
        mdm(),
        Check.UNTRUSTED,
        "iss",
    ),
    ("alg none", lambda: alg_none(ED.token(good())), mdm(), Check.INVALID, "'none'"),
    (
        "HS256 keyed with the RSA public PEM",
        lambda: hs256_with_public_pem(good()),
        mdm(),
        Check.INVALID,
        "HS256",
    ),
    ("RS256 header on an EC key", rs256_header_on_ec_key, mdm(), Check.INVALID, "does not fit key"),
    (
        "algorithm the issuer does not allow",
        lambda: ES.token(good()),
        mdm(algorithms=("EdDSA",), jwks=jwks(ED)),
        Check.INVALID,
        "ES256",
    ),
    ("tampered payload", lambda: tampered_payload(ED.token(good())), mdm(), Check.INVALID, "signature"),
    ("tampered signature", lambda: tampered_signature(ES.token(good())), mdm(), Check.INVALID, "signature"),
    ("64 KB token", lambda: ED.token(good(padding="x" * 65536)), mdm(), Check.INVALID, "size: "),
    (
        "crit header",
        lambda: ED.token(good(), headers={"crit": ["exp-ext"], "exp-ext": 1}),
        mdm(),
        Check.INVALID,
        "crit",
    ),
    ("jku, x5u and jwk are ignored", jku_token, mdm(), Check.INVALID, "signature"),
    ("not a JWT", lambda: "not.a.jwt", mdm(), Check.INVALID, "format"),
    ("exp not a number", lambda: ED.token({**good(), "exp": "tomorrow"}), mdm(), Check.INVALID, "claim exp"),
    ("aud not strings", lambda: ED.token({**good(), "aud": [1]}), mdm(), Check.INVALID, "claim aud"),
]


def verifier(trust: TrustStore, **kwargs: Any) -> TokenVerifier:
    return TokenVerifier(trust, "device", "X-Device-Attestation", **kwargs)


@pytest.mark.parametrize(("case", "make", "issuer", "check", "words"), ROWS, ids=[row[0] for row in ROWS])
def test_verification(
    case: str, make: Callable[[], str], issuer: IssuerRecord, check: Check | None, words: str
) -> None:
    result = verifier(store(issuer)).verify(make())
    if check is None:
        assert isinstance(result, VerifiedToken), result
        assert (
            result.issuer == "mdm-prod"
            and result.subject == "subject"
            and result.audiences == ("signalgate",)
        )
        return
    assert isinstance(result, TokenFailure), f"{case}: verified {result}"
    assert result.check is check and words in result.detail, result


def facts(*values: str) -> Facts:
    headers = CIMultiDictProxy(CIMultiDict([("X-Device-Attestation", v) for v in values]))
    return Facts(ipaddress.ip_address("127.0.0.1"), "GET", "/", datetime.now(UTC), "k", headers)


def test_the_gatherer_reads_one_header_and_fails_closed_while_unsettled() -> None:
    trust = store(mdm())
    gather = verifier(trust)
    assert gather(facts()) == TokenFailure(Check.MISSING, "no X-Device-Attestation header")
    assert gather(facts("a", "b")).check is Check.INVALID  # type: ignore[union-attr]
    assert isinstance(gather(facts(ED.token(good()))), VerifiedToken)
    trust.set_settled(False)  # issuers being reloaded after missed changes
    assert gather(facts(ED.token(good()))) is UNAVAILABLE


def test_a_verified_token_is_reused_until_its_issuer_changes() -> None:
    trust = store(mdm())
    gather = verifier(trust)
    token = ED.token(good())
    first = gather.verify(token)
    assert isinstance(first, VerifiedToken)
    assert gather.verify(token) is first  # from the cache: the same value, no signature check
    trust.replace("mdm-prod", mdm())  # the same issuer written again: its tokens stay cached
    assert gather.verify(token) is first
    trust.replace("mdm-prod", mdm(jwks=jwks(ES, RS)))  # its Ed25519 key removed
    gone = gather.verify(token)
    assert isinstance(gone, TokenFailure) and gone.check is Check.UNTRUSTED and "unknown kid" in gone.detail
    trust.replace("mdm-prod", None)  # deleted
    assert gather.verify(ES.token(good())).check is Check.UNTRUSTED  # type: ignore[union-attr]


def test_the_cache_is_bounded_and_forgets_expired_tokens() -> None:
    now = [time.time()]
    gather = verifier(store(mdm()), cache_size=2, clock=lambda: now[0])
    tokens = [ED.token(good(jti=str(i))) for i in range(3)]
    for token in tokens:
        assert isinstance(gather.verify(token), VerifiedToken)
    assert len(gather._cache) == 2
    expired = ED.token(claims(ISS, "signalgate", lifetime=10, age=100))
    assert isinstance(gather.verify(expired), VerifiedToken)  # verified (the core says expired)...
    assert len(gather._cache) == 2 and all(v.exp and v.exp > now[0] for v, _ in gather._cache.values())


def test_an_unknown_kid_of_a_fetched_set_asks_for_a_refetch() -> None:
    asked: list[str] = []
    fetched = mdm(jwks_url="https://mdm.example/jwks")
    gather = verifier(store(fetched), on_unknown_kid=asked.append)
    assert gather.verify(ED.token(good(), headers={"kid": "new"})).check is Check.UNTRUSTED  # type: ignore[union-attr]
    assert asked == ["mdm-prod"]
    inline = verifier(store(mdm()), on_unknown_kid=asked.append)
    inline.verify(ED.token(good(), headers={"kid": "new"}))
    assert asked == ["mdm-prod"]  # an inline set has nothing to refetch


def test_pyjwt_refuses_what_it_must() -> None:
    """The library guarantees the verifier leans on, checked against the installed PyJWT."""
    key = jwt.PyJWK(RS.jwk, "RS256")
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.PyJWS().decode_complete(PS.token(good()), key=key, algorithms=["PS256"])
    with pytest.raises(jwt.InvalidTokenError, match="crit"):
        jwt.get_unverified_header(ED.token(good(), headers={"crit": ["x"], "x": 1}))


def test_translation_covers_every_pyjwt_error() -> None:
    from proxy.attest import translate_jwt_error

    errors = [
        cls
        for cls in vars(jwt.exceptions).values()
        if isinstance(cls, type) and issubclass(cls, jwt.PyJWTError)
    ]
    assert len(errors) > 10
    for cls in errors:
        failure = translate_jwt_error(cls("x"))
        assert failure.check is Check.INVALID and failure.detail
    assert translate_jwt_error(ValueError("x")).check is Check.INVALID


def test_signer_material_is_what_it_says() -> None:
    assert (
        isinstance(ED, Signer)
        and ED.jwk["kty"] == "OKP"
        and ES.jwk["crv"] == "P-256"
        and RS.jwk["kty"] == "RSA"
    )
