"""Real ``signalgate serve`` processes for tests: start one, await the lines it prints, stop it; and
what tests do with one: create keys, await every worker ready, pin keep-alive clients to its workers.

Both output streams are read for the whole life of the process (a full pipe would block the workers),
and tests await a line matching a pattern instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp

from tests import logscan
from tests.bounds import LINE, STARTUP, STOP
from tests.harness import ADMIN_TOKEN

__all__ = [
    "BOUND",
    "URLS",
    "Answer",
    "Lines",
    "Served",
    "call",
    "create_key",
    "ready",
    "serve",
    "serve_env",
    "sticky_sessions",
    "workers_env",
]

REPO = Path(__file__).resolve().parent.parent
URLS = r"^signalgate: proxy on (\S+), admin API on (\S+)$"  # the line serve and the demo print when up
BOUND = 1.0  # seconds within which a revocation must bite on every worker of every instance


class Lines:
    """The lines one stream has printed so far, and a way to await those matching a pattern."""

    def __init__(self, name: str, keep: Callable[[str], bool] = lambda line: True) -> None:
        self.name = name
        self.lines: list[str] = []
        self.closed = False
        self._keep = keep
        self._changed = asyncio.Condition()

    def mark(self) -> int:
        """Where the next line will be: pass it as ``start`` to look only at what comes after now."""
        return len(self.lines)

    async def pump(self, stream: asyncio.StreamReader) -> None:
        logs = logscan.Stream(self.name)
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            logs.line(line)  # every line, kept or not, for the log scan
            if self._keep(line):
                async with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        async with self._changed:
            self.closed = True
            self._changed.notify_all()

    async def expect(
        self, pattern: str, *, start: int = 0, count: int = 1, within: float = LINE
    ) -> list[re.Match[str]]:
        """The first ``count`` matches of ``pattern`` in lines from ``start`` on, awaiting new lines."""
        regex = re.compile(pattern)

        async def wait() -> list[re.Match[str]]:
            async with self._changed:
                while True:
                    found = [m for line in self.lines[start:] if (m := regex.search(line))]
                    if len(found) >= count:
                        return found[:count]
                    if self.closed:
                        raise AssertionError(
                            f"{self.name} ended without {count} x {pattern!r}:\n{self.tail()}"
                        )
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(wait(), within)
        except TimeoutError:
            raise AssertionError(
                f"no {count} x {pattern!r} on {self.name} in {within}s:\n{self.tail()}"
            ) from None

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])


@dataclass
class Served:
    """A running ``signalgate serve``: its process, its output, and what it announced."""

    proc: asyncio.subprocess.Process
    out: Lines
    err: Lines
    proxy_url: str = ""
    admin_url: str = ""
    pids: list[int] = field(default_factory=list)
    admin_token: str = ""

    async def admin(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """One admin API call with the server's token: (status, JSON body)."""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.request(method, self.admin_url + path, **kwargs) as resp,
        ):
            return resp.status, await resp.json()


