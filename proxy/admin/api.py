"""The admin API: JSON over HTTP on its own listener, to create, inspect, change and revoke keys.

It is a thin shell: bodies are checked by ``proxy.admin.bodies``, records live in ``proxy.db.store``, and the
translation of every failure into an HTTP answer happens in exactly one place, ``_errors``, so each
error a client sees has the same JSON shape ``{"error", "reason", "field"?}`` and an ``X-Request-Id``.
The full key is returned once, in the 201 of a create; nothing else ever shows the secret or its hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from proxy.admin import jobs, rotation
from proxy.admin.audit import TOKEN_FINGERPRINT, audit, fingerprint
from proxy.admin.bodies import check_window, parse_create, parse_patch
from proxy.admin.common import (
    APPLIED_HEADER,
    MAX_BODY,
    STORE,
    WAIT_APPLIED,
    ApiError,
    WaitApplied,
    applied,
    expect_continue_only,
    key_answer,
    listed,
    missing,
    path_key_id,
    read_json,
)
from proxy.admin.issuers import FetchJwks, add_issuer_routes, check_policy_issuers, resolved_issuers
from proxy.admin.openapi import openapi_document
from proxy.admin.operations import OPERATIONS, Operations, add_operations
from proxy.core import keys
from proxy.core.errors import Conflict, NotFound, StoreUnavailable, ValidationError
from proxy.core.model import KeyStatus
from proxy.core.redact import logged_path
from proxy.core.signals import bearer_token
from proxy.db.issuers import IssuerRows
from proxy.db.store import Store

__all__ = [
    "MAX_BODY",
    "PUBLIC_PATHS",
    "READY_CHECKS",
    "STORE",
    "TOKEN_HASH",
    "ReadyCheck",
    "make_admin_app",
]

log = logging.getLogger("signalgate.admin")

ReadyCheck = Callable[[], "bool | Awaitable[bool]"]  # a readiness check, sync or async

TOKEN_HASH = web.AppKey("token_hash", bytes)
READY_CHECKS: web.AppKey[tuple[ReadyCheck, ...]] = web.AppKey("ready_checks")
VERSION = web.AppKey("version", str)
_OPENAPI = web.AppKey("openapi", dict)

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v1/openapi.json", "/metrics"})
READY_TIMEOUT = 5.0
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HTTP_REASONS = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def make_admin_app(
    *,
    store: Store,
    token_hash: bytes,
    max_body: int = 65536,
    ready_checks: Sequence[ReadyCheck] = (),
    wait_applied: WaitApplied | None = None,
    fetch_jwks: FetchJwks | None = None,
    jwks_bounds: tuple[float, float] = (60.0, 3600.0),
    job_key_ttl: float = 3600.0,
    version: str = "unknown",
    operations: Operations | None = None,
) -> web.Application:
    """Build the admin application; ``token_hash`` is SHA-256 of the bearer token, never the token.

    ``version`` (the installed signalgate's, from the composition root) is in ``/healthz``, ``/readyz``
    and the OpenAPI document.

    ``wait_applied(revision)`` returns once every worker of this instance enforces ``revision``; each
    write waits for it (up to ``APPLY_TIMEOUT``) before answering, so the very next request through this
    instance already sees the change. The answer says which in ``X-Signalgate-Applied``.
    """
    if len(token_hash) != hashlib.sha256().digest_size:
        raise ValueError("token_hash must be a SHA-256 digest (32 bytes)")
    app = web.Application(client_max_size=max_body, middlewares=[_errors, _auth])
    app[STORE] = store
    app[TOKEN_HASH] = token_hash
    app[TOKEN_FINGERPRINT] = fingerprint(token_hash)
    app[MAX_BODY] = max_body
    app[READY_CHECKS] = tuple(ready_checks)
    app[WAIT_APPLIED] = wait_applied
    app[VERSION] = version
    app[_OPENAPI] = openapi_document(version)
    router = app.router
    expect = expect_continue_only
    router.add_get("/healthz", healthz, allow_head=False, expect_handler=expect)
    router.add_get("/readyz", readyz, allow_head=False, expect_handler=expect)
    router.add_get("/v1/openapi.json", openapi, allow_head=False, expect_handler=expect)
    router.add_post("/v1/keys", create_key, expect_handler=expect)
    router.add_get("/v1/keys", list_keys, allow_head=False, expect_handler=expect)
    router.add_get("/v1/keys/{id}", get_key, allow_head=False, expect_handler=expect)
    router.add_patch("/v1/keys/{id}", patch_key, expect_handler=expect)
    router.add_delete("/v1/keys/{id}", delete_key, expect_handler=expect)
    router.add_post("/v1/keys/{id}/revoke", revoke_key, expect_handler=expect)
    add_issuer_routes(app, IssuerRows(store), fetch_jwks, jwks_bounds)
    rotation.setup(app)
    jobs.setup(app, job_key_ttl=job_key_ttl)
    app[OPERATIONS] = operations or Operations()
    add_operations(router)
    return app


# --- middlewares --------------------------------------------------------------------------------


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The one place where failures become HTTP answers; also stamps every response."""
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    where = logged_path(request.raw_path)
    try:
        length = request.content_length
        if length is not None and length > request.app[MAX_BODY]:
            raise ApiError(
                413,
                "body_too_large",
                f"request body is {length} bytes, at most {request.app[MAX_BODY]} allowed",
            )
        response = await handler(request)
    except ApiError as exc:
        response = _error(exc.status, exc.reason, exc.message, headers=exc.headers)
    except ValidationError as exc:
        response = _error(422, "validation_failed", f"{exc.path}: {exc.reason}", field=exc.path)
    except NotFound as exc:
        response = _error(404, "not_found", str(exc) or "not found")
    except Conflict as exc:
        response = _error(409, "conflict", str(exc) or "conflicts with the current state")
    except StoreUnavailable as exc:
        log.warning("store unavailable on %s %s [%s]: %s", request.method, where, request_id, exc)
        response = _error(503, "store_unavailable", "the key store is unavailable; try again later")
    except web.HTTPException as exc:
        response = _http_error(request, exc)
    except Exception:
        log.exception("unexpected error on %s %s [%s]", request.method, where, request_id)
        response = _error(500, "internal_error", f"internal error (request id {request_id})")
    response.headers["X-Request-Id"] = request_id
    response.headers["Cache-Control"] = "no-store"
    return response


@web.middleware
async def _auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    token = bearer_token(request.headers.get("Authorization", ""))
    if not token:
        raise ApiError(
            401,
            "unauthorized",
            "missing admin token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="signalgate-admin"'},
        )
    try:
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
    except UnicodeEncodeError:
        digest = b""
    if not hmac.compare_digest(digest, request.app[TOKEN_HASH]):
        raise ApiError(
            401,
            "unauthorized",
            "invalid admin token",
            headers={"WWW-Authenticate": 'Bearer realm="signalgate-admin", error="invalid_token"'},
        )
    return await handler(request)


def _error(
    status: int,
    reason: str,
    message: str,
    *,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"error": message, "reason": reason}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """Router answers (unknown path, wrong method) and aiohttp's own limits, in our JSON shape."""
    headers: dict[str, str] = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        headers["Allow"] = allowed
        message = f"method {request.method} is not allowed on {request.path}; allowed: {allowed}"
    elif isinstance(exc, web.HTTPNotFound):
        message = f"no such endpoint: {request.method} {request.path}"
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        message = f"request body is larger than {request.app[MAX_BODY]} bytes"
    else:
        message = exc.reason
    return _error(exc.status, _HTTP_REASONS.get(exc.status, "http_error"), message, headers=headers)


# --- helpers ------------------------------------------------------------------------------------


# --- handlers -----------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": request.app[VERSION]})


async def readyz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    named: dict[str, Callable[[], object]] = {"store": store.ready}
    extra = request.app[READY_CHECKS]
    for i, check in enumerate(extra):
        name = getattr(check, "__name__", "") or f"check_{i}"
        named[name if name not in named else f"{name}_{i}"] = check
    results = await asyncio.gather(*(_probe(name, fn) for name, fn in named.items()))
    checks = dict(zip(named, results, strict=True))
    version = request.app[VERSION]
    if all(results):
        return web.json_response({"status": "ready", "version": version})
    return web.json_response({"status": "not_ready", "checks": checks, "version": version}, status=503)


async def _probe(name: str, check: Callable[[], object]) -> bool:
    try:
        result = check()
        if inspect.isawaitable(result):
            async with asyncio.timeout(READY_TIMEOUT):
                result = await result
    except Exception as exc:
        log.warning("readiness check %s failed: %s", name, type(exc).__name__)
        return False
    return bool(result)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[_OPENAPI])


