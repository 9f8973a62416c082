"""Policy compilation and evaluation as table tests: signals in, decision and reason out, no sockets."""

from __future__ import annotations

import pytest

from proxy.core.errors import PolicyError
from proxy.core.facts import Facts
from proxy.core.model import Decision, Reason
from proxy.core.part import Part
from proxy.core.parts.routes import Routes
from proxy.core.policy import MEMO_SIZE, compile_policy, evaluate, explain
from tests.values import signals

EXAMPLE = {
    "networks": {"allow": ["10.20.0.0/16", "2001:db8::/48"], "deny": ["10.20.9.0/24"]},
    "regions": {"allow": ["US", "DE"], "deny": ["KP"], "unknown": "deny"},
    "routes": [{"methods": ["GET", "HEAD"], "path": "/metrics/**"}],
}


CASES = [
    # (name, policy, signals, expected reason)
    ("empty policy allows", {}, signals(), Reason.ALLOWED),
    ("example allows", EXAMPLE, signals(), Reason.ALLOWED),
    ("ipv6 allowed", EXAMPLE, signals(ip="2001:db8::5"), Reason.ALLOWED),
    ("ipv6 outside", EXAMPLE, signals(ip="2001:db9::5"), Reason.NETWORK_DENIED),
    ("ipv4 outside", EXAMPLE, signals(ip="10.21.0.1"), Reason.NETWORK_DENIED),
    ("deny beats allow", EXAMPLE, signals(ip="10.20.9.200"), Reason.NETWORK_DENIED),
    ("deny only v4", {"networks": {"deny": ["10.0.0.0/8"]}}, signals(ip="10.1.1.1"), Reason.NETWORK_DENIED),
    ("deny only lets others", {"networks": {"deny": ["10.0.0.0/8"]}}, signals(ip="11.1.1.1"), Reason.ALLOWED),
    ("empty allow list allows nothing", {"networks": {"allow": []}}, signals(), Reason.NETWORK_DENIED),
    (
        "v4-only allow list refuses v6",
        {"networks": {"allow": ["0.0.0.0/0"]}},
        signals(ip="2001:db8::1"),
        Reason.NETWORK_DENIED,
    ),
    ("single host", {"networks": {"allow": ["10.20.1.1"]}}, signals(), Reason.ALLOWED),
    (
        "single host other",
        {"networks": {"allow": ["10.20.1.1/32"]}},
        signals(ip="10.20.1.2"),
        Reason.NETWORK_DENIED,
    ),
    ("region allowed", EXAMPLE, signals(country="DE"), Reason.ALLOWED),
    ("region not in allow", EXAMPLE, signals(country="FR"), Reason.REGION_DENIED),
    ("region denied", {"regions": {"deny": ["KP"]}}, signals(country="KP"), Reason.REGION_DENIED),
    ("region deny only others pass", {"regions": {"deny": ["KP"]}}, signals(country="FR"), Reason.ALLOWED),
    (
        "deny beats allow region",
        {"regions": {"allow": ["KP"], "deny": ["KP"]}},
        signals(country="KP"),
        Reason.REGION_DENIED,
    ),
    (
        "unknown country denied by default with allow",
        {"regions": {"allow": ["US"]}},
        signals(country=None),
        Reason.REGION_DENIED,
    ),
    (
        "unknown country allowed by default without allow",
        {"regions": {"deny": ["KP"]}},
        signals(country=None),
        Reason.ALLOWED,
    ),
    (
        "unknown explicit allow",
        {"regions": {"allow": ["US"], "unknown": "allow"}},
        signals(country=None),
        Reason.ALLOWED,
    ),
    (
        "unknown explicit deny",
        {"regions": {"deny": ["KP"], "unknown": "deny"}},
        signals(country=None),
        Reason.REGION_DENIED,
    ),
    ("empty region allow", {"regions": {"allow": []}}, signals(country="US"), Reason.REGION_DENIED),
    (
        "no geoip configured fails closed",
        {"regions": {"deny": ["KP"]}},
        signals(country=None, geo=False),
        Reason.REGION_DENIED,
    ),
    (
        "route method case-insensitive",
        {"routes": [{"methods": ["get"], "path": "/metrics/**"}]},
        signals(),
        Reason.ALLOWED,
    ),
    ("route wrong method", EXAMPLE, signals(method="POST"), Reason.ROUTE_DENIED),
    ("route deep", EXAMPLE, signals(path="/metrics/a/b/c"), Reason.ALLOWED),
    ("route trailing slash", EXAMPLE, signals(path="/metrics/"), Reason.ALLOWED),
    ("route other prefix", EXAMPLE, signals(path="/metricsx"), Reason.ROUTE_DENIED),
    ("route dot-dot escape", EXAMPLE, signals(path="/metrics/../admin"), Reason.ROUTE_DENIED),
    ("route encoded dot-dot escape", EXAMPLE, signals(path="/metrics/%2e%2e/admin"), Reason.ROUTE_DENIED),
    ("route double slash", EXAMPLE, signals(path="//metrics//x"), Reason.ALLOWED),
    (
        "route no methods: any",
        {"routes": [{"path": "/a/*"}]},
        signals(method="DELETE", path="/a/b"),
        Reason.ALLOWED,
    ),
    (
        "route star one segment only",
        {"routes": [{"path": "/a/*"}]},
        signals(path="/a/b/c"),
        Reason.ROUTE_DENIED,
    ),
    ("route star needs a segment", {"routes": [{"path": "/a/*"}]}, signals(path="/a"), Reason.ROUTE_DENIED),
    ("route star in middle", {"routes": [{"path": "/a/*/c"}]}, signals(path="/a/b/c"), Reason.ALLOWED),
    ("route globstar middle", {"routes": [{"path": "/a/**/z"}]}, signals(path="/a/b/c/z"), Reason.ALLOWED),
    ("route globstar zero", {"routes": [{"path": "/a/**/z"}]}, signals(path="/a/z"), Reason.ALLOWED),
    (
        "route literal case-sensitive",
        {"routes": [{"path": "/Admin"}]},
        signals(path="/admin"),
        Reason.ROUTE_DENIED,
    ),
    ("route root", {"routes": [{"path": "/"}]}, signals(path="/"), Reason.ALLOWED),
    ("route any", {"routes": [{"path": "/**"}]}, signals(path="/x/y"), Reason.ALLOWED),
    (
        "route wildcard method",
        {"routes": [{"methods": ["*"], "path": "/**"}]},
        signals(method="PATCH"),
        Reason.ALLOWED,
    ),
    (
        "route encoded literal",
        {"routes": [{"path": "/caf%c3%a9"}]},
        signals(path="/caf%C3%A9"),
        Reason.ALLOWED,
    ),
    (
        "route escaped unreserved is decoded",
        {"routes": [{"path": "/%7Euser"}]},
        signals(path="/~user"),
        Reason.ALLOWED,
    ),
    ("route regex chars literal", {"routes": [{"path": "/a.b"}]}, signals(path="/axb"), Reason.ROUTE_DENIED),
    ("empty routes allow nothing", {"routes": []}, signals(), Reason.ROUTE_DENIED),
    (
        "IPv4-mapped deny applies to IPv4 clients",
        {"networks": {"deny": ["::ffff:10.0.0.0/104"]}},
        signals(ip="10.1.2.3"),
        Reason.NETWORK_DENIED,
    ),
    (
        "IPv4-mapped allow admits IPv4 clients",
        {"networks": {"allow": ["::ffff:10.20.0.0/112"]}},
        signals(ip="10.20.1.1"),
        Reason.ALLOWED,
    ),
    (
        "IPv6 deny around the mapped range stays IPv6",
        {"networks": {"deny": ["::/0"]}},
        signals(ip="10.20.1.1"),
        Reason.ALLOWED,
    ),
    ("second route matches", {"routes": [{"path": "/x"}, {"path": "/metrics"}]}, signals(), Reason.ALLOWED),
    ("network checked before route", EXAMPLE, signals(ip="10.99.0.1", method="POST"), Reason.NETWORK_DENIED),
    ("region checked before route", EXAMPLE, signals(country="KP", method="POST"), Reason.REGION_DENIED),
]