def serve_env(**settings: str) -> dict[str, str]:
    """This environment without any SIGNALGATE_* variable, plus ``settings`` (names without prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALGATE_")}
    env.update({f"SIGNALGATE_{name.upper()}": value for name, value in settings.items()})
    return env


def workers_env(database_url: str, upstream: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """``serve_env`` for 2 workers in front of ``upstream`` on free loopback ports, with the harness's
    admin token and reasons in the answers; ``settings`` add to or override these."""
    return serve_env(
        **{
            "database_url": database_url,
            "data_dir": str(data_dir),
            "upstream": upstream,
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "admin_token": ADMIN_TOKEN,
            "workers": "2",
            "expose_reasons": "true",
            **settings,
        }
    )


@asynccontextmanager
async def serve(
    env: Mapping[str, str],
    *args: str,
    decisions: bool = False,
    starting: Callable[[Served], Awaitable[None]] | None = None,
) -> AsyncIterator[Served]:
    """``python -m proxy.cli serve *args``; yields once it printed its URLs and worker pids (on stderr).

    ``starting`` is awaited first, while the process starts up (to act during start-up).

    On exit a process still running gets SIGTERM and, unless the body failed, must exit 0. Decision
    lines (JSON) on stdout are read but kept only with ``decisions``. When the body fails, the server's
    log is printed.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        "serve",
        *args,
        env=dict(env),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = Lines("stdout", keep=lambda line: decisions or not line.startswith("{"))
    served = Served(proc, out, Lines("stderr"), admin_token=env.get("SIGNALGATE_ADMIN_TOKEN", ""))
    pumps = [
        asyncio.create_task(served.out.pump(proc.stdout)),
        asyncio.create_task(served.err.pump(proc.stderr)),
    ]
    failed = True
    try:
        try:
            if starting is not None:
                await starting(served)
            # Everything but the decision lines is on stderr.
            urls = (await served.err.expect(URLS, within=STARTUP))[0]
            workers = (await served.err.expect(r"^signalgate: workers: (\d+) \(pids ([0-9, ]+)\)$"))[0]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstderr:\n{served.err.tail()}") from None
        served.proxy_url, served.admin_url = urls[1], urls[2]
        served.pids = [int(pid) for pid in workers[2].split(", ")]
        assert len(served.pids) == int(workers[1])
        try:
            yield served
        except BaseException:
            print(f"--- signalgate serve stderr (pid {proc.pid}) ---\n{served.err.tail(200)}")
            raise
        failed = False
    finally:
        code = proc.returncode
        if code is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(proc.wait(), STOP)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                failed = True
                raise AssertionError(f"serve did not stop on SIGTERM:\n{served.err.tail()}") from None
            finally:
                await asyncio.gather(*pumps)
        else:
            await asyncio.gather(*pumps)
        if not failed:
            assert code == 0, f"serve exited {code}:\n{served.err.tail()}"


async def create_key(served: Served, **body: Any) -> dict[str, Any]:
    """A key created through the admin API of ``served`` (name and owner filled in); its document."""
    status, document = await served.admin("POST", "/v1/keys", json={"name": "k", "owner": "o", **body})
    assert status == 201, document
    return document


async def ready(served: Served, start: int = 0, workers: str = r"\d+") -> None:
    """Every worker (or those ``workers`` matches) reported its change feed connected; then /readyz
    must say ready."""
    count = len(served.pids) if workers == r"\d+" else 1
    await served.err.expect(rf"worker {workers}: change feed connected", start=start, count=count)
    status, document = await served.admin("GET", "/readyz")
    assert (status, document) == (200, {"status": "ready", "version": metadata.version("signalgate")})


@dataclass(frozen=True)
class Answer:
    """One proxied request as a client saw it, and which worker answered."""

    sent: float
    received: float
    status: int  # 0: the connection failed
    worker: str  # the X-Request-Id prefix: one per worker process
    reason: str | None


async def call(session: aiohttp.ClientSession, url: str, key: str, path: str = "/x") -> Answer:
    """GET ``url + path`` with ``key``; a failed connection is an answer with status 0."""
    sent = time.monotonic()
    try:
        async with session.get(url + path, headers={"X-API-Key": key}) as resp:
            body = await resp.read()
    except aiohttp.ClientConnectionError as exc:
        return Answer(sent, time.monotonic(), 0, "", type(exc).__name__)
    reason = None if resp.status == 200 else json.loads(body)["reason"]
    return Answer(sent, time.monotonic(), resp.status, resp.headers["X-Request-Id"][:12], reason)


async def sticky_sessions(url: str, key: str, per_worker: int) -> list[tuple[aiohttp.ClientSession, str]]:
    """Keep-alive clients, ``per_worker`` on each of the 2 workers (the kernel picks; we sort)."""
    sessions: list[tuple[aiohttp.ClientSession, str]] = []
    counts: Counter[str] = Counter()
    try:
        for _ in range(200):
            if len(sessions) == 2 * per_worker:
                return sessions
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
            answer = await call(session, url, key)
            new_worker = answer.worker not in counts
            if (
                answer.status == 200
                and counts[answer.worker] < per_worker
                and not (new_worker and len(counts) == 2)
            ):
                counts[answer.worker] += 1
                sessions.append((session, answer.worker))
            else:
                await session.close()
                assert answer.status == 200, answer
        raise AssertionError(f"connections did not spread over 2 workers: {counts}")
    except BaseException:
        for session, _ in sessions:
            await session.close()
        raise
