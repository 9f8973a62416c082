"""``context`` as table tests: request headers (and the request signature) in, a decision out."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core.errors import PolicyError
from proxy.core.facts import UNAVAILABLE, Facts
from proxy.core.model import ALLOW, Reason
from proxy.core.policy import compile_policy, evaluate
from tests.attestations import ed25519_signer, jwks

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
LEVELS = ["public", "low", "medium", "high"]
AGENT = {
    "headers": {
        "X-Task-Scope": {"in": ["reporting", "billing-read"]},
        "X-Data-Sensitivity": {"max": "low", "order": LEVELS},
    },
    "forward": False,
}
SIGNED = {"headers": {"X-Task-Scope": {"in": ["reporting"], "signed": True}}}
SIGNATURE_PART = {"keys": jwks(ed25519_signer("agent-1"))}


@dataclass(frozen=True)
class Verified:
    """The shape of the ``signature`` fact: the lower-cased components a verified signature covers."""

    keyid: str
    covered: frozenset[str]


def request(*headers: tuple[str, str], signature: object = None) -> Facts:
    gathered = {} if signature is None else {"signature": signature}
    return Facts(
        ipaddress.ip_address("10.0.0.1"),
        "GET",
        "/db/query",
        NOW,
        "0123456789abcdef",
        CIMultiDictProxy(CIMultiDict(headers)),
        gathered,
    )


SCOPE = ("X-Task-Scope", "reporting")
LOW = ("X-Data-Sensitivity", "low")
COVERING = Verified("agent-1", frozenset({"@method", "@path", "x-task-scope"}))

CASES = [
    ("both present and within bounds", AGENT, request(SCOPE, LOW), Reason.ALLOWED, ""),
    (
        "header names are case-insensitive",
        AGENT,
        request(("x-task-scope", "billing-read"), ("x-data-sensitivity", "public")),
        Reason.ALLOWED,
        "",
    ),
    ("scope absent", AGENT, request(LOW), Reason.CONTEXT_MISSING, "header X-Task-Scope is required"),
    ("sensitivity absent", AGENT, request(SCOPE), Reason.CONTEXT_MISSING, "X-Data-Sensitivity is required"),
    (
        "scope not listed",
        AGENT,
        request(("X-Task-Scope", "admin"), LOW),
        Reason.CONTEXT_DENIED,
        "'admin' is not allowed",
    ),
    (
        "values compare exactly",
        AGENT,
        request(("X-Task-Scope", "Reporting"), LOW),
        Reason.CONTEXT_DENIED,
        "not allowed",
    ),
    (
        "over the maximum",
        AGENT,
        request(SCOPE, ("X-Data-Sensitivity", "medium")),
        Reason.CONTEXT_DENIED,
        "'medium' is above the maximum",
    ),
    (
        "unknown level",
        AGENT,
        request(SCOPE, ("X-Data-Sensitivity", "secret")),
        Reason.CONTEXT_DENIED,
        "'secret' is not a known level",
    ),
    (
        "empty value",
        AGENT,
        request(SCOPE, ("X-Data-Sensitivity", "")),
        Reason.CONTEXT_DENIED,
        "not a known level",
    ),
    (
        "given twice",
        AGENT,
        request(SCOPE, LOW, ("X-Data-Sensitivity", "public")),
        Reason.CONTEXT_DENIED,
        "given 2 times",
    ),
    ("signed and covered", SIGNED, request(SCOPE, signature=COVERING), Reason.ALLOWED, ""),
    (
        "signed required, no signature",
        SIGNED,
        request(SCOPE),
        Reason.CONTEXT_DENIED,
        "not covered by a valid request signature",
    ),
    (
        "signed required, verification failed",
        SIGNED,
        request(SCOPE, signature=UNAVAILABLE),
        Reason.CONTEXT_DENIED,
        "not covered",
    ),
    (
        "signed required, header not covered",
        SIGNED,
        request(SCOPE, signature=Verified("agent-1", frozenset({"@method"}))),
        Reason.CONTEXT_DENIED,
        "not covered",
    ),
    (
        "a failure value covers nothing",
        SIGNED,
        request(SCOPE, signature="signature_invalid"),
        Reason.CONTEXT_DENIED,
        "not covered",
    ),
    (
        "signed but wrong value",
        SIGNED,
        request(("X-Task-Scope", "billing-read"), signature=COVERING),
        Reason.CONTEXT_DENIED,
        "not allowed",
    ),
]


def policy(context: dict) -> dict:
    """A policy with ``context``, and the signature part whose keys verify a signed header's signature."""
    signed = any(spec.get("signed") for spec in context.get("headers", {}).values())
    return {"context": context, **({"signature": SIGNATURE_PART} if signed else {})}


