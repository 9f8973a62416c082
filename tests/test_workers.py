"""``signalgate serve`` with several worker processes: real processes, one port, one database.

Each test starts the real command (a supervisor and 2 workers) against a fresh database and a real
upstream on loopback, reads the URLs it prints, and awaits its log lines instead of sleeping.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import socket
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from proxy import ports
from proxy.config.settings import Listen
from proxy.core.errors import ConfigError
from proxy.db.migrate import LOCK_ID
from tests.bounds import COMMAND, LOAD, PROMPT, STARTUP, STOP
from tests.geodata import write_country_mmdb
from tests.pgtools import eventually, lock_awaited
from tests.procs import (
    BOUND,
    Answer,
    Served,
    call,
    create_key,
    ready,
    serve,
    sticky_sessions,
    workers_env,
)
from tests.upstream_app import run_app


@dataclass
class Hold:
    """Requests to the upstream's /hold wait until ``release`` is set; each one announces itself."""

    entered: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def make_upstream(hold: Hold) -> web.Application:
    async def held(request: web.Request) -> web.Response:
        hold.entered.put_nowait(request.path)
        await hold.release.wait()
        return web.Response(text="released")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/hold", held)
    app.router.add_route("*", "/{tail:.*}", ok)
    return app


@pytest.fixture
def hold() -> Hold:
    return Hold()


@pytest.fixture
async def upstream(hold: Hold) -> AsyncIterator[str]:
    async with run_app(make_upstream(hold)) as url:
        yield url


@pytest.fixture
def env(db_dsn: str, upstream: str, tmp_path: Path) -> dict[str, str]:
    return workers_env(db_dsn, upstream, tmp_path / "state", log_level="info")


# -- helpers ----------------------------------------------------------------------------------------


def fresh_connections() -> aiohttp.ClientSession:
    """A client opening a new connection per request, so the kernel picks a worker every time."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def revoke_under_load(
    revoke_via: Served, load_on: Served, key: dict[str, Any], per_worker: int, *, grace: float
) -> list[float]:
    """Keep-alive client loops on ``load_on``; revoke through ``revoke_via``; check what they saw."""

    async def revoke() -> None:
        status, document = await revoke_via.admin("POST", f"/v1/keys/{key['id']}/revoke")
        assert status == 200 and document["status"] == "revoked", document

    return await refused_under_load(load_on, [key["key"]], per_worker, revoke, "key_revoked", grace=grace)


async def refused_under_load(
    load_on: Served,
    keys: list[str],
    per_worker: int,
    act: Callable[[], Awaitable[None]],
    reason: str,
    *,
    grace: float,
) -> list[float]:
    """Keep-alive client loops on ``load_on``, ``per_worker`` on each worker for each of ``keys``; then
    ``act`` (the admin call that takes the keys away); then check what the loops saw: allowed, then
    401 ``reason`` for good. No request sent more than ``grace`` seconds after ``act`` returned may be
    allowed. Returns each loop's time from ``act`` returning to its first 401, in seconds.
    """
    sessions: list[tuple[aiohttp.ClientSession, str]] = []
    loop_keys: list[str] = []
    answers: list[list[Answer]] = []
    warm = asyncio.Event()
    stop_at: list[float] = []

    async def loop(i: int) -> None:
        session, _ = sessions[i]
        while not stop_at or time.monotonic() < stop_at[0]:
            answers[i].append(await call(session, load_on.proxy_url, loop_keys[i]))
            if all(len(seen) >= 20 for seen in answers):
                warm.set()

    try:
        for key in keys:
            pinned = await sticky_sessions(load_on.proxy_url, key, per_worker)
            sessions += pinned
            loop_keys += [key] * len(pinned)
        answers.extend([] for _ in sessions)
        loops = [asyncio.create_task(loop(i)) for i in range(len(sessions))]
        await asyncio.wait_for(warm.wait(), LOAD)
        await act()
        returned = time.monotonic()
        stop_at.append(returned + BOUND + 0.5)
        await asyncio.wait_for(asyncio.gather(*loops), LOAD)
    finally:
        for session, _ in sessions:
            await session.close()

    latencies = []
    for (_, worker), seen in zip(sessions, answers, strict=True):
        assert {a.worker for a in seen} == {worker}, "a keep-alive client changed worker"
        first = next((n for n, a in enumerate(seen) if a.status == 401), None)
        assert first is not None, f"worker {worker} never refused the key"
        assert all(a.status == 200 for a in seen[:first]), seen[:first]
        assert all((a.status, a.reason) == (401, reason) for a in seen[first:]), "allowed again"
        late = [a for a in seen if a.status == 200 and a.sent > returned + grace]
        assert not late, f"allowed {len(late)} requests sent over {grace}s after the admin call returned"
        latencies.append(seen[first].received - returned)
    assert len({worker for _, worker in sessions}) == 2
    return latencies


def distribution(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return (
        f"{name}: n={len(ms)} min={ms[0]:.1f} p50={statistics.median(ms):.1f} "
        f"p99={p99:.1f} max={ms[-1]:.1f} ms"
    )


# -- tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_bound_port_cannot_be_joined_by_anyone(host: str) -> None:
    port, held = ports.bind(Listen(host, 0))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        assert port != 0 and len(held) == 1
        for options in ([], [socket.SO_REUSEADDR], [socket.SO_REUSEADDR, socket.SO_REUSEPORT]):
            with socket.socket(family) as other, pytest.raises(OSError) as taken:
                for option in options:  # SO_REUSEPORT: as workers used to bind, and a second instance did
                    other.setsockopt(socket.SOL_SOCKET, option, 1)
                other.bind((host, port))
            assert taken.value.errno == errno.EADDRINUSE, options
        with socket.socket(family) as client:
            client.connect((host, port))  # listening: it waits in the queue the workers accept from
            (accepted, _) = held[0].accept()
            accepted.close()
    finally:
        for sock in held:
            sock.close()


def test_a_port_with_connections_in_time_wait_is_bound_at_once() -> None:
    """A restart right after a crash must not wait out TIME_WAIT (about a minute)."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx, asyncio and most servers
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server closes first: its end of the connection goes to TIME_WAIT
            assert client.recv(1) == b""
    bound, held = ports.bind(Listen("127.0.0.1", port))
    for sock in held:
        sock.close()
    assert bound == port


