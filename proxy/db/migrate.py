"""Schema migrations: the numbered files in ``sql/``, each applied once, in order.

Why plain numbered SQL files: the schema is small and PostgreSQL-only, so the files are the truth
and a reviewer reads exactly what runs. Each file runs in its own transaction and is recorded in
``schema_migrations`` with a checksum; a file edited after it was applied is refused rather than
silently diverging from databases that ran the old text. A session advisory lock makes concurrent
migrators (several workers or hosts starting at once) take turns.

This module speaks asyncpg on a connection the caller owns; ``Store.migrate``
(``proxy.db.connections``) is the edge that takes the connection and translates connection errors.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import asyncpg

from proxy.core.errors import ValidationError

__all__ = ["SQL_DIR", "Migration", "discover", "migrate", "pending"]

log = logging.getLogger("signalgate.migrate")

# sql/ of the source tree, which the wheel carries as the package proxy.sql (pyproject.toml maps it): read
# as a resource, so an installed signalgate finds it wherever it is installed.
SQL_DIR: Traversable = files("proxy.sql")
# Any fixed bigint shared by every signalgate process; spells "sgmigrat" in ASCII.
LOCK_ID = 0x73_67_6D_69_67_72_61_74
_NAME = re.compile(r"^(\d+)_([A-Za-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # the file name, e.g. "001_init.sql"
    path: Traversable
    sql: str
    checksum: str  # SHA-256 hex of the file's bytes


def discover(sql_dir: Traversable = SQL_DIR) -> list[Migration]:
    """The migration files of ``sql_dir`` in version order; a stray ``.sql`` name is an error."""
    try:
        paths = sorted((path for path in sql_dir.iterdir() if path.name.endswith(".sql")), key=_name)
    except OSError as exc:
        raise ValidationError(str(sql_dir), f"cannot list migrations: {exc}") from exc
    found: dict[int, Migration] = {}
    for path in paths:
        match = _NAME.match(path.name)
        if match is None:
            raise ValidationError(str(path), "a migration must be named NNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise ValidationError(str(path), f"version {version} is also used by {found[version].name}")
        data = path.read_bytes()
        found[version] = Migration(
            version, path.name, path, data.decode("utf-8"), hashlib.sha256(data).hexdigest()
        )
    return [found[version] for version in sorted(found)]


def _name(path: Traversable) -> str:
    return path.name


async def _applied(conn: asyncpg.Connection) -> dict[int, tuple[str, str]]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    return {row["version"]: (row["name"], row["checksum"]) for row in rows}


def _check_unchanged(migration: Migration, applied: dict[int, tuple[str, str]]) -> None:
    if migration.version in applied and applied[migration.version][1] != migration.checksum:
        raise ValidationError(f"sql/{migration.name}", "changed after it was applied")


async def pending(conn: asyncpg.Connection, sql_dir: Traversable = SQL_DIR) -> list[str]:
    """Names of the migrations not applied yet to the database behind ``conn``."""
    applied = await _applied(conn)
    return [m.name for m in discover(sql_dir) if m.version not in applied]


async def migrate(conn: asyncpg.Connection, sql_dir: Traversable = SQL_DIR) -> list[str]:
    """Apply every pending migration, each in its own transaction; return the names applied.

    A file must not contain its own BEGIN/COMMIT: the transaction is what makes a failed file leave
    nothing behind.
    """
    migrations = discover(sql_dir)
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
    try:
        await conn.execute(_CREATE_TABLE)
        applied = await _applied(conn)
        for migration in migrations:
            _check_unchanged(migration, applied)
        done: list[str] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                if isinstance(exc, asyncpg.PostgresConnectionError):
                    raise
                raise ValidationError(f"sql/{migration.name}", f"failed to apply: {exc}") from exc
            log.info("applied migration %s", migration.name)
            done.append(migration.name)
        for version in sorted(set(applied) - {m.version for m in migrations}):
            log.warning("database has migration %s which is not in %s", applied[version][0], sql_dir)
        return done
    finally:
        # A lost connection already dropped its session lock; a failed unlock must not hide the cause.
        if not conn.is_closed():
            try:
                await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                log.warning("could not release the migration lock: %s", exc)
