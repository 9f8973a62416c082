"""Usage, rate and in-flight limits end to end, in one process: real proxy, PostgreSQL and upstream."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.bounds import PROMPT
from tests.harness import Gate
from tests.upstream_app import EVENTS

MiB = 1024 * 1024


async def next_event(app: web.Application, kind: str) -> tuple[str, str]:
    while True:
        event = await asyncio.wait_for(app[EVENTS].get(), PROMPT)
        if event[0] == kind:
            return event


async def call(
    session: aiohttp.ClientSession, proxy: Gate, key: str, path: str = "/x"
) -> tuple[int, Any, Any]:
    async with session.get(proxy.url + path, headers={"X-API-Key": key}) as resp:
        body = await resp.read()
        reason = None if resp.status < 400 or not body.startswith(b"{") else (await resp.json())["reason"]
        return resp.status, reason, resp.headers


# --- usage ---------------------------------------------------------------------------------------


async def test_fifty_concurrent_requests_on_a_ten_use_key_forward_exactly_ten(proxy: Gate) -> None:
    key = await proxy.create_key(policy={"usage": {"max_uses": 10}})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as session:
        answers = await asyncio.gather(*(call(session, proxy, key["key"]) for _ in range(50)))
    assert Counter((status, reason) for status, reason, _ in answers) == {
        (200, None): 10,
        (429, "uses_exhausted"): 40,
    }
    assert all("Retry-After" not in headers for status, _, headers in answers if status == 429)
    status, shown = await proxy.admin_call("GET", f"/v1/keys/{key['id']}")
    assert (status, shown["uses"], shown["uses_left"]) == (200, 10, 0)


async def test_a_one_shot_key_works_once_and_never_again(proxy: Gate) -> None:
    key = await proxy.create_key(policy={"usage": {"max_uses": 1}})
    async with aiohttp.ClientSession() as session:
        assert (await call(session, proxy, key["key"]))[:2] == (200, None)
        for _ in range(3):
            assert (await call(session, proxy, key["key"]))[:2] == (429, "uses_exhausted")


async def test_a_use_is_counted_when_forwarded_not_when_refused(proxy: Gate) -> None:
    policy = {"usage": {"max_uses": 3}, "routes": [{"path": "/ok/**"}, {"path": "/status/*"}]}
    key = await proxy.create_key(policy=policy)
    async with aiohttp.ClientSession() as session:
        assert (await call(session, proxy, key["key"], "/elsewhere"))[:2] == (403, "route_denied")
        assert (await call(session, proxy, key["key"], "/ok/1"))[0] == 200
        # The upstream failing does not give the use back: it may have acted on the request.
        assert (await call(session, proxy, key["key"], "/status/500"))[0] == 500
        assert (await proxy.admin_call("GET", f"/v1/keys/{key['id']}"))[1]["uses"] == 2
        assert (await call(session, proxy, key["key"], "/ok/2"))[0] == 200
        assert (await call(session, proxy, key["key"], "/ok/3"))[:2] == (429, "uses_exhausted")


async def test_keys_without_a_usage_limit_show_no_uses_left(proxy: Gate) -> None:
    key = await proxy.create_key()
    async with aiohttp.ClientSession() as session:
        assert (await call(session, proxy, key["key"]))[0] == 200
    status, shown = await proxy.admin_call("GET", f"/v1/keys/{key['id']}")
    assert (status, shown["uses"], shown["uses_left"]) == (200, 0, None)


# --- rate ----------------------------------------------------------------------------------------


async def test_over_the_rate_429_at_once_with_retry_after_and_ratelimit_fields(proxy: Gate) -> None:
    key = await proxy.create_key(policy={"rate": {"per_second": 0.5, "burst": 2}})
    async with aiohttp.ClientSession() as session:
        first = [await call(session, proxy, key["key"]) for _ in range(2)]
        status, reason, headers = await call(session, proxy, key["key"])
    assert [a[0] for a in first] == [200, 200]
    assert (status, reason) == (429, "rate_limited")
    wait = int(headers["Retry-After"])
    assert 1 <= wait <= 2  # room for one more comes back 2 s after the burst, rounded up
    assert headers["RateLimit-Policy"] == '"rate";q=2;w=4'
    assert headers["RateLimit"] == f'"rate";r=0;t={wait}'


# --- in flight -----------------------------------------------------------------------------------


async def download_and_vanish(proxy: Gate, key: str) -> None:
    """Start a large streamed download, take its first bytes, and reset the connection."""
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /bytes/{64 * MiB} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PROMPT)
    assert head.startswith(b"HTTP/1.1 200"), head
    await asyncio.wait_for(reader.readexactly(MiB), PROMPT)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, not a close
    writer.transport.abort()


async def test_no_in_flight_slot_leaks_after_a_hundred_clients_vanish_mid_answer(
    proxy: Gate, upstream_app: web.Application
) -> None:
    key = await proxy.create_key(policy={"max_in_flight": 1})
    for _ in range(100):
        # With one slot, each download is admitted only if the one before gave its slot back.
        await download_and_vanish(proxy, key["key"])
        # The proxy dropped the upstream side; it released the slot in the same step, before this
        # event can reach the upstream's loop.
        await next_event(upstream_app, "bytes-aborted")
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(call(session, proxy, key["key"], "/slow"))
        await next_event(upstream_app, "slow-start")
        status, reason, headers = await call(session, proxy, key["key"])  # the limit still holds
        assert (status, reason) == (429, "too_many_in_flight")
        assert headers["Retry-After"] == "1"
        assert headers["RateLimit-Policy"] == '"in-flight";q=1;qu="concurrent-requests"'
        held.cancel()


async def test_a_slot_is_given_back_when_the_upstream_fails_or_a_later_limit_refuses(
    proxy: Gate, upstream_app: web.Application
) -> None:
    key = await proxy.create_key(policy={"max_in_flight": 1, "usage": {"max_uses": 3}})
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):  # the upstream drops the answer midway
            await call(session, proxy, key["key"], "/drop")
        assert (await call(session, proxy, key["key"]))[0] == 200
        assert (await call(session, proxy, key["key"]))[0] == 200
        # Uses spent: refused by the usage limit after the slot was taken, and the slot comes back.
        for _ in range(3):
            assert (await call(session, proxy, key["key"]))[:2] == (429, "uses_exhausted")