def test_a_busy_configured_port_is_one_clear_error() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(
            ConfigError, match=rf"LISTEN='127\.0\.0\.1:{port}': cannot listen there: Address already in use$"
        ):
            ports.bind(Listen("127.0.0.1", port))


async def test_a_second_instance_cannot_share_the_port_and_names_the_first(
    env: dict[str, str], tmp_path: Path
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    first_env = {**env, "SIGNALGATE_DATA_DIR": str(tmp_path / "first"), "XDG_RUNTIME_DIR": str(runtime)}
    async with serve(first_env) as first:
        await ready(first)
        key = await create_key(first)
        address = first.proxy_url.removeprefix("http://")
        second_env = {
            **first_env,
            "SIGNALGATE_LISTEN": address,
            "SIGNALGATE_DATA_DIR": str(tmp_path / "second"),
        }
        second = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.cli", "serve", env=second_env, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(second.communicate(), COMMAND)
        assert second.returncode == 2, err.decode()
        assert err.decode().strip().splitlines()[-1] == (
            f"signalgate: bad setting SIGNALGATE_LISTEN='{address}': cannot listen there: Address already"
            f" in use (held by signalgate pid {first.proc.pid}, data dir {tmp_path / 'first'})"
        )
        async with fresh_connections() as session:
            answers = [await call(session, first.proxy_url, key["key"]) for _ in range(20)]
        assert {a.status for a in answers} == {200}  # every connection reached the first instance
        assert len({a.worker for a in answers}) == 2  # whose two workers both accept from the port
    assert not list(runtime.glob("signalgate/*"))  # its registration left with it


async def test_two_workers_share_one_port_and_both_answer(env: dict[str, str]) -> None:
    started = time.monotonic()
    async with serve({**env, "SIGNALGATE_WORKERS": "1"}, "--workers", "2", decisions=True) as served:
        await ready(served)
        print(f"\nserve start to /readyz ready with 2 workers: {time.monotonic() - started:.2f}s")
        assert len(set(served.pids)) == 2 and all(alive(pid) for pid in served.pids)
        key = await create_key(served)
        async with fresh_connections() as session:
            answers = [await call(session, served.proxy_url, key["key"]) for _ in range(40)]
        assert [a.status for a in answers] == [200] * 40
        by_worker = Counter(a.worker for a in answers)
        assert len(by_worker) == 2, by_worker  # one port, two processes answering
        # Each worker writes its decision lines to stdout (buffered, flushed within half a second).
        logged = await served.out.expect(r'^\{.*"request_id": ?"(\w+)"', count=40)
        lines = [json.loads(match.string) for match in logged]
        assert {line["request_id"][:12] for line in lines} == set(by_worker)
        assert {(line["decision"], line["status"], line["key_id"]) for line in lines} == {
            ("allow", 200, key["id"])
        }


async def test_revocation_bites_on_every_worker_within_the_bound(env: dict[str, str]) -> None:
    async with serve(env) as served:
        await ready(served)
        key = await create_key(served)
        # The admin answer waits until every worker of the instance enforces the revocation, so no
        # request sent after it is allowed; one in flight as it returned may still be.
        latencies = await revoke_under_load(served, served, key, per_worker=4, grace=0.0)
    print("\n" + distribution("revoke -> first 401, 8 loops on 2 workers", latencies))
    assert max(latencies) < BOUND


async def test_a_killed_worker_is_replaced_and_service_recovers(env: dict[str, str]) -> None:
    async with serve(env) as served:
        await ready(served)
        key = await create_key(served)
        victim, survivor = served.pids
        answers: list[Answer] = []
        enough = asyncio.Event()
        recovered: list[float] = []

        async def loop() -> None:
            async with fresh_connections() as session:
                while True:
                    answers.append(await call(session, served.proxy_url, key["key"]))
                    after = [a for a in answers if recovered and a.sent > recovered[0] and a.status == 200]
                    if len(answers) >= 40 and not recovered:
                        enough.set()
                    if len({a.worker for a in after}) == 2 and len(after) >= 40:
                        return

        loops = [asyncio.create_task(loop()) for _ in range(4)]
        await asyncio.wait_for(enough.wait(), LOAD)
        before = {a.worker for a in answers if a.status == 200}
        mark = served.err.mark()
        os.kill(victim, signal.SIGKILL)
        await served.err.expect(
            rf"worker 0 \(pid {victim}\) exited unexpectedly \(killed by SIGKILL\)", start=mark
        )
        status, document = await served.admin("GET", "/readyz")
        assert status == 503 and document["checks"]["workers"] is False, document
        new_pid = int((await served.err.expect(r"worker 0 started \(pid (\d+)\)", start=mark))[0][1])
        await ready(served, start=mark, workers="0")  # the replacement's feed; the survivor's never left
        recovered.append(time.monotonic())
        await asyncio.wait_for(asyncio.gather(*loops), LOAD)

    assert new_pid not in (victim, survivor) and not alive(victim)
    failures = [a for a in answers if a.status != 200]
    after = [a for a in answers if a.sent > recovered[0]]
    print(
        f"\nSIGKILL of one worker: {len(failures)} failed of {len(answers)} requests "
        f"({Counter(a.reason for a in failures)}); {len(after)} served after recovery"
    )
    assert all(a.status == 0 for a in failures), failures  # only connections cut, never a wrong answer
    assert all(a.status == 200 for a in after)
    workers_after = {a.worker for a in after}
    assert len(before) == 2 and len(workers_after) == 2
    assert len(workers_after & before) == 1  # the survivor, and a new process instead of the victim


async def test_sigterm_drains_in_flight_requests_and_refuses_new_connections(
    env: dict[str, str], hold: Hold
) -> None:
    async with serve(env) as served:
        await ready(served)
        key = await create_key(served)
        host, port = served.proxy_url.removeprefix("http://").rsplit(":", 1)
        async with aiohttp.ClientSession() as client:
            in_flight = asyncio.create_task(call(client, served.proxy_url, key["key"], "/hold"))
            assert await asyncio.wait_for(hold.entered.get(), PROMPT) == "/hold"
            mark = served.err.mark()
            served.proc.send_signal(signal.SIGTERM)
            await served.err.expect(r"worker \d+ \(pid \d+\) draining", start=mark, count=2)
            status, document = await served.admin("GET", "/readyz")
            assert status == 503 and document["checks"]["workers"] is False  # stopping: not ready

            refused = 0
            for _ in range(100):  # the listeners close as the workers log; a connect may just precede it
                try:
                    _, writer = await asyncio.open_connection(host, int(port))
                except ConnectionRefusedError:
                    refused += 1
                    if refused == 3:
                        break
                    continue
                writer.close()
                await writer.wait_closed()
                assert refused == 0, "a new connection was accepted after one was refused"
            assert refused == 3
            assert not in_flight.done() and served.proc.returncode is None  # still draining

            hold.release.set()
            answer = await asyncio.wait_for(in_flight, PROMPT)
            assert answer.status == 200, answer
        assert await asyncio.wait_for(served.proc.wait(), STOP) == 0
        await served.err.expect(r"worker \d+ \(pid \d+\) exited \(exit code 0\)", start=mark, count=2)


async def test_a_revocation_through_one_instance_bites_on_another(env: dict[str, str]) -> None:
    async with serve(env) as first, serve(env) as second:
        assert first.proxy_url != second.proxy_url
        await ready(first)
        await ready(second)
        key = await create_key(first)
        latencies = await revoke_under_load(first, second, key, per_worker=2, grace=BOUND)
    print("\n" + distribution("revoke via instance A -> first 401 on instance B", latencies))
    assert max(latencies) < BOUND


async def test_sighup_makes_every_worker_reload_the_geoip_database(
    env: dict[str, str], tmp_path: Path
) -> None:
    geoip = write_country_mmdb(tmp_path / "country.mmdb", {"127.0.0.0/8": "US"})
    async with serve({**env, "SIGNALGATE_GEOIP_DB": str(geoip)}) as served:
        await ready(served)
        key = await create_key(served, policy={"regions": {"allow": ["US"]}})
        async with fresh_connections() as session:
            assert (await call(session, served.proxy_url, key["key"])).status == 200
            write_country_mmdb(tmp_path / "next.mmdb", {"127.0.0.0/8": "DE"}).replace(geoip)
            mark = served.err.mark()
            served.proc.send_signal(signal.SIGHUP)
            # "unchanged" only if the periodic file check got there in the few ms before the signal
            handled = await served.err.expect(
                r"worker (\d+): SIGHUP: GeoIP database (reloaded|unchanged)", start=mark, count=2
            )
            assert {m[1] for m in handled} == {"0", "1"}
            answers = [await call(session, served.proxy_url, key["key"]) for _ in range(30)]
        assert {(a.status, a.reason) for a in answers} == {(403, "region_denied")}
        assert len({a.worker for a in answers}) == 2
        assert all(alive(pid) for pid in served.pids)  # reloaded, not restarted


async def test_sighup_during_start_up_is_ignored_not_fatal(env: dict[str, str], db_dsn: str) -> None:
    lock = await asyncpg.connect(db_dsn)
    try:
        await lock.execute("SELECT pg_advisory_lock($1)", LOCK_ID)

        async def during_migrations(served: Served) -> None:
            await asyncio.wait_for(eventually(lambda: lock_awaited(lock)), STARTUP)  # serve waits for it
            served.proc.send_signal(signal.SIGHUP)
            await served.err.expect(r"SIGHUP: nothing to reload now, ignored")
            await lock.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)

        async with serve(env, starting=during_migrations) as served:
            await ready(served)
    finally:
        await lock.close()


