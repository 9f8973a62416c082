"""The proxy port's health path, as a load balancer probes it: no key, never forwarded, 200 only while
this worker can enforce, 503 naming what it lacks; and the admin API over TLS."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.admin.keysclient import run_keys
from proxy.http.health import REUSE_FOR, Readiness
from tests.bounds import PROMPT
from tests.clis import environ_for, run_cli
from tests.harness import Gate, gate, settings_for
from tests.tlsutil import self_signed
from tests.upstream_app import run_app

HEALTH = "/.signalgate/ready"


@pytest.fixture
def seen() -> list[str]:
    return []


@pytest.fixture
async def counting_upstream(seen: list[str]) -> AsyncIterator[str]:
    """An upstream that records every path it is asked for."""

    async def record(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text="upstream")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    async with run_app(app) as url:
        yield url


@pytest.fixture
async def proxy(db_dsn: str, counting_upstream: str) -> AsyncIterator[Gate]:
    async with gate(settings_for(db_dsn, counting_upstream, None)) as g:
        yield g


async def probe(url: str, method: str = "GET", path: str = HEALTH) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.request(method, url + path) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else None


async def test_ready_without_a_key_never_forwarded_and_not_a_decision(
    proxy: Gate, seen: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="signalgate.decision")
    assert await probe(proxy.url) == (200, {"status": "ready"})
    assert await probe(proxy.url, "HEAD") == (200, None)
    assert await probe(proxy.url, path=HEALTH + "?from=lb") == (200, {"status": "ready"})
    assert await probe(proxy.url, path="/.signalgate/./x/../ready") == (
        200,
        {"status": "ready"},
    )  # normalised
    status, body = await probe(proxy.url, "POST")
    assert (status, body["reason"]) == (405, "method_not_allowed")
    assert seen == []  # the upstream never saw a probe
    assert not [r for r in caplog.records if r.name == "signalgate.decision"]
    # Any other path still needs a key.
    status, body = await probe(proxy.url, path="/.signalgate/other")
    assert (status, body["reason"]) == (401, "key_missing")


async def test_not_ready_while_the_change_feed_is_down_ready_again_after(proxy: Gate) -> None:
    feed = proxy.runtime.feed
    await feed.stop()
    assert await probe(proxy.url) == (
        503,
        {"status": "not_ready", "checks": {"change_feed": False, "database": True, "upstream": True}},
    )
    await feed.start()
    await feed.wait_connected(PROMPT)
    assert await probe(proxy.url) == (200, {"status": "ready"})


async def test_not_ready_when_the_database_does_not_answer(proxy: Gate) -> None:
    assert proxy.runtime.proxy_store is not None
    await proxy.runtime.proxy_store.close()  # the data plane's pool refuses every query from now on
    assert await probe(proxy.url) == (
        503,
        {"status": "not_ready", "checks": {"change_feed": True, "database": False, "upstream": True}},
    )


async def test_the_health_path_can_be_moved_or_turned_off(db_dsn: str, counting_upstream: str) -> None:
    async with gate(settings_for(db_dsn, counting_upstream, None, health_path="/healthz")) as moved:
        assert await probe(moved.url, path="/healthz") == (200, {"status": "ready"})
        assert (await probe(moved.url))[0] == 401  # the default path is an ordinary path again
    async with gate(settings_for(db_dsn, counting_upstream, None, health_path=None)) as off:
        assert (await probe(off.url))[0] == 401


async def test_a_database_check_runs_once_for_many_probes() -> None:
    """Probes are unauthenticated: a flood of them must not become a flood of database round trips."""
    calls = 0
    release = asyncio.Event()
    now = [100.0]

    async def database() -> bool:
        nonlocal calls
        calls += 1
        await release.wait()
        return True

    readiness = Readiness({"database": database, "cheap": lambda: True}, clock=lambda: now[0])
    probes = [asyncio.ensure_future(readiness.results()) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*probes) == [{"database": True, "cheap": True}] * 50
    assert calls == 1
    now[0] += REUSE_FOR / 2
    await readiness.results()
    assert calls == 1  # reused
    now[0] += REUSE_FOR
    await readiness.results()
    assert calls == 2  # too old: asked again


async def test_the_admin_api_over_tls(db_dsn: str, counting_upstream: str, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = settings_for(db_dsn, counting_upstream, None, admin_tls_cert=cert, admin_tls_key=key)
    async with gate(settings) as g:
        assert g.runtime.admin_url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(g.runtime.admin_url + "/readyz", ssl=context) as resp:
                assert resp.status == 200
            plain = g.runtime.admin_url.replace("https://", "http://")
            with pytest.raises(aiohttp.ClientError):
                await session.get(plain + "/readyz")  # no plain HTTP next to it
        # The CLI trusts the private CA through SIGNALGATE_ADMIN_CA.
        environ = environ_for(g.runtime.admin_url)
        listed = await run_cli(run_keys, ["list"], {**environ, "SIGNALGATE_ADMIN_CA": str(cert)})
        assert (listed.code, listed.out) == (0, "No keys.\n"), listed
        untrusted = await run_cli(run_keys, ["list"], environ)
        assert untrusted.code == 1 and "certificate" in untrusted.err.lower(), untrusted
