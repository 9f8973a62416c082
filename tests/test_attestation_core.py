"""The pure core of attestations and request signatures, as tables: claim matchers, token rules, JWK
checks, the signature rule, the body digest. No sockets, no keys: values in, decisions out."""

from __future__ import annotations

import hashlib
import ipaddress
from datetime import UTC, datetime
from typing import Any

import pytest

from proxy.core.attestation import (
    Check,
    TokenFailure,
    TokenRule,
    VerifiedToken,
    compile_matcher,
    compile_token_rule,
)
from proxy.core.digest import BodyDigest, digest_matches
from proxy.core.errors import ContentDigestMismatch, PolicyError, ValidationError
from proxy.core.facts import UNAVAILABLE, Facts
from proxy.core.jwk import parse_jwks
from proxy.core.model import Reason
from proxy.core.parts.signature import SignatureRule, compile_signature
from proxy.core.policy import compile_policy, evaluate
from proxy.core.signed import SignatureFailure, VerifiedSignature
from tests.attestations import b64

NOW = 1_800_000_000.0
KEY_ID = "0123456789abcdef"


# --- claim matchers ----------------------------------------------------------------------------------

MISSING = object()

MATCHERS: list[tuple[Any, Any, bool]] = [
    # (matcher, claim value, passes)
    (True, True, True),
    (True, 1, False),  # a boolean is not a number
    (1, True, False),
    (1, 1.0, True),
    ("macos", "macos", True),
    ("macos", "MacOS", False),
    (["macos", "linux"], "linux", True),
    (["macos", "linux"], "windows", False),
    (None, None, True),
    ({"min": "14.2"}, "14.10", True),  # part by part: 10 > 2
    ({"min": "14.10"}, "14.9", False),  # and 9 < 10
    ({"min": "14.2"}, "14.2.0", True),
    ({"min": "14.2"}, "14.1.9", False),
    ({"max": "14.9"}, "14.10", False),
    ({"min": "14.2"}, "fourteen", False),
    ({"min": "14.2"}, 15, False),  # a version bound wants a version string
    ({"max": 30}, 12, True),
    ({"max": 30}, 30.5, False),
    ({"max": 30}, "12", False),  # a number bound wants a number
    ({"min": 1, "max": 3}, 2, True),
    ({"min": 1, "max": 3}, 4, False),
    ({"glob": "refs/heads/release-*"}, "refs/heads/release-2026.05", True),
    ({"glob": "refs/heads/release-*"}, "refs/heads/main", False),
    ({"glob": "refs/heads/release-*"}, "xrefs/heads/release-1", False),  # whole value
    ({"glob": "refs/heads/release-*"}, "refs/heads/release-1\nextra", True),  # * is any run
    ({"glob": "a.c"}, "abc", False),  # only * is special
    ({"glob": "*"}, 5, False),
]


@pytest.mark.parametrize(("matcher", "value", "passes"), MATCHERS)
def test_claim_matchers(matcher: Any, value: Any, passes: bool) -> None:
    why = compile_matcher(matcher, "claims.x").why_not(value)
    assert (why is None) == passes, why


def test_a_missing_claim_fails_every_matcher() -> None:
    from proxy.core.attestation import _MISSING

    for matcher, _, _ in MATCHERS:
        assert compile_matcher(matcher, "claims.x").why_not(_MISSING) == "is missing"


