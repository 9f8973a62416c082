"""The `signalgate` command as a user runs it: real processes, the README's demo promise, bad settings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from proxy.controlplane import ADMIN_TOKEN_SETTING, ensure_admin_token
from proxy.db.embedded import EmbeddedPostgres
from proxy.db.migrate import LOCK_ID
from proxy.db.store import Store
from tests import logscan
from tests.bounds import COMMAND, EMBEDDED, STARTUP, STOP
from tests.pgtools import eventually, leave_running, lock_awaited, server_dir
from tests.procs import URLS, Lines, Served, serve, serve_env

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "signalgate.toml"
# A process that does one thing and exits: curl on loopback, or serve refusing its settings before it
# opens anything; a second at most, 30 s rides out a loaded machine.
QUICK = 30.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALGATE_")}
    env.update(extra)
    return env


async def _start_demo(data: Path, **env: str) -> asyncio.subprocess.Process:
    """`signalgate demo` on its embedded defaults in ``data``, free ports, both streams piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        "demo",
        env=_env(
            SIGNALGATE_DATA_DIR=str(data / "state"),
            SIGNALGATE_LISTEN="127.0.0.1:0",
            SIGNALGATE_ADMIN_LISTEN="127.0.0.1:0",
            **env,
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@dataclass
class Demo:
    proc: asyncio.subprocess.Process
    out: Lines  # decision lines
    err: Lines  # everything else
    state: Path  # its data dir
    banner: str = ""  # stderr up to "signalgate: proxy on ..."
    proxy_url: str = ""
    admin_url: str = ""


@asynccontextmanager
async def running_demo(data: Path, **env: str) -> AsyncIterator[Demo]:
    """A `signalgate demo` that has printed its banner; stopped with SIGTERM (it must exit 0) unless the
    body stopped it already."""
    proc = await _start_demo(data, **env)
    assert proc.stdout is not None and proc.stderr is not None
    demo = Demo(proc, Lines("demo stdout"), Lines("demo stderr"), data / "state")
    pumps = [asyncio.create_task(demo.out.pump(proc.stdout)), asyncio.create_task(demo.err.pump(proc.stderr))]
    try:
        urls = (await demo.err.expect(URLS, within=STARTUP))[0]
        demo.banner = "\n".join(demo.err.lines)
        demo.proxy_url, demo.admin_url = urls[1], urls[2]
        yield demo
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), STOP)
        await asyncio.gather(*pumps)
    assert code == 0, demo.err.tail()


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    """`signalgate demo` on its embedded defaults (own PostgreSQL in a fresh data dir), free ports."""
    with server_dir("signalgate-demo-") as data:
        async with running_demo(data) as running:
            yield running


async def _curl(line: str) -> tuple[int, str]:
    argv = shlex.split(line)
    assert argv[0] == "curl"
    proc = await asyncio.create_subprocess_exec(
        *argv[1:2],
        "-s",
        "-w",
        "\n%{http_code}",
        *argv[2:],
        executable="curl",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), QUICK)
    body, _, code = out.decode().rpartition("\n")
    return int(code), body


async def test_demo_prints_a_key_and_curl_lines_that_allow_and_deny(demo: Demo) -> None:
    curls = [line.strip() for line in demo.banner.splitlines() if line.strip().startswith("curl ")]
    assert len(curls) == 6, demo.banner
    results = [await _curl(line) for line in curls]
    assert [code for code, _ in results] == [200, 403, 401, 200, 403, 401], results
    assert "hello from the demo upstream" in results[0][1]
    assert "route_denied" in results[1][1] and "key_missing" in results[2][1]
    # the attestation-protected route: a managed device's signed posture, bound to the key
    assert '"device": "demo-laptop"' in results[3][1]
    assert "device_attestation_claims" in results[4][1] and "device_attestation_missing" in results[5][1]
    # stdout carries the decision lines and nothing else: the banner, URLs and logs are on stderr
    lines = [json.loads(m.string) for m in await demo.out.expect(r"^\{", count=6)]
    assert [line["status"] for line in lines] == [200, 403, 401, 200, 403, 401]
    assert len(demo.out.lines) == 6


async def test_a_new_admin_token_goes_to_a_private_file_not_to_a_log(demo: Demo) -> None:
    """Standard error is not a terminal here (under systemd or docker it lands in a journal), so the
    token created for a fresh data dir is written to a file only this user can read."""
    token_file = demo.state / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert token.startswith("sga_")
    assert f"admin token created, written to {token_file.resolve()} (mode 0600" in demo.banner
    assert token not in demo.banner and not any(token in line for line in demo.out.lines)
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.get(f"{demo.admin_url}/v1/keys") as resp,
    ):
        assert resp.status == 200