async def test_sighup_while_draining_is_ignored_not_fatal(env: dict[str, str], hold: Hold) -> None:
    async with serve(env) as served:
        await ready(served)
        key = await create_key(served)
        async with aiohttp.ClientSession() as client:
            in_flight = asyncio.create_task(call(client, served.proxy_url, key["key"], "/hold"))
            assert await asyncio.wait_for(hold.entered.get(), PROMPT) == "/hold"
            mark = served.err.mark()
            served.proc.send_signal(signal.SIGTERM)
            await served.err.expect(r"stopping 2 workers", start=mark)
            served.proc.send_signal(signal.SIGHUP)
            await served.err.expect(r"SIGHUP while stopping: not forwarded to the workers", start=mark)
            hold.release.set()
            answer = await asyncio.wait_for(in_flight, PROMPT)
            assert answer.status == 200, answer
        assert await asyncio.wait_for(served.proc.wait(), STOP) == 0
        await served.err.expect(r"worker \d+ \(pid \d+\) exited \(exit code 0\)", start=mark, count=2)


async def test_a_worker_that_cannot_start_stops_serve_with_an_error(
    env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        "serve",
        env={
            **env,
            "SIGNALGATE_TLS_CERT": str(tmp_path / "cert.pem"),
            "SIGNALGATE_TLS_KEY": str(tmp_path / "key.pem"),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), COMMAND)
    assert proc.returncode == 1, err.decode()
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("signalgate: worker ") and "failed to start (exit code 1)" in last, last
    assert b"proxy on" not in out


