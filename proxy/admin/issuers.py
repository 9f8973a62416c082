"""The admin API's ``/v1/issuers``: the parties whose device and workload attestations signalgate trusts.

``POST /v1/issuers`` (201), ``GET /v1/issuers``, ``GET|PATCH|DELETE /v1/issuers/{name}``. An issuer with a
``jwks_url`` has its set fetched here at creation (and when the URL changes): a fetch that fails, or a
set with a key that does not fit the issuer's algorithms, is a 422 saying why. Each write is announced on
the change feed, and the answer waits until this instance's workers enforce it (``X-Signalgate-Applied``),
as for keys: after a DELETE, or a PATCH that drops a key, tokens it signed are refused.

Also here: the issuers a key's policy names, checked when a key is written (a policy naming an issuer
that does not exist, or one of the other kind, is a 422) and shown resolved with the key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from proxy.admin.audit import ISSUER_FIELDS, audit
from proxy.admin.common import APPLIED_HEADER, applied, expect_continue_only, read_json
from proxy.admin.issuerbodies import check_jwks, parse_issuer
from proxy.core.attestation import ISSUER_NAME
from proxy.core.errors import JwksFetchError, NotFound, ValidationError
from proxy.core.issuers import IssuerRecord, refresh_after
from proxy.db.issuers import IssuerRows

__all__ = ["FetchJwks", "add_issuer_routes", "check_policy_issuers", "resolved_issuers"]


FetchJwks = Callable[[str], Awaitable[Any]]  # url -> proxy.jwks.FetchedJwks (jwks, max_age)
ISSUER_ROWS = web.AppKey("issuer_rows", IssuerRows)
FETCH_JWKS: web.AppKey[FetchJwks | None] = web.AppKey("fetch_jwks")
JWKS_BOUNDS: web.AppKey[tuple[float, float]] = web.AppKey("jwks_bounds")
_ATTESTATION_PARTS = ("device", "workload")


def add_issuer_routes(
    app: web.Application, rows: IssuerRows, fetch_jwks: FetchJwks | None, bounds: tuple[float, float]
) -> None:
    app[ISSUER_ROWS] = rows
    app[FETCH_JWKS] = fetch_jwks
    app[JWKS_BOUNDS] = bounds
    router = app.router
    expect = expect_continue_only  # no plain-text 417 outside the API's JSON answers
    router.add_post("/v1/issuers", create_issuer, expect_handler=expect)
    router.add_get("/v1/issuers", list_issuers, allow_head=False, expect_handler=expect)
    router.add_get("/v1/issuers/{name}", get_issuer, allow_head=False, expect_handler=expect)
    router.add_patch("/v1/issuers/{name}", patch_issuer, expect_handler=expect)
    router.add_delete("/v1/issuers/{name}", delete_issuer, expect_handler=expect)


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if ISSUER_NAME.fullmatch(name) is None:
        raise NotFound(f"no issuer named {name!r} (a name is 1 to 64 of a-z 0-9 -)")
    return name


async def _fetched(request: web.Request, url: str, algorithms: tuple[str, ...]) -> dict[str, Any]:
    """The set at ``url`` fetched now, checked whole; fields to store with it."""
    fetch = request.app[FETCH_JWKS]
    if fetch is None:
        raise ValidationError("jwks_url", "this admin API cannot fetch key sets; give jwks inline")
    try:
        fetched = await fetch(url)
    except JwksFetchError as exc:
        raise ValidationError("jwks_url", str(exc)) from exc
    check_jwks(fetched.jwks, algorithms, "jwks_url")
    now = datetime.now(UTC)
    return {
        "jwks": fetched.jwks,
        "fetched_at": now,
        "next_fetch_at": now + timedelta(seconds=refresh_after(fetched.max_age, *request.app[JWKS_BOUNDS])),
    }


async def create_issuer(request: web.Request) -> web.Response:
    fields = dict(parse_issuer(await read_json(request), create=True).fields)
    algorithms = fields["algorithms"]
    if "jwks_url" in fields:
        fields.update(await _fetched(request, fields["jwks_url"], algorithms))
    else:
        check_jwks(fields["jwks"], algorithms)
    record = await request.app[ISSUER_ROWS].create(IssuerRecord(**fields))
    audit(request, f"issuer {record.name}", "created", None, record, ISSUER_FIELDS)
    done = await applied(request, record.revision)
    return web.json_response(
        record.public(), status=201, headers={"Location": f"/v1/issuers/{record.name}", APPLIED_HEADER: done}
    )


async def list_issuers(request: web.Request) -> web.Response:
    for name in request.query:
        raise ValidationError(name, "unknown query parameter (this list takes none)")
    return web.json_response({"items": [r.public() for r in await request.app[ISSUER_ROWS].list()]})


async def get_issuer(request: web.Request) -> web.Response:
    name = _name(request)
    record = await request.app[ISSUER_ROWS].get(name)
    if record is None:
        raise NotFound(f"no issuer named {name!r}")
    return web.json_response(record.public())


async def patch_issuer(request: web.Request) -> web.Response:
    name = _name(request)
    fields = dict(parse_issuer(await read_json(request), create=False).fields)
    rows = request.app[ISSUER_ROWS]
    current = await rows.get(name)
    if current is None:
        raise NotFound(f"no issuer named {name!r}")
    algorithms = fields.get("algorithms", current.algorithms)
    if "jwks_url" in fields:
        fields.update(await _fetched(request, fields["jwks_url"], algorithms))
    elif "jwks" in fields:
        check_jwks(fields["jwks"], algorithms)
        fields["jwks_url"] = None  # an inline set replaces a URL
    elif "algorithms" in fields and current.jwks_url is None:
        check_jwks(current.jwks, algorithms)  # the stored keys must still fit
    record = await rows.update(name, fields)
    audit(request, f"issuer {name}", "updated", current, record, ISSUER_FIELDS)
    return web.json_response(
        record.public(), headers={APPLIED_HEADER: await applied(request, record.revision)}
    )


async def delete_issuer(request: web.Request) -> web.Response:
    name = _name(request)
    rows = request.app[ISSUER_ROWS]
    current = await rows.get(name)  # for the audit line; an issuer already gone is a 404 below
    revision = await rows.delete(name)
    audit(request, f"issuer {name}", "deleted", current, None, ISSUER_FIELDS)
    return web.Response(status=204, headers={APPLIED_HEADER: await applied(request, revision)})


# --- issuers named by key policies -------------------------------------------------------------------


def _named(policy: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    """(part, index, issuer name) for each issuer a (compiled, so well-formed) policy names."""
    named: list[tuple[str, int, str]] = []
    for part in _ATTESTATION_PARTS:
        doc = policy.get(part)
        if isinstance(doc, dict):
            named.extend((part, i, name) for i, name in enumerate(doc.get("issuers", [])))
    return named


async def check_policy_issuers(request: web.Request, policy: Mapping[str, Any]) -> None:
    """A 422 for a policy naming an issuer that does not exist or is of the other kind."""
    named = _named(policy)
    if not named:
        return
    records = {record.name: record for record in await request.app[ISSUER_ROWS].list()}
    for part, i, name in named:
        record = records.get(name)
        path = f"policy.{part}.issuers[{i}]"
        if record is None:
            raise ValidationError(path, f"no issuer named {name!r}; create it first (POST /v1/issuers)")
        if record.kind != part:
            raise ValidationError(path, f"issuer {name!r} is a {record.kind} issuer, not a {part} one")


async def resolved_issuers(request: web.Request, policy: Mapping[str, Any]) -> dict[str, Any] | None:
    """The issuers a key's policy names, as the admin API shows them (None: deleted since)."""
    named = _named(policy)
    if not named:
        return None
    rows = request.app[ISSUER_ROWS]
    shown: dict[str, Any] = {}
    for _, _, name in named:
        if name not in shown:
            record = await rows.get(name)
            shown[name] = None if record is None else _summary(record)
    return shown


def _summary(record: IssuerRecord) -> dict[str, Any]:
    public = record.public()
    return {
        name: public[name]
        for name in ("kind", "issuer", "audience", "algorithms", "jwks_url", "last_fetched_at", "keys")
        if name in public
    }
