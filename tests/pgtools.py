"""Helpers for tests that use a real PostgreSQL: throwaway databases, DSNs, a NOTIFY listener."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg

from proxy.core import keys
from proxy.core.model import KeyRecord
from proxy.db.changelog import CHANNEL
from proxy.db.store import Store
from tests.bounds import DATABASE, EMBEDDED

__all__ = [
    "FAST_SETTINGS",
    "Listener",
    "counts",
    "create_database",
    "dbname_of",
    "drop_database",
    "dsn_for",
    "eventually",
    "leave_running",
    "lock_awaited",
    "new_key",
    "random_name",
    "server_dir",
]

# Durability is worthless for throwaway test databases and costs most of their time.
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # lets tests count the statements signalgate runs, on the server side (tests/test_fastpath.py)
    "shared_preload_libraries": "pg_stat_statements",
}


@contextmanager
def server_dir(prefix: str = "signalgate-test-pg-") -> Iterator[Path]:
    """A private directory for a test server's data, removed afterwards.

    Not under pytest's tmp_path: every pytest session re-secures ``/tmp/pytest-of-<user>`` to 0700,
    which would lock the server's own user (when we are root) out of a data directory inside it.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def leave_running(data_dir: Path) -> str:
    """Start an embedded server from a process that is then SIGKILLed, so that nothing uses the server
    any more and nobody stopped it; return its DSN."""
    code = (
        "import os, signal, sys; from proxy.db.embedded import EmbeddedPostgres as E\n"
        "print(E(sys.argv[1]).start(), flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(data_dir)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=EMBEDDED,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    return done.stdout.strip()


def random_name(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def dsn_for(dsn: str, dbname: str) -> str:
    """``dsn`` pointing at database ``dbname`` instead (user, host, port and options kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + quote(dbname)))


def dbname_of(dsn: str) -> str:
    return unquote(urlsplit(dsn).path.lstrip("/"))


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def create_database(admin_dsn: str, name: str, *, template: str = "template0") -> str:
    """Create database ``name`` as a copy of ``template``; return its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        # FILE_COPY (PostgreSQL 15+) copies a small template several times faster than WAL_LOG
        strategy = " STRATEGY FILE_COPY" if conn.get_server_version().major >= 15 else ""
        await conn.execute(f"CREATE DATABASE {_ident(name)} TEMPLATE {_ident(template)}{strategy}")
    finally:
        await conn.close()
    return dsn_for(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Re-run a database query until it is true, for states PostgreSQL cannot announce (lock waits).

    Wrap it in ``asyncio.wait_for``; each check is a round trip, so the loop yields between tries.
    """
    while not await check():
        pass


async def lock_awaited(conn: asyncpg.Connection) -> bool:
    """Whether a session of this database waits for an advisory lock (e.g. the migration lock)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
        )
    )


class Listener:
    """A separate connection LISTENing on the store's channel; payloads land in ``queue``."""

    def __init__(self, dsn: str, channel: str = CHANNEL) -> None:
        self.dsn = dsn
        self.channel = channel
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> Listener:
        self._conn = await asyncpg.connect(self.dsn)
        await self._conn.add_listener(self.channel, self._received)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._conn is not None:
            await self._conn.close()

    def _received(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self.queue.put_nowait(payload)

    async def next(self) -> str:
        return await asyncio.wait_for(self.queue.get(), DATABASE)

    async def marker(self, text: str = "marker") -> None:
        """Send a NOTIFY and wait for it: everything committed before it has been delivered by then."""
        assert self._conn is not None
        sender = await asyncpg.connect(self.dsn)
        try:
            await sender.execute("SELECT pg_notify($1, $2)", self.channel, text)
        finally:
            await sender.close()
        payload = await self.next()
        assert payload == text, f"unexpected notification before the marker: {payload!r}"


async def new_key(store: Store, key_id: str | None = None, **overrides: Any) -> KeyRecord:
    """A key written straight to the store (no admin API): defaults, overridden by ``overrides``."""
    key_id, _, digest = keys.generate(key_id)
    fields: dict[str, Any] = {
        "key_id": key_id,
        "name": "ci",
        "owner": "team-a",
        "secret_hash": digest,
        "policy": {},
        "labels": {},
        "not_before": None,
        "expires_at": None,
    }
    fields.update(overrides)
    return await store.create_key(**fields)


async def counts(dsn: str) -> tuple[int, int]:
    """(rows in api_keys, rows in changes): what a failed write must leave unchanged."""
    conn = await asyncpg.connect(dsn)
    try:
        return (
            await conn.fetchval("SELECT count(*) FROM api_keys"),
            await conn.fetchval("SELECT count(*) FROM changes"),
        )
    finally:
        await conn.close()