@pytest.mark.parametrize(
    ("matcher", "path", "reason"),
    [
        ([], "claims.x", "at least one"),
        ([{"a": 1}], "claims.x[0]", "string, number"),
        ({}, "claims.x", "min"),
        ({"glob": "a*", "min": 1}, "claims.x", "cannot be combined"),
        ({"glob": ""}, "claims.x.glob", "non-empty"),
        ({"min": "14.x"}, "claims.x.min", "dotted version"),
        ({"min": 1, "max": "2.0"}, "claims.x", "both"),
        ({"min": 3, "max": 1}, "claims.x", "nothing could match"),
        ({"regex": "a"}, "claims.x.regex", "unknown field"),
    ],
)
def test_bad_matchers_are_refused_with_their_path(matcher: Any, path: str, reason: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_matcher(matcher, "claims.x")
    assert caught.value.path == path and reason in caught.value.reason


# --- token rules --------------------------------------------------------------------------------------


def token(**changes: Any) -> VerifiedToken:
    base: dict[str, Any] = {
        "issuer": "mdm-prod",
        "kind": "device",
        "subject": "device-42",
        "claims": {
            "managed": True,
            "disk_encrypted": True,
            "os": "macos",
            "os_version": "14.10",
            "risk_score": 12,
            "posture": {"firewall": True},
        },
        "iat": NOW - 60,
        "exp": NOW + 540,
        "audiences": ("signalgate", f"signalgate:{KEY_ID}"),
        "issuer_audience": "signalgate",
        "max_lifetime_s": 3600,
        "skew_s": 30,
    }
    base.update(changes)
    return VerifiedToken(**base)


DEVICE_POLICY = {
    "issuers": ["mdm-prod"],
    "max_age_s": 300,
    "bind_to_key": True,
    "claims": {
        "managed": True,
        "disk_encrypted": True,
        "os": ["macos", "linux"],
        "os_version": {"min": "14.2"},
        "risk_score": {"max": 30},
        "posture.firewall": True,
    },
}


def rule(**changes: Any) -> TokenRule:
    return compile_token_rule("device", {**DEVICE_POLICY, **changes}, "policy.device")


TOKEN_ROWS: list[tuple[str, TokenRule, VerifiedToken, str, Check | None, str]] = [
    # (case, rule, token, key id, failed check or None, words in the detail)
    ("valid", rule(), token(), KEY_ID, None, ""),
    ("issuer not in the policy", rule(), token(issuer="mdm-test"), KEY_ID, Check.UNTRUSTED, "mdm-test"),
    ("wrong kind", rule(), token(kind="workload"), KEY_ID, Check.UNTRUSTED, ""),
    ("no exp", rule(), token(exp=None), KEY_ID, Check.INVALID, "exp is required"),
    ("no iat", rule(), token(iat=None), KEY_ID, Check.INVALID, "iat is required"),
    (
        "lifetime over the issuer's",
        rule(),
        token(iat=NOW - 10, exp=NOW + 7200),
        KEY_ID,
        Check.INVALID,
        "lifetime",
    ),
    ("expired", rule(), token(iat=NOW - 200, exp=NOW - 31), KEY_ID, Check.EXPIRED, "claim exp"),
    ("expired within the skew", rule(), token(iat=NOW - 200, exp=NOW - 29), KEY_ID, None, ""),
    ("not yet valid", rule(), token(nbf=NOW + 60), KEY_ID, Check.EXPIRED, "claim nbf"),
    ("nbf within the skew", rule(), token(nbf=NOW + 20), KEY_ID, None, ""),
    ("issued in the future", rule(), token(iat=NOW + 120, exp=NOW + 600), KEY_ID, Check.EXPIRED, "future"),
    ("older than max_age_s", rule(), token(iat=NOW - 301), KEY_ID, Check.EXPIRED, "max_age_s 300"),
    ("no max_age_s: only exp counts", rule(max_age_s=None), token(iat=NOW - 3000), KEY_ID, None, ""),
    (
        "bound to another key",
        rule(),
        token(),
        "fedcba9876543210",
        Check.AUDIENCE,
        "signalgate:fedcba9876543210",
    ),
    ("bound, aud a string", rule(), token(audiences=(f"signalgate:{KEY_ID}",)), KEY_ID, None, ""),
    (
        "not bound: issuer audience",
        rule(bind_to_key=False),
        token(audiences=("signalgate",)),
        KEY_ID,
        None,
        "",
    ),
    (
        "wrong audience",
        rule(bind_to_key=False),
        token(audiences=("other",)),
        KEY_ID,
        Check.AUDIENCE,
        "'signalgate'",
    ),
    (
        "claim fails",
        rule(),
        token(claims={**token().claims, "os": "windows"}),
        KEY_ID,
        Check.CLAIMS,
        "claim os",
    ),
    (
        "version 14.9 below 14.10",
        rule(claims={"os_version": {"min": "14.10"}}),
        token(claims={"os_version": "14.9"}),
        KEY_ID,
        Check.CLAIMS,
        "claim os_version",
    ),
    (
        "risk score over max",
        rule(claims={"risk_score": {"max": 30}}),
        token(claims={"risk_score": 31}),
        KEY_ID,
        Check.CLAIMS,
        "claim risk_score",
    ),
    (
        "missing nested claim",
        rule(claims={"posture.firewall": True}),
        token(claims={"posture": {}}),
        KEY_ID,
        Check.CLAIMS,
        "claim posture.firewall is missing",
    ),
    (
        "nested claim not an object",
        rule(claims={"posture.firewall": True}),
        token(claims={"posture": "on"}),
        KEY_ID,
        Check.CLAIMS,
        "is missing",
    ),
]


@pytest.mark.parametrize(
    ("case", "rule", "token", "key_id", "check", "words"), TOKEN_ROWS, ids=[r[0] for r in TOKEN_ROWS]
)
def test_token_rules(
    case: str, rule: TokenRule, token: VerifiedToken, key_id: str, check: Check | None, words: str
) -> None:
    decision = rule.judge(token, NOW, key_id)
    if check is None:
        assert decision is None, decision
        return
    assert decision is not None, f"{case}: allowed"
    assert decision.reason == f"device_attestation_{check}", decision
    assert decision.detail.startswith(f"device {check}: ") and words in decision.detail, decision.detail
    assert decision.status == 403


def facts(gathered: dict[str, object], key_id: str = KEY_ID) -> Facts:
    return Facts(
        ipaddress.ip_address("127.0.0.1"),
        "GET",
        "/metrics",
        datetime.fromtimestamp(NOW, UTC),
        key_id,
        gathered=gathered,
    )


@pytest.mark.parametrize(
    ("gathered", "reason", "status"),
    [
        ({"device": token()}, None, 200),
        (
            {"device": TokenFailure(Check.MISSING, "no X-Device-Attestation header")},
            Reason.DEVICE_ATTESTATION_MISSING,
            401,
        ),
        (
            {"device": TokenFailure(Check.INVALID, "signature does not verify")},
            Reason.DEVICE_ATTESTATION_INVALID,
            403,
        ),
        ({"device": TokenFailure(Check.UNTRUSTED, "unknown kid")}, Reason.DEVICE_ATTESTATION_UNTRUSTED, 403),
        ({"device": UNAVAILABLE}, Reason.AUTHORIZATION_UNAVAILABLE, 503),
        ({}, Reason.AUTHORIZATION_UNAVAILABLE, 503),
    ],
)
def test_the_device_part_maps_gathered_values_to_reasons(
    gathered: dict[str, object], reason: Reason | None, status: int
) -> None:
    decision = evaluate(compile_policy({"device": DEVICE_POLICY}), facts(gathered))
    assert decision.allowed == (reason is None)
    if reason is not None:
        assert decision.reason is reason and decision.status == status


def test_the_workload_part_gives_workload_reasons() -> None:
    policy = compile_policy({"workload": {"issuers": ["gha"], "claims": {"repository": "acme/deployer"}}})
    failed = evaluate(policy, facts({"workload": TokenFailure(Check.EXPIRED, "claim exp: expired 5s ago")}))
    assert failed.reason is Reason.WORKLOAD_ATTESTATION_EXPIRED
    assert failed.detail == "workload expired: claim exp: expired 5s ago"
    wrong = token(
        issuer="gha", kind="workload", claims={"repository": "fork/deployer"}, audiences=("signalgate",)
    )
    decision = evaluate(policy, facts({"workload": wrong}))
    assert decision.reason is Reason.WORKLOAD_ATTESTATION_CLAIMS
    assert "claim repository is 'fork/deployer'" in decision.detail


@pytest.mark.parametrize(
    ("doc", "path", "words"),
    [
        ({}, "policy.device.issuers", "is required"),
        ({"issuers": []}, "policy.device.issuers", "at least one"),
        ({"issuers": ["MDM"]}, "policy.device.issuers[0]", "not an issuer name"),
        ({"issuers": ["a"], "max_age_s": 0}, "policy.device.max_age_s", "1 to"),
        ({"issuers": ["a"], "max_age_s": True}, "policy.device.max_age_s", "1 to"),
        ({"issuers": ["a"], "bind_to_key": "yes"}, "policy.device.bind_to_key", "true or false"),
        ({"issuers": ["a"], "claims": []}, "policy.device.claims", "object"),
        ({"issuers": ["a"], "claims": {"a..b": 1}}, "policy.device.claims.a..b", "not a claim name"),
        ({"issuers": ["a"], "colour": 1}, "policy.device.colour", "unknown field"),
    ],
)
def test_token_parts_refuse_bad_documents(doc: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy({"device": doc})
    assert caught.value.path == path and words in caught.value.reason


# --- JWKs ---------------------------------------------------------------------------------------------

ED_X = b64(bytes(range(32)))
P256 = {"kty": "EC", "crv": "P-256", "kid": "ec", "x": b64(bytes(32)), "y": b64(bytes(range(32)))}
RSA_2048 = {"kty": "RSA", "kid": "rsa", "n": b64(b"\xc1" + bytes(255)), "e": "AQAB"}


@pytest.mark.parametrize(
    ("keys", "algorithms", "path", "words"),
    [
        ([{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}], ("RS256",), "jwks.keys[0]", "symmetric"),
        ([{**RSA_2048, "n": b64(b"\xc1" + bytes(127))}], ("RS256",), "jwks.keys[0]", "1024 bits"),
        ([{**P256, "crv": "P-521"}], ("ES256",), "jwks.keys[0].crv", "P-256 or P-384"),
        ([P256], ("ES384",), "jwks.keys[0]", "fits none"),
        ([P256], ("RS256",), "jwks.keys[0]", "fits none"),
        ([{**P256, "alg": "ES384"}], ("ES256", "ES384"), "jwks.keys[0].alg", "does not fit"),
        ([{**RSA_2048, "d": "AQAB"}], ("RS256",), "jwks.keys[0]", "private key"),
        ([{"kty": "OKP", "crv": "X25519", "x": ED_X}], ("EdDSA",), "jwks.keys[0].crv", "Ed25519"),
        ([{"kty": "OKP", "crv": "Ed25519", "x": "not base64!"}], ("EdDSA",), "jwks.keys[0].x", "base64url"),
        ([P256, P256], ("ES256",), "jwks.keys[1]", "appears twice"),
        ([P256, {**RSA_2048, "kid": None}], ("ES256", "RS256"), "jwks.keys", "every key needs a 'kid'"),
        ([{**P256, "use": "enc"}], ("ES256",), "jwks.keys[0].use", "sig"),
    ],
)
def test_jwks_refuse_keys_that_do_not_fit(
    keys: list[dict[str, Any]], algorithms: tuple[str, ...], path: str, words: str
) -> None:
    keys = [{k: v for k, v in key.items() if v is not None} for key in keys]
    with pytest.raises(ValidationError) as caught:
        parse_jwks({"keys": keys}, "jwks", algorithms=algorithms)
    assert caught.value.path == path and words in caught.value.reason, caught.value
    if "kid" in keys[0] and path == "jwks.keys[0]":
        assert repr(keys[0]["kid"]) in caught.value.reason  # the key is named


def test_good_jwks_are_described() -> None:
    keys = parse_jwks(
        {"keys": [P256, RSA_2048, {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": ED_X}]}, "jwks"
    )
    assert [(k.kid, k.kty, k.crv, k.bits) for k in keys] == [
        ("ec", "EC", "P-256", None),
        ("rsa", "RSA", None, 2048),
        ("ed", "OKP", "Ed25519", None),
    ]


# --- the signature rule -------------------------------------------------------------------------------

SIGNATURE_POLICY = {
    "keys": {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "runner-1", "x": ED_X}]},
    "max_age_s": 60,
}


def signed(**changes: Any) -> VerifiedSignature:
    base: dict[str, Any] = {
        "keyid": "runner-1",
        "alg": "ed25519",
        "covered": frozenset({"@method", "@target-uri", "x-api-key", "content-digest"}),
        "created": int(NOW) - 5,
        "expires": None,
        "nonce": "n-1",
        "must_cover": frozenset({"x-api-key", "content-digest"}),
        "has_body": True,
        "skew_s": 30,
    }
    base.update(changes)
    return VerifiedSignature(**base)


SIGNATURE_ROWS: list[tuple[str, VerifiedSignature, Reason | None, str]] = [
    ("valid", signed(), None, ""),
    (
        "parts of the target",
        signed(
            covered=frozenset({"@method", "@authority", "@path", "@query", "x-api-key", "content-digest"})
        ),
        None,
        "",
    ),
    (
        "@path without @query",
        signed(covered=frozenset({"@method", "@authority", "@path", "x-api-key", "content-digest"})),
        Reason.SIGNATURE_INVALID,
        "@target-uri",
    ),
    ("unknown keyid", signed(keyid="runner-2"), Reason.SIGNATURE_INVALID, "runner-2"),
    (
        "@method not covered",
        signed(covered=frozenset({"@target-uri", "x-api-key", "content-digest"})),
        Reason.SIGNATURE_INVALID,
        "@method",
    ),
    (
        "key header not covered",
        signed(covered=frozenset({"@method", "@target-uri", "content-digest"})),
        Reason.SIGNATURE_INVALID,
        "x-api-key",
    ),
    (
        "body digest not covered",
        signed(covered=frozenset({"@method", "@target-uri", "x-api-key"})),
        Reason.SIGNATURE_INVALID,
        "content-digest",
    ),
    (
        "attestation header not covered",
        signed(must_cover=frozenset({"x-api-key", "content-digest", "x-workload-attestation"})),
        Reason.SIGNATURE_INVALID,
        "x-workload-attestation",
    ),
    ("no created", signed(created=None), Reason.SIGNATURE_INVALID, "created"),
    ("created too old", signed(created=int(NOW) - 61), Reason.SIGNATURE_EXPIRED, "max_age_s 60"),
    ("created in the future", signed(created=int(NOW) + 31), Reason.SIGNATURE_EXPIRED, "future"),
    ("created ahead within the skew", signed(created=int(NOW) + 29), None, ""),
    ("expired", signed(expires=int(NOW) - 31), Reason.SIGNATURE_EXPIRED, "expired"),
    ("no nonce", signed(nonce=None), Reason.SIGNATURE_INVALID, "nonce"),
]


@pytest.mark.parametrize(
    ("case", "value", "reason", "words"), SIGNATURE_ROWS, ids=[r[0] for r in SIGNATURE_ROWS]
)
def test_signature_rules(case: str, value: VerifiedSignature, reason: Reason | None, words: str) -> None:
    rule = compile_signature(SIGNATURE_POLICY, "policy.signature")
    decision = rule.judge(value, NOW)
    if reason is None:
        assert decision is None, decision
        return
    assert decision is not None and decision.reason is reason and words in decision.detail, decision


def test_the_signature_part_fails_closed_and_passes_on_failures() -> None:
    policy = compile_policy({"signature": SIGNATURE_POLICY})
    assert policy.admissions and policy.admissions[0][0] == "nonce"
    missing = SignatureFailure(Reason.SIGNATURE_MISSING, "no Signature-Input and Signature headers")
    decision = evaluate(policy, facts({"signature": missing}))
    assert decision.reason is Reason.SIGNATURE_MISSING and decision.status == 401
    assert evaluate(policy, facts({})).reason is Reason.AUTHORIZATION_UNAVAILABLE
    assert evaluate(policy, facts({"signature": signed()})).allowed


@pytest.mark.parametrize(
    ("doc", "path", "words"),
    [
        ({}, "policy.signature.keys", "is required"),
        (
            {"keys": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": ED_X}]}},
            "policy.signature.keys.keys[0]",
            "needs a 'kid'",
        ),
        (
            {"keys": {"keys": [{**P256, "crv": "P-384", "x": b64(bytes(48)), "y": b64(bytes(48))}]}},
            "policy.signature.keys.keys[0]",
            "fits none",
        ),
        (
            {"keys": {"keys": [{"kty": "oct", "kid": "k", "k": "AA"}]}},
            "policy.signature.keys.keys[0]",
            "symmetric",
        ),
        ({"keys": {"keys": [RSA_2048]}, "max_age_s": 0}, "policy.signature.max_age_s", "1 to 3600"),
    ],
)
def test_the_signature_part_refuses_bad_documents(doc: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy({"signature": doc})
    assert caught.value.path == path and words in caught.value.reason, caught.value


def test_signature_rule_keeps_its_keys_by_kid() -> None:
    rule = compile_policy({"signature": SIGNATURE_POLICY}).rule("signature")
    assert isinstance(rule, SignatureRule) and rule.key("runner-1") is not None and rule.key("x") is None


# --- Content-Digest, as the body streams ---------------------------------------------------------------


def test_a_matching_body_goes_through_whole_with_its_last_byte_last() -> None:
    body = b"hello world, " * 1000
    check = BodyDigest(
        [("sha-256", hashlib.sha256(body).digest()), ("sha-512", hashlib.sha512(body).digest())]
    )
    sent = [check.take(body[i : i + 700]) for i in range(0, len(body), 700)]
    assert b"".join(sent) == body[:-1]  # everything but the last byte, so far
    assert check.finish() == body[-1:]


def test_a_body_that_does_not_match_is_cut_before_its_last_byte() -> None:
    body = b"transfer 100 to alice"
    check = BodyDigest([("sha-256", hashlib.sha256(body).digest())])
    sent = check.take(b"transfer 900 to mallory")
    with pytest.raises(ContentDigestMismatch, match="does not match"):
        check.finish()
    assert sent == b"transfer 900 to mallor"


def test_digest_helpers() -> None:
    assert digest_matches([("sha-256", hashlib.sha256(b"").digest())], b"")
    assert not digest_matches([("sha-256", hashlib.sha256(b"x").digest())], b"")
    with pytest.raises(ValueError, match="unsupported"):
        BodyDigest([("md5", b"")])
