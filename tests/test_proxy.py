"""End to end: keys from PostgreSQL, policy from signals, forwarding to a real upstream, on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.geodata import DEFAULT_TEST_NETWORKS, write_country_mmdb
from tests.harness import Gate, client_from, gate, raw_exchange, settings_for
from tests.upstream_app import make_upstream_app, run_app

POLICY = {
    "networks": {"allow": ["127.0.2.0/24", "127.0.4.0/24", "2001:db8::/32"], "deny": ["127.0.2.66/32"]},
    "regions": {"allow": ["US", "DE", "KP"], "deny": ["KP"]},
    "routes": [{"methods": ["GET", "POST"], "path": "/metrics/**"}, {"path": "/echo/*"}],
}


@pytest.fixture(scope="session")
def geoip_db(tmp_path_factory):
    return write_country_mmdb(tmp_path_factory.mktemp("geo") / "country.mmdb", DEFAULT_TEST_NETWORKS)


@pytest.fixture
async def geo_proxy(db_dsn, upstream, geoip_db) -> AsyncIterator[Gate]:
    """The whole proxy in-process, with a GeoIP database (the conftest ``proxy`` has none)."""
    async with gate(settings_for(db_dsn, upstream, geoip_db)) as g:
        yield g


async def get(
    g: Gate,
    path: str,
    key: str | None = None,
    source: str = "127.0.2.5",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
):
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["X-API-Key"] = key
    async with (
        client_from(source) as session,
        session.request(method, g.url + path, headers=hdrs, data=data) as resp,
    ):
        body = await resp.read()
        return resp.status, resp.headers, body


async def test_allowed_request_is_forwarded_with_identity_and_without_the_key(geo_proxy: Gate) -> None:
    created = await geo_proxy.create_key(owner="team-metrics", policy=POLICY)
    status, headers, body = await get(
        geo_proxy,
        "/metrics/cpu?x=1",
        created["key"],
        headers={
            "X-Signalgate-Owner": "spoofed",
            "X-Signalgate-Key-Id": "spoofed",
            "X-Forwarded-For": "6.6.6.6",
        },
    )
    assert status == 200, body
    echo = json.loads(body)
    seen = {name.lower(): value for name, value in echo["headers"]}
    assert echo["raw_path"] == "/metrics/cpu?x=1"
    assert seen["x-signalgate-key-id"] == created["id"]
    assert seen["x-signalgate-owner"] == "team-metrics"
    assert "x-api-key" not in seen
    assert created["key"] not in body.decode()
    assert seen["x-forwarded-for"] == "127.0.2.5"  # untrusted peer: replaced, never appended
    assert headers["X-Request-Id"] and seen["x-request-id"] == headers["X-Request-Id"]


async def test_bearer_key_works_and_is_stripped(geo_proxy: Gate) -> None:
    created = await geo_proxy.create_key(policy=POLICY)
    status, _, body = await get(geo_proxy, "/echo/x", headers={"Authorization": f"Bearer {created['key']}"})
    assert status == 200
    assert "authorization" not in body.decode().lower()


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (None, "key_missing"),
        ("garbage", "key_invalid"),
        ("sg_0123456789abcdef_" + "a" * 48, "key_invalid"),
    ],
)
async def test_bad_keys_get_401_with_challenge(geo_proxy: Gate, key: str | None, reason: str) -> None:
    status, headers, body = await get(geo_proxy, "/metrics/x", key)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    doc = json.loads(body)
    assert doc["reason"] == reason and doc["request_id"] == headers["X-Request-Id"] and doc["error"]


async def test_right_id_wrong_secret_is_refused(geo_proxy: Gate) -> None:
    created = await geo_proxy.create_key(policy=POLICY)
    wrong = created["key"][:-4] + ("0000" if not created["key"].endswith("0000") else "1111")
    status, _, body = await get(geo_proxy, "/metrics/x", wrong)
    assert (status, b"key_invalid" in body) == (401, True)


async def test_key_states(geo_proxy: Gate) -> None:
    now = datetime.now(UTC)
    expired = await geo_proxy.create_key(
        expires_at=(now - timedelta(seconds=1)).isoformat(), allow_expired=True
    )
    future = await geo_proxy.create_key(not_before=(now + timedelta(hours=1)).isoformat())
    suspended = await geo_proxy.create_key()
    assert (await geo_proxy.admin_call("PATCH", f"/v1/keys/{suspended['id']}", json={"status": "suspended"}))[
        0
    ] == 200
    for created, reason in (
        (expired, "key_expired"),
        (future, "key_not_yet_valid"),
        (suspended, "key_suspended"),
    ):
        status, _, body = await get(geo_proxy, "/x", created["key"])
        assert status == 401 and reason.encode() in body, (reason, body)


@pytest.mark.parametrize(
    ("source", "path", "method", "status", "reason"),
    [
        ("127.0.2.5", "/metrics/a/b", "GET", 200, None),  # US
        ("127.0.3.7", "/metrics/a", "GET", 403, "network_denied"),  # DE, but not in an allowed network
        ("127.0.2.66", "/metrics/a", "GET", 403, "network_denied"),  # deny beats allow
        ("127.0.4.9", "/metrics/a", "GET", 403, "region_denied"),  # KP: deny beats allow
        ("127.0.2.5", "/metrics/a", "DELETE", 403, "route_denied"),
        ("127.0.2.5", "/admin", "GET", 403, "route_denied"),
        ("127.0.2.5", "/metrics/../admin", "GET", 403, "route_denied"),
        ("127.0.2.5", "/metrics/%2e%2e/admin", "GET", 403, "route_denied"),
        ("127.0.2.5", "/metrics/..%2fadmin", "GET", 400, "path_invalid"),
        ("127.0.2.5", "/metrics/..;/admin", "GET", 400, "path_invalid"),
    ],
)
async def test_policy_signals(
    geo_proxy: Gate, source: str, path: str, method: str, status: int, reason: str | None
) -> None:
    created = await geo_proxy.create_key(policy=POLICY)
    got, _, body = await get(geo_proxy, path, created["key"], source=source, method=method)
    assert got == status, body
    if reason:
        assert reason.encode() in body


async def test_dot_segments_never_reach_the_upstream_in_another_form(geo_proxy: Gate) -> None:
    created = await geo_proxy.create_key(policy={"routes": [{"path": "/**"}]})
    status, _, body = await get(geo_proxy, "/metrics/./a/../b//c?q=../x", created["key"])
    assert status == 200 and json.loads(body)["raw_path"] == "/metrics/b/c?q=../x"


async def test_trusted_proxy_forwarded_for_decides_ip_and_country(geo_proxy: Gate) -> None:
    created = await geo_proxy.create_key(
        policy={"networks": {"allow": ["2001:db8::/32"]}, "regions": {"allow": ["DE"]}}
    )
    ok = await get(
        geo_proxy, "/x", created["key"], source="127.0.9.1", headers={"X-Forwarded-For": "2001:db8:1::5"}
    )
    assert ok[0] == 200, ok[2]
    seen = {n.lower(): v for n, v in json.loads(ok[2])["headers"]}
    assert seen["x-forwarded-for"] == "2001:db8:1::5, 127.0.9.1"  # appended to a trusted chain
    us = await get(
        geo_proxy, "/x", created["key"], source="127.0.9.1", headers={"X-Forwarded-For": "2001:db8:2::5"}
    )
    assert us[0] == 403 and b"region_denied" in us[2]
    spoofed = await get(
        geo_proxy, "/x", created["key"], source="127.0.2.5", headers={"X-Forwarded-For": "2001:db8:1::5"}
    )
    assert spoofed[0] == 403 and b"network_denied" in spoofed[2]


async def test_a_thousand_forwarded_for_entries_from_a_trusted_proxy(geo_proxy: Gate) -> None:
    created = await geo_proxy.create_key(policy={"networks": {"allow": ["9.9.9.0/24"]}})
    chain = ",".join(["1.1.1.1"] * 999 + ["9.9.9.9"])
    status, _, body = await get(
        geo_proxy, "/x", created["key"], source="127.0.9.1", headers={"X-Forwarded-For": chain}
    )
    assert status == 200, body
    chain = ",".join(["9.9.9.9"] * 999 + ["1.1.1.1"])
    status, _, body = await get(
        geo_proxy, "/x", created["key"], source="127.0.9.1", headers={"X-Forwarded-For": chain}
    )
    assert status == 403 and b"network_denied" in body
    chain = ",".join(["127.0.9.2"] * 700)  # nothing but trusted hops, too many: refused, never guessed
    status, _, body = await get(
        geo_proxy, "/x", created["key"], source="127.0.9.1", headers={"X-Forwarded-For": chain}
    )
    assert status == 400 and b"request_invalid" in body


async def test_revocation_and_deletion_bite_on_the_very_next_request(geo_proxy: Gate) -> None:
    """The admin answer comes once this instance enforces the change: no window after it."""
    for action, reason in (
        ("revoke", b"key_revoked"),
        ("delete", b"key_invalid"),
        ("suspend", b"key_suspended"),
    ):
        created = await geo_proxy.create_key(policy=POLICY)
        assert (await get(geo_proxy, "/metrics/a", created["key"]))[0] == 200  # now cached
        path = f"/v1/keys/{created['id']}"
        async with (
            geo_proxy.admin.post(f"{geo_proxy.runtime.admin_url}{path}/revoke")
            if action == "revoke"
            else geo_proxy.admin.delete(f"{geo_proxy.runtime.admin_url}{path}")
            if action == "delete"
            else geo_proxy.admin.patch(f"{geo_proxy.runtime.admin_url}{path}", json={"status": "suspended"})
        ) as resp:
            assert resp.status in (200, 204)
            assert resp.headers["X-Signalgate-Applied"] == "all-workers"
        status, _, body = await get(geo_proxy, "/metrics/a", created["key"])
        assert status == 401 and reason in body, (action, body)
        if action == "revoke":  # again: nothing changes, and the answer still says it is enforced
            async with geo_proxy.admin.post(f"{geo_proxy.runtime.admin_url}{path}/revoke") as again:
                assert again.status == 200
                assert again.headers["X-Signalgate-Applied"] == "all-workers"


async def test_a_tightened_policy_bites_on_the_very_next_request(geo_proxy: Gate) -> None:
    created = await geo_proxy.create_key(policy=POLICY)
    assert (await get(geo_proxy, "/metrics/a", created["key"]))[0] == 200
    status, _ = await geo_proxy.admin_call(
        "PATCH", f"/v1/keys/{created['id']}", json={"policy": {"routes": []}}
    )
    assert status == 200
    status, _, body = await get(geo_proxy, "/metrics/a", created["key"])
    assert status == 403 and b"route_denied" in body


async def test_reasons_hidden_unless_exposed(db_dsn, upstream, geoip_db) -> None:
    async with gate(settings_for(db_dsn, upstream, geoip_db, expose_reasons=False)) as g:
        created = await g.create_key(policy={"routes": []})
        status, headers, body = await get(g, "/x", created["key"])
        doc = json.loads(body)
        assert status == 403 and doc["reason"] == "forbidden" and doc["request_id"] == headers["X-Request-Id"]
        assert "route" not in body.decode()
        status, _, body = await get(g, "/x", "garbage")
        assert status == 401 and json.loads(body)["reason"] == "unauthorized"


async def test_upstream_failures_map_to_502_and_504(db_dsn, geoip_db) -> None:
    async with run_app(make_upstream_app()) as live:
        pass  # now closed: connections to it are refused
    async with gate(settings_for(db_dsn, live, geoip_db)) as g:
        created = await g.create_key()
        status, headers, body = await get(g, "/x", created["key"])
        assert status == 502 and b"upstream_unavailable" in body and headers["X-Request-Id"]
    async with (
        run_app(make_upstream_app()) as slow_up,
        gate(settings_for(db_dsn, slow_up, geoip_db, read_timeout=0.3)) as g,
    ):
        created = await g.create_key()
        status, _, body = await get(g, "/slow", created["key"])
        assert status == 504 and b"upstream_timeout" in body


HOSTILE = [
    (b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 431),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nX-API-Key: " + b"k" * 10_000 + b"\r\n\r\n", 431),
    (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 400),
    (b"GET /a%zz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 400),
    (
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Forwarded-For: "
        + b", ".join([b"1.2.3.4"] * 1000)
        + b"\r\n\r\n",
        431,  # 9 KB: over the header size limit
    ),
    (  # 1,000 entries within the limit, from an untrusted peer: ignored, the key decides
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Forwarded-For: "
        + b",".join([b"1.2.3.4"] * 1000)
        + b"\r\n\r\n",
        401,
    ),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-API-Key: \xff\xfe\r\n\r\n", 401),
]


@pytest.mark.parametrize(("raw", "status"), HOSTILE)
async def test_hostile_input_gets_a_clear_4xx_and_the_proxy_keeps_serving(
    geo_proxy: Gate, raw: bytes, status: int
) -> None:
    created = await geo_proxy.create_key(policy=POLICY)
    answer = await raw_exchange(geo_proxy.url, raw)
    head = answer.split(b"\r\n", 1)[0]
    assert head.startswith((b"HTTP/1.1 %d" % status, b"HTTP/1.0 %d" % status)), answer[:300]
    assert b"x-request-id" in answer.lower() and b'"reason"' in answer
    assert (await get(geo_proxy, "/metrics/a", created["key"]))[0] == 200


async def test_head_and_small_bodies_through_the_gate(geo_proxy: Gate) -> None:
    """HEAD and a small body take the relay (the callback data plane): a HEAD's answer keeps the
    length it stands for and has no body; a body reaches the upstream whole; the connection to the
    upstream stays usable for the next request."""
    created = await geo_proxy.create_key(policy={"routes": [{"path": "/bytes/*"}, {"path": "/echo/*"}]})
    status, headers, body = await get(geo_proxy, "/bytes/1000?cl=1", created["key"], method="HEAD")
    assert (status, headers["Content-Length"], body) == (200, "1000", b"")
    status, _, body = await get(geo_proxy, "/echo/up", created["key"], method="POST", data=b"payload")
    assert status == 200, body
    echo = json.loads(body)
    assert (echo["method"], echo["length"]) == ("POST", 7)
    status, _, body = await get(geo_proxy, "/bytes/1000?cl=1", created["key"])
    assert (status, len(body)) == (200, 1000)
