"""What the admin API's route modules share: the app's common keys, the error every handler may raise,
reading a JSON body, and waiting until a write is enforced by this instance's workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from aiohttp import web

from proxy.admin.jsonbody import BodyInvalid, charset_problem, parse_body
from proxy.core import keys
from proxy.core.errors import NotFound, ValidationError
from proxy.core.model import KeyRecord
from proxy.db.store import Store

__all__ = [
    "APPLIED_HEADER",
    "APPLY_TIMEOUT",
    "MAX_BODY",
    "MAX_LIMIT",
    "STORE",
    "WAIT_APPLIED",
    "ApiError",
    "Page",
    "WaitApplied",
    "applied",
    "expect_continue_only",
    "key_answer",
    "listed",
    "missing",
    "parse_page",
    "path_key_id",
    "query_key_id",
    "query_limit",
    "query_names",
    "query_owner",
    "read_json",
]

log = logging.getLogger("signalgate.admin")

STORE = web.AppKey("store", Store)
MAX_BODY = web.AppKey("max_body", int)
WaitApplied = Callable[[int], Awaitable[None]]
WAIT_APPLIED: web.AppKey[WaitApplied | None] = web.AppKey("wait_applied")
APPLY_TIMEOUT = 1.0  # seconds a write waits for this instance's workers to enforce it
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PAGE_QUERY = ("owner", "status", "limit", "after")


async def expect_continue_only(request: web.Request) -> None:
    """The admin routes' ``expect_handler``: ``Expect: 100-continue`` is answered as aiohttp does, any
    other expectation ignored (RFC 9110 10.1.1 allows it). aiohttp's own handler refuses it with a
    plain-text 417 before any middleware runs: an answer outside the API's JSON errors and its OpenAPI
    document."""
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not the answer's start


class ApiError(Exception):
    """An answer decided by a handler or middleware: turned into the JSON error shape by ``_errors``."""

    def __init__(
        self, status: int, reason: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = dict(headers or {})


async def read_json(request: web.Request) -> object:
    media_type = request.content_type  # aiohttp's default for a missing header: application/octet-stream
    if request.body_exists and media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError(
            415, "unsupported_media_type", f"request body must be application/json, not {media_type!r}"
        )
    if request.body_exists and (problem := charset_problem(request.charset)) is not None:
        raise ApiError(415, "unsupported_media_type", problem)
    try:
        raw = await request.read()  # enforces client_max_size while reading, even when chunked
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(
            413, "body_too_large", f"request body is larger than {request.app[MAX_BODY]} bytes"
        ) from exc
    try:
        return parse_body(raw)
    except BodyInvalid as exc:
        raise ApiError(400, "invalid_json", str(exc)) from exc


APPLIED_HEADER = "X-Signalgate-Applied"


async def applied(request: web.Request, revision: int) -> str:
    """Wait until this instance enforces ``revision``: "all-workers", or "pending" after the timeout."""
    wait = request.app[WAIT_APPLIED]
    if wait is None:
        return "pending"
    try:
        async with asyncio.timeout(APPLY_TIMEOUT):
            await wait(revision)
    except TimeoutError:
        log.warning("revision %d not enforced by every worker within %gs", revision, APPLY_TIMEOUT)
        return "pending"
    return "all-workers"


def path_key_id(request: web.Request, what: str = "key") -> str:
    """The ``{id}`` of the path: a key or job id (16 lower-case hex digits), else 404."""
    found = request.match_info["id"]
    if not keys.is_key_id(found):
        raise NotFound(f"no {what} with id {found!r} (a {what} id is 16 lower-case hex digits)")
    return found


class _Identified(Protocol):
    @property
    def id(self) -> str: ...

    def public(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Page:
    """A list request's filters and page: ``?owner=&status=&limit=&after=``."""

    owner: str | None
    status: str | None
    limit: int
    after: str | None

    def answer(self, records: Sequence[_Identified]) -> dict[str, Any]:
        """``{items, next}`` from up to ``limit + 1`` records (the extra one says there is more)."""
        page = records[: self.limit]
        next_cursor = page[-1].id if len(records) > self.limit else None
        return {"items": [record.public() for record in page], "next": next_cursor}


async def listed(
    request: web.Request,
    statuses: type[StrEnum],
    fetch: Callable[..., Awaitable[Sequence[_Identified]]],
) -> web.Response:
    """``GET`` of a collection: ``fetch(owner=, status=, limit=, after=)`` asked for one more than the
    page, to tell whether there is a next."""
    page = parse_page(request.query, statuses)
    status = statuses(page.status) if page.status else None
    records = await fetch(owner=page.owner, status=status, limit=page.limit + 1, after=page.after)
    return web.json_response(page.answer(records))


def parse_page(query: Mapping[str, str], statuses: type[StrEnum]) -> Page:
    query_names(query, PAGE_QUERY)
    limit = query_limit(query, DEFAULT_LIMIT, MAX_LIMIT)
    status = query.get("status")
    if status is not None and status not in set(statuses):
        allowed = ", ".join(repr(str(s)) for s in statuses)
        raise ValidationError("status", f"must be one of {allowed}, got {status!r}")
    return Page(query_owner(query), status, limit, query_key_id(query, "after", "an id"))


# --- query parameters, checked alike wherever they appear -----------------------------------------


def query_names(query: Mapping[str, str], known: Sequence[str]) -> None:
    for name in query:
        if name not in known:
            raise ValidationError(name, f"unknown query parameter (expected some of: {', '.join(known)})")


def query_limit(query: Mapping[str, str], default: int, most: int) -> int:
    if "limit" not in query:
        return default
    text = query["limit"]
    if not (text.isascii() and text.isdigit() and len(text) <= 6) or not 1 <= int(text) <= most:
        raise ValidationError("limit", f"must be an integer from 1 to {most}, got {text!r}")
    return int(text)


def query_key_id(query: Mapping[str, str], name: str, what: str = "a key id") -> str | None:
    value = query.get(name)
    if value is not None and not keys.is_key_id(value):
        raise ValidationError(name, f"must be {what} (16 lower-case hex digits), got {value!r}")
    return value


def query_owner(query: Mapping[str, str]) -> str | None:
    owner = query.get("owner")
    if owner is not None and not (0 < len(owner) <= 200 and all(" " <= ch <= "~" for ch in owner)):
        raise ValidationError("owner", "must be 1 to 200 printable ASCII characters")
    return owner


# --- key answers ----------------------------------------------------------------------------------


def missing(key_id: str) -> NotFound:
    return NotFound(f"no key with id {key_id!r}")


def key_answer(record: KeyRecord, applied: str | None = None) -> web.Response:
    headers = {APPLIED_HEADER: applied} if applied else None
    return web.json_response(record.public(), headers=headers)