# -- issue 13: limits, uses and jobs over workers and instances -------------------------------------------


async def burst(url: str, key: str, n: int) -> list[Answer]:
    """``n`` concurrent requests, each on a new connection, so the kernel spreads them over workers."""
    async with fresh_connections() as session:
        return await asyncio.gather(*(call(session, url, key) for _ in range(n)))


async def test_fifty_concurrent_requests_on_a_ten_use_key_over_two_workers_forward_ten(
    env: dict[str, str],
) -> None:
    async with serve(env) as served:
        await ready(served)
        key = await create_key(served, policy={"usage": {"max_uses": 10}})
        answers = await burst(served.proxy_url, key["key"], 50)
        status, shown = await served.admin("GET", f"/v1/keys/{key['id']}")
    assert Counter((a.status, a.reason) for a in answers) == {(200, None): 10, (429, "uses_exhausted"): 40}
    assert len({a.worker for a in answers}) == 2  # both workers counted
    assert (status, shown["uses"], shown["uses_left"]) == (200, 10, 0)


async def test_fifty_concurrent_requests_on_a_ten_use_key_over_two_instances_forward_ten(
    env: dict[str, str],
) -> None:
    async with serve(env) as first, serve(env) as second:
        await ready(first)
        await ready(second)
        key = await create_key(first, policy={"usage": {"max_uses": 10}})
        answers = [
            a
            for half in await asyncio.gather(
                burst(first.proxy_url, key["key"], 25), burst(second.proxy_url, key["key"], 25)
            )
            for a in half
        ]
    assert Counter((a.status, a.reason) for a in answers) == {(200, None): 10, (429, "uses_exhausted"): 40}


