"""Micro-benchmarks of the pure core (pytest-benchmark): what one request's decision costs in-process.

Run: ``.venv/bin/pytest bench/micro`` (after ``pip install -e '.[bench]'``). Not part of the test suite
(its ``testpaths`` is ``tests/``). Compare two commits with ``--benchmark-save=NAME`` and
``--benchmark-compare``; like every figure on a shared machine, read them as ratios.

Each policy part has an entry in ``PART_SAMPLES``: a policy fragment and the request facts to judge.
A new part adds one (``test_every_part_has_a_sample`` fails until it does).
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from multidict import CIMultiDict

from proxy.core import keys, paths
from proxy.core.attestation import VerifiedToken
from proxy.core.facts import NO_HEADERS, Facts, Headers
from proxy.core.parts import PARTS
from proxy.core.policy import compile_policy, evaluate
from proxy.core.signals import TrustedProxies, client_address
from proxy.core.signed import VerifiedSignature

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CLIENT = ipaddress.ip_address("10.200.3.4")


def facts(
    path: str = "/v1/items/42", client: Any = CLIENT, headers: Headers = NO_HEADERS, **gathered: object
) -> Facts:
    return Facts(client, "GET", path, NOW, "0123456789abcdef", headers, gathered=gathered)


def cidrs(count: int) -> list[str]:
    """``count`` disjoint /24 networks in 10.0.0.0/8, the client's last (evaluation cannot stop early)."""
    made = [f"10.{i // 256}.{i % 256}.0/24" for i in range(count - 1)]
    return [*made, "10.200.3.0/24"]


# -- policy evaluation ------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 100, 10_000])
def test_networks_check(benchmark: Any, count: int) -> None:
    """The networks rule alone (no memo): bisect over merged intervals."""
    rule = compile_policy({"networks": {"allow": cidrs(count)}}).rule("networks")
    assert rule is not None
    request = facts()
    assert benchmark(rule.check, request) is None


@pytest.mark.parametrize("count", [1, 100, 10_000])
def test_evaluate_memo_miss(benchmark: Any, count: int) -> None:
    """evaluate() with a new client address every time: the memo never hits."""
    policy = compile_policy({"networks": {"allow": cidrs(count)}})
    requests = [facts(client=ipaddress.ip_address(f"10.200.3.{i}")) for i in range(1, 255)]
    position = iter(range(10**9))

    def one() -> bool:
        return evaluate(policy, requests[next(position) % len(requests)]).allowed

    assert benchmark(one)


def test_evaluate_full_policy_memo_hit(benchmark: Any) -> None:
    """The bench's full policy (networks, regions, routes) on a repeated request: the hot path."""
    from proxy.bench.seed import POLICY

    policy = compile_policy(POLICY)
    request = facts(client=ipaddress.ip_address("10.1.2.3"), country="US")
    assert benchmark(evaluate, policy, request).allowed


# -- route matching ---------------------------------------------------------------------------------


def routes(count: int) -> list[dict[str, Any]]:
    made = [{"methods": ["GET"], "path": f"/v1/resource{i}/*/items/**"} for i in range(count - 1)]
    return [*made, {"methods": ["GET", "HEAD"], "path": "/v1/items/*"}]


@pytest.mark.parametrize("count", [1, 10, 100])
def test_routes_check(benchmark: Any, count: int) -> None:
    rule = compile_policy({"routes": routes(count)}).rule("routes")
    assert rule is not None
    assert benchmark(rule.check, facts()) is None


def test_route_pattern_with_two_double_stars(benchmark: Any) -> None:
    """A pattern with two ``**`` is matched segment by segment (no regular expression)."""
    rule = compile_policy({"routes": [{"path": "/v1/**/orders/*/lines/**"}]}).rule("routes")
    assert rule is not None
    request = facts(path="/v1/a/b/c/orders/17/lines/3/detail")
    assert benchmark(rule.check, request) is None


# -- per request, before any policy -----------------------------------------------------------------


def test_key_parse_and_hash(benchmark: Any) -> None:
    _id, key, digest = keys.generate()
    assert benchmark(keys.parse, key).digest == digest