async def create_key(request: web.Request) -> web.Response:
    spec = parse_create(await read_json(request), datetime.now(UTC))
    await check_policy_issuers(request, spec.policy)
    if spec.candidate_policy is not None:
        await check_policy_issuers(request, spec.candidate_policy)
    expires_at = await jobs.key_expiry(request, spec, datetime.now(UTC))  # ttl_s, and the job's deadline
    check_window(spec.not_before, expires_at)
    key_id, key, secret_hash = keys.generate()
    record = await request.app[STORE].create_key(
        key_id=key_id,
        name=spec.name,
        owner=spec.owner,
        secret_hash=secret_hash,
        policy=spec.policy,
        labels=spec.labels,
        not_before=spec.not_before,
        expires_at=expires_at,
        job_id=spec.job_id,
        can_close_job=spec.can_close_job,
        candidate_policy=spec.candidate_policy,
    )
    audit(request, f"key {record.id}", "created", None, record)
    done = await applied(request, record.revision)
    return web.json_response(
        {**record.public(), "key": key},
        status=201,
        headers={"Location": f"/v1/keys/{record.id}", APPLIED_HEADER: done},
    )


async def list_keys(request: web.Request) -> web.Response:
    return await listed(request, KeyStatus, request.app[STORE].list_keys)