async def test_the_rate_over_two_workers_stays_within_the_documented_bound(env: dict[str, str]) -> None:
    """Each of 2 workers enforces half the limit: together at most burst + per_second x elapsed."""
    per_second, burst_size = 5, 10
    async with serve(env) as served:
        await ready(served)
        key = await create_key(served, policy={"rate": {"per_second": per_second, "burst": burst_size}})
        answers = await burst(served.proxy_url, key["key"], 100)
    allowed = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]
    elapsed = max(a.received for a in answers) - min(a.sent for a in answers)
    print(f"\nrate 5/s burst 10 on 2 workers: {len(allowed)} of 100 allowed in {elapsed:.2f}s")
    assert {(a.status, a.reason) for a in refused} == {(429, "rate_limited")}
    assert burst_size // 2 <= len(allowed) <= burst_size + per_second * elapsed
    assert len({a.worker for a in allowed}) == 2  # each worker let its own share through


async def close_job_under_load(
    close_via: Served, load_on: Served, job: dict[str, Any], keys: list[dict[str, Any]], *, grace: float
) -> list[float]:
    """Keep-alive loops on the job's keys, one per worker for each; close the job through
    ``close_via``'s admin API; each loop's time from the close returning to its first refusal."""

    async def close() -> None:
        status, closed = await close_via.admin("POST", f"/v1/jobs/{job['id']}/close")
        assert status == 200 and len(closed["keys_revoked"]) == len(keys), closed

    return await refused_under_load(load_on, [k["key"] for k in keys], 1, close, "job_closed", grace=grace)


async def open_job_with_keys(served: Served, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    deadline = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, job = await served.admin(
        "POST", "/v1/jobs", json={"name": "j", "owner": "o", "deadline": deadline}
    )
    assert status == 201, job
    return job, [await create_key(served, job_id=job["id"]) for _ in range(n)]


async def test_closing_a_job_refuses_its_keys_on_every_worker_within_the_bound(env: dict[str, str]) -> None:
    async with serve(env) as served:
        await ready(served)
        job, keys = await open_job_with_keys(served, 2)
        # The close answers once every worker of the instance enforces it: nothing sent after is allowed.
        latencies = await close_job_under_load(served, served, job, keys, grace=0.0)
    print("\n" + distribution("job close -> first job_closed, 4 loops on 2 workers", latencies))
    assert max(latencies) < BOUND


async def test_closing_a_job_through_one_instance_refuses_its_keys_on_another(env: dict[str, str]) -> None:
    async with serve(env) as first, serve(env) as second:
        await ready(first)
        await ready(second)
        job, keys = await open_job_with_keys(first, 2)
        latencies = await close_job_under_load(first, second, job, keys, grace=BOUND)
    print("\n" + distribution("job close via instance A -> first job_closed on instance B", latencies))
    assert max(latencies) < BOUND
