"""The limit parts (``rate``, ``max_in_flight``, ``usage``): their documents, and the aiolimiter shell
(``proxy.limits``) that admits requests against the rate and in-flight limits of one worker."""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import UTC, datetime

import pytest
from aiolimiter import AsyncLimiter

from proxy.core.errors import PolicyError
from proxy.core.facts import Facts
from proxy.core.model import Reason
from proxy.core.parts.in_flight import InFlight
from proxy.core.parts.rate import Rate
from proxy.core.policy import compile_policy, evaluate
from proxy.http.handler import Ticket
from proxy.limits import Limits, retry_after

FACTS = Facts(
    ipaddress.ip_address("10.0.0.1"), "GET", "/", datetime(2026, 12, 4, tzinfo=UTC), "0123456789abcdef"
)
OTHER_KEY = Facts(ipaddress.ip_address("10.0.0.1"), "GET", "/", FACTS.now, "fedcba9876543210")


# --- the documents -----------------------------------------------------------------------------


def test_limit_parts_compile_and_ask_for_their_admissions_usage_last() -> None:
    policy = compile_policy(
        {"usage": {"max_uses": 1}, "max_in_flight": 20, "rate": {"per_second": 50, "burst": 100}}
    )
    assert [name for name, _ in policy.admissions] == ["rate", "in_flight", "usage"]
    assert [rule for _, rule in policy.admissions] == [Rate(50.0, 100), InFlight(20), policy.rule("usage")]
    assert compile_policy({"rate": {"per_second": 2.5}}).rule("rate") == Rate(2.5, 2)  # burst defaults
    assert compile_policy({"rate": {"per_second": 0.1}}).rule("rate") == Rate(0.1, 1)


def test_a_policy_of_limits_alone_is_judged_without_calling_its_rules_again() -> None:
    policy = compile_policy({"usage": {"max_uses": 3}, "rate": {"per_second": 1}})
    assert policy.memo_key is not None and policy.unmemoised == ()  # their checks always pass
    assert evaluate(policy, FACTS).allowed and evaluate(policy, OTHER_KEY).allowed


BAD = [
    ({"usage": {"max_uses": 0}}, "policy.usage.max_uses", "must be from 1"),
    ({"usage": {"max_uses": -3}}, "policy.usage.max_uses", "must be from 1"),
    ({"usage": {"max_uses": 1.5}}, "policy.usage.max_uses", "whole number"),
    ({"usage": {"max_uses": True}}, "policy.usage.max_uses", "whole number"),
    ({"usage": {}}, "policy.usage.max_uses", "is required"),
    ({"usage": {"max_uses": 1, "per": "day"}}, "policy.usage.per", "unknown field"),
    ({"rate": {"per_second": 0}}, "policy.rate.per_second", "above 0"),
    ({"rate": {"per_second": "50"}}, "policy.rate.per_second", "must be a number"),
    ({"rate": {"burst": 5}}, "policy.rate.per_second", "is required"),
    ({"rate": {"per_second": 5, "burst": 0}}, "policy.rate.burst", "must be from 1"),
    ({"max_in_flight": 0}, "policy.max_in_flight", "must be from 1"),
    ({"max_in_flight": "20"}, "policy.max_in_flight", "whole number"),
]


