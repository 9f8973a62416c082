"""Shared fixtures: one real PostgreSQL per session, a fresh migrated database per test.

``SIGNALGATE_TEST_DATABASE_URL`` points the suite at an existing server (its user needs CREATEDB);
otherwise an embedded server runs in a temporary directory for the session. The schema is migrated
once into a template database; each test gets its own copy, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from aiohttp import web

from proxy import controlplane
from proxy.core import keys
from proxy.db.embedded import EmbeddedPostgres
from proxy.db.migrate import migrate
from proxy.db.store import Store
from tests import logscan
from tests.harness import ADMIN_TOKEN, Gate, MovableClock, gate, settings_for
from tests.pgtools import FAST_SETTINGS, create_database, drop_database, random_name, server_dir
from tests.upstream_app import make_upstream_app, run_app


@pytest.fixture(autouse=True)
def no_secret_in_logs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[logscan.Scan]:
    """Fail a test that left a key or an admin token in a log (``tests/logscan.py`` says what is read)."""
    scan = logscan.Scan()
    scan.secrets.add(ADMIN_TOKEN)
    generate, ensure_admin_token = keys.generate, controlplane.ensure_admin_token

    def generate_remembered(key_id: str | None = None) -> tuple[str, str, bytes]:
        made = generate(key_id)
        scan.secrets.add(made[1].rsplit("_", 1)[1])
        return made

    async def ensure_admin_token_remembered(store: Store, configured: str | None) -> tuple[bytes, str | None]:
        digest, token = await ensure_admin_token(store, configured)
        logscan.remember(configured or "")
        logscan.remember(token or "")
        return digest, token

    monkeypatch.setattr(keys, "generate", generate_remembered)
    monkeypatch.setattr(controlplane, "ensure_admin_token", ensure_admin_token_remembered)
    caplog.set_level(logging.DEBUG)
    logscan.scanning(scan)
    try:
        yield scan
    finally:
        logscan.scanning(None)
    records = [record for when in ("setup", "call", "teardown") for record in caplog.get_records(when)]
    leaks = scan.leaks([*logscan.formatted(records), *scan.outputs])
    if leaks:
        pytest.fail("a secret reached a log:\n" + "\n".join(leaks[:5]), pytrace=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN of the session's PostgreSQL server (its maintenance database)."""
    url = os.environ.get("SIGNALGATE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with server_dir() as base:
        server = EmbeddedPostgres(base / "data", settings=FAST_SETTINGS)
        server.start()
        try:
            yield server.dsn
        finally:
            server.stop()


async def _make_template(admin_dsn: str, name: str) -> None:
    dsn = await create_database(admin_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def migrated_template(pg_server: str) -> Iterator[str]:
    """Name of a database holding the migrated schema, copied by ``db_dsn``."""
    name = random_name("sg_template")
    asyncio.run(_make_template(pg_server, name))
    try:
        yield name
    finally:
        asyncio.run(drop_database(pg_server, name))


@pytest.fixture
async def db_dsn(pg_server: str, migrated_template: str) -> AsyncIterator[str]:
    """DSN of a fresh, migrated database for this test only."""
    name = random_name("t")
    dsn = await create_database(pg_server, name, template=migrated_template)
    try:
        yield dsn
    finally:
        await drop_database(pg_server, name)


@pytest.fixture
async def blank_dsn(pg_server: str) -> AsyncIterator[str]:
    """DSN of a fresh database with no schema at all (for migration tests)."""
    name = random_name("t")
    dsn = await create_database(pg_server, name)
    try:
        yield dsn
    finally:
        await drop_database(pg_server, name)


@pytest.fixture
async def store(db_dsn: str) -> AsyncIterator[Store]:
    opened = await Store.open(db_dsn)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def upstream_app() -> web.Application:
    """The upstream's app: its EVENTS queue says what reached it."""
    return make_upstream_app()


@pytest.fixture
async def upstream(upstream_app: web.Application) -> AsyncIterator[str]:
    """A real upstream app (tests/upstream_app.py) on a free loopback port."""
    async with run_app(upstream_app) as url:
        yield url


@pytest.fixture
def clock() -> MovableClock:
    """The proxy's clock: real time until the test moves it."""
    return MovableClock()


@pytest.fixture
async def proxy(db_dsn: str, upstream: str, clock: MovableClock) -> AsyncIterator[Gate]:
    """A whole signalgate (no GeoIP) in front of ``upstream``; modules may override it."""
    async with gate(settings_for(db_dsn, upstream, None), clock) as g:
        yield g
