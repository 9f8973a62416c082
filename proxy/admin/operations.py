"""The operators' view in the admin API: the decision log, candidate policies, explain, metrics.

- ``GET /v1/decisions``: decisions filtered by key, owner, decision, reason, candidate outcome, time and
  request id, newest first (``order=asc`` for oldest first), keyset-paginated by an opaque cursor.
- ``GET /v1/keys/{id}/candidate``: what the key's candidate policy would have changed since it was set.
- ``POST /v1/keys/{id}/candidate/promote``: the candidate becomes the policy (a write like any other:
  one transaction, announced on the change feed, answered once this instance's workers enforce it).
- ``POST /v1/evaluate``: explain a described request against a key or a policy document
  (``proxy.core.explain``, the proxy's own steps).
- ``GET /metrics``: the Prometheus text page (no token: a scraper gets no admin rights).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from proxy.admin.bodies import parse_timestamp
from proxy.admin.common import (
    STORE,
    applied,
    expect_continue_only,
    key_answer,
    missing,
    path_key_id,
    query_key_id,
    query_limit,
    query_names,
    query_owner,
    read_json,
)
from proxy.core import keys
from proxy.core.cache import compile_entry
from proxy.core.errors import NotFound, PolicyError, ValidationError
from proxy.core.explain import explain_request
from proxy.core.judge import Judging
from proxy.core.model import Reason
from proxy.core.policy import compile_policy
from proxy.core.signals import parse_ip
from proxy.db.decisions import DecisionFilter

__all__ = ["DECISION_QUERY", "OPERATIONS", "Operations", "add_operations"]


async def _no_metrics() -> bytes:
    return b""


@dataclass(frozen=True)
class Operations:
    """What these endpoints need beyond the store: how the proxy judges, and the metrics page."""

    judging: Judging = field(default_factory=Judging)
    before_explain: Callable[[], Awaitable[None]] | None = None  # e.g. read the issuers' keys again
    metrics: Callable[[], Awaitable[bytes]] = _no_metrics
    metrics_type: str = "text/plain; version=0.0.4; charset=utf-8"
    decision_log: bool = True


OPERATIONS = web.AppKey("operations", Operations)

DECISION_QUERY = (
    "key_id",
    "owner",
    "decision",
    "reason",
    "candidate",
    "since",
    "until",
    "request_id",
    "limit",
    "cursor",
    "order",
)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")  # an HTTP method or header name
CANDIDATE_OUTCOMES = ("agree", "would_allow", "would_deny")


def add_operations(router: web.UrlDispatcher) -> None:
    expect = expect_continue_only  # any Expect but 100-continue is ignored, never aiohttp's 417
    router.add_get("/v1/decisions", list_decisions, allow_head=False, expect_handler=expect)
    router.add_get("/v1/keys/{id}/candidate", get_candidate, allow_head=False, expect_handler=expect)
    router.add_post("/v1/keys/{id}/candidate/promote", promote_candidate, expect_handler=expect)
    router.add_post("/v1/evaluate", evaluate, expect_handler=expect)
    router.add_get("/metrics", metrics, allow_head=False, expect_handler=expect)


# --- the decision log ---------------------------------------------------------------------------


def _choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = query.get(name)
    if value is not None and value not in allowed:
        raise ValidationError(name, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _cursor(text: str) -> tuple[datetime, str]:
    try:
        at, request_id = json.loads(base64.urlsafe_b64decode(text.encode("ascii") + b"=="))
        return datetime.fromisoformat(at), str(request_id)
    except (ValueError, TypeError, UnicodeEncodeError, binascii.Error):
        raise ValidationError("cursor", "is not a cursor this API returned") from None


def _next_cursor(item: Mapping[str, Any]) -> str:
    raw = json.dumps([item["at"], item["request_id"]]).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parse_decision_query(
    query: Mapping[str, str],
) -> tuple[DecisionFilter, int, tuple[datetime, str] | None, bool]:
    query_names(query, DECISION_QUERY)
    key_id = query_key_id(query, "key_id")
    owner = query_owner(query)
    request_id = query.get("request_id")
    if request_id is not None and REQUEST_ID.fullmatch(request_id) is None:
        raise ValidationError("request_id", "must be 1 to 128 characters of A-Z a-z 0-9 . _ : -")
    limit = query_limit(query, DEFAULT_LIMIT, MAX_LIMIT)
    where = DecisionFilter(
        key_id=key_id,
        owner=owner,
        decision=_choice(query, "decision", ("allow", "deny")),
        reason=_choice(query, "reason", tuple(str(r) for r in Reason)),
        candidate=_choice(query, "candidate", CANDIDATE_OUTCOMES),
        since=parse_timestamp(query["since"], "since") if "since" in query else None,
        until=parse_timestamp(query["until"], "until") if "until" in query else None,
        request_id=request_id,
    )
    after = _cursor(query["cursor"]) if "cursor" in query else None
    ascending = _choice(query, "order", ("desc", "asc")) == "asc"
    return where, limit, after, ascending


async def list_decisions(request: web.Request) -> web.Response:
    where, limit, after, ascending = parse_decision_query(request.query)
    rows = await request.app[STORE].decisions(where, limit=limit + 1, after=after, ascending=ascending)
    page = rows[:limit]
    next_cursor = _next_cursor(page[-1]) if len(rows) > limit else None
    return web.json_response({"items": page, "next": next_cursor})


# --- candidate policies -------------------------------------------------------------------------


async def get_candidate(request: web.Request) -> web.Response:
    key_id = path_key_id(request)
    store = request.app[STORE]
    record = await store.get_key(key_id)
    if record is None:
        raise missing(key_id)
    if record.candidate_policy is None or record.candidate_since is None:
        raise NotFound(f"key {key_id} has no candidate policy")
    summary = await store.candidate_summary(key_id, record.candidate_since)
    return web.json_response(
        {
            "key_id": key_id,
            "policy": dict(record.policy),
            "candidate_policy": dict(record.candidate_policy),
            "since": record.candidate_since.isoformat(),
            "decision_log": request.app[OPERATIONS].decision_log,
            **summary,
        }
    )


async def promote_candidate(request: web.Request) -> web.Response:
    key_id = path_key_id(request)
    record = await request.app[STORE].promote_candidate(key_id)
    return key_answer(record, await applied(request, record.revision))


# --- explain ------------------------------------------------------------------------------------

EVALUATE_FIELDS = ("key_id", "policy", "request")
REQUEST_FIELDS = ("method", "path", "client_ip", "headers", "time")


def _headers(value: object) -> CIMultiDict[str]:
    if not isinstance(value, dict):
        raise ValidationError("request.headers", "must be an object of header names to a string or a list")
    headers: CIMultiDict[str] = CIMultiDict()
    for name, item in value.items():
        path = f"request.headers[{json.dumps(name)}]"
        if TOKEN.fullmatch(name) is None:
            raise ValidationError(path, "is not a valid header name")
        for one in item if isinstance(item, list) else [item]:
            if not isinstance(one, str) or any(ch in one for ch in "\r\n\x00"):
                raise ValidationError(path, "must be a string (or a list of strings) without CR, LF or NUL")
            headers.add(name, one)
    return headers


def _described(body: Mapping[str, Any]) -> dict[str, Any]:
    described = body.get("request")
    if not isinstance(described, dict):
        raise ValidationError("request", "is required: an object describing the request")
    for name in described:
        if name not in REQUEST_FIELDS:
            raise ValidationError(
                f"request.{name}", f"unknown field (expected some of: {', '.join(REQUEST_FIELDS)})"
            )
    method = described.get("method", "GET")
    if not isinstance(method, str) or TOKEN.fullmatch(method) is None:
        raise ValidationError("request.method", "must be an HTTP method, e.g. GET")
    path = described.get("path")
    if not isinstance(path, str) or not path or len(path) > 8190:
        raise ValidationError("request.path", "is required: the request target, e.g. /v1/orders?id=7")
    client = described.get("client_ip")
    if not isinstance(client, str) or parse_ip(client) is None:
        raise ValidationError(
            "request.client_ip", "is required: the address the request comes from (IPv4 or IPv6)"
        )
    when = described.get("time")
    now = parse_timestamp(when, "request.time") if when is not None else datetime.now(UTC)
    return {
        "method": method.upper(),
        "raw_path": path,
        "peer": client,
        "headers": _headers(described.get("headers", {})),
        "now": now,
    }


async def evaluate(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ValidationError("$", "request body must be a JSON object")
    for name in body:
        if name not in EVALUATE_FIELDS:
            raise ValidationError(name, f"unknown field (expected some of: {', '.join(EVALUATE_FIELDS)})")
    if ("key_id" in body) == ("policy" in body):
        raise ValidationError("$", "give either key_id (a key) or policy (a policy document), not both")
    described = _described(body)
    operations = request.app[OPERATIONS]
    if operations.before_explain is not None:
        await operations.before_explain()
    judging = operations.judging
    if "key_id" in body:
        key_id = body["key_id"]
        if not isinstance(key_id, str) or not keys.is_key_id(key_id):
            raise ValidationError("key_id", "must be a key id (16 lower-case hex digits)")
        record = await request.app[STORE].get_key(key_id)
        if record is None:
            raise missing(key_id)
        try:
            entry, _ = compile_entry(record)
        except PolicyError as exc:
            raise ValidationError(exc.path, f"the stored policy does not compile: {exc.reason}") from exc
        return web.json_response(explain_request(judging, entry=entry, **described))
    if not isinstance(body["policy"], dict):
        raise ValidationError("policy", "must be an object")
    policy = compile_policy(body["policy"], "policy")
    return web.json_response(explain_request(judging, policy=policy, **described))


# --- metrics ------------------------------------------------------------------------------------


async def metrics(request: web.Request) -> web.Response:
    operations = request.app[OPERATIONS]
    return web.Response(body=await operations.metrics(), headers={"Content-Type": operations.metrics_type})
