"""Hostile client input through the whole proxy: what reaches the upstream, what the log keeps.

Raw requests on real loopback sockets, so the bytes are exactly what a client could send; the upstream
is the test app, whose echo answer lists the headers it received.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp import web

from tests.bounds import PROMPT
from tests.harness import Gate
from tests.upstream_app import EVENTS


async def exchange(proxy: Gate, raw: bytes) -> tuple[bytes, bytes]:
    """Send ``raw`` on a new connection (it must ask to close); the answer's head and body."""
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        answer = await asyncio.wait_for(reader.read(), PROMPT)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def request(key: str, *lines: str, method: str = "GET", path: str = "/echo") -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: api.example", "Connection: close", f"X-API-Key: {key}"]
    head += lines
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def received(body: bytes) -> dict[str, list[str]]:
    """The echo's headers, by lower-case name."""
    seen: dict[str, list[str]] = {}
    for name, value in json.loads(body)["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    return seen


async def test_a_key_also_sent_as_bearer_never_reaches_the_upstream(proxy: Gate) -> None:
    key = (await proxy.create_key())["key"]
    head, body = await exchange(proxy, request(key, f"Authorization: Bearer {key}"))
    assert head.startswith(b"HTTP/1.1 200 ")
    assert key.encode() not in body
    assert "authorization" not in received(body)
    head, body = await exchange(proxy, request(key, "Authorization: Bearer upstream-token"))
    assert received(body)["authorization"] == ["Bearer upstream-token"]  # the upstream's own token


async def test_client_claims_of_address_host_or_url_are_dropped(proxy: Gate) -> None:
    key = (await proxy.create_key())["key"]
    claims = [
        "Forwarded: for=6.6.6.6;host=admin.internal;proto=https",
        "X-Real-IP: 6.6.6.6",
        "X-Original-URL: /admin",
        "X-Rewrite-URL: /admin",
        "X-Forwarded-Port: 8443",
        "X-Forwarded-Prefix: /admin",
        "X_Forwarded_For: 6.6.6.6",
        "X_Signalgate_Owner: root",
        "X-Kept: yes",
    ]
    head, body = await exchange(proxy, request(key, *claims))
    assert head.startswith(b"HTTP/1.1 200 ")
    seen = received(body)
    for claim in claims[:-1]:
        assert claim.split(":")[0].lower() not in seen, claim
    assert seen["x-forwarded-for"] == ["127.0.0.1"] and seen["x-kept"] == ["yes"]


async def test_connection_cannot_name_host_away(proxy: Gate) -> None:
    key = (await proxy.create_key())["key"]
    head, body = await exchange(proxy, request(key, "Connection: host, content-length, x-hop", "X-Hop: 1"))
    assert head.startswith(b"HTTP/1.1 200 ")
    seen = received(body)
    assert seen["host"] == ["api.example"] and "x-hop" not in seen


async def test_a_header_value_that_is_not_utf8_is_refused(proxy: Gate, upstream_app: web.Application) -> None:
    key = (await proxy.create_key())["key"]
    raw = request(key).replace(b"Host: api.example", b"Host: api\xff.example")
    head, body = await exchange(proxy, raw)
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert json.loads(body)["reason"] == "request_invalid"
    assert upstream_app[EVENTS].empty()  # nothing reached the upstream


async def test_connect_is_refused_before_anything_else(proxy: Gate, upstream_app: web.Application) -> None:
    key = (await proxy.create_key())["key"]
    for target in ("/echo", "api.example:443"):
        head, body = await exchange(proxy, request(key, method="CONNECT", path=target))
        assert head.startswith(b"HTTP/1.1 501 "), head
        assert json.loads(body)["reason"] == "method_unsupported"
    assert upstream_app[EVENTS].empty()  # nothing reached the upstream


@pytest.mark.parametrize(
    "line",
    [
        "X-API-Key : {key}",  # a space before the colon
        "X-Other: a\x01{key}",  # a control character
    ],
)
async def test_a_malformed_head_is_logged_without_its_bytes(
    proxy: Gate, caplog: pytest.LogCaptureFixture, line: str
) -> None:
    key = (await proxy.create_key())["key"]
    caplog.set_level(logging.DEBUG)
    raw = f"GET /echo HTTP/1.1\r\nHost: x\r\n{line.format(key=key)}\r\n\r\n".encode()
    head, body = await exchange(proxy, raw)
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert json.loads(body)["reason"] == "request_invalid"
    secret = key.rsplit("_", 1)[1]
    assert all(secret not in record.getMessage() for record in caplog.records)
    assert secret.encode() not in body


async def test_a_refused_path_is_logged_without_its_query(
    proxy: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    key = (await proxy.create_key())["key"]
    caplog.set_level(logging.INFO, logger="signalgate.decision")
    head, _ = await exchange(proxy, request(key, path="/a/..;/b?token=s3cr3t"))
    assert head.startswith(b"HTTP/1.1 400 ")
    lines: list[dict[str, Any]] = [
        json.loads(r.getMessage()) for r in caplog.records if r.name == "signalgate.decision"
    ]
    assert [line["reason"] for line in lines] == ["path_invalid"]
    assert lines[0]["path"] == "/a/..;/b"
    assert all("s3cr3t" not in r.getMessage() for r in caplog.records)