@pytest.mark.parametrize(("name", "context", "facts", "reason", "detail"), CASES, ids=[c[0] for c in CASES])
def test_context(name: str, context: dict, facts: Facts, reason: Reason, detail: str) -> None:
    rule = compile_policy(policy(context)).rule("context")  # the signature part judges its own facts
    assert rule is not None
    decision = rule.check(facts) or ALLOW
    assert (decision.reason, decision.status) == (reason, 200 if reason is Reason.ALLOWED else 403)
    assert detail in decision.detail


def test_a_long_value_is_cut_in_the_detail() -> None:
    decision = evaluate(compile_policy({"context": AGENT}), request(("X-Task-Scope", "x" * 5000), LOW))
    assert decision.reason is Reason.CONTEXT_DENIED and len(decision.detail) < 200


def test_the_signature_is_needed_only_when_a_header_must_be_signed() -> None:
    assert compile_policy({"context": AGENT}).needs == frozenset()
    assert "signature" in compile_policy(policy(SIGNED)).needs


def test_forward_false_strips_exactly_the_context_headers() -> None:
    assert compile_policy({"context": AGENT}).strip == frozenset({"x-task-scope", "x-data-sensitivity"})
    assert compile_policy(policy(SIGNED)).strip == frozenset()  # forward defaults to true
    assert compile_policy({}).strip == frozenset()


def test_context_is_not_memoised_on_client_values() -> None:
    policy = compile_policy({"networks": {"allow": ["10.0.0.0/8"]}, "context": AGENT})
    assert evaluate(policy, request(SCOPE, LOW)).allowed
    assert evaluate(policy, request(LOW)).reason is Reason.CONTEXT_MISSING
    assert len(policy.memo) == 1  # the networks part's verdict only


BAD = [
    ({}, "policy.context.headers", "is required"),
    ({"headers": {}}, "policy.context.headers", "non-empty object"),
    ({"headers": {"X-A": {}}}, "policy.context.headers.X-A", "exactly one of 'in'"),
    (
        {"headers": {"X-A": {"in": ["a"], "max": "a", "order": ["a"]}}},
        "policy.context.headers.X-A",
        "exactly one",
    ),
    ({"headers": {"X-A": {"in": []}}}, "policy.context.headers.X-A.in", "must not be empty"),
    ({"headers": {"X-A": {"in": "a"}}}, "policy.context.headers.X-A.in", "must be a list"),
    (
        {"headers": {"X-A": {"in": ["a"], "order": ["a"]}}},
        "policy.context.headers.X-A.order",
        "goes with 'max'",
    ),
    ({"headers": {"X-A": {"max": "low"}}}, "policy.context.headers.X-A.order", "is required with 'max'"),
    (
        {"headers": {"X-A": {"max": "top", "order": LEVELS}}},
        "policy.context.headers.X-A.max",
        "'top' is not one",
    ),
    (
        {"headers": {"X-A": {"max": "low", "order": ["low", "low"]}}},
        "policy.context.headers.X-A.order",
        "twice",
    ),
    (
        {"headers": {"X-A": {"in": ["a"], "signed": "yes"}}},
        "policy.context.headers.X-A.signed",
        "true or false",
    ),
    ({"headers": {"X A": {"in": ["a"]}}}, "policy.context.headers.X A", "is not a header name"),
    ({"headers": {"Host": {"in": ["a"]}}}, "policy.context.headers.Host", "cannot be request context"),
    (
        {"headers": {"X-A": {"in": ["a"]}, "x-a": {"in": ["b"]}}},
        "policy.context.headers.x-a",
        "given already",
    ),
    ({"headers": {"X-A": {"in": ["a"]}}, "forward": "no"}, "policy.context.forward", "true or false"),
    ({"headers": {"X-A": {"in": ["a"]}}, "strip": True}, "policy.context.strip", "unknown field"),
]


@pytest.mark.parametrize(("context", "path", "message"), BAD, ids=[f"{b[1]}: {b[2]}" for b in BAD])
def test_a_bad_context_rule_names_the_field(context: dict, path: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy({"context": context})
    assert (caught.value.path, message in caught.value.reason) == (path, True), caught.value


def test_a_signed_header_needs_the_signature_part_in_the_same_policy() -> None:
    """The signature part's keys verify the signature: without it no header could ever be signed."""
    with pytest.raises(PolicyError) as caught:
        compile_policy({"context": SIGNED})
    assert caught.value.path == "policy.context.headers.X-Task-Scope.signed"
    assert "needs the 'signature' part" in caught.value.reason
