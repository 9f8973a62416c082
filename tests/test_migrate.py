"""Migrations against a real PostgreSQL: applied once, in order, recorded, refused when edited."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from proxy.core.errors import ValidationError
from proxy.db.migrate import LOCK_ID, SQL_DIR, discover, migrate, pending
from proxy.db.store import Store
from tests.bounds import DATABASE
from tests.pgtools import eventually

SHIPPED = sorted(path.name for path in SQL_DIR.glob("*.sql"))  # the files in sql/, in version order
# The whole shipped schema into an empty database, then a run that finds nothing to do: under a second.
MIGRATIONS = 10.0


@pytest.fixture
async def conn(blank_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(blank_dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def sql_copy(tmp_path: Path) -> Path:
    """A private copy of sql/ that a test may edit."""
    target = tmp_path / "sql"
    shutil.copytree(SQL_DIR, target)
    return target


async def tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {row["tablename"] for row in rows}


async def test_applies_each_file_once_and_records_it(conn: asyncpg.Connection) -> None:
    assert SHIPPED[0] == "001_init.sql"
    assert await pending(conn) == SHIPPED

    assert await migrate(conn) == SHIPPED

    assert {"api_keys", "changes", "settings", "schema_migrations"} <= await tables(conn)
    row = await conn.fetchrow(
        "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version LIMIT 1"
    )
    assert (row["version"], row["name"]) == (1, "001_init.sql")
    assert row["checksum"] == hashlib.sha256((SQL_DIR / "001_init.sql").read_bytes()).hexdigest()
    assert row["applied_at"] is not None
    assert await pending(conn) == []
    assert await migrate(conn) == []
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(SHIPPED)


async def test_applies_new_files_in_numeric_order(conn: asyncpg.Connection, sql_copy: Path) -> None:
    await migrate(conn, sql_copy)
    # 100 sorts before 99 as text; numeric order must win, and 100 depends on 99
    (sql_copy / "100_second.sql").write_text("INSERT INTO ordering VALUES ('hundred');")
    (sql_copy / "99_first.sql").write_text("CREATE TABLE ordering (step text);")

    assert await pending(conn, sql_copy) == ["99_first.sql", "100_second.sql"]
    assert await migrate(conn, sql_copy) == ["99_first.sql", "100_second.sql"]
    assert await conn.fetchval("SELECT step FROM ordering") == "hundred"
    versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [row["version"] for row in versions][-2:] == [99, 100]


async def test_concurrent_migrations_take_turns(blank_dsn: str, conn: asyncpg.Connection) -> None:
    first, second = await asyncpg.connect(blank_dsn), await asyncpg.connect(blank_dsn)
    try:
        # Hold the migration lock so both migrators are provably waiting at the same time.
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
        runs = [asyncio.create_task(migrate(first)), asyncio.create_task(migrate(second))]

        async def both_waiting() -> bool:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            return bool(waiting == 2)

        await asyncio.wait_for(eventually(both_waiting), DATABASE)
        assert not any(run.done() for run in runs)
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
        results = await asyncio.wait_for(asyncio.gather(*runs), MIGRATIONS)
    finally:
        await first.close()
        await second.close()

    assert sorted(results) == [[], SHIPPED]
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(SHIPPED)


async def test_file_changed_after_it_was_applied_is_refused(conn: asyncpg.Connection, sql_copy: Path) -> None:
    await migrate(conn, sql_copy)
    init = sql_copy / "001_init.sql"
    init.write_text(init.read_text() + "\nCREATE TABLE sneaky (id int);\n")
    (sql_copy / "900_next.sql").write_text("CREATE TABLE next_one (id int);")

    with pytest.raises(ValidationError, match=r"001_init\.sql: changed after it was applied"):
        await migrate(conn, sql_copy)
    assert "sneaky" not in await tables(conn)
    assert "next_one" not in await tables(conn)  # nothing runs past a refused file


async def test_failing_file_leaves_nothing_and_names_itself(conn: asyncpg.Connection, sql_copy: Path) -> None:
    (sql_copy / "900_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT 1 / 0;")

    with pytest.raises(ValidationError, match=r"900_broken\.sql: failed to apply: division by zero"):
        await migrate(conn, sql_copy)

    assert "half_done" not in await tables(conn)
    names = await conn.fetch("SELECT name FROM schema_migrations")
    assert sorted(row["name"] for row in names) == SHIPPED
    assert await pending(conn, sql_copy) == ["900_broken.sql"]
    # the lock was released: another session can take it at once
    assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_ID) is True


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["init.sql"], "must be named NNN_name.sql"),
        (["002-dash.sql"], "must be named NNN_name.sql"),
        (["001_again.sql"], "version 1 is also used by"),
    ],
)
def test_badly_named_files_are_refused(sql_copy: Path, files: list[str], message: str) -> None:
    for name in files:
        (sql_copy / name).write_text("SELECT 1;")
    with pytest.raises(ValidationError, match=message):
        discover(sql_copy)


def test_discover_ignores_other_files(sql_copy: Path) -> None:
    (sql_copy / "README.md").write_text("notes")
    assert [m.name for m in discover(sql_copy)] == SHIPPED


async def test_store_migrates_and_reports_readiness(blank_dsn: str, sql_copy: Path) -> None:
    store = await Store.open(blank_dsn, sql_dir=sql_copy)
    try:
        assert await store.ready() is False
        assert await store.migrate() == SHIPPED
        assert await store.ready() is True
        (sql_copy / "900_more.sql").write_text("CREATE TABLE more (id int);")
        assert await store.ready() is False
        assert await store.migrate() == ["900_more.sql"]
        assert await store.ready() is True
    finally:
        await store.close()
