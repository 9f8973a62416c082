"""The forwarder behind signalgate's own listener, with a minimal handler: what test_forward and
test_pool drive (fixtures ``forwarder`` and ``client``, and ``run_proxy``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from proxy.core.errors import RequestBodyInvalid, UpstreamTimeout, UpstreamUnavailable
from proxy.core.headers import upstream_headers
from proxy.core.upstreams import Upstream, UpstreamRoute, UpstreamTable
from proxy.http.forward import Forwarder
from proxy.http.listener import Listener, serve
from proxy.http.request import Request

NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


@dataclass
class Proxy:
    url: str
    outcomes: asyncio.Queue[Any]  # the status forward() returned, or the exception it raised


def make_upstream(url: str, *, preserve_host: bool = True) -> Upstream:
    upstream = UpstreamTable([UpstreamRoute("/", url, preserve_host=preserve_host)], None).pick("/", None)
    assert upstream is not None
    return upstream


class _ForwardingHandler:
    """A minimal proxy handler: strip and set headers, forward, answer 502/504 for our errors."""

    def __init__(self, forwarder: Forwarder, upstream: Upstream) -> None:
        self.forwarder = forwarder
        self.upstream = upstream
        self.outcomes: asyncio.Queue[Any] = asyncio.Queue()

    async def __call__(self, request: Request) -> None:
        headers = upstream_headers(
            request.headers.items(),
            peer=request.remote or "",
            peer_trusted=False,
            scheme="http",
            host=request.host,
            key_headers=frozenset({"x-api-key"}),
            identity={"X-Signalgate-Key-Id": "0123456789abcdef"},
        )
        if request.withheld_body:
            await request.send_continue()
        try:
            status = await self.forwarder.forward(request, self.upstream, request.raw_path, headers)
        except (UpstreamUnavailable, UpstreamTimeout, RequestBodyInvalid) as exc:
            self.outcomes.put_nowait(exc)
            status = {UpstreamTimeout: 504, UpstreamUnavailable: 502, RequestBodyInvalid: 400}[type(exc)]
            body = json.dumps({"error": type(exc).__name__}).encode()
            request.respond(status, "Upstream Error", [("Content-Type", "application/json")], body)
            return
        self.outcomes.put_nowait(status)

    def refuse(self, request: Request, error: Exception) -> None:
        request.respond(400, "Bad Request", [], str(error).encode())

    def fail(self, request: Request, error: BaseException) -> None:
        request.respond(500, "Internal Server Error", [], b"")


@contextlib.asynccontextmanager
async def run_proxy(forwarder: Forwarder, upstream: Upstream) -> AsyncIterator[Proxy]:
    """The forwarder behind signalgate's own listener on a free loopback port."""
    handler = _ForwardingHandler(forwarder, upstream)
    listener = Listener(handler)
    server = await serve(listener, "127.0.0.1", 0)
    try:
        yield Proxy(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", handler.outcomes)
    finally:
        server.close()
        await listener.shutdown(1.0)


@contextlib.asynccontextmanager
async def started_forwarder(**options: Any) -> AsyncIterator[Forwarder]:
    """A started Forwarder (5 s to connect, 10 s to read unless ``options`` say otherwise), closed after."""
    forwarder = Forwarder(**{"connect_timeout": 5.0, "read_timeout": 10.0, **options})
    await forwarder.start()
    try:
        yield forwarder
    finally:
        await forwarder.close()


@pytest.fixture
async def forwarder() -> AsyncIterator[Forwarder]:
    async with started_forwarder() as started:
        yield started


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=NO_AUTO_HEADERS) as session:
        yield session