async def get_key(request: web.Request) -> web.Response:
    key_id = path_key_id(request)
    record = await request.app[STORE].get_key(key_id)
    if record is None:
        raise missing(key_id)
    shown = record.public()
    issuers = await resolved_issuers(request, record.policy)
    if issuers is not None:
        shown["issuers"] = issuers  # the policy's issuers resolved: what its tokens are checked against
    return web.json_response(shown)


async def patch_key(request: web.Request) -> web.Response:
    key_id = path_key_id(request)
    fields = parse_patch(await read_json(request))
    for name in ("policy", "candidate_policy"):
        if fields.get(name) is not None:
            await check_policy_issuers(request, fields[name])
    store = request.app[STORE]
    current = await store.get_key(key_id)
    if current is None:
        raise missing(key_id)
    # A revoked key's status cannot change: Store.update_key refuses it inside the UPDATE (409).
    check_window(fields.get("not_before", current.not_before), fields.get("expires_at", current.expires_at))
    jobs.check_job_expiry(current, fields)
    record = await store.update_key(key_id, fields)
    audit(request, f"key {key_id}", "updated", current, record)
    return key_answer(record, await applied(request, record.revision))


async def revoke_key(request: web.Request) -> web.Response:
    key_id = path_key_id(request)
    store = request.app[STORE]
    current = await store.get_key(key_id)
    if current is None:
        raise missing(key_id)
    if current.status == KeyStatus.REVOKED:
        # revoking twice changes nothing and announces nothing; the header still says whether the
        # revocation (the key's last change) is enforced here
        return key_answer(current, await applied(request, current.revision))
    record = await store.revoke_key(key_id)
    audit(request, f"key {key_id}", "revoked", current, record)
    return key_answer(record, await applied(request, record.revision))


async def delete_key(request: web.Request) -> web.Response:
    key_id = path_key_id(request)
    store = request.app[STORE]
    current = await store.get_key(key_id)  # for the audit line; a key already gone is a 404 below
    revision = await store.delete_key(key_id)
    audit(request, f"key {key_id}", "deleted", current, None)
    return web.Response(status=204, headers={APPLIED_HEADER: await applied(request, revision)})