@pytest.mark.parametrize(("name", "doc", "sig", "reason"), CASES, ids=[c[0] for c in CASES])
def test_evaluate(name: str, doc: dict, sig: Facts, reason: Reason) -> None:
    decision = evaluate(compile_policy(doc), sig)
    assert decision.reason == reason, f"{name}: {decision}"
    assert decision.allowed == (reason is Reason.ALLOWED)


INVALID = [
    ([], "policy", "must be an object"),
    ({"bogus": {}}, "policy.bogus", "unknown field"),
    ({"posture": {}}, "policy.posture", "unknown field"),
    ({"networks": []}, "policy.networks", "must be an object"),
    ({"networks": {"allow": "10.0.0.0/8"}}, "policy.networks.allow", "must be a list"),
    ({"networks": {"allow": ["10.0.0.0/8", 5]}}, "policy.networks.allow[1]", "must be a string"),
    ({"networks": {"allow": ["10.0.0.300/8"]}}, "policy.networks.allow[0]", "not a valid CIDR"),
    ({"networks": {"deny": ["10.20.0.1/16"]}}, "policy.networks.deny[0]", "did you mean 10.20.0.0/16"),
    ({"networks": {"allow": [], "extra": 1}}, "policy.networks.extra", "unknown field"),
    ({"regions": {"allow": ["us"]}}, "policy.regions.allow[0]", "ISO 3166-1"),
    ({"regions": {"allow": ["ZZ"]}}, "policy.regions.allow[0]", "ISO 3166-1"),
    ({"regions": {"deny": ["USA"]}}, "policy.regions.deny[0]", "ISO 3166-1"),
    ({"regions": {"unknown": "maybe"}}, "policy.regions.unknown", "'allow' or 'deny'"),
    ({"routes": {}}, "policy.routes", "must be a list"),
    ({"routes": [{"methods": ["GET"]}]}, "policy.routes[0].path", "is required"),
    ({"routes": [{"path": 5}]}, "policy.routes[0].path", "must be a string"),
    ({"routes": [{"path": "metrics"}]}, "policy.routes[0].path", "must start with '/'"),
    ({"routes": [{"path": "/a/b*"}]}, "policy.routes[0].path", "whole segments"),
    ({"routes": [{"path": "/a//b"}]}, "policy.routes[0].path", "empty or dot segment"),
    ({"routes": [{"path": "/a/../b"}]}, "policy.routes[0].path", "empty or dot segment"),
    ({"routes": [{"path": "/a b"}]}, "policy.routes[0].path", "percent-encoded"),
    ({"routes": [{"path": "/a%zz"}]}, "policy.routes[0].path", "invalid percent-encoding"),
    ({"routes": [{"path": "/a%2Fb"}]}, "policy.routes[0].path", "encoded slash"),
    ({"routes": [{"path": "/a/%2e%2E"}]}, "policy.routes[0].path", "dot segment"),
    ({"routes": [{"path": "/a", "methods": []}]}, "policy.routes[0].methods", "must not be empty"),
    ({"routes": [{"path": "/a", "methods": ["GE T"]}]}, "policy.routes[0].methods[0]", "not an HTTP method"),
    ({"routes": [{"path": "/a", "host": "x"}]}, "policy.routes[0].host", "unknown field"),
]