async def test_bad_setting_stops_start_up_with_one_line() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        "serve",
        env=_env(SIGNALGATE_LISTEN="127.0.0.1:99999", SIGNALGATE_UPSTREAM="http://127.0.0.1:1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), QUICK)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "SIGNALGATE_LISTEN" in lines[0] and "99999" in lines[0], err


async def _run(command: str, env: dict[str, str], *args: str) -> tuple[int, str, list[str]]:
    """``signalgate COMMAND *ARGS`` to its end: exit status, stdout, stderr lines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        command,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), EMBEDDED)  # migrate may start PostgreSQL
    assert proc.returncode is not None
    logs = logscan.Stream("stderr")
    for line in err.decode().splitlines():
        logs.line(line)
    return proc.returncode, out.decode(), err.decode().strip().splitlines()


def _file(tmp_path: Path) -> str:
    (tmp_path / "file").write_text("not a directory")
    return str(tmp_path / "file")


@pytest.mark.parametrize(
    ("var", "value", "reason"),
    [
        ("SIGNALGATE_DATA_DIR", _file, "not a directory"),
        ("SIGNALGATE_DATA_DIR", lambda tmp: _file(tmp) + "/state", "/file is not a directory"),
        ("SIGNALGATE_DATA_DIR", lambda tmp: "~sg-no-such-user/state", "no such user"),
        ("SIGNALGATE_GEOIP_DB", lambda tmp: "~sg-no-such-user/c.mmdb", "no such user"),
        ("SIGNALGATE_LISTEN", lambda tmp: "127.0.0.1:8\N{SUPERSCRIPT TWO}", "port must be 1-65535"),
        ("SIGNALGATE_ADMIN_LISTEN", lambda tmp: "127.0.0.1:18080", "overlaps listen 0.0.0.0:18080"),
    ],
    ids=[
        "data-dir-is-a-file",
        "data-dir-beneath-a-file",
        "data-dir-unknown-user",
        "geoip-unknown-user",
        "superscript-port",
        "admin-overlaps-proxy",
    ],
)
async def test_bad_path_port_or_address_is_one_line_naming_the_setting(
    tmp_path: Path, var: str, value: Callable[[Path], str], reason: str
) -> None:
    env = _env(
        SIGNALGATE_UPSTREAM="http://127.0.0.1:1",
        SIGNALGATE_LISTEN="0.0.0.0:18080",
        SIGNALGATE_DATABASE_URL="postgresql://127.0.0.1:1/none",  # never reached: nothing starts
    )
    code, _, err = await _run("serve", {**env, var: value(tmp_path)})
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"signalgate: bad setting {var}=") and reason in err[0], err


async def _readyz(served: Served) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{served.admin_url}/readyz") as resp:
        return resp.status


async def test_the_embedded_database_stops_with_the_last_command_using_it() -> None:
    """`demo` starts the embedded PostgreSQL and `serve` uses it. Stopping the demo, then `migrate` and a
    second `serve` failing on a busy admin port, leave it running for `serve`, which stops it on exit."""
    with server_dir("signalgate-shared-") as base:
        env = serve_env(
            data_dir=str(base / "state"),
            upstream="http://127.0.0.1:1",
            listen="127.0.0.1:0",
            admin_listen="127.0.0.1:0",
            workers="2",
        )
        pg = EmbeddedPostgres(base / "state" / "pg")
        async with running_demo(base) as demo, serve(env) as served:  # the demo on the same data dir
            await served.err.expect(r"worker \d: change feed connected", count=2)
            demo.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(demo.proc.wait(), STOP) == 0
            assert pg.running  # the demo started it, but serve still uses it
            assert await _readyz(served) == 200

            code, out, err = await _run("migrate", env)
            assert (code, out) == (0, "nothing to apply\n"), err

            busy = served.admin_url.removeprefix("http://")
            code, out, err = await _run("serve", {**env, "SIGNALGATE_ADMIN_LISTEN": busy})
            assert code == 2 and not any("proxy on" in line for line in err), err
            assert err[-1] == (
                f"signalgate: bad setting SIGNALGATE_ADMIN_LISTEN='{busy}': "
                "cannot listen there: Address already in use"
            ), err
            assert not any("Traceback" in line for line in err), err

            assert pg.running
            assert await _readyz(served) == 200
            assert not [line for line in served.err.lines if "change feed lost its connection" in line]
        assert not pg.running  # stopped by its last user


async def test_sigterm_stops_migrate_and_the_database_it_runs() -> None:
    with server_dir("signalgate-migrate-") as base:
        pg_dir = base / "state" / "pg"
        # A server whose starter was killed, so that this test can hold the migration lock before
        # `migrate` runs; `migrate` is then its only user, and stops it.
        lock = await asyncpg.connect(leave_running(pg_dir))
        try:
            await lock.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "proxy.cli",
                "migrate",
                env=_env(SIGNALGATE_DATA_DIR=str(base / "state")),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            await asyncio.wait_for(eventually(lambda: lock_awaited(lock)), STARTUP)  # migrate waits for it
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), COMMAND)  # it stops its PostgreSQL
            assert proc.returncode == 128 + signal.SIGTERM, err.decode()
            last = err.decode().strip().splitlines()[-1]
            assert last == "signalgate: stopped by SIGTERM before migrating was done", err.decode()
            assert not EmbeddedPostgres(pg_dir).running
        finally:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await lock.close()
            leftover = EmbeddedPostgres(pg_dir)
            if leftover.running:
                leftover.start()
                leftover.stop()


async def test_demo_ignores_sighup_during_start_up_and_handles_it_after() -> None:
    with server_dir("signalgate-demo-") as data:
        proc = await _start_demo(data)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = Lines("stdout"), Lines("stderr")
        pumps = [asyncio.create_task(out.pump(proc.stdout)), asyncio.create_task(err.pump(proc.stderr))]
        try:
            await err.expect(r"initialising a PostgreSQL data directory")
            proc.send_signal(signal.SIGHUP)  # initdb takes a while yet
            await err.expect(r"SIGHUP: nothing to reload now, ignored")
            await err.expect(r"^signalgate: proxy on", within=STARTUP)
            proc.send_signal(signal.SIGHUP)
            await err.expect(r"SIGHUP: no GeoIP database to reload")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), STOP) == 0, err.tail()
            await asyncio.gather(*pumps)


async def test_serve_without_upstream_says_so() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        "serve",
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), QUICK)
    assert proc.returncode == 2 and "SIGNALGATE_UPSTREAM" in err.decode()


async def test_migrate_command_applies_then_has_nothing_to_do(blank_dsn: str) -> None:
    outputs = []
    for _ in range(2):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy.cli",
            "migrate",
            env=_env(SIGNALGATE_DATABASE_URL=blank_dsn),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), COMMAND)
        assert proc.returncode == 0
        outputs.append(out.decode())
    assert "001_init" in outputs[0] and "nothing to apply" in outputs[1]


async def test_admin_token_created_once_and_only_its_hash_kept(store: Store) -> None:
    digest, token = await ensure_admin_token(store, None)
    assert token is not None and token.startswith("sga_")
    stored = await store.get_setting(ADMIN_TOKEN_SETTING)
    assert stored == digest.hex() and token not in stored
    again, shown = await ensure_admin_token(store, None)
    assert (again, shown) == (digest, None)  # never shown twice
    configured, shown = await ensure_admin_token(store, "an-operator-chosen-token-123")
    assert shown is None and configured != digest


async def test_version_and_the_example_configuration() -> None:
    code, out, _ = await _run("--version", _env())
    assert (code, out) == (0, f"signalgate {metadata.version('signalgate')}\n")
    code, out, err = await _run("config", _env(), "example")
    assert code == 0, err
    assert out == EXAMPLE.read_text()


ABOVE_INFO = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ")


def above_info(lines: list[str]) -> list[str]:
    return [line for line in lines if ABOVE_INFO.match(line)]


async def test_a_requested_stop_logs_nothing_above_info(db_dsn: str, upstream: str) -> None:
    """Anyone alerting on warnings must not be paged by a deploy: SIGTERM is a stop, not a failure."""
    env = serve_env(
        database_url=db_dsn,
        upstream=upstream,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        admin_token="test-admin-token-0123456789abcdef",
        workers="2",
    )
    async with serve(env) as served:
        await served.err.expect(r"worker \d: change feed connected", count=2)
        mark = served.err.mark()
    stopping = served.err.lines[mark:]
    assert any("worker 0 (pid" in line and "stopped" in line for line in stopping), served.err.tail()
    assert above_info(served.err.lines) == []


async def test_the_demo_key_dies_with_the_demo(upstream: str) -> None:
    """A later `serve` on the demo's data dir forwards to a real upstream: the demo key must not work
    there. That serve also says an admin token exists, and how to recover it."""
    with server_dir("signalgate-demo-") as data:
        async with running_demo(data) as demo:
            key = re.search(r"^\s+(sg_\w+)$", demo.banner, re.M)
            assert key, demo.banner
            assert "revoked when this demo stops, and expire " in demo.banner
            async with aiohttp.ClientSession() as session:
                async with session.get(demo.proxy_url + "/demo/hello", headers={"X-API-Key": key[1]}) as r:
                    assert r.status == 200
                token = (demo.state / "admin-token").read_text().strip()
                auth = {"Authorization": f"Bearer {token}"}
                async with session.get(f"{demo.admin_url}/v1/keys/{key[1][3:19]}", headers=auth) as r:
                    expires_at = datetime.fromisoformat((await r.json())["expires_at"])
            assert timedelta(hours=7) < expires_at - datetime.now(UTC) <= timedelta(hours=8)
        assert above_info(demo.err.lines) == []  # the demo's stop, revocation included, is quiet too
        env = serve_env(
            data_dir=str(data / "state"), upstream=upstream, listen="127.0.0.1:0", admin_listen="127.0.0.1:0"
        )
        async with serve(env) as served, aiohttp.ClientSession() as session:
            async with session.get(served.proxy_url + "/demo/hello", headers={"X-API-Key": key[1]}) as r:
                assert r.status == 401
            await served.err.expect(r"admin token created when this database was first served .* lost it\?")


def _unreachable() -> socket.socket:
    """A loopback port that refuses connections (bound, not listening) until it is listened on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


async def test_start_up_gives_up_on_postgresql_after_database_wait() -> None:
    with _unreachable() as closed:
        port = closed.getsockname()[1]
        env = _env(
            SIGNALGATE_DATABASE_URL=f"postgresql://nobody@127.0.0.1:{port}/none",
            SIGNALGATE_DATABASE_WAIT="1",
            SIGNALGATE_UPSTREAM="http://127.0.0.1:1",
            SIGNALGATE_LISTEN="127.0.0.1:0",
        )
        code, _, err = await _run("serve", env)
    assert code == 2, err
    retries = [line for line in err if "retrying in" in line]
    assert retries and all("database_wait (SIGNALGATE_DATABASE_WAIT) = 1 s" in line for line in retries), err
    assert err[-1].startswith(
        "signalgate: PostgreSQL still unreachable after 1 s (database_wait (SIGNALGATE_DATABASE_WAIT)): "
    ), err


async def test_start_up_waits_for_postgresql_to_come_up(db_dsn: str, upstream: str) -> None:
    """A proxy started before its database (any start order) comes up once the database does."""
    target = urlsplit(db_dsn)
    relays: list[asyncio.Server] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    late = _unreachable()
    port = late.getsockname()[1]
    env = serve_env(
        database_url=db_dsn.replace(f":{target.port}/", f":{port}/"),
        upstream=upstream,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        admin_token="test-admin-token-0123456789abcdef",
        workers="1",
    )

    async def database_comes_up(served: Served) -> None:
        await served.err.expect(r"PostgreSQL unreachable .*; retrying in .*database_wait")
        relays.append(await asyncio.start_server(relay, sock=late))  # now the port accepts

    try:
        async with serve(env, starting=database_comes_up) as served:
            await served.err.expect(r"worker 0: change feed connected")
            assert await _readyz(served) == 200
    finally:
        for server in relays:
            server.close()
        late.close()


async def test_a_stop_signal_ends_the_wait_for_postgresql() -> None:
    """Waiting up to database_wait must not make serve deaf to SIGTERM (systemd would SIGKILL it)."""
    with _unreachable() as closed:
        env = _env(
            SIGNALGATE_DATABASE_URL=f"postgresql://nobody@127.0.0.1:{closed.getsockname()[1]}/none",
            SIGNALGATE_UPSTREAM="http://127.0.0.1:1",
            SIGNALGATE_LISTEN="127.0.0.1:0",
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.cli", "serve", env=env, stderr=asyncio.subprocess.PIPE
        )
        assert proc.stderr is not None
        err = Lines("stderr")
        pump = asyncio.create_task(err.pump(proc.stderr))
        await err.expect(r"retrying in")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0  # well before database_wait (60 s) ends
        await pump
    await err.expect(r"stopped by SIGTERM during start-up")