def test_path_normalize(benchmark: Any) -> None:
    assert benchmark(paths.normalize, "/v1/items/%7e42/./x/../?a=1").path == "/v1/items/~42/"


def test_client_address_through_a_trusted_hop(benchmark: Any) -> None:
    trusted = TrustedProxies([ipaddress.ip_network("127.0.0.1/32")])
    found = benchmark(client_address, "127.0.0.1", ["192.168.7.9"], trusted)
    assert str(found.ip) == "192.168.7.9"


# -- one benchmark per policy part ------------------------------------------------------------------


def _token(kind: str, issuer: str, claims: dict[str, Any]) -> VerifiedToken:
    """What ``proxy.attest`` gathers for a verified token (the signature check is not the part's)."""
    at = NOW.timestamp()
    return VerifiedToken(
        issuer, kind, "subject-1", claims, iat=at - 60, exp=at + 600, audiences=(f"aud-{issuer}",),
        issuer_audience=f"aud-{issuer}",
    )  # fmt: skip


def _ed25519_jwk(kid: str) -> dict[str, str]:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid}


SIGNED = VerifiedSignature(
    "ci-1", "ed25519", frozenset({"@method", "@target-uri", "x-api-key"}), created=int(NOW.timestamp()) - 1,
    expires=None, nonce="nonce-1", must_cover=frozenset({"x-api-key"}),
)  # fmt: skip

# part name -> (its policy fragment, the facts of a request it allows, gathered facts included: the
# gathering itself, e.g. a token's first verification, is a shell's cost and is not measured here)
PART_SAMPLES: dict[str, tuple[object, Callable[[], Facts]]] = {
    "networks": ({"allow": ["10.0.0.0/8"], "deny": ["10.66.0.0/16"]}, facts),
    "regions": ({"allow": ["DE", "US"], "deny": ["KP"], "unknown": "deny"}, lambda: facts(country="US")),
    "routes": (routes(4), facts),
    "device": (
        {"issuers": ["mdm"], "max_age_s": 3600, "claims": {"managed": True, "os": ["macos", "linux"]}},
        lambda: facts(device=_token("device", "mdm", {"managed": True, "os": "linux"})),
    ),
    "workload": (
        {"issuers": ["ci"], "claims": {"repository": "org/service", "ref": {"glob": "refs/heads/*"}}},
        lambda: facts(
            workload=_token("workload", "ci", {"repository": "org/service", "ref": "refs/heads/main"})
        ),
    ),
    "signature": ({"keys": {"keys": [_ed25519_jwk("ci-1")]}}, lambda: facts(signature=SIGNED)),
    "context": (
        {
            "headers": {
                "X-Task-Scope": {"in": ["reporting", "billing-read"]},
                "X-Data-Sensitivity": {"max": "low", "order": ["public", "low", "medium", "high"]},
            }
        },
        lambda: facts(headers=CIMultiDict({"X-Task-Scope": "reporting", "X-Data-Sensitivity": "public"})),
    ),
    # 2026-12-01 12:00 UTC is a Tuesday, 13:00 in Berlin.
    "schedule": ({"tz": "Europe/Berlin", "days": ["mon", "tue", "wed"], "hours": ["08:00-18:00"]}, facts),
    # Limits: the part always passes, the admission in the shell counts (see the bench's hot-usage and
    # hot-rate scenarios); what is measured here is only that a limited key's policy check stays cheap.
    "rate": ({"per_second": 100, "burst": 10}, facts),
    "usage": ({"max_uses": 1000}, facts),
    "max_in_flight": (10, facts),
}


def test_every_part_has_a_sample() -> None:
    missing = [part.name for part in PARTS if part.name not in PART_SAMPLES]
    assert not missing, f"add a PART_SAMPLES entry in {__file__} for {missing}"


@pytest.mark.parametrize("name", sorted(PART_SAMPLES))
def test_part_check(benchmark: Any, name: str) -> None:
    fragment, request = PART_SAMPLES[name]
    rule = compile_policy({name: fragment}).rule(name)
    assert rule is not None
    assert benchmark(rule.check, request()) is None
