"""What the admin API's route modules share: the app's common keys, the error every handler may raise,
reading a JSON body, and waiting until a write is enforced by this instance's workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from proxy.admin.jsonbody import BodyInvalid, parse_body
from proxy.db.store import Store

__all__ = [
    "APPLIED_HEADER",
    "APPLY_TIMEOUT",
    "MAX_BODY",
    "STORE",
    "WAIT_APPLIED",
    "ApiError",
    "WaitApplied",
    "applied",
    "read_json",
]

log = logging.getLogger("signalgate.admin")

STORE = web.AppKey("store", Store)
MAX_BODY = web.AppKey("max_body", int)
WaitApplied = Callable[[int], Awaitable[None]]
WAIT_APPLIED: web.AppKey[WaitApplied | None] = web.AppKey("wait_applied")
APPLY_TIMEOUT = 1.0  # seconds a write waits for this instance's workers to enforce it


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
