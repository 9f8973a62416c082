"""``signalgate decisions``, ``explain`` and ``candidate`` against a whole signalgate on loopback.

The run functions own their event loop (``asyncio.run``), so each call runs in a worker thread while the
proxy keeps serving on the test's loop; ``decisions tail --follow`` runs as the real command.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.admin.opsclient import run_candidate, run_decisions, run_explain
from tests.bounds import STOP
from tests.clis import environ_for, invoke
from tests.harness import Gate, client_from, gate, settings_for
from tests.procs import REPO, Lines


@pytest.fixture
async def proxy(db_dsn: str, upstream: str) -> AsyncIterator[Gate]:
    async with gate(settings_for(db_dsn, upstream, None, expose_reasons=False)) as g:
        yield g


async def get(g: Gate, source: str, path: str, key: str, method: str = "GET") -> str:
    async with (
        client_from(source) as client,
        client.request(method, g.url + path, headers={"X-API-Key": key}) as r,
    ):
        return r.headers["X-Request-Id"]


async def test_the_walk_through_from_a_request_id_to_a_promoted_candidate(
    proxy: Gate, tmp_path: Path
) -> None:
    key = await proxy.create_key(
        owner="team-pay", policy={"routes": [{"methods": ["GET"], "path": "/v1/**"}]}
    )
    refused = await get(proxy, "127.0.2.1", "/v1/orders", key["key"], method="POST")
    await get(proxy, "127.0.2.1", "/v1/orders", key["key"])
    assert proxy.runtime.writer is not None
    await proxy.runtime.writer.drain()

    # The operator finds the reason from the request id the caller reported.
    code, out, err = await invoke(run_decisions, proxy, "tail", "--request-id", refused)
    assert code == 0, err
    (line,) = out.splitlines()
    assert "deny  route_denied  403" in line and f"id={refused}" in line and "team-pay" in line
    code, out, _ = await invoke(run_decisions, proxy, "tail", "--key-id", key["id"], "--json")
    shown = [json.loads(row)["request_id"] for row in out.splitlines()]
    assert shown[:1] == [refused] and len(shown) == 2  # oldest first

    # Explain: the same reason, and every part.
    code, out, err = await invoke(
        run_explain,
        proxy,
        "--key-id",
        key["id"],
        "--client-ip",
        "127.0.2.1",
        "--method",
        "POST",
        "--path",
        "/v1/orders",
    )
    assert code == 0, err
    assert out.startswith("decision:  deny route_denied 403") and "part:      routes" in out
    (tmp_path / "p.json").write_text(json.dumps({"networks": {"allow": ["10.0.0.0/8"]}}))
    code, out, err = await invoke(
        run_explain, proxy, "--policy", f"@{tmp_path / 'p.json'}", "--client-ip", "127.0.2.1", "--path", "/"
    )
    assert code == 0 and out.startswith("decision:  deny network_denied 403"), (out, err)

    # A candidate that also allows POST: set it, make requests, read the summary, promote it.
    candidate = {"routes": [{"methods": ["GET", "POST"], "path": "/v1/**"}]}
    code, out, err = await invoke(run_candidate, proxy, "set", key["id"], "--policy", json.dumps(candidate))
    assert code == 0, err
    for _ in range(3):
        await get(proxy, "127.0.2.1", "/v1/orders", key["key"], method="POST")
    await proxy.runtime.writer.drain()
    code, out, err = await invoke(run_candidate, proxy, "show", key["id"])
    assert code == 0, err
    assert "would_allow: 3" in out and "route_denied" in out
    code, out, err = await invoke(run_candidate, proxy, "promote", key["id"])
    assert code == 0 and "enforces its former candidate" in out, err
    assert await get(proxy, "127.0.5.5", "/v1/orders", key["key"], method="POST")  # allowed now...
    await proxy.runtime.writer.drain()
    code, out, _ = await invoke(run_decisions, proxy, "tail", "-n", "1", "--key-id", key["id"])
    assert "allow  allowed  200" in out  # ...as the log says
    code, out, err = await invoke(run_candidate, proxy, "promote", key["id"])
    assert code == 1 and "no candidate policy" in err


async def test_usage_errors_exit_2(proxy: Gate) -> None:
    assert (await invoke(run_decisions, proxy, "tail", "--key-id", "nope"))[0] == 2
    assert (await invoke(run_explain, proxy, "--client-ip", "1.2.3.4", "--path", "/"))[
        0
    ] == 2  # no key or policy
    code, _, err = await invoke(run_explain, proxy, "--policy", "{", "--client-ip", "1.2.3.4", "--path", "/")
    assert code == 2 and "not valid JSON" in err
    code, _, err = await invoke(run_decisions, proxy)
    assert code == 2 and "subcommand is required" in err
    code, _, err = await invoke(run_decisions, proxy, "tail", "--since", "yesterday")
    assert code == 1 and "since" in err  # the API names the bad value


async def spawn_tail(proxy: Gate, key_id: str) -> asyncio.subprocess.Process:
    """``signalgate decisions tail --follow`` for ``key_id``, polling every 0.1 s, its output piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        "decisions",
        "tail",
        "--follow",
        "--key-id",
        key_id,
        "--interval",
        "0.1",
        # faulthandler: a SIGABRT makes it print every thread's stack, should it ever not stop
        env={**environ_for(proxy.runtime.admin_url), "PATH": "/usr/bin:/bin", "PYTHONFAULTHANDLER": "1"},
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_tail_follow_prints_new_decisions_as_they_are_recorded(proxy: Gate) -> None:
    key = await proxy.create_key()
    first = await get(proxy, "127.0.2.1", "/a", key["key"])
    assert proxy.runtime.writer is not None
    await proxy.runtime.writer.drain()
    # An ignored SIGINT is inherited through exec (a shell's background job ignores it: CI run with
    # "&"); a caught one is reset to the default. So the child gets Ctrl-C whatever ran this suite.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = await spawn_tail(proxy, key["id"])
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert proc.stdout is not None
    lines = Lines("tail")
    pump = asyncio.create_task(lines.pump(proc.stdout))
    try:
        await lines.expect(f"id={first}")
        later = [await get(proxy, "127.0.2.1", f"/b/{n}", key["key"]) for n in range(3)]
        await proxy.runtime.writer.drain()
        for request_id in later:
            await lines.expect(f"id={request_id}")
        assert sum(f"id={first}" in line for line in lines.lines) == 1  # never printed twice
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), STOP)
        except TimeoutError:
            # Why, should it happen again: its signal masks, then its stacks.
            status = await asyncio.to_thread(Path(f"/proc/{proc.pid}/status").read_text)
            masks = [line for line in status.splitlines() if line.startswith(("State", "Threads", "Sig"))]
            proc.send_signal(signal.SIGABRT)
            try:
                await asyncio.wait_for(proc.wait(), STOP)
            except TimeoutError:
                proc.kill()  # not left running, its pipes open, into the tests after this one
                await proc.wait()
            assert proc.stderr is not None
            stderr = (await proc.stderr.read()).decode(errors="replace")
            message = f"tail --follow did not stop on SIGINT; {masks}; stderr:\n{stderr}"
            raise AssertionError(message) from None
        await pump
    assert proc.returncode == 130  # Ctrl-C ends --follow, as a shell expects
