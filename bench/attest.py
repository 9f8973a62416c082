"""What attestations and request signatures cost per request, in process (no sockets, no database).

    flock /tmp/signalgate-bench.lock .venv/bin/python bench/attest.py [--rounds 5] [--json out.json]

Each figure is CPU time per request of the authorization step the proxy runs after the key lookup:
gather the facts the key's policy needs (``proxy.wiring.attestation_gatherers``: the real PyJWT and
http-message-signatures shells) and evaluate the policy (``proxy.core.policy.evaluate``), for:

- ``baseline``: a key whose policy is ``routes`` only (memoised): what every key pays;
- ``device, cached token``: the same key with a ``device`` part, the client reusing its token (one
  SHA-256 of the token, a dict lookup, the time/audience/claim checks);
- ``device, first verification <alg>``: a token seen for the first time (signature verified), per
  algorithm;
- ``workload + signature``: a CI key with a cached workload token and a fresh RFC 9421 signature on
  every request (parse, signature base, Ed25519 verify). The nonce's replay check is one INSERT round
  trip to PostgreSQL on top (not measured here: see the load bench).

The median of ``--rounds`` rounds is printed, with the min-max.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.attest import TrustStore
from proxy.config.settings import Settings
from proxy.core.facts import Facts
from proxy.core.issuers import IssuerRecord
from proxy.core.policy import CompiledPolicy, compile_policy, evaluate
from proxy.wiring import attestation_gatherers
from tests.attestations import (
    claims,
    ed25519_signer,
    es256_signer,
    jwks,
    rs256_signer,
    sign_request,
)

KEY_ID = "0123456789abcdef"
API_KEY = f"sg_{KEY_ID}_" + "0" * 48
ISS = "https://mdm.example"
ROUTES = [{"methods": ["GET", "POST"], "path": "/v1/**"}]


def judge(gatherers: dict[str, Any], policy: CompiledPolicy, facts: Facts) -> bool:
    """What ``ProxyHandler._judge`` does after the key's secret matched."""
    if policy.needs:
        facts.policy = policy
        for name in policy.needs:
            if name not in facts.gathered:
                facts.gathered[name] = gatherers[name](facts)
    return evaluate(policy, facts).allowed


def facts_for(headers: dict[str, str], method: str = "GET", target: str = "/v1/metrics") -> Facts:
    return Facts(
        ipaddress.ip_address("127.0.0.1"),
        method,
        target,
        datetime.now(UTC),
        KEY_ID,
        CIMultiDictProxy(CIMultiDict(headers)),
        target=target,
        scheme="http",
    )


def per_request(
    prepare: Callable[[int], list[Facts]], run: Callable[[Facts], bool], n: int, rounds: int
) -> list[float]:
    """µs of CPU per request, one figure per round (inputs prepared outside the timed part)."""
    figures = []
    for _ in range(rounds):
        inputs = prepare(n)
        started = time.process_time()
        for facts in inputs:
            if not run(facts):
                raise AssertionError("a benchmark request was refused")
        figures.append((time.process_time() - started) / n * 1e6)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    ed, es, rs, ps = (
        ed25519_signer("ed"),
        es256_signer("es"),
        rs256_signer("rs", "RS256"),
        rs256_signer("rs", "PS256"),
    )
    runner = ed25519_signer("runner-1")
    trust = TrustStore()
    algorithms = ("EdDSA", "ES256", "RS256", "PS256")
    trust.replace("mdm", IssuerRecord("mdm", "device", ISS, "sg", algorithms, jwks=jwks(ed, es, rs)))
    trust.replace("ci", IssuerRecord("ci", "workload", ISS + "/ci", "sg", ("EdDSA",), jwks=jwks(ed)))
    trust.set_settled(True)
    gatherers = attestation_gatherers(Settings(attestation_cache_size=1_000_000), trust)
    device = {
        "issuers": ["mdm"],
        "max_age_s": 900,
        "claims": {"managed": True, "os_version": {"min": "14.2"}},
    }
    baseline = compile_policy({"routes": ROUTES})
    with_device = compile_policy({"routes": ROUTES, "device": device})
    ci = compile_policy(
        {"routes": ROUTES, "workload": {"issuers": ["ci"]}, "signature": {"keys": {"keys": [runner.jwk]}}}
    )
    posture = {"managed": True, "os_version": "14.10"}
    cached = ed.token(claims(ISS, "sg", **posture))
    ci_token = ed.token(claims(ISS + "/ci", "sg"))

    def same(headers: dict[str, str]) -> Callable[[int], list[Facts]]:
        return lambda n: [facts_for(headers) for _ in range(n)]

    minted = iter(range(10**9))  # a new jti for every token: never seen before, so never cached

    def fresh(signer: Any) -> Callable[[int], list[Facts]]:
        def prepare(n: int) -> list[Facts]:
            return [
                facts_for(
                    {
                        "X-API-Key": API_KEY,
                        "X-Device-Attestation": signer.token(
                            claims(ISS, "sg", jti=str(next(minted)), **posture)
                        ),
                    }
                )
                for _ in range(n)
            ]

        return prepare

    def signed(n: int) -> list[Facts]:
        url = "http://api.example/v1/deploy"
        out = []
        for _ in range(n):
            headers = {"Host": "api.example", "X-API-Key": API_KEY, "X-Workload-Attestation": ci_token}
            out.append(facts_for(sign_request(runner, "POST", url, headers), "POST", "/v1/deploy"))
        return out

    run_baseline = lambda f: judge(gatherers, baseline, f)  # noqa: E731
    run_device = lambda f: judge(gatherers, with_device, f)  # noqa: E731
    run_ci = lambda f: judge(gatherers, ci, f)  # noqa: E731
    rows: list[tuple[str, list[float]]] = [
        (
            "baseline (routes only)",
            per_request(same({"X-API-Key": API_KEY}), run_baseline, 20000, args.rounds),
        ),
        (
            "device, cached token",
            per_request(
                same({"X-API-Key": API_KEY, "X-Device-Attestation": cached}), run_device, 20000, args.rounds
            ),
        ),
    ]
    for name, signer in (("EdDSA", ed), ("ES256", es), ("RS256", rs), ("PS256", ps)):
        rows.append(
            (f"device, first verification {name}", per_request(fresh(signer), run_device, 300, args.rounds))
        )
    rows.append(("workload (cached) + signature (fresh)", per_request(signed, run_ci, 300, args.rounds)))

    width = max(len(name) for name, _ in rows)
    base = statistics.median(rows[0][1])
    print(f"{'per request (CPU)'.ljust(width)}  median µs  (min-max)      over baseline")
    for name, figures in rows:
        median = statistics.median(figures)
        spread = f"({min(figures):.1f}-{max(figures):.1f})"
        print(f"{name.ljust(width)}  {median:9.1f}  {spread:<14} {median - base:+9.1f}")
    if args.json:
        args.json.write_text(json.dumps({name: figures for name, figures in rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
