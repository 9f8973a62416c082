"""The admin CLI's commands (``keys``, ``jobs``, ``issuers``, ``decisions``, ``explain``, ``candidate``)
run in-process for tests, with what they printed.

Each ``run_*`` function of ``proxy.admin`` owns its event loop (``asyncio.run``), so a call runs in a
worker thread while the admin server keeps serving on the test's loop.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, TextIO

from tests.harness import ADMIN_TOKEN, Gate

__all__ = ["CLI_CALL", "Command", "Result", "environ_for", "invoke", "run_cli"]

# One command in a worker thread: a fresh event loop, an HTTP session and a few admin calls, on a
# loaded 2-core machine; it bounds a hang, a healthy call takes well under a second.
CLI_CALL = 60.0

Command = Callable[[list[str], Mapping[str, str], TextIO, TextIO], int]


class Result(NamedTuple):
    """A command's exit code and what it wrote to stdout and stderr."""

    code: int
    out: str
    err: str


def environ_for(url: str, token: str | None = ADMIN_TOKEN) -> dict[str, str]:
    """The environment the CLI reads: the admin API's URL and, unless None, the admin token."""
    environ = {"SIGNALGATE_ADMIN_URL": url}
    if token is not None:
        environ["SIGNALGATE_ADMIN_TOKEN"] = token
    return environ


async def run_cli(command: Command, argv: Sequence[str], environ: Mapping[str, str]) -> Result:
    """``command(argv)`` with ``environ``, in a worker thread."""
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.wait_for(asyncio.to_thread(command, list(argv), environ, out, err), CLI_CALL)
    return Result(code, out.getvalue(), err.getvalue())


async def invoke(command: Command, g: Gate, *argv: str) -> Result:
    """``command(argv)`` against the admin API of ``g``, with its admin token."""
    return await run_cli(command, argv, environ_for(g.runtime.admin_url))
