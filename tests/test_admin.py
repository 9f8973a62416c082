"""The admin API against real PostgreSQL, served on a loopback socket and called over HTTP."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from proxy.admin.api import make_admin_app
from proxy.core import keys
from proxy.db.store import Store
from tests.pgtools import counts as row_counts

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOKEN_HASH = hashlib.sha256(TOKEN.encode()).digest()
VERSION = "9.8.7"  # what the composition root passes: the installed distribution's version

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make_client(store: Store) -> AsyncIterator[MakeClient]:
    clients: list[TestClient[Any, Any]] = []

    async def make(
        *,
        max_body: int = 65536,
        ready_checks: Sequence[Callable[[], Awaitable[bool]]] = (),
        on: Store = store,
    ) -> TestClient[Any, Any]:
        app = make_admin_app(
            store=on, token_hash=TOKEN_HASH, max_body=max_body, ready_checks=ready_checks, version=VERSION
        )
        client = TestClient(TestServer(app, host="127.0.0.1", port=0))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[Any, Any]:
    return await make_client()


@pytest.fixture
async def counts(db_dsn: str) -> Callable[[], Awaitable[tuple[int, int]]]:
    return lambda: row_counts(db_dsn)


async def json_of(response: ClientResponse, status: int) -> Any:
    body = await response.json()
    assert response.status == status, body
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers.get("X-Request-Id")
    return body


async def create(client: TestClient[Any, Any], **fields: Any) -> dict[str, Any]:
    body = {"name": "ci", "owner": "team-a", **fields}
    return await json_of(await client.post("/v1/keys", json=body, headers=AUTH), 201)


async def assert_error(response: ClientResponse, status: int, reason: str, field: str | None = None) -> dict:
    body = await json_of(response, status)
    assert body["reason"] == reason, body
    assert isinstance(body["error"], str) and body["error"]
    if field is not None:
        assert body["field"] == field, body
    return body


# --- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
)
async def test_requests_without_the_right_token_are_refused(client: TestClient, headers: dict) -> None:
    for method, path in (("GET", "/v1/keys"), ("POST", "/v1/keys"), ("GET", "/v1/keys/0123456789abcdef")):
        response = await client.request(method, path, headers=headers, json={"name": "x", "owner": "y"})
        await assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_right_token_is_accepted_and_probes_need_none(client: TestClient) -> None:
    assert await json_of(await client.get("/v1/keys", headers=AUTH), 200) == {"items": [], "next": None}
    lower = {"Authorization": f"bearer {TOKEN}"}
    assert (await client.get("/v1/keys", headers=lower)).status == 200
    assert await json_of(await client.get("/healthz"), 200) == {"status": "ok", "version": VERSION}
    assert await json_of(await client.get("/readyz"), 200) == {"status": "ready", "version": VERSION}
    assert (await json_of(await client.get("/v1/openapi.json"), 200))["info"]["version"] == VERSION
    document = await json_of(await client.get("/v1/openapi.json"), 200)
    assert document["openapi"] == "3.1.0"


# --- CRUD ---------------------------------------------------------------------------------------


async def test_full_key_lifecycle(client: TestClient, store: Store) -> None:
    policy = {"networks": {"allow": ["10.0.0.0/8"]}}
    created = await create(
        client, policy=policy, labels={"env": "prod"}, expires_at="2030-01-01T00:00:00+01:00"
    )
    key_id = created["id"]
    assert keys.is_key_id(key_id)
    presented = keys.parse(created["key"])
    assert presented.key_id == key_id
    stored = await store.get_key(key_id)
    assert stored is not None and keys.matches(presented, stored.secret_hash)
    assert (
        created["status"] == "active" and created["policy"] == policy and created["labels"] == {"env": "prod"}
    )
    assert created["expires_at"] == "2029-12-31T23:00:00+00:00"

    shown = await json_of(await client.get(f"/v1/keys/{key_id}", headers=AUTH), 200)
    assert shown == {k: v for k, v in created.items() if k != "key"}

    patched = await json_of(
        await client.patch(
            f"/v1/keys/{key_id}", json={"name": "renamed", "labels": {"env": "dev"}}, headers=AUTH
        ),
        200,
    )
    assert patched["name"] == "renamed" and patched["labels"] == {"env": "dev"}
    assert patched["revision"] > created["revision"] and patched["policy"] == policy

    suspended = await json_of(
        await client.patch(f"/v1/keys/{key_id}", json={"status": "suspended"}, headers=AUTH), 200
    )
    assert suspended["status"] == "suspended"
    resumed = await json_of(
        await client.patch(f"/v1/keys/{key_id}", json={"status": "active"}, headers=AUTH), 200
    )
    assert resumed["status"] == "active"

    revoked = await json_of(await client.post(f"/v1/keys/{key_id}/revoke", headers=AUTH), 200)
    assert revoked["status"] == "revoked"
    again = await json_of(await client.post(f"/v1/keys/{key_id}/revoke", headers=AUTH), 200)
    assert again == revoked  # idempotent: no second write, same revision

    for status in ("active", "suspended"):
        response = await client.patch(f"/v1/keys/{key_id}", json={"status": status}, headers=AUTH)
        await assert_error(response, 409, "conflict")
    assert (await store.get_key(key_id)).status == "revoked"  # type: ignore[union-attr]

    response = await client.delete(f"/v1/keys/{key_id}", headers=AUTH)
    assert response.status == 204 and response.headers.get("X-Request-Id")
    assert await store.get_key(key_id) is None
    await assert_error(await client.get(f"/v1/keys/{key_id}", headers=AUTH), 404, "not_found")
    await assert_error(await client.delete(f"/v1/keys/{key_id}", headers=AUTH), 404, "not_found")


async def test_patch_checks_the_window_against_the_stored_record(client: TestClient) -> None:
    created = await create(client, not_before="2030-01-01T00:00:00Z")
    response = await client.patch(
        f"/v1/keys/{created['id']}", json={"expires_at": "2029-01-01T00:00:00Z"}, headers=AUTH
    )
    await assert_error(response, 422, "validation_failed", "expires_at")
    cleared = await json_of(
        await client.patch(
            f"/v1/keys/{created['id']}",
            json={"not_before": None, "expires_at": "2029-01-01T00:00:00Z"},
            headers=AUTH,
        ),
        200,
    )
    assert cleared["not_before"] is None and cleared["expires_at"] == "2029-01-01T00:00:00+00:00"


async def test_list_filters_and_pages(client: TestClient) -> None:
    ids = {"team-a": [], "team-b": []}
    for i in range(7):
        owner = "team-a" if i % 2 else "team-b"
        ids[owner].append((await create(client, name=f"k{i}", owner=owner))["id"])
    suspended = ids["team-b"][0]
    await json_of(
        await client.patch(f"/v1/keys/{suspended}", json={"status": "suspended"}, headers=AUTH), 200
    )

    async def collect(**params: str) -> tuple[list[str], int]:
        seen: list[str] = []
        pages = 0
        query = dict(params)
        while True:
            page = await json_of(await client.get("/v1/keys", params=query, headers=AUTH), 200)
            pages += 1
            seen.extend(item["id"] for item in page["items"])
            assert len(page["items"]) <= int(params.get("limit", 100))
            if page["next"] is None:
                return seen, pages
            assert page["next"] == page["items"][-1]["id"]
            query["after"] = page["next"]

    everything = sorted(ids["team-a"] + ids["team-b"])
    assert await collect(limit="3") == (everything, 3)
    assert await collect(limit="7") == (everything, 1)  # an exactly full page has no next
    assert await collect() == (everything, 1)
    assert (await collect(owner="team-a", limit="2"))[0] == sorted(ids["team-a"])
    assert (await collect(status="suspended"))[0] == [suspended]
    assert (await collect(status="active", owner="team-b"))[0] == sorted(ids["team-b"][1:])
    assert (await collect(owner="nobody"))[0] == []
    assert (await collect(status="revoked"))[0] == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "limit"),
        ("limit=-5", "limit"),
        ("limit=%C2%B2", "limit"),  # a superscript two: a digit to str.isdigit, not to int()
        ("limit=" + "1" * 5000, "limit"),
        ("status=gone", "status"),
        ("after=xyz", "after"),
        ("owner=%00", "owner"),
        ("colour=red", "colour"),
    ],
)
async def test_bad_list_queries_are_422(client: TestClient, query: str, field: str) -> None:
    await assert_error(await client.get(f"/v1/keys?{query}", headers=AUTH), 422, "validation_failed", field)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{", b"", b"NaN", b'{"name": Infinity}', b"\xff\xfe", b"[" * 50_000])
async def test_invalid_json_is_400(client: TestClient, raw: bytes, counts: Callable) -> None:
    before = await counts()
    headers = {**AUTH, "Content-Type": "application/json"}
    await assert_error(await client.post("/v1/keys", data=raw, headers=headers), 400, "invalid_json")
    created = await create(client)
    response = await client.patch(f"/v1/keys/{created['id']}", data=raw, headers=headers)
    await assert_error(response, 400, "invalid_json")
    assert await counts() == (before[0] + 1, before[1] + 1)  # only the create wrote


async def test_oversized_bodies_are_413_declared_or_not(make_client: MakeClient, counts: Callable) -> None:
    client = await make_client(max_body=1024)
    big = {"name": "n", "owner": "o", "labels": {"pad": "x" * 200, "pad2": "y" * 200, "pad3": "z" * 200}}
    big["labels"].update({f"p{i}": "q" * 100 for i in range(5)})
    before = await counts()
    await assert_error(await client.post("/v1/keys", json=big, headers=AUTH), 413, "body_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "n", "owner": "o", "labels": {"pad": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}}'

    json_type = {**AUTH, "Content-Type": "application/json"}
    response = await client.post("/v1/keys", data=chunks(), headers=json_type)
    assert "Content-Length" not in response.request_info.headers
    await assert_error(response, 413, "body_too_large")
    assert await counts() == before
    small = await json_of(await client.post("/v1/keys", json={"name": "n", "owner": "o"}, headers=AUTH), 201)
    assert small["name"] == "n"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "n"}, "owner"),
        ({"name": "n", "owner": "o", "extra": 1}, "extra"),
        (
            {"name": "n", "owner": "o", "policy": {"networks": {"allow": ["10.0.0.300/8"]}}},
            "policy.networks.allow[0]",
        ),
        ({"name": "n", "owner": "o", "policy": {"bogus": 1}}, "policy.bogus"),
        ({"name": "n", "owner": "o", "labels": {"a b": "c"}}, 'labels["a b"]'),
        ({"name": "n", "owner": "o", "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        (["not", "an", "object"], "$"),
    ],
)
async def test_invalid_writes_are_422_and_write_nothing(
    client: TestClient, counts: Callable, body: object, field: str
) -> None:
    existing = await create(client)
    before = await counts()
    await assert_error(
        await client.post("/v1/keys", json=body, headers=AUTH), 422, "validation_failed", field
    )
    patch = body if field != "owner" else {"owner": "someone-else"}
    response = await client.patch(f"/v1/keys/{existing['id']}", json=patch, headers=AUTH)
    assert response.status == 422
    assert await counts() == before
    shown = await json_of(await client.get(f"/v1/keys/{existing['id']}", headers=AUTH), 200)
    assert shown == {k: v for k, v in existing.items() if k != "key"}


async def test_unknown_and_malformed_ids_are_404(client: TestClient) -> None:
    for key_id in ("0123456789abcdef", "NOT-A-KEY", "0123456789ABCDEF", "0" * 17):
        await assert_error(await client.get(f"/v1/keys/{key_id}", headers=AUTH), 404, "not_found")
        await assert_error(await client.delete(f"/v1/keys/{key_id}", headers=AUTH), 404, "not_found")
        await assert_error(await client.post(f"/v1/keys/{key_id}/revoke", headers=AUTH), 404, "not_found")
        response = await client.patch(f"/v1/keys/{key_id}", json={"name": "x"}, headers=AUTH)
        await assert_error(response, 404, "not_found")


async def test_wrong_method_is_405_and_unknown_path_404_in_json(client: TestClient) -> None:
    response = await client.put("/v1/keys", json={}, headers=AUTH)
    await assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(", ")) == {"GET", "POST"}
    await assert_error(
        await client.get("/v1/keys/0123456789abcdef/revoke", headers=AUTH), 405, "method_not_allowed"
    )
    await assert_error(await client.post("/healthz"), 405, "method_not_allowed")
    await assert_error(await client.get("/v1/nothing-here", headers=AUTH), 404, "not_found")


async def test_store_outage_is_503(make_client: MakeClient, db_dsn: str) -> None:
    closed = await Store.open(db_dsn)
    await closed.close()
    client = await make_client(on=closed)
    await assert_error(await client.get("/v1/keys", headers=AUTH), 503, "store_unavailable")
    await assert_error(
        await client.post("/v1/keys", json={"name": "n", "owner": "o"}, headers=AUTH),
        503,
        "store_unavailable",
    )
    body = await json_of(await client.get("/readyz"), 503)
    assert body == {"status": "not_ready", "checks": {"store": False}, "version": VERSION}


async def test_readyz_reports_each_failing_check(make_client: MakeClient) -> None:
    async def geoip() -> bool:
        return True

    async def upstream() -> bool:
        return False

    async def broken() -> bool:
        raise RuntimeError("boom")

    failing = await make_client(ready_checks=[geoip, upstream, broken])
    body = await json_of(await failing.get("/readyz"), 503)
    assert body == {
        "status": "not_ready",
        "checks": {"store": True, "geoip": True, "upstream": False, "broken": False},
        "version": VERSION,
    }
    healthy = await make_client(ready_checks=[geoip])
    assert await json_of(await healthy.get("/readyz"), 200) == {"status": "ready", "version": VERSION}


async def test_request_ids_are_echoed_or_made(client: TestClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert response.headers["X-Request-Id"] == "abc-123"
    response = await client.get("/v1/keys", headers={"X-Request-Id": "bad id\twith spaces"})
    assert response.status == 401
    made = response.headers["X-Request-Id"]
    assert made and made != "bad id\twith spaces"


async def test_secret_never_leaves_except_in_the_201(
    client: TestClient, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await create(client, labels={"env": "prod"})
    key = created["key"]
    secret = key.rsplit("_", 1)[1]
    stored = await store.get_key(created["id"])
    assert stored is not None
    forbidden = (key, secret, stored.secret_hash.hex(), TOKEN)
    responses: list[str] = []
    for method, path, body in (
        ("GET", f"/v1/keys/{created['id']}", None),
        ("GET", "/v1/keys", None),
        ("GET", f"/v1/keys?owner={created['owner']}", None),
        ("PATCH", f"/v1/keys/{created['id']}", {"name": "renamed"}),
        ("POST", f"/v1/keys/{created['id']}/revoke", None),
        ("GET", "/v1/openapi.json", None),
    ):
        response = await client.request(method, path, json=body, headers=AUTH)
        assert response.status == 200
        responses.append(await response.text())
        responses.append(str(response.headers))
    assert "secret_hash" not in "".join(responses)
    logs = [caplog.text, *(str(record.args) for record in caplog.records)]
    assert any(created["id"] in text for text in responses) and created["id"] in caplog.text
    for text in responses + logs:
        for secret_text in forbidden:
            assert secret_text not in text


@pytest.mark.parametrize("expect", ["x-unknown", "`}32fa-'&!#"])
async def test_an_expectation_other_than_100_continue_is_ignored_not_a_plain_text_417(
    client: TestClient, expect: str
) -> None:
    """aiohttp answers an unknown Expect with its own text/plain 417, before any middleware: an answer
    outside the API's JSON shape and its OpenAPI document (Schemathesis found it). RFC 9110 10.1.1 lets
    a server ignore an expectation it does not know."""
    headers = {**AUTH, "Expect": expect}
    created = await client.post("/v1/keys", json={"name": "n", "owner": "o"}, headers=headers)
    assert created.status == 201 and created.content_type == "application/json"
    listed = await client.get("/v1/keys", headers=headers)
    assert listed.status == 200 and "X-Request-Id" in listed.headers
    continued = await client.post("/v1/keys", json={"name": "n", "owner": "o"}, headers=AUTH, expect100=True)
    assert continued.status == 201  # 100-continue is still answered


async def test_no_route_answers_an_unknown_expectation_with_a_plain_text_417(client: TestClient) -> None:
    """Every route the admin app has, those added later included."""
    seen = 0
    for route in client.app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        path = path.replace("{id}", "0123456789abcdef").replace("{name}", "nobody")
        response = await client.request(
            route.method, path, headers={**AUTH, "Expect": "x-unknown"}, data=b"{}"
        )
        expected = "text/plain" if path == "/metrics" else "application/json"  # Prometheus' text format
        assert response.status != 417 and response.content_type == expected, (route.method, path)
        seen += 1
    assert seen >= 15


@pytest.mark.parametrize("charset", ["latin-1", "ISO-8859-1", "utf-16", "ascii"])
async def test_a_body_in_another_charset_is_415_naming_it(
    client: TestClient, counts: Callable, charset: str
) -> None:
    """Decoding ``charset=latin-1`` as UTF-8 would read another text than the client meant (issue 10)."""
    before = await counts()
    headers = {**AUTH, "Content-Type": f"application/json; charset={charset}"}
    response = await client.post(
        "/v1/keys", data='{"name": "café", "owner": "o"}'.encode("latin-1"), headers=headers
    )
    body = await assert_error(response, 415, "unsupported_media_type")
    assert repr(charset.lower()) in body["error"] and "UTF-8" in body["error"]
    assert await counts() == before
    for accepted in ("utf-8", "UTF-8", "utf8"):
        headers = {**AUTH, "Content-Type": f"application/json; charset={accepted}"}
        created = await client.post("/v1/keys", data=b'{"name": "n", "owner": "o"}', headers=headers)
        assert created.status == 201, accepted


async def test_a_name_given_twice_is_refused_not_last_wins(client: TestClient, counts: Callable) -> None:
    before = await counts()
    raw = b'{"name": "n", "owner": "o", "policy": {"routes": []}, "policy": {}}'
    response = await client.post("/v1/keys", data=raw, headers={**AUTH, "Content-Type": "application/json"})
    body = await assert_error(response, 400, "invalid_json")
    assert "'policy' appears twice" in body["error"]
    assert await counts() == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_body_that_is_not_json_typed_is_415(
    client: TestClient, counts: Callable, content_type: str | None
) -> None:
    before = await counts()
    headers = {**AUTH, "Content-Type": content_type} if content_type else AUTH
    response = await client.post("/v1/keys", data=b'{"name": "n", "owner": "o"}', headers=headers)
    await assert_error(response, 415, "unsupported_media_type")
    for accepted in ("application/json; charset=utf-8", "application/merge-patch+json"):
        created = await client.post(
            "/v1/keys", data=b'{"name": "n", "owner": "o"}', headers={**AUTH, "Content-Type": accepted}
        )
        assert created.status == 201, accepted
    assert await counts() == (before[0] + 2, before[1] + 2)


async def test_audit_lines_say_what_changed_and_which_token_did_it(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="signalgate.audit")
    created = await json_of(
        await client.post(
            "/v1/keys",
            json={"name": "ci", "owner": "team-a", "expires_at": "2030-01-01T00:00:00Z"},
            headers=AUTH,
        ),
        201,
    )
    key_id = created["id"]
    patch = {"expires_at": "2031-06-01T12:00:00Z", "policy": {"routes": [{"path": "/x"}]}}
    await json_of(await client.patch(f"/v1/keys/{key_id}", json=patch, headers=AUTH), 200)
    await json_of(await client.post(f"/v1/keys/{key_id}/revoke", headers=AUTH), 200)
    assert (await client.delete(f"/v1/keys/{key_id}", headers=AUTH)).status == 204
    lines = [r.getMessage() for r in caplog.records if r.name == "signalgate.audit"]
    by = f"by admin token {TOKEN_HASH.hex()[:8]}: "
    assert lines[0].startswith(f'key {key_id} created {by}name null -> "ci"; owner null -> "team-a";')
    assert lines[1] == (
        f"key {key_id} updated {by}"
        'expires_at "2030-01-01T00:00:00+00:00" -> "2031-06-01T12:00:00+00:00"; '
        'policy {} -> {"routes":[{"path":"/x"}]}'
    )
    assert lines[2] == f'key {key_id} revoked {by}status "active" -> "revoked"'
    assert lines[3].startswith(f'key {key_id} deleted {by}name "ci" -> null; owner "team-a" -> null;')
    assert len(lines) == 4
    secret = created["key"].rsplit("_", 1)[1]
    assert not any(secret in line or TOKEN in line for line in lines)


async def test_a_key_created_already_expired_is_422_unless_asked_for(client: TestClient) -> None:
    body = {"name": "n", "owner": "o", "expires_at": "2020-01-01T00:00:00Z"}
    response = await client.post("/v1/keys", json=body, headers=AUTH)
    await assert_error(response, 422, "validation_failed", "expires_at")
    created = await json_of(
        await client.post("/v1/keys", json={**body, "allow_expired": True}, headers=AUTH), 201
    )
    assert created["expires_at"] == "2020-01-01T00:00:00+00:00" and "allow_expired" not in created
