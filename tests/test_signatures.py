"""RFC 9421 request signatures (proxy.signatures): the RFC's own test vectors, then the gatherer's
rules on real signed requests (keys made with cryptography, signatures with http-message-signatures)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core.facts import Facts
from proxy.core.model import Reason
from proxy.core.policy import CompiledPolicy, compile_policy
from proxy.core.signed import SignatureFailure, VerifiedSignature
from proxy.signatures import SignatureVerifier, translate_signature_error
from tests.attestations import b64, content_digest, ed25519_signer, es256_signer, rs256_signer, sign_request

# --- RFC 9421 Appendix B: the test keys (B.1.2, B.1.4), the request (B.2) and its signatures -----------

RFC_RSA_PSS_PUBLIC = b"""-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAr4tmm3r20Wd/PbqvP1s2
+QEtvpuRaV8Yq40gjUR8y2Rjxa6dpG2GXHbPfvMs8ct+Lh1GH45x28Rw3Ry53mm+
oAXjyQ86OnDkZ5N8lYbggD4O3w6M6pAvLkhk95AndTrifbIFPNU8PPMO7OyrFAHq
gDsznjPFmTOtCEcN2Z1FpWgchwuYLPL+Wokqltd11nqqzi+bJ9cvSKADYdUAAN5W
Utzdpiy6LbTgSxP7ociU4Tn0g5I6aDZJ7A8Lzo0KSyZYoA485mqcO0GVAdVw9lq4
aOT9v6d+nb4bnNkQVklLQ3fVAvJm+xdDOp9LCNCN48V2pnDOkFV6+U9nV5oyc6XI
2wIDAQAB
-----END PUBLIC KEY-----
"""
RFC_ED25519_PUBLIC = b"""-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----
"""
RFC_REQUEST_HEADERS = [
    ("Host", "example.com"),
    ("Date", "Tue, 20 Apr 2021 02:07:55 GMT"),
    ("Content-Type", "application/json"),
    (
        "Content-Digest",
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
    ),
    ("Content-Length", "18"),
]
RFC_TARGET = "/foo?param=Value&Pet=dog"
RFC_VECTORS = {
    "B.2.1 minimal (rsa-pss-sha512)": (
        'sig-b21=();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd"',
        "sig-b21=:d2pmTvmbncD3xQm8E9ZV2828BjQWGgiwAaw5bAkgibUopemLJcWDy/lkbbHAve4cRAtx31Iq786U7it++wgGxbtRxf8Ud"
        "x7zFZsckzXaJMkA7ChG52eSkFxykJeNqsrWH5S+oxNFlD4dzVuwe8DhTSja8xxbR/Z2cOGdCbzR72rgFWhzx2VjBqJzsPLMIQKhO"
        "4DGezXehhWwE56YCE+O6c0mKZsfxVrogUvA4HELjVKWmAvtl6UnCh8jYzuVG5WSb/QEVPnP5TmcAnLH1g+s++v6d4s8m0gCw1fV5"
        "/SITLq9mhho8K3+7EPYTU8IU1bLhdxO5Nyt8C8ssinQ98Xw9Q==:",
        frozenset(),
    ),
    "B.2.3 full coverage (rsa-pss-sha512)": (
        'sig-b23=("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" '
        '"content-length");created=1618884473;keyid="test-key-rsa-pss"',
        "sig-b23=:bbN8oArOxYoyylQQUU6QYwrTuaxLwjAC9fbY2F6SVWvh0yBiMIRGOnMYwZ/5MR6fb0Kh1rIRASVxFkeGt683+qRpRRU5p"
        "2voTp768ZrCUb38K0fUxN0O0iC59DzYx8DFll5GmydPxSmme9v6ULbMFkl+V5B1TP/yPViV7KsLNmvKiLJH1pFkh/aYA2HXXZzNB"
        "XmIkoQoLd7YfW91kE9o/CCoC1xMy7JA1ipwvKvfrs65ldmlu9bpG6A9BmzhuzF8Eim5f8ui9eH8LZH896+QIF61ka39VBrohr9iy"
        "MUJpvRX2Zbhl5ZJzSRxpJyoEZAFL2FUo5fTIztsDZKEgM4cUA==:",
        frozenset(
            {
                "date",
                "@method",
                "@path",
                "@query",
                "@authority",
                "content-type",
                "content-digest",
                "content-length",
            }
        ),
    ),
    "B.2.6 (ed25519)": (
        'sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;'
        'keyid="test-key-ed25519"',
        "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:",
        frozenset({"date", "@method", "@path", "@authority", "content-type", "content-length"}),
    ),
}


def _jwk_of(pem: bytes, kid: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = load_pem_public_key(pem)
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(raw)}
    assert isinstance(key, rsa.RSAPublicKey)
    numbers = key.public_numbers()
    return {
        "kty": "RSA",
        "kid": kid,
        "n": b64(numbers.n.to_bytes(256, "big")),
        "e": b64(numbers.e.to_bytes(3, "big")),
    }


RFC_POLICY = compile_policy(
    {
        "signature": {
            "keys": {
                "keys": [
                    _jwk_of(RFC_RSA_PSS_PUBLIC, "test-key-rsa-pss"),
                    _jwk_of(RFC_ED25519_PUBLIC, "test-key-ed25519"),
                ]
            }
        }
    }
)


def facts(
    headers: list[tuple[str, str]] | dict[str, str],
    policy: CompiledPolicy,
    *,
    method: str = "POST",
    target: str = RFC_TARGET,
    scheme: str = "https",
    peer_trusted: bool = False,
    now: datetime | None = None,
) -> Facts:
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    return Facts(
        ipaddress.ip_address("127.0.0.1"),
        method,
        target.partition("?")[0],
        now or datetime.now(UTC),
        "0123456789abcdef",
        CIMultiDictProxy(CIMultiDict(pairs)),
        target=target,
        scheme=scheme,
        peer_trusted=peer_trusted,
        policy=policy,
    )


@pytest.mark.parametrize("vector", sorted(RFC_VECTORS))
def test_the_rfc_test_vectors_verify(vector: str) -> None:
    signature_input, signature, covered = RFC_VECTORS[vector]
    verify = SignatureVerifier(key_header="X-API-Key")
    headers = [*RFC_REQUEST_HEADERS, ("Signature-Input", signature_input), ("Signature", signature)]
    result = verify(facts(headers, RFC_POLICY))
    assert isinstance(result, VerifiedSignature), result
    assert result.covered == covered and result.created == 1618884473
    # One bit off in the signature, or a covered component changed: no longer verifies.
    flipped = signature[:-6] + ("A" if signature[-6] != "A" else "B") + signature[-5:]
    bad = verify(
        facts(
            [*RFC_REQUEST_HEADERS, ("Signature-Input", signature_input), ("Signature", flipped)], RFC_POLICY
        )
    )
    assert isinstance(bad, SignatureFailure) and bad.reason is Reason.SIGNATURE_INVALID
    if "@path" in covered:
        moved = verify(facts(headers, RFC_POLICY, target="/bar?param=Value&Pet=dog"))
        assert isinstance(moved, SignatureFailure) and moved.reason is Reason.SIGNATURE_INVALID


# --- the gatherer on requests signed here -------------------------------------------------------------

ED = ed25519_signer("runner-1")
ES = es256_signer("runner-2")
RS = rs256_signer("runner-3")
POLICY = compile_policy({"signature": {"keys": {"keys": [ED.jwk, ES.jwk, RS.jwk]}, "max_age_s": 60}})
URL = "https://api.example/deploy?env=prod"
KEY = {"Host": "api.example", "X-API-Key": "sg_0123456789abcdef_" + "0" * 48}


def verify(headers: dict[str, str], **kwargs: Any) -> object:
    return SignatureVerifier(key_header="X-API-Key", attestation_headers=("X-Workload-Attestation",))(
        facts(headers, POLICY, target="/deploy?env=prod", **kwargs)
    )


@pytest.mark.parametrize("signer", [ED, ES, RS], ids=["ed25519", "ecdsa-p256-sha256", "rsa-pss-sha512"])
def test_a_signed_request_verifies_with_each_algorithm(signer: Any) -> None:
    body = b'{"release": "2026.05"}'
    headers = sign_request(signer, "POST", URL, {**KEY, "Content-Length": str(len(body))}, body=body)
    result = verify(headers)
    assert isinstance(result, VerifiedSignature), result
    assert result.keyid == signer.kid and result.nonce and result.has_body
    assert result.must_cover == {"x-api-key", "content-digest"}
    assert result.digests and result.digests[0][0] == "sha-256"
    judged = POLICY.rule("signature").judge(result, datetime.now(UTC).timestamp())  # type: ignore[union-attr]
    assert judged is None


@pytest.mark.parametrize(
    ("case", "make", "reason", "words"),
    [
        ("no signature", lambda: KEY, Reason.SIGNATURE_MISSING, "no Signature-Input"),
        (
            "unknown keyid",
            lambda: sign_request(ed25519_signer("runner-9"), "GET", URL, KEY),
            Reason.SIGNATURE_INVALID,
            "unknown keyid",
        ),
        (
            "another key, known keyid",
            lambda: sign_request(ed25519_signer("runner-1"), "GET", URL, KEY),
            Reason.SIGNATURE_INVALID,
            "",
        ),
        (
            "signed for another URL",
            lambda: sign_request(ED, "GET", "https://api.example/deploy?env=dev", KEY),
            Reason.SIGNATURE_INVALID,
            "",
        ),
        (
            "signed for another method",
            lambda: sign_request(ED, "POST", URL, KEY),
            Reason.SIGNATURE_INVALID,
            "",
        ),
        (
            "two signatures",
            lambda: {
                **sign_request(ED, "GET", URL, KEY),
                "Signature-Input": 'a=();keyid="x", b=();keyid="y"',
            },
            Reason.SIGNATURE_INVALID,
            "2 signatures",
        ),
        (
            "malformed input",
            lambda: {**KEY, "Signature-Input": "((", "Signature": "x"},
            Reason.SIGNATURE_INVALID,
            "",
        ),
        (
            "alg not the key's",
            lambda: {
                **sign_request(ED, "GET", URL, KEY),
                "Signature-Input": sign_request(ED, "GET", URL, KEY)["Signature-Input"].replace(
                    'alg="ed25519"', 'alg="rsa-pss-sha512"'
                ),
            },
            Reason.SIGNATURE_INVALID,
            "does not fit",
        ),
    ],
)
def test_what_the_gatherer_refuses(case: str, make: Any, reason: Reason, words: str) -> None:
    result = verify(make(), method="GET")
    assert isinstance(result, SignatureFailure), f"{case}: {result}"
    assert result.reason is reason and words in result.detail, result


def test_a_trusted_proxy_in_front_reports_what_the_client_addressed() -> None:
    headers = sign_request(ED, "GET", "https://public.example/deploy?env=prod", KEY)
    behind = {
        **headers,
        "Host": "10.0.0.5:8080",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "public.example",
    }
    assert isinstance(verify(behind, method="GET", scheme="http", peer_trusted=True), VerifiedSignature)
    assert isinstance(verify(behind, method="GET", scheme="http", peer_trusted=False), SignatureFailure)


def test_content_digest_is_parsed_and_an_empty_body_checked_at_once() -> None:
    empty = sign_request(ED, "DELETE", URL, {**KEY, "Content-Digest": content_digest(b"")})
    result = verify(empty, method="DELETE")
    assert isinstance(result, VerifiedSignature) and not result.has_body and result.digests == ()
    lying = sign_request(ED, "DELETE", URL, {**KEY, "Content-Digest": content_digest(b"something")})
    mismatch = verify(lying, method="DELETE")
    assert isinstance(mismatch, SignatureFailure) and mismatch.reason is Reason.CONTENT_DIGEST_MISMATCH
    signed = sign_request(ED, "POST", URL, {**KEY, "Content-Length": "2"})
    unsupported = {**signed, "Content-Digest": "md5=:AAAA:"}  # not covered, and not a digest we check
    refused = verify(unsupported, method="POST")
    assert isinstance(refused, SignatureFailure) and "sha-256 or sha-512" in refused.detail


def test_a_policy_without_keys_verifies_nothing() -> None:
    headers = sign_request(ED, "GET", URL, KEY)
    result = SignatureVerifier(key_header="X-API-Key")(
        facts(headers, compile_policy({}), target="/deploy?env=prod", method="GET")
    )
    assert isinstance(result, SignatureFailure) and "no signing keys" in result.detail


def test_translation_names_the_failure() -> None:
    from http_message_signatures.exceptions import HTTPMessageSignaturesException, InvalidSignature

    assert (
        translate_signature_error(InvalidSignature("Signature does not verify")).reason
        is Reason.SIGNATURE_INVALID
    )
    assert translate_signature_error(HTTPMessageSignaturesException("x")).detail == "x"
    assert "ValueError" in translate_signature_error(ValueError("x")).detail
