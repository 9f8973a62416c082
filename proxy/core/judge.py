"""The pure steps of judging one request, shared by the proxy's handler and the explain endpoint.

``proxy.http.handler`` runs them on every request and ``POST /v1/evaluate`` (``explain_request``) runs
the same functions on a described request, so what the operator is told is what the proxy does:

1. ``read_target``: the method and the normalised target (``proxy.core.paths``);
2. ``read_client``: the client address (``proxy.core.signals``, X-Forwarded-For from trusted proxies);
3. ``read_key``: the presented key (the key header or ``Authorization: Bearer``);
4. the key lookup (IO: the caller's, between 3 and 5);
5. ``judge``: the key's own state (``check_key``), the facts both of its policies need (``gather``),
   the enforced policy's decision (``evaluate``) and the candidate policy's (the same ``evaluate``).

A candidate (dry-run) policy only ever yields a ``Decision`` put in the trace: it runs through
``evaluate`` and nothing else, on facts of its own (``candidate_facts``), so whatever has side effects
(admissions: usage counts, rate limits, signature nonces) happens for the enforced policy only, after
``judge``, and nothing gathered for the candidate reaches the forwarding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from proxy.core import keys
from proxy.core.cache import Entry
from proxy.core.decide import check_key, key_state
from proxy.core.errors import KeyFormatError
from proxy.core.facts import UNAVAILABLE, Facts, Headers
from proxy.core.keys import PresentedKey
from proxy.core.model import Decision, Reason
from proxy.core.paths import Target, normalize
from proxy.core.policy import CompiledPolicy, evaluate
from proxy.core.redact import logged_path
from proxy.core.signals import (
    ClientAddress,
    PresentedCredential,
    TrustedProxies,
    client_address,
    presented_key,
)
from proxy.core.trace import Trace

__all__ = [
    "Asked",
    "Gatherer",
    "Judging",
    "candidate_facts",
    "gather",
    "judge",
    "read_caller",
    "read_client",
    "read_key",
    "read_request",
    "read_target",
]


# One gathered fact (proxy.core.facts) from the request's facts; UNAVAILABLE when it cannot be had.
Gatherer = Callable[[Facts], object]


@dataclass(frozen=True)
class Judging:
    """What the proxy judges requests with besides the request and the key: the same for explain."""

    trusted: TrustedProxies = field(default_factory=lambda: TrustedProxies(()))
    key_header: str = "X-API-Key"
    gatherers: Mapping[str, Gatherer] = field(default_factory=dict)
    scheme: str = "http"  # of the proxy's listener: a signature covers it


class Asked(NamedTuple):
    """What a request asks, read from it before any key is looked up."""

    target: Target
    address: ClientAddress
    credential: PresentedCredential
    presented: PresentedKey


def read_target(method: str, raw_path: str, trace: Trace) -> Target | Decision:
    if method == "CONNECT":  # a tunnel, not a request: nothing to judge or forward
        return Decision.deny(Reason.METHOD_UNSUPPORTED, "CONNECT is not supported")
    target = normalize(raw_path)
    if target.problem is not None:
        trace.path = logged_path(raw_path)  # the query may hold secrets
        return Decision.deny(Reason.PATH_INVALID, target.problem)
    trace.path = target.path
    return target


def read_client(
    peer: str | None, headers: Headers, trusted: TrustedProxies, trace: Trace
) -> ClientAddress | Decision:
    address = client_address(peer, headers.getall("X-Forwarded-For", ()), trusted)
    trace.client = address.ip
    if address.ip is None:
        return Decision.deny(Reason.REQUEST_INVALID, address.problem or "client address unknown")
    return address


def read_key(
    headers: Headers, key_header: str, trace: Trace
) -> tuple[PresentedCredential, PresentedKey] | Decision:
    credential = presented_key(
        headers.getall(key_header, ()), headers.getall("Authorization", ()), key_header
    )
    if credential.problem is not None:
        return Decision.deny(Reason.KEY_INVALID, credential.problem)
    if not credential.value:
        return Decision.deny(Reason.KEY_MISSING, "no API key presented")
    try:
        presented = keys.parse(credential.value)
    except KeyFormatError:
        return Decision.deny(Reason.KEY_INVALID, "not a signalgate key")
    trace.key_id = presented.key_id
    return credential, presented


def read_request(
    method: str,
    raw_path: str,
    peer: str | None,
    headers: Headers,
    trusted: TrustedProxies,
    key_header: str,
    trace: Trace,
) -> Asked | Decision:
    """Steps 1-3: the request's target, client address and key, or the refusal of one that has none."""
    target = read_target(method, raw_path, trace)
    if isinstance(target, Decision):
        return target
    return read_caller(target, peer, headers, trusted, key_header, trace)


