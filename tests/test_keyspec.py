"""Table tests for admin body validation: every rejection names the field path a client wrote."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from proxy.admin.bodies import CreateSpec, check_window, parse_create, parse_patch, parse_timestamp
from proxy.core.errors import PolicyError, ValidationError
from proxy.core.model import KeyStatus

BASE = {"name": "ci runner", "owner": "team-a"}
NOW = datetime(2025, 6, 1, tzinfo=UTC)  # what the admin API passes as the time of the request
GOOD_POLICY = {"networks": {"allow": ["10.0.0.0/8"]}}


def body(**extra: Any) -> dict[str, Any]:
    return {**BASE, **extra}


def test_minimal_create_gets_defaults() -> None:
    spec = parse_create(dict(BASE), NOW)
    assert spec == CreateSpec(name="ci runner", owner="team-a", policy={}, labels={})
    assert spec.not_before is None and spec.expires_at is None


def test_full_create_is_converted() -> None:
    spec = parse_create(
        body(
            policy=GOOD_POLICY,
            labels={"env": "prod", "team.io/tier": "gold"},
            not_before="2026-01-01T00:00:00Z",
            expires_at="2026-12-01T02:00:00+02:00",
        ),
        NOW,
    )
    assert spec.policy == GOOD_POLICY
    assert spec.labels == {"env": "prod", "team.io/tier": "gold"}
    assert spec.not_before == datetime(2026, 1, 1, tzinfo=UTC)
    assert spec.expires_at == datetime(2026, 12, 1, tzinfo=UTC)
    assert spec.expires_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("raw", "path", "reason_part"),
    [
        ([], "$", "JSON object"),
        ("name", "$", "JSON object"),
        (None, "$", "JSON object"),
        ({"owner": "o"}, "name", "required"),
        ({"name": "n"}, "owner", "required"),
        (body(colour="red"), "colour", "unknown field"),
        (body(status="active"), "status", "unknown field"),
        (body(name=""), "name", "1 to 200"),
        (body(name="x" * 201), "name", "1 to 200"),
        (body(name=7), "name", "got number"),
        (body(name=True), "name", "got boolean"),
        (body(name="a\nb"), "name", "control"),
        (body(name="a\x00b"), "name", "control"),
        (body(name="a\u2028b"), "name", "control"),
        (body(name="a\ud800b"), "name", "surrogates"),
        (body(labels={"env": "\udfff"}), 'labels["env"]', "surrogates"),
        (body(expires_at="9999-12-31T23:59:59.999999Z"), "expires_at", "from 1970-01-01T00:00:00Z"),
        (body(not_before="0001-01-01T00:00:00Z"), "not_before", "to 9999-12-31T23:59:59Z"),
        (body(expires_at="9999-12-31T23:59:59-01:00"), "expires_at", "not a valid date"),
        (body(not_before="0001-01-01T00:00:00+01:00"), "not_before", "not a valid date"),
        (body(name="   "), "name", "blank"),
        (body(owner=""), "owner", "1 to 200"),
        (body(owner="o" * 201), "owner", "1 to 200"),
        (body(owner="é"), "owner", "ASCII"),
        (body(owner="a\rb"), "owner", "ASCII"),
        (body(owner="a\tb"), "owner", "ASCII"),
        (body(owner=" team"), "owner", "space"),
        (body(owner=["a"]), "owner", "got array"),
        (body(policy=[]), "policy", "object"),
        (body(policy="{}"), "policy", "object"),
        (body(policy={"bogus": 1}), "policy.bogus", "unknown field"),
        (body(labels=[]), "labels", "object"),
        (body(labels={"bad key": "v"}), 'labels["bad key"]', "label name"),
        (body(labels={"": "v"}), 'labels[""]', "label name"),
        (body(labels={"k" * 64: "v"}), f'labels["{"k" * 64}"]', "label name"),
        (body(labels={"env": 1}), 'labels["env"]', "got number"),
        (body(labels={"env": None}), 'labels["env"]', "got null"),
        (body(labels={"env": "v" * 257}), 'labels["env"]', "at most 256"),
        (body(labels={"env": "a\nb"}), 'labels["env"]', "control"),
        (body(labels={f"k{i}": "v" for i in range(65)}), "labels", "at most 64"),
        (body(expires_at="2026-12-01T00:00:00"), "expires_at", "timezone"),
        (body(expires_at="2026-12-01"), "expires_at", "timezone"),
        (body(expires_at="2026-12-01 00:00:00Z"), "expires_at", "timezone"),
        (body(expires_at="tomorrow"), "expires_at", "timezone"),
        (body(expires_at="2026-13-01T00:00:00Z"), "expires_at", "not a valid date"),
        (body(expires_at=1767225600), "expires_at", "got number"),
        (body(not_before="2026-02-30T00:00:00Z"), "not_before", "not a valid date"),
        (
            body(not_before="2026-06-01T00:00:00Z", expires_at="2026-06-01T00:00:00Z"),
            "expires_at",
            "after not_before",
        ),
        (
            body(not_before="2026-06-01T02:00:00+02:00", expires_at="2026-06-01T00:00:00Z"),
            "expires_at",
            "after not_before",
        ),
        (body(expires_at="2025-05-31T23:59:59Z"), "expires_at", "could never be used"),
        (body(expires_at="2025-06-01T00:00:00Z"), "expires_at", "not in the future"),
        (body(expires_at="2020-01-01T00:00:00Z", allow_expired="yes"), "allow_expired", "true or false"),
    ],
)
def test_create_rejections_name_the_field(raw: object, path: str, reason_part: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_create(raw, NOW)
    assert info.value.path == path, info.value
    assert reason_part in info.value.reason, info.value


@pytest.mark.parametrize(
    ("policy", "path"),
    [
        ({"networks": {"allow": ["10.0.0.300/8"]}}, "policy.networks.allow[0]"),
        ({"networks": {"allow": ["10.0.0.0/8", "nonsense"]}}, "policy.networks.allow[1]"),
        ({"bogus": 1}, "policy.bogus"),
        ({"networks": {"allow": "10.0.0.0/8"}}, "policy.networks.allow"),
    ],
)
def test_policy_errors_carry_the_nested_path(policy: object, path: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_create(body(policy=policy), NOW)
    assert info.value.path == path, info.value


def test_an_expired_key_is_created_only_when_asked_for() -> None:
    spec = parse_create(body(expires_at="2020-01-01T00:00:00Z", allow_expired=True), NOW)
    assert spec.expires_at == datetime(2020, 1, 1, tzinfo=UTC)


def test_null_optional_fields_mean_absent_on_create() -> None:
    spec = parse_create(body(not_before=None, expires_at=None), NOW)
    assert spec.not_before is None and spec.expires_at is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"name": "renamed"}, {"name": "renamed"}),
        ({"status": "suspended"}, {"status": KeyStatus.SUSPENDED}),
        ({"status": "active"}, {"status": KeyStatus.ACTIVE}),
        ({"labels": {}}, {"labels": {}}),
        ({"labels": {"a": "b"}}, {"labels": {"a": "b"}}),
        ({"policy": GOOD_POLICY}, {"policy": GOOD_POLICY}),
        ({"expires_at": None}, {"expires_at": None}),
        ({"not_before": "2030-01-01T00:00:00z"}, {"not_before": datetime(2030, 1, 1, tzinfo=UTC)}),
    ],
)
def test_patch_returns_only_given_fields(raw: dict[str, Any], expected: dict[str, Any]) -> None:
    assert parse_patch(raw) == expected


@pytest.mark.parametrize(
    ("raw", "path", "reason_part"),
    [
        ([1], "$", "JSON object"),
        ({}, "$", "no field"),
        ({"owner": "someone"}, "owner", "unknown field"),
        ({"id": "0123456789abcdef"}, "id", "unknown field"),
        ({"status": "revoked"}, "status", "revoke"),
        ({"status": "deleted"}, "status", "'active', 'suspended'"),
        ({"status": None}, "status", "got null"),
        ({"name": ""}, "name", "1 to 200"),
        ({"labels": {"x y": "1"}}, 'labels["x y"]', "label name"),
        ({"policy": None}, "policy", "object"),
        ({"expires_at": "2026-12-01T00:00:00"}, "expires_at", "timezone"),
        (
            {"not_before": "2027-01-01T00:00:00Z", "expires_at": "2026-01-01T00:00:00Z"},
            "expires_at",
            "after not_before",
        ),
    ],
)
def test_patch_rejections_name_the_field(raw: object, path: str, reason_part: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_patch(raw)
    assert info.value.path == path, info.value
    assert reason_part in info.value.reason, info.value


def test_timestamps_keep_the_instant_and_come_back_in_utc() -> None:
    parsed = parse_timestamp("2026-12-01T05:30:00.250+05:30", "expires_at")
    assert parsed == datetime(2026, 12, 1, 0, 0, 0, 250000, tzinfo=UTC)
    assert parsed.utcoffset() == timedelta(0)
    assert parsed == datetime(2026, 12, 1, 5, 30, 0, 250000, tzinfo=timezone(timedelta(hours=5, minutes=30)))


def test_window_check_allows_open_ends() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    check_window(None, now)
    check_window(now, None)
    check_window(now, now + timedelta(seconds=1))
    with pytest.raises(ValidationError) as info:
        check_window(now, now - timedelta(days=1))
    assert info.value.path == "expires_at"
