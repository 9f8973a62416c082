"""The `signalgate` command as a user runs it: real processes, the README's demo promise, bad settings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Callable
from importlib import metadata
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from proxy.app import ADMIN_TOKEN_SETTING, ensure_admin_token
from proxy.db.embedded import EmbeddedPostgres
from proxy.db.migrate import LOCK_ID
from proxy.db.store import Store
from tests.pgtools import eventually, leave_running, lock_awaited, server_dir
from tests.procs import Lines, Served, serve, serve_env

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "signalgate.toml"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALGATE_")}
    env.update(extra)
    return env


async def _read_until(stream: asyncio.StreamReader, marker: str) -> str:
    seen: list[str] = []

    async def read() -> str:
        while True:
            line = await stream.readline()
            if not line:
                raise AssertionError("process ended before printing " + repr(marker) + ":\n" + "".join(seen))
            seen.append(line.decode())
            if marker in seen[-1]:
                return "".join(seen)

    return await asyncio.wait_for(read(), 60)


async def _start_demo(data: Path, *, stderr: int) -> asyncio.subprocess.Process:
    """`signalgate demo` on its embedded defaults in ``data``, free ports, stdout piped."""
    env = _env(
        SIGNALGATE_DATA_DIR=str(data / "state"),
        SIGNALGATE_LISTEN="127.0.0.1:0",
        SIGNALGATE_ADMIN_LISTEN="127.0.0.1:0",
    )
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.cli", "demo", env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr
    )


@pytest.fixture
async def demo() -> AsyncIterator[str]:
    """`signalgate demo` on its embedded defaults (own PostgreSQL in a fresh data dir), free ports."""
    with server_dir("signalgate-demo-") as data:
        proc = await _start_demo(data, stderr=asyncio.subprocess.DEVNULL)
        assert proc.stdout is not None
        try:
            yield await _read_until(proc.stdout, "signalgate: proxy on")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0


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
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    body, _, code = out.decode().rpartition("\n")
    return int(code), body


async def test_demo_prints_a_key_and_curl_lines_that_allow_and_deny(demo: str) -> None:
    token = re.search(r"^\s+(sga_\S+)$", demo, re.M)
    assert token, demo  # a fresh data dir: the admin token is created and shown once
    curls = [line.strip() for line in demo.splitlines() if line.strip().startswith("curl ")]
    assert len(curls) == 6, demo
    results = [await _curl(line) for line in curls]
    assert [code for code, _ in results] == [200, 403, 401, 200, 403, 401], results
    assert "hello from the demo upstream" in results[0][1]
    assert "route_denied" in results[1][1] and "key_missing" in results[2][1]
    # the attestation-protected route: a managed device's signed posture, bound to the key
    assert '"device": "demo-laptop"' in results[3][1]
    assert "device_attestation_claims" in results[4][1] and "device_attestation_missing" in results[5][1]


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
    _, err = await asyncio.wait_for(proc.communicate(), 30)
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
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
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
        demo = await _start_demo(base, stderr=asyncio.subprocess.DEVNULL)  # the same data dir
        assert demo.stdout is not None
        try:
            await _read_until(demo.stdout, "signalgate: proxy on")
            async with serve(env) as served:
                await served.err.expect(r"worker \d: change feed connected", count=2)
                demo.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(demo.wait(), 30) == 0
                assert pg.running  # the demo started it, but serve still uses it
                assert await _readyz(served) == 200

                code, out, err = await _run("migrate", env)
                assert (code, out) == (0, "nothing to apply\n"), err

                busy = served.admin_url.removeprefix("http://")
                code, out, err = await _run("serve", {**env, "SIGNALGATE_ADMIN_LISTEN": busy})
                assert code == 2 and "proxy on" not in out, err
                assert err[-1] == (
                    f"signalgate: bad setting SIGNALGATE_ADMIN_LISTEN='{busy}': "
                    "cannot listen there: Address already in use"
                ), err
                assert not any("Traceback" in line for line in err), err

                assert pg.running
                assert await _readyz(served) == 200
                assert not [line for line in served.err.lines if "change feed lost its connection" in line]
            assert not pg.running  # stopped by its last user
        finally:
            if demo.returncode is None:
                demo.kill()
                await demo.wait()


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
            await asyncio.wait_for(eventually(lambda: lock_awaited(lock)), 60)  # migrate waits for it
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 60)
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
        proc = await _start_demo(data, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = Lines("stdout"), Lines("stderr")
        pumps = [asyncio.create_task(out.pump(proc.stdout)), asyncio.create_task(err.pump(proc.stderr))]
        try:
            await err.expect(r"initialising a PostgreSQL data directory")
            proc.send_signal(signal.SIGHUP)  # initdb takes a while yet
            await err.expect(r"SIGHUP: nothing to reload now, ignored")
            await out.expect(r"^signalgate: proxy on", within=60)
            proc.send_signal(signal.SIGHUP)
            await err.expect(r"SIGHUP: no GeoIP database to reload")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0, err.tail()
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
    _, err = await asyncio.wait_for(proc.communicate(), 30)
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
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
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