@pytest.mark.parametrize(("doc", "path", "reason"), INVALID)
def test_invalid_documents_name_the_field(doc: object, path: str, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        compile_policy(doc)
    assert info.value.path == path
    assert reason in info.value.reason


def test_compiled_policy_is_reused_not_reparsed() -> None:
    compiled = compile_policy(EXAMPLE)
    routes = compiled.rule("routes")
    assert isinstance(routes, Routes)
    matcher = routes.rules[0].matcher
    evaluate(compiled, signals(path="/metrics/x"))
    assert compiled.rule("routes") is routes and routes.rules[0].matcher is matcher


# -- the per-policy memo of decisions -------------------------------------------------------------


def test_remembered_decisions_stay_per_signal() -> None:
    policy = compile_policy(EXAMPLE)
    inside, outside = signals(), signals(ip="10.21.0.1")
    for _ in range(3):  # the second and third rounds are answered from the memo
        assert evaluate(policy, inside).reason is Reason.ALLOWED
        assert evaluate(policy, outside).reason is Reason.NETWORK_DENIED
    assert len(policy.memo) == 2


def test_the_memo_is_bounded_and_still_right_after_it_is_cleared() -> None:
    policy = compile_policy(EXAMPLE)
    many = [signals(ip=f"10.20.0.{i}") for i in range(MEMO_SIZE * 3)]
    for request in many:
        assert evaluate(policy, request).reason is Reason.ALLOWED
        assert len(policy.memo) <= MEMO_SIZE
    assert evaluate(policy, signals(ip="10.21.0.1")).reason is Reason.NETWORK_DENIED


def test_a_recompiled_policy_starts_with_no_memory() -> None:
    # A changed policy is compiled anew: nothing its predecessor decided can leak into it.
    loose = compile_policy({})
    assert evaluate(loose, signals(ip="10.21.0.1")).reason is Reason.ALLOWED
    tight = compile_policy({"networks": {"allow": ["10.20.0.0/16"]}})
    assert tight.memo == {}
    assert evaluate(tight, signals(ip="10.21.0.1")).reason is Reason.NETWORK_DENIED
    assert compile_policy({}) == loose  # the memo is no part of a policy's identity


# -- the seam itself, with parts made up for the test ------------------------------------------------


class _Counting:
    """A rule that denies when the path is /no, and counts its checks."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.checks = 0

    def check(self, facts: Facts) -> Decision | None:
        self.checks += 1
        return Decision.deny(Reason.ROUTE_DENIED, self.name) if facts.path == "/no" else None


def _part(name: str, rule: _Counting, **declared: object) -> Part:
    return Part(name=name, compile=lambda value, path: rule, schema={}, **declared)  # type: ignore[arg-type]


def test_only_the_leading_memoisable_parts_are_memoised_and_admissions_keep_part_order() -> None:
    first, timed, last = _Counting("first"), _Counting("timed"), _Counting("last")
    parts = (
        _part("first", first, memo_on=("path",), admits="uses"),
        _part("timed", timed),  # no memo_on: checked on every request
        _part("last", last, memo_on=("method",), admits="rate"),
    )
    policy = compile_policy({"last": 1, "first": 1, "timed": 1}, parts=parts)
    assert [name for name, _ in policy.admissions] == ["uses", "rate"]
    for _ in range(3):
        assert evaluate(policy, signals(path="/yes")).allowed
    assert (first.checks, timed.checks, last.checks) == (1, 3, 3)
    assert evaluate(policy, signals(path="/no")).detail == "first"
    assert [outcome.detail for _, outcome in explain(policy, signals(path="/no"))] == [
        "first",
        "timed",
        "last",
    ]


def test_a_part_cannot_memoise_on_a_fact_it_does_not_gather() -> None:
    with pytest.raises(ValueError, match="does not need"):
        _part("bad", _Counting("bad"), memo_on=("country",))
