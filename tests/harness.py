"""A whole signalgate on loopback for end-to-end tests: real PostgreSQL, real upstream, real sockets."""

from __future__ import annotations

import asyncio
import ipaddress
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from proxy.app import Runtime, running
from proxy.config.settings import Listen, Settings
from tests.bounds import PROMPT

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
TRUSTED_PROXY_NET = "127.0.9.0/24"


def settings_for(db_dsn: str, upstream: str, geoip_db: Path | None, **overrides: Any) -> Settings:
    base = Settings(
        listen=Listen("127.0.0.1", 0),
        admin_listen=Listen("127.0.0.1", 0),
        upstream=upstream,
        database_url=db_dsn,
        geoip_db=geoip_db,
        admin_token=ADMIN_TOKEN,
        trusted_proxies=(ipaddress.ip_network(TRUSTED_PROXY_NET),),
        expose_reasons=True,
        read_timeout=5.0,
        connect_timeout=2.0,
    )
    return replace(base, **overrides)


@dataclass
class Gate:
    runtime: Runtime
    admin: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.runtime.proxy_url

    async def create_key(self, **body: Any) -> dict[str, Any]:
        body.setdefault("name", "test key")
        body.setdefault("owner", "team-test")
        async with self.admin.post(f"{self.runtime.admin_url}/v1/keys", json=body) as resp:
            document = await resp.json()
            assert resp.status == 201, document
            return document

    async def admin_call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.admin.request(method, f"{self.runtime.admin_url}{path}", **kwargs) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, body


class MovableClock:
    """The proxy's clock in a test: real time plus an offset the test moves, instead of waiting."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@asynccontextmanager
async def gate(settings: Settings, clock: Callable[[], datetime] | None = None) -> AsyncIterator[Gate]:
    """A whole signalgate; with the default data_dir, a private temporary one (its decision spool)."""
    with tempfile.TemporaryDirectory(prefix="signalgate-test-") as state:
        if settings.data_dir == Settings.data_dir:
            settings = replace(settings, data_dir=Path(state))
        async with _gate(settings, clock) as g:
            yield g


@asynccontextmanager
async def _gate(settings: Settings, clock: Callable[[], datetime] | None) -> AsyncIterator[Gate]:
    async with running(settings, **({"clock": clock} if clock else {})) as runtime:
        await runtime.feed.wait_connected(PROMPT)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as admin:
            yield Gate(runtime, admin)


def client_from(source: str, **kwargs: Any) -> aiohttp.ClientSession:
    """A client whose connections really come from ``source`` (any 127.x.y.z is loopback on Linux)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False, **kwargs)


async def raw_exchange(url: str, data: bytes, source: str = "127.0.2.5") -> bytes:
    """Send raw bytes to the proxy and read the whole answer (the server closes after an error)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), PROMPT)  # the server closes after an error
    finally:
        writer.close()