@pytest.mark.parametrize(("policy", "path", "message"), BAD, ids=[f"{b[1]}: {b[2]}" for b in BAD])
def test_a_bad_limit_names_the_field(policy: dict, path: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy(policy)
    assert (caught.value.path, message in caught.value.reason) == (path, True), caught.value


# --- the rate admission ------------------------------------------------------------------------


class Clock:
    """The event loop's clock, moved by the test (aiolimiter reads ``loop.time()``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        loop = asyncio.get_running_loop()
        self.now = loop.time()
        monkeypatch.setattr(loop, "time", lambda: self.now)


def fields(decision: object) -> dict[str, str]:
    return dict(decision.headers)  # type: ignore[attr-defined]


async def test_a_burst_passes_then_429_with_retry_after_and_ratelimit_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock(monkeypatch)
    limits = Limits(workers=1)
    rule = Rate(2.0, 3)
    assert [limits.rate(rule, FACTS, Ticket()) for _ in range(3)] == [None, None, None]
    refused = limits.rate(rule, FACTS, Ticket())
    assert refused is not None and (refused.reason, refused.status) == (Reason.RATE_LIMITED, 429)
    assert fields(refused) == {
        "Retry-After": "1",  # room for one more in 0.5 s, rounded up
        "RateLimit-Policy": '"rate";q=3;w=2',
        "RateLimit": '"rate";r=0;t=1',
    }
    assert limits.rate(rule, OTHER_KEY, Ticket()) is None  # per key
    clock.now += 0.5  # one request's worth has drained
    assert limits.rate(rule, FACTS, Ticket()) is None
    assert limits.rate(rule, FACTS, Ticket()) is not None


async def test_retry_after_is_the_time_until_room_for_one(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    limits = Limits(workers=1)
    slow = Rate(0.1, 1)  # one request per 10 s
    assert limits.rate(slow, FACTS, Ticket()) is None
    clock.now += 2.5
    assert fields(limits.rate(slow, FACTS, Ticket()))["Retry-After"] == "8"  # 7.5 s, rounded up
    clock.now += 7.5
    assert limits.rate(slow, FACTS, Ticket()) is None
    assert [retry_after(s) for s in (0.0, 0.001, 1.0, 1.2)] == [1, 1, 1, 2]


async def test_each_of_n_workers_enforces_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    Clock(monkeypatch)
    two = Limits(workers=2)
    rule = Rate(10.0, 6)
    admitted = sum(two.rate(rule, FACTS, Ticket()) is None for _ in range(10))
    assert admitted == 3  # burst 6 over 2 workers
    assert fields(two.rate(rule, FACTS, Ticket()))["RateLimit-Policy"] == '"rate";q=3;w=1'
    below = Limits(workers=4)
    assert sum(below.rate(Rate(1.0, 2), FACTS, Ticket()) is None for _ in range(5)) == 1  # at least 1


async def test_a_changed_rule_starts_a_new_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    Clock(monkeypatch)
    limits = Limits(workers=1)
    assert limits.rate(Rate(1.0, 1), FACTS, Ticket()) is None
    assert limits.rate(Rate(1.0, 1), FACTS, Ticket()) is not None
    assert limits.rate(Rate(5.0, 5), FACTS, Ticket()) is None  # the key's policy changed


async def test_aiolimiter_keeps_its_fill_level_where_limits_reads_it() -> None:
    """proxy.limits reads ``AsyncLimiter._level`` for Retry-After: pin the library's meaning of it."""
    limiter = AsyncLimiter(3, 3)
    for _ in range(3):
        assert limiter.has_capacity()
        await limiter.acquire()
    assert not limiter.has_capacity()
    assert 2.9 < limiter._level <= 3.0 and limiter.max_rate == 3


async def test_many_keys_keep_a_bounded_number_of_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    Clock(monkeypatch)
    limits = Limits(workers=1, max_keys=10)
    for n in range(50):
        facts = Facts(FACTS.client_ip, "GET", "/", FACTS.now, f"{n:016x}")
        assert limits.rate(Rate(1.0, 1), facts, Ticket()) is None
    assert len(limits._buckets) == 10


# --- the in-flight admission -------------------------------------------------------------------


def test_in_flight_slots_are_taken_and_each_given_back_once() -> None:
    limits = Limits(workers=1)
    rule = InFlight(2)
    first, second, third = Ticket(), Ticket(), Ticket()
    assert limits.in_flight(rule, FACTS, first) is None
    assert limits.in_flight(rule, FACTS, second) is None
    refused = limits.in_flight(rule, FACTS, third)
    assert refused is not None and (refused.reason, refused.status) == (Reason.TOO_MANY_IN_FLIGHT, 429)
    assert fields(refused) == {
        "Retry-After": "1",
        "RateLimit-Policy": '"in-flight";q=2;qu="concurrent-requests"',
        "RateLimit": '"in-flight";r=0',
    }
    assert limits.in_flight(rule, OTHER_KEY, Ticket()) is None  # per key
    first.done(200)
    first.done(200)  # a ticket releases once, however often it is told
    assert limits.held(FACTS.key_id) == 1
    assert limits.in_flight(rule, FACTS, Ticket()) is None
    assert limits.in_flight(rule, FACTS, Ticket()) is not None


@pytest.mark.parametrize(
    ("limit", "workers", "share"), [(20, 1, 20), (20, 2, 10), (21, 2, 10), (1, 2, 1), (3, 4, 1)]
)
def test_in_flight_share_per_worker(limit: int, workers: int, share: int) -> None:
    limits = Limits(workers=workers)
    tickets = [Ticket() for _ in range(limit + 5)]
    admitted = [limits.in_flight(InFlight(limit), FACTS, t) is None for t in tickets]
    assert admitted.count(True) == share == limits.share(limit)
    for ticket in tickets:
        ticket.done(0)
    assert limits.held(FACTS.key_id) == 0 and limits._held == {}
