"""The decision writer against a PostgreSQL that turns slow: batches time out into the spool and come
back in order, once each, when it answers again (a real server behind a relay that can stop passing
bytes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from proxy.core.model import ALLOW, Decision, Reason
from proxy.core.trace import Trace
from proxy.db.recorder import DecisionWriter
from proxy.db.spool import Spool

T0 = datetime(2026, 12, 4, 12, tzinfo=UTC)


class Relay:
    """A TCP relay in front of PostgreSQL; ``hold()`` stops passing bytes (a frozen server),
    ``release()`` cuts the held connections and passes bytes again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.passing = asyncio.Event()
        self.passing.set()
        self.connections: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.dsn = ""  # the server's DSN through the relay, once started

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.connections |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    await self.passing.wait()  # held: the bytes wait here, the peer hears nothing
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def hold(self) -> None:
        self.passing.clear()

    def release(self) -> None:
        for connection in self.connections:
            connection.close()
        self.connections.clear()
        self.passing.set()

    async def close(self) -> None:
        self.release()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def relay(db_dsn: str) -> AsyncIterator[Relay]:
    parts = urlsplit(db_dsn)
    assert parts.hostname is not None and parts.port is not None
    relay = Relay(parts.hostname, parts.port)
    port = await relay.start()
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    relay.dsn = urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))
    try:
        yield relay
    finally:
        await relay.close()


def trace(n: int, allowed: bool = True) -> Trace:
    made = Trace(f"req{n:04d}", f"/p/{n}")
    made.at = T0 + timedelta(milliseconds=n)
    made.method, made.status = "GET", 200 if allowed else 403
    made.decision = ALLOW if allowed else Decision.deny(Reason.ROUTE_DENIED, "no")
    return made


async def test_a_slow_postgres_sends_batches_to_the_spool_and_they_land_once_in_order(
    relay: Relay, db_dsn: str, tmp_path: Path
) -> None:
    now = [0.0]  # the writer's clock, for its retry backoff
    writer = DecisionWriter(
        relay.dsn, Spool(tmp_path, "w", 1 << 20), interval=3600, timeout=2.0, clock=lambda: now[0]
    )
    await writer.start()
    try:
        for n in range(3):
            writer.add(trace(n))
        await writer.drain()
        assert (writer.written, writer.spooled) == (3, 0)

        relay.hold()  # PostgreSQL stops answering: the insert times out, the batch is spooled
        for n in range(3, 8):
            writer.add(trace(n, allowed=n % 2 == 0))
        await writer.drain()
        assert (writer.written, writer.spooled) == (3, 5) and writer.spool.waiting
        writer.add(trace(8))
        await writer.drain()  # within the backoff: PostgreSQL is not even tried, the row is spooled
        assert (writer.spooled, writer.replayed) == (6, 0)

        relay.release()
        now[0] += 60  # past the backoff
        writer.add(trace(9))  # behind the spooled rows: to the spool too, then all replayed
        await writer.drain()
        assert (writer.spooled, writer.replayed) == (7, 7) and not writer.spool.waiting
    finally:
        await writer.close()
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = await conn.fetch("SELECT request_id, decision FROM decisions ORDER BY at")
    finally:
        await conn.close()
    assert [r["request_id"] for r in rows] == [f"req{n:04d}" for n in range(10)]
    assert [r["decision"] for r in rows][3:8] == ["deny", "allow", "deny", "allow", "deny"]
