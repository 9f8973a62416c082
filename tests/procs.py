"""Real ``signalgate serve`` processes for tests: start one, await the lines it prints, stop it.

Both output streams are read for the whole life of the process (a full pipe would block the workers),
and tests await a line matching a pattern instead of sleeping.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests import logscan

__all__ = ["Lines", "Served", "serve", "serve_env"]

REPO = Path(__file__).resolve().parent.parent


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
        self, pattern: str, *, start: int = 0, count: int = 1, within: float = 30.0
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
            urls = (await served.err.expect(r"^signalgate: proxy on (\S+), admin API on (\S+)$", within=60))[
                0
            ]
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
                code = await asyncio.wait_for(proc.wait(), 30)
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
