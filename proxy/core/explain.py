"""Explain: the decision on a described request, with every step's and every part's outcome.

``POST /v1/evaluate`` calls ``explain_request`` with the same ``Judging`` (trusted proxies, key header,
gatherers) the proxy's workers use, and it runs the proxy's own steps (``proxy.core.judge``): the
target, the client address, then ``judge`` for a key (its state and its policy, the candidate beside
it) or ``evaluate`` for a bare policy document. Its decision is therefore the proxy's; on top, it
reports each part's outcome (``proxy.core.policy.explain``), not only the first failure.

Given a key id, the key is judged as if its secret had been presented: an operator explaining a
request never needs the secret.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from proxy.core.attestation import TokenFailure, VerifiedToken
from proxy.core.cache import Entry
from proxy.core.decide import key_state
from proxy.core.facts import UNAVAILABLE, Facts, Headers
from proxy.core.judge import Judging, candidate_facts, gather, judge, read_client, read_target
from proxy.core.model import ALLOW, Decision
from proxy.core.policy import CompiledPolicy, evaluate, explain
from proxy.core.signed import SignatureFailure, VerifiedSignature
from proxy.core.trace import Trace

__all__ = ["explain_request"]


def _decision(decision: Decision) -> dict[str, Any]:
    return {
        "allowed": decision.allowed,
        "reason": str(decision.reason),
        "detail": decision.detail,
        "status": decision.status,
    }


def _parts(policy: CompiledPolicy, facts: Facts) -> list[dict[str, Any]]:
    return [{"part": name, **_decision(outcome)} for name, outcome in explain(policy, facts)]


def _fact(value: object) -> object:
    """A gathered fact as JSON shows it: what was verified, never a token's claims or a signature."""
    if value is UNAVAILABLE:
        return "unavailable"
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, VerifiedToken):
        return {"verified": True, "issuer": value.issuer, "subject": value.subject, "kid": value.kid}
    if isinstance(value, VerifiedSignature):
        return {"verified": True, "keyid": value.keyid, "alg": value.alg, "covered": sorted(value.covered)}
    if isinstance(value, TokenFailure | SignatureFailure):
        return {"verified": False, "detail": value.detail}
    return type(value).__name__


def explain_request(
    judging: Judging,
    *,
    method: str,
    raw_path: str,
    peer: str,
    headers: Headers,
    now: datetime,
    entry: Entry | None = None,
    policy: CompiledPolicy | None = None,
) -> dict[str, Any]:
    """The decision on the request, where it was made (``stage``), and every part's outcome.

    Exactly one of ``entry`` (a key) and ``policy`` (a policy document on its own) is given.
    """
    if (entry is None) == (policy is None):
        raise ValueError("explain a key or a policy, exactly one of them")
    trace = Trace("explain")
    result: dict[str, Any] = {
        "stage": "target",
        "request": {"method": method, "path": None, "client_ip": None, "facts": {}},
        "key": None,
        "parts": [],
        "candidate": None,
    }
    if entry is not None:
        record = entry.record
        result["key"] = {
            "id": record.id,
            "owner": record.owner,
            "status": str(record.status),
            "revision": record.revision,
            "outcome": _decision(key_state(record, now) or ALLOW),
        }
    target = read_target(method, raw_path, trace)
    if isinstance(target, Decision):
        result["decision"] = _decision(target)
        return result
    result["request"]["path"] = target.path
    result["stage"] = "client"
    address = read_client(peer, headers, judging.trusted, trace)
    if isinstance(address, Decision):
        result["decision"] = _decision(address)
        return result
    assert address.ip is not None
    result["request"]["client_ip"] = str(address.ip)
    facts = Facts(
        address.ip,
        method,
        target.path,
        now,
        entry.record.id if entry else "",
        headers,
        target=raw_path,
        scheme=judging.scheme,
        peer_trusted=address.peer_trusted,
    )
    if entry is not None:
        decision = judge(entry, None, facts, judging.gatherers, trace)
        result["stage"] = "key" if key_state(entry.record, now) is not None else "policy"
        facts.policy = entry.policy  # every part's outcome, even past a key refusal
        gather(facts, entry.policy.needs, judging.gatherers)
        enforced, candidate = entry.policy, entry.candidate
    else:
        assert policy is not None
        facts.policy = policy
        gather(facts, policy.needs, judging.gatherers)
        decision = evaluate(policy, facts)
        result["stage"] = "policy"
        enforced, candidate = policy, None
    result["decision"] = _decision(decision)
    result["parts"] = _parts(enforced, facts)
    if candidate is not None:
        # As the proxy records it: compared only when the key itself passed (else None).
        judged = trace.candidate is not None
        trace.decision = decision
        own = candidate_facts(candidate, facts, judging.gatherers)
        verdict = trace.candidate or evaluate(candidate, own)
        result["candidate"] = {
            "decision": _decision(verdict),
            "outcome": trace.candidate_outcome if judged else None,
            "parts": _parts(candidate, own),
        }
    result["request"]["facts"] = {name: _fact(value) for name, value in sorted(facts.gathered.items())}
    return result