def read_caller(
    target: Target,
    peer: str | None,
    headers: Headers,
    trusted: TrustedProxies,
    key_header: str,
    trace: Trace,
) -> Asked | Decision:
    """Steps 2-3 for a read target: who asks, from where, with which key."""
    address = read_client(peer, headers, trusted, trace)
    if isinstance(address, Decision):
        return address
    key = read_key(headers, key_header, trace)
    if isinstance(key, Decision):
        return key
    return Asked(target, address, key[0], key[1])


def gather(facts: Facts, names: Iterable[str], gatherers: Mapping[str, Gatherer]) -> None:
    """Gather the named facts not gathered yet; one with no gatherer is UNAVAILABLE."""
    gathered = facts.gathered
    for name in names:
        if name not in gathered:
            gatherer = gatherers.get(name)
            gathered[name] = UNAVAILABLE if gatherer is None else gatherer(facts)


def judge(
    entry: Entry | None,
    presented: PresentedKey | None,
    facts: Facts,
    gatherers: Mapping[str, Gatherer],
    trace: Trace,
) -> Decision:
    """Step 5: the key's state at ``facts.now``, then its policy; the candidate's decision goes in
    ``trace.candidate``. ``presented`` None (explain, given a key id) judges the key as if its secret
    had been presented; the proxy always passes the presented key."""
    if entry is None:
        if presented is None:
            return Decision.deny(Reason.KEY_INVALID, "unknown key")
        return check_key(None, presented, facts.now) or Decision.deny(Reason.INTERNAL_ERROR, "no key record")
    record = entry.record
    trace.owner = record.owner
    trace.policy_revision = record.revision
    trace.key_metrics = entry.metrics
    # The key itself first: nothing is gathered (no token verified) for a wrong secret.
    now = facts.now
    denied = check_key(record, presented, now) if presented is not None else key_state(record, now)
    if denied is not None:
        return denied
    policy = entry.policy
    if policy.needs:
        facts.policy = policy  # a gatherer may verify against the policy being judged (signature keys)
        gather(facts, policy.needs, gatherers)
    if entry.candidate is not None:
        trace.candidate = evaluate(entry.candidate, candidate_facts(entry.candidate, facts, gatherers))
    return evaluate(policy, facts)


def candidate_facts(candidate: CompiledPolicy, facts: Facts, gatherers: Mapping[str, Gatherer]) -> Facts:
    """The facts a candidate policy is judged on: the request's own, gathered afresh for the candidate.

    Never the enforced policy's ``facts``: a fact gathered only for the candidate must not reach the
    upstream (an attested subject) or the forwarding (a signed body digest to check), and a gatherer
    that verifies against the policy being judged must see the candidate.
    """
    own = Facts(
        facts.client_ip,
        facts.method,
        facts.path,
        facts.now,
        facts.key_id,
        facts.headers,
        target=facts.target,
        scheme=facts.scheme,
        peer_trusted=facts.peer_trusted,
        policy=candidate,
    )
    if candidate.needs:
        gather(own, candidate.needs, gatherers)
    return own
