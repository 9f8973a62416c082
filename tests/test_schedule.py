"""``schedule`` as table tests: a fixed time in, allowed or ``outside_schedule`` out, no sleeping.

Every instant is written in UTC next to the local wall-clock time it is, so a row can be checked by
eye; the daylight-saving rows are on the days the clocks change in 2026 (Europe/Berlin: 29 March and
25 October; America/New_York: 8 March and 1 November).
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from proxy.core.errors import PolicyError
from proxy.core.facts import Facts
from proxy.core.model import Reason
from proxy.core.policy import compile_policy, evaluate

OFFICE = {"tz": "Europe/Berlin", "days": ["mon-fri"], "hours": ["08:00-18:00"]}
NIGHT_SHIFT = {"tz": "Europe/Berlin", "days": ["fri"], "hours": ["22:00-06:00"]}
SPLIT = {"tz": "Europe/Berlin", "hours": ["06:00-09:00", "17:00-19:30"]}
BERLIN_SKIPPED = {"tz": "Europe/Berlin", "days": ["sun"], "hours": ["01:30-03:30"]}
BERLIN_REPEATED = {"tz": "Europe/Berlin", "days": ["sun"], "hours": ["02:00-03:00"]}
NY_SKIPPED = {"tz": "America/New_York", "days": ["sun"], "hours": ["02:00-03:00"]}
NY_REPEATED = {"tz": "America/New_York", "days": ["sun"], "hours": ["01:00-02:00"]}
WEEKEND_WRAP = {"tz": "UTC", "days": ["sat-mon"]}


def at(utc: str) -> Facts:
    return Facts(
        ipaddress.ip_address("10.0.0.1"), "GET", "/", datetime.fromisoformat(utc).replace(tzinfo=UTC)
    )


IN, OUT = Reason.ALLOWED, Reason.OUTSIDE_SCHEDULE

CASES = [
    # (schedule, UTC instant, local wall clock it is, expected)
    (OFFICE, "2026-12-02T09:00", "Wed 10:00 CET", IN),
    (OFFICE, "2026-12-02T06:59", "Wed 07:59 CET", OUT),
    (OFFICE, "2026-12-02T07:00", "Wed 08:00 CET: start included", IN),
    (OFFICE, "2026-12-02T16:59", "Wed 17:59 CET", IN),
    (OFFICE, "2026-12-02T17:00", "Wed 18:00 CET: end excluded", OUT),
    (OFFICE, "2026-12-05T10:00", "Sat 11:00 CET", OUT),
    (OFFICE, "2026-07-01T06:30", "Wed 08:30 CEST (summer: UTC+2)", IN),
    (OFFICE, "2026-07-01T16:30", "Wed 18:30 CEST", OUT),
    # the window runs past midnight, and the morning belongs to the day it opened on
    (NIGHT_SHIFT, "2026-12-04T21:00", "Fri 22:00", IN),
    (NIGHT_SHIFT, "2026-12-04T22:59", "Fri 23:59", IN),
    (NIGHT_SHIFT, "2026-12-04T23:00", "Sat 00:00", IN),
    (NIGHT_SHIFT, "2026-12-05T04:59", "Sat 05:59", IN),
    (NIGHT_SHIFT, "2026-12-05T05:00", "Sat 06:00", OUT),
    (NIGHT_SHIFT, "2026-12-05T21:30", "Sat 22:30: Saturday is not listed", OUT),
    (NIGHT_SHIFT, "2026-12-04T00:30", "Fri 01:30: Thursday's night, not listed", OUT),
    (NIGHT_SHIFT, "2026-12-04T20:59", "Fri 21:59", OUT),
    # several windows
    (SPLIT, "2026-12-06T05:30", "Sun 06:30", IN),
    (SPLIT, "2026-12-06T10:00", "Sun 11:00", OUT),
    (SPLIT, "2026-12-06T18:29", "Sun 19:29", IN),
    (SPLIT, "2026-12-06T18:30", "Sun 19:30", OUT),
    (WEEKEND_WRAP, "2026-12-07T12:00", "Mon 12:00: sat-mon wraps the week", IN),
    (WEEKEND_WRAP, "2026-12-08T12:00", "Tue 12:00", OUT),
    # Europe/Berlin, 29 March 2026: 02:00 CET jumps to 03:00 CEST at 01:00 UTC
    (BERLIN_SKIPPED, "2026-03-29T00:29", "Sun 01:29 CET", OUT),
    (BERLIN_SKIPPED, "2026-03-29T00:30", "Sun 01:30 CET", IN),
    (BERLIN_SKIPPED, "2026-03-29T00:59", "Sun 01:59 CET", IN),
    (BERLIN_SKIPPED, "2026-03-29T01:00", "Sun 03:00 CEST: the skipped hour never shows", IN),
    (BERLIN_SKIPPED, "2026-03-29T01:29", "Sun 03:29 CEST", IN),
    (BERLIN_SKIPPED, "2026-03-29T01:30", "Sun 03:30 CEST", OUT),
    (OFFICE, "2026-03-30T05:59", "Mon 07:59 CEST, the day after", OUT),
    (OFFICE, "2026-03-30T06:00", "Mon 08:00 CEST", IN),
    # Europe/Berlin, 25 October 2026: 03:00 CEST falls back to 02:00 CET at 01:00 UTC
    (BERLIN_REPEATED, "2026-10-24T23:59", "Sun 01:59 CEST", OUT),
    (BERLIN_REPEATED, "2026-10-25T00:00", "Sun 02:00 CEST", IN),
    (BERLIN_REPEATED, "2026-10-25T00:59", "Sun 02:59 CEST", IN),
    (BERLIN_REPEATED, "2026-10-25T01:00", "Sun 02:00 CET: the hour again", IN),
    (BERLIN_REPEATED, "2026-10-25T01:59", "Sun 02:59 CET", IN),
    (BERLIN_REPEATED, "2026-10-25T02:00", "Sun 03:00 CET", OUT),
    (OFFICE, "2026-10-26T06:59", "Mon 07:59 CET", OUT),
    (OFFICE, "2026-10-26T07:00", "Mon 08:00 CET", IN),
    # America/New_York, 8 March 2026: 02:00 EST jumps to 03:00 EDT at 07:00 UTC
    (NY_SKIPPED, "2026-03-08T06:59", "Sun 01:59 EST", OUT),
    (NY_SKIPPED, "2026-03-08T07:00", "Sun 03:00 EDT: 02:00-03:00 never comes", OUT),
    (NY_SKIPPED, "2026-03-15T06:30", "Sun 02:30 EDT a week later", IN),
    # America/New_York, 1 November 2026: 02:00 EDT falls back to 01:00 EST at 06:00 UTC
    (NY_REPEATED, "2026-11-01T04:59", "Sun 00:59 EDT", OUT),
    (NY_REPEATED, "2026-11-01T05:00", "Sun 01:00 EDT", IN),
    (NY_REPEATED, "2026-11-01T05:59", "Sun 01:59 EDT", IN),
    (NY_REPEATED, "2026-11-01T06:00", "Sun 01:00 EST: the hour again", IN),
    (NY_REPEATED, "2026-11-01T06:59", "Sun 01:59 EST", IN),
    (NY_REPEATED, "2026-11-01T07:00", "Sun 02:00 EST", OUT),
]


@pytest.mark.parametrize(("schedule", "utc", "local", "expected"), CASES, ids=[c[2] for c in CASES])
def test_schedule(schedule: dict, utc: str, local: str, expected: Reason) -> None:
    # The row's description of the wall clock is checked too, so a wrong row cannot pass silently.
    shown = datetime.fromisoformat(utc).replace(tzinfo=UTC).astimezone(ZoneInfo(schedule["tz"]))
    assert shown.strftime("%a %H:%M") == local[: len("Mon 00:00")], (utc, shown)
    decision = evaluate(compile_policy({"schedule": schedule}), at(utc))
    assert decision.reason is expected, decision
    if expected is OUT:
        assert shown.strftime("%a %H:%M") in decision.detail and schedule["tz"] in decision.detail


def test_schedule_is_never_memoised() -> None:
    policy = compile_policy({"networks": {"allow": ["10.0.0.0/8"]}, "schedule": OFFICE})
    assert evaluate(policy, at("2026-12-02T09:00")).allowed
    assert evaluate(policy, at("2026-12-02T20:00")).reason is OUT  # same client, method and path


BAD = [
    ({"days": ["mon"]}, "policy.schedule.tz", "is required"),
    ({"tz": "Mars/Olympus_Mons"}, "policy.schedule.tz", "unknown time zone 'Mars/Olympus_Mons'"),
    ({"tz": "../../etc/passwd"}, "policy.schedule.tz", "unknown time zone"),
    ({"tz": "/etc/localtime"}, "policy.schedule.tz", "unknown time zone"),
    ({"tz": 1}, "policy.schedule.tz", "must be an IANA time zone name"),
    (
        {"tz": "UTC", "hours": ["08:00-25:00"]},
        "policy.schedule.hours[0]",
        "'08:00-25:00' is not a time of day",
    ),
    ({"tz": "UTC", "hours": ["25:00-26:00"]}, "policy.schedule.hours[0]", "is not a time of day"),
    ({"tz": "UTC", "hours": ["24:00-08:00"]}, "policy.schedule.hours[0]", "is not a time of day"),
    ({"tz": "UTC", "hours": ["08:60-09:00"]}, "policy.schedule.hours[0]", "is not a time of day"),
    ({"tz": "UTC", "hours": ["00:00-24:30"]}, "policy.schedule.hours[0]", "is not a time of day"),
    ({"tz": "UTC", "hours": ["8:00-9:00"]}, "policy.schedule.hours[0]", "is not a window like '08:00-18:00'"),
    ({"tz": "UTC", "hours": ["09:00-09:00"]}, "policy.schedule.hours[0]", "ambiguous"),
    ({"tz": "UTC", "hours": []}, "policy.schedule.hours", "must not be empty"),
    ({"tz": "UTC", "hours": "08:00-18:00"}, "policy.schedule.hours", "must be a list"),
    ({"tz": "UTC", "days": ["mon-xyz"]}, "policy.schedule.days[0]", "is not a day"),
    ({"tz": "UTC", "days": ["Mon"]}, "policy.schedule.days[0]", "is not a day"),
    ({"tz": "UTC", "days": []}, "policy.schedule.days", "must not be empty"),
    ({"tz": "UTC", "weekdays": ["mon"]}, "policy.schedule.weekdays", "unknown field"),
]


@pytest.mark.parametrize(("schedule", "path", "message"), BAD, ids=[b[2] for b in BAD])
def test_a_bad_schedule_names_the_field(schedule: dict, path: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy({"schedule": schedule})
    assert caught.value.path == path
    assert message in caught.value.reason


def test_the_whole_day_and_an_end_at_midnight_are_windows() -> None:
    whole = compile_policy({"schedule": {"tz": "UTC", "hours": ["00:00-24:00"]}})
    late = compile_policy({"schedule": {"tz": "UTC", "hours": ["22:00-24:00"]}})
    assert evaluate(whole, at("2026-12-02T00:00")).allowed and evaluate(whole, at("2026-12-02T23:59")).allowed
    assert evaluate(late, at("2026-12-02T23:59")).allowed
    assert evaluate(late, at("2026-12-03T00:00")).reason is OUT
