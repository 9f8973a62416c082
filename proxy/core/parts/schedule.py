"""``schedule``: the request must fall inside a weekly window of local wall-clock time.

``{"tz": "Europe/Berlin", "days": ["mon-fri"], "hours": ["08:00-18:00", "20:00-02:00"]}``

- ``tz``: an IANA time zone (``zoneinfo``; the ``tzdata`` package supplies the database where the system
  has none). Required: a window without a zone means something different on every server.
- ``days``: weekdays (``mon`` ... ``sun``) and ranges (``mon-fri``; ``fri-mon`` wraps the week).
  Default: every day.
- ``hours``: ``HH:MM-HH:MM`` windows, start included, end excluded, ``24:00`` allowed as an end.
  Default: the whole day. A window whose end is not after its start crosses midnight: it opens on a
  listed day and runs into the next morning, which belongs to the day it opened on (``fri`` with
  ``22:00-06:00`` is Friday 22:00 to Saturday 06:00).

Judged on the local wall-clock time of ``facts.now`` (injected, so tests pass fixed times). Around
daylight-saving changes that is what people mean: on the spring-forward day the skipped hour never
shows on the clock, so a window ``08:00-18:00`` still opens at 08:00 local, and in the repeated autumn
hour both passes of ``02:30`` are ``02:30``. Reads the time, so it is never memoised.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass

from proxy.core.errors import PolicyError
from proxy.core.facts import Facts
from proxy.core.model import Decision, Reason
from proxy.core.part import Part, kind, object_fields, strings

__all__ = ["DAYS", "PART", "Schedule", "compile_schedule"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
_WINDOW = re.compile(r"(\d\d):(\d\d)-(\d\d):(\d\d)")
_DAY_MINUTES = 24 * 60


@dataclass(frozen=True, slots=True)
class Window:
    """Minutes since local midnight: ``start`` included, ``end`` excluded; ``end <= start`` wraps."""

    start: int
    end: int

    @property
    def wraps(self) -> bool:
        return self.end <= self.start


@dataclass(frozen=True, slots=True)
class Schedule:
    zone: zoneinfo.ZoneInfo
    days: frozenset[int]  # weekday numbers, Monday 0
    windows: tuple[Window, ...]
    text: str  # as written, for the denial's detail

    def open_at(self, weekday: int, minute: int) -> bool:
        """Whether the schedule is open at local ``minute`` of local ``weekday``."""
        days = self.days
        for window in self.windows:
            if window.wraps:
                if (weekday in days and minute >= window.start) or (
                    (weekday - 1) % 7 in days and minute < window.end
                ):
                    return True
            elif weekday in days and window.start <= minute < window.end:
                return True
        return False

    def check(self, facts: Facts) -> Decision | None:
        local = facts.now.astimezone(self.zone)
        if self.open_at(local.weekday(), local.hour * 60 + local.minute):
            return None
        return Decision.deny(
            Reason.OUTSIDE_SCHEDULE,
            f"{local.strftime('%a %H:%M')} {self.zone.key} is outside the schedule {self.text}",
        )


def _zone(value: object, path: str) -> zoneinfo.ZoneInfo:
    if not isinstance(value, str):
        raise PolicyError(path, f"must be an IANA time zone name, not {kind(value)}")
    try:
        return zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: not a zone key at all (an absolute path, "..", a NUL); OSError: an unreadable file
        raise PolicyError(path, f"unknown time zone {value!r} (an IANA name, e.g. Europe/Berlin)") from None


def _days(values: list[str], path: str) -> frozenset[int]:
    if not values:
        raise PolicyError(path, "must not be empty (leave it out for every day)")
    days: set[int] = set()
    for i, text in enumerate(values):
        first, dash, last = text.partition("-")
        if first not in DAYS or (dash and last not in DAYS):
            raise PolicyError(f"{path}[{i}]", f"{text!r} is not a day or a day range like 'mon-fri'")
        start = DAYS.index(first)
        span = (DAYS.index(last) - start) % 7 if dash else 0
        days.update((start + n) % 7 for n in range(span + 1))
    return frozenset(days)


def _minute(hours: str, minutes: str, text: str, path: str, *, end: bool) -> int:
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and (m or not end)):
        raise PolicyError(path, f"{text!r} is not a time of day (00:00 to 23:59; 24:00 as an end)")
    return h * 60 + m


def _windows(values: list[str], path: str) -> tuple[Window, ...]:
    if not values:
        raise PolicyError(path, "must not be empty (leave it out for the whole day)")
    windows = []
    for i, text in enumerate(values):
        where = f"{path}[{i}]"
        match = _WINDOW.fullmatch(text)
        if match is None:
            raise PolicyError(where, f"{text!r} is not a window like '08:00-18:00'")
        start = _minute(match[1], match[2], text, where, end=False)
        end = _minute(match[3], match[4], text, where, end=True)
        if start == end:
            raise PolicyError(where, f"{text!r} is ambiguous: use 00:00-24:00 for the whole day")
        windows.append(Window(start, end))
    return tuple(windows)


def compile_schedule(value: object, path: str) -> Schedule:
    doc = object_fields(value, path, ("tz", "days", "hours"))
    if "tz" not in doc:
        raise PolicyError(f"{path}.tz", "is required (an IANA time zone, e.g. Europe/Berlin)")
    zone = _zone(doc["tz"], f"{path}.tz")
    days = (
        _days(strings(doc["days"], f"{path}.days"), f"{path}.days") if "days" in doc else frozenset(range(7))
    )
    if "hours" in doc:
        windows = _windows(strings(doc["hours"], f"{path}.hours"), f"{path}.hours")
    else:
        windows = (Window(0, _DAY_MINUTES),)
    shown = ",".join(doc.get("days", ["every day"])) + " " + ",".join(doc.get("hours", ["00:00-24:00"]))
    return Schedule(zone, days, windows, shown)


PART = Part(
    name="schedule",
    compile=compile_schedule,
    schema={
        "type": "object",
        "description": "The request's local wall-clock time must fall inside one of the windows on a listed "
        "day; a window whose end is not after its start runs past midnight into the next day",
        "properties": {
            "tz": {"type": "string", "description": "IANA time zone, e.g. Europe/Berlin"},
            "days": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "pattern": "^[a-z]{3}(-[a-z]{3})?$"},
                "description": "mon..sun or ranges like mon-fri; default every day",
            },
            "hours": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "pattern": "^[0-9]{2}:[0-9]{2}-[0-9]{2}:[0-9]{2}$"},
                "description": "HH:MM-HH:MM, start included, end excluded; default the whole day",
            },
        },
        "required": ["tz"],
        "additionalProperties": False,
    },
)
