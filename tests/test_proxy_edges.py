"""More of the proxy end to end: the decision log, TLS, streaming through the whole path, GeoIP reload,
upstream routes by prefix and Host."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import ssl
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import aiohttp
import pytest

from proxy.config.settings import Listen, RouteSetting
from tests.bounds import PROMPT
from tests.geodata import DEFAULT_TEST_NETWORKS, write_country_mmdb
from tests.harness import Gate, client_from, gate, settings_for
from tests.tlsutil import self_signed
from tests.upstream_app import (
    EVENTS,
    HeldRequests,
    make_upstream_app,
    pattern_chunks,
    pattern_sha256,
    run_app,
)

MiB = 1024 * 1024


async def test_each_decision_is_one_json_line_without_secrets(
    proxy: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    created = await proxy.create_key(policy={"routes": [{"methods": ["GET"], "path": "/ok"}]})
    caplog.set_level(logging.INFO, logger="signalgate.decision")
    async with client_from("127.0.2.9") as session:
        for method, path in (("GET", "/ok"), ("POST", "/ok")):
            async with session.request(
                method, proxy.url + path, headers={"X-API-Key": created["key"]}
            ) as resp:
                await resp.read()
        async with session.get(proxy.url + "/ok", headers={"X-API-Key": "sg_bogus"}) as resp:
            await resp.read()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "signalgate.decision"]
    assert [(x["decision"], x["reason"], x["status"]) for x in lines] == [
        ("allow", "allowed", 200),
        ("deny", "route_denied", 403),
        ("deny", "key_invalid", 401),
    ]
    # The owner whenever the key is known: allowed and refused by its policy alike; not for a bogus key.
    assert [x["owner"] for x in lines] == [created["owner"], created["owner"], None]
    for line in lines:  # RFC 3339 in UTC, milliseconds: a machine can sort and ship them
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line
        at = datetime.fromisoformat(line["time"])
        assert at.tzinfo == UTC and abs((datetime.now(UTC) - at).total_seconds()) < 60
    first = lines[0]
    assert first["key_id"] == created["id"] and first["client_ip"] == "127.0.2.9"
    assert first["method"] == "GET" and first["path"] == "/ok" and first["latency_ms"] >= 0
    assert {"request_id", "country", "owner"} <= first.keys()
    secret = created["key"].rsplit("_", 1)[1]
    assert all(secret not in r.getMessage() for r in caplog.records)


async def test_tls_termination(db_dsn: str, upstream: str, tmp_path) -> None:
    cert, key = self_signed(tmp_path)
    async with gate(settings_for(db_dsn, upstream, None, tls_cert=cert, tls_key=key)) as g:
        assert g.url.startswith("https://")
        created = await g.create_key()
        context = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(g.url + "/x", headers={"X-API-Key": created["key"]}, ssl=context) as resp:
                echo = await resp.json()
                assert resp.status == 200
            seen = {n.lower(): v for n, v in echo["headers"]}
            assert seen["x-forwarded-proto"] == "https"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(g.url + "/x", ssl=ssl.create_default_context())  # untrusted: refused


BIG = 100 * MiB


async def _body(n: int) -> AsyncIterator[bytes]:
    for chunk in pattern_chunks(n):
        yield chunk


async def test_large_bodies_stream_through_the_whole_proxy(proxy: Gate) -> None:
    created = await proxy.create_key()
    headers = {"X-API-Key": created["key"]}
    async with aiohttp.ClientSession() as session:
        tracemalloc.start()
        try:
            async with session.post(proxy.url + "/up", data=_body(BIG), headers=headers) as resp:  # chunked
                echo = await resp.json()
            up_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            digest, length = hashlib.sha256(), 0
            async with session.get(proxy.url + f"/bytes/{BIG}", headers=headers) as resp:
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    digest.update(chunk)
                    length += len(chunk)
            down_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert (echo["length"], echo["sha256"]) == (BIG, pattern_sha256(BIG))
    assert (length, digest.hexdigest()) == (BIG, pattern_sha256(BIG))
    # client, proxy and upstream share this process: all of them together stay far below the body size
    assert up_peak < 16 * MiB and down_peak < 16 * MiB, (up_peak / MiB, down_peak / MiB)


async def test_geoip_database_replaced_is_picked_up_without_dropping_requests(
    db_dsn: str, upstream: str, tmp_path
) -> None:
    path = write_country_mmdb(tmp_path / "geo.mmdb", DEFAULT_TEST_NETWORKS)
    async with gate(settings_for(db_dsn, upstream, path)) as g:
        created = await g.create_key(policy={"regions": {"allow": ["DE"]}})

        async def status() -> int:
            async with (
                client_from("127.0.3.7") as session,
                session.get(g.url + "/x", headers={"X-API-Key": created["key"]}) as resp,
            ):
                await resp.read()
                return resp.status

        assert await status() == 200
        moved = dict(DEFAULT_TEST_NETWORKS, **{"127.0.3.0/24": "FR"})
        write_country_mmdb(tmp_path / "next.mmdb", moved)
        os.replace(tmp_path / "next.mmdb", path)
        during = asyncio.gather(*(status() for _ in range(20)))
        assert g.runtime.geoip is not None and g.runtime.geoip.reload_if_changed()  # what SIGHUP does
        assert set(await during) <= {200, 403}  # every request answered, none dropped
        assert await status() == 403


async def test_routes_pick_upstreams_by_prefix_and_host(db_dsn: str) -> None:
    async with run_app(make_upstream_app()) as default_up, run_app(make_upstream_app()) as billing_up:
        routes = (
            RouteSetting("/billing", billing_up + "/base", None, False),
            RouteSetting("/v1", billing_up + "/partner", "partners.example", True),
        )
        settings = replace(settings_for(db_dsn, default_up, None), routes=routes)
        async with gate(settings) as g:
            created = await g.create_key()
            async with aiohttp.ClientSession() as session:

                async def echo(path: str, host: str | None = None) -> dict:
                    hdrs = {"X-API-Key": created["key"]} | ({"Host": host} if host else {})
                    async with session.get(g.url + path, headers=hdrs) as resp:
                        return await resp.json()

                billing = await echo("/billing/invoices?x=1")
                assert billing["raw_path"] == "/base/billing/invoices?x=1"
                assert (
                    dict((n.lower(), v) for n, v in billing["headers"])["host"] == billing_up.split("//")[1]
                )
                partner = await echo("/v1/things", host="partners.example")
                assert partner["raw_path"] == "/partner/v1/things"
                assert dict((n.lower(), v) for n, v in partner["headers"])["host"] == "partners.example"
                assert (await echo("/v1/things"))["raw_path"] == "/v1/things"  # other hosts: the default
                assert (await echo("/billingx"))["raw_path"] == "/billingx"  # prefixes end at a segment


async def test_upstream_max_connections_bounds_what_a_worker_opens(db_dsn: str) -> None:
    upstream = HeldRequests()
    async with (
        run_app(upstream.app) as url,
        gate(settings_for(db_dsn, url, None, upstream_max_connections=1)) as g,
        client_from("127.0.2.9") as session,
    ):
        key = (await g.create_key())["key"]

        async def fetch() -> str:
            async with session.get(g.url + "/held", headers={"X-API-Key": key}) as resp:
                return await resp.text()

        requests = [asyncio.create_task(fetch()) for _ in range(3)]
        for _ in range(3):
            await upstream.release_one()
        assert await asyncio.gather(*requests) == ["done"] * 3
    assert upstream.peak == 1  # one upstream connection: the requests went one at a time


async def test_a_request_body_that_turns_malformed_midway_is_400_request_invalid(db_dsn: str) -> None:
    app = make_upstream_app()
    async with run_app(app) as url, gate(settings_for(db_dsn, url, None)) as g:
        created = await g.create_key()
        host, port = g.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-API-Key: "
            + created["key"].encode()
            + b"\r\n\r\n5\r\nhello\r\n"
        )
        while (await asyncio.wait_for(app[EVENTS].get(), PROMPT))[0] != "echo-start":
            pass  # the upload has reached the upstream
        writer.write(b"not-a-chunk-size\r\n")
        answer = await asyncio.wait_for(reader.read(), PROMPT)  # answered, then closed
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"\r\nConnection: close" in head, head
        assert json.loads(body)["reason"] == "request_invalid"


@pytest.mark.parametrize(
    ("admin_host", "tls", "warned"),
    [("127.0.0.1", False, False), ("0.0.0.0", False, True), ("0.0.0.0", True, False)],
)
async def test_an_admin_api_others_can_reach_without_tls_is_warned_about(
    db_dsn: str,
    upstream: str,
    tmp_path,
    caplog: pytest.LogCaptureFixture,
    admin_host: str,
    tls: bool,
    warned: bool,
) -> None:
    caplog.set_level(logging.WARNING, logger="signalgate")
    cert, key = self_signed(tmp_path) if tls else (None, None)
    settings = settings_for(
        db_dsn, upstream, None, admin_listen=Listen(admin_host, 0), admin_tls_cert=cert, admin_tls_key=key
    )
    async with gate(settings):
        pass
    warnings = [r.getMessage() for r in caplog.records if "admin API listens on" in r.getMessage()]
    assert len(warnings) == int(warned), warnings
    if warned:
        assert "0.0.0.0:0" in warnings[0] and "plain HTTP" in warnings[0]
