"""A real upstream aiohttp app for tests, and a helper to serve any app on a free loopback port.

Routes (every method):

- ``/bytes/{n}``: n bytes of ``PATTERN`` streamed in chunks; chunked, or with Content-Length when ``?cl=1``
- ``/gzip/{n}``: ``gzip_body(n)`` with ``Content-Encoding: gzip`` (the upstream compresses, nobody else)
- ``/slow``: never answers (until cancelled); ``?body=1`` sends headers and a little body first
- ``/status/{code}``: an empty answer with that status
- ``/drop``: starts a 1 MiB body, sends 64 KiB and closes the connection; chunked unless ``?cl=1``
- anything else: echo, a JSON document with method, raw_path, headers (list of pairs), the body's
  sha256 and length (read in chunks), and the peer address (to see connection reuse)

Handlers report progress on the app's ``EVENTS`` queue as ``(event, detail)`` pairs so tests can await
them instead of sleeping.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from tests.bounds import PROMPT

__all__ = [
    "EVENTS",
    "PATTERN",
    "HeldRequests",
    "gzip_body",
    "make_upstream_app",
    "pattern_chunks",
    "pattern_sha256",
    "run_app",
]

PATTERN = bytes(range(256)) * 256  # 64 KiB
EVENTS = web.AppKey("events", asyncio.Queue)


def pattern_chunks(n: int, size: int = len(PATTERN)) -> Iterator[bytes]:
    """n bytes of the repeating pattern, in chunks of at most ``size``."""
    block = PATTERN if size == len(PATTERN) else (PATTERN * (size // len(PATTERN) + 1))[:size]
    full, rest = divmod(n, size)
    for _ in range(full):
        yield block
    if rest:
        yield block[:rest]


def pattern_sha256(n: int) -> str:
    digest = hashlib.sha256()
    for chunk in pattern_chunks(n):
        digest.update(chunk)
    return digest.hexdigest()


def gzip_body(n: int) -> bytes:
    return gzip.compress(b"".join(pattern_chunks(n)), mtime=0)


async def _echo(request: web.Request) -> web.StreamResponse:
    events = request.app[EVENTS]
    events.put_nowait(("echo-start", request.raw_path))
    digest = hashlib.sha256()
    length = 0
    try:
        async for chunk in request.content.iter_chunked(64 * 1024):
            digest.update(chunk)
            length += len(chunk)
    except asyncio.CancelledError:
        events.put_nowait(("echo-aborted", f"cancelled after {length} bytes"))
        raise
    except Exception as exc:
        events.put_nowait(("echo-aborted", f"{type(exc).__name__} after {length} bytes"))
        return web.Response(status=400)
    events.put_nowait(("echo-done", request.raw_path))
    peer = request.transport.get_extra_info("peername") if request.transport else None
    document: dict[str, Any] = {
        "method": request.method,
        "raw_path": request.raw_path,
        "headers": [[name, value] for name, value in request.headers.items()],
        "sha256": digest.hexdigest(),
        "length": length,
        "peer": list(peer) if peer else None,
    }
    return web.json_response(document)


async def _bytes(request: web.Request) -> web.StreamResponse:
    n = int(request.match_info["n"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("cl") == "1":
        response.content_length = n
    await response.prepare(request)
    if request.method != "HEAD":  # aiohttp would put the bytes on the wire even for HEAD
        try:
            for chunk in pattern_chunks(n):
                await response.write(chunk)
        except (ConnectionError, asyncio.CancelledError) as exc:
            # The reader went away (noticed by a failed write or by cancellation): end quietly.
            request.app[EVENTS].put_nowait(("bytes-aborted", request.raw_path))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return response
    await response.write_eof()
    return response


async def _gzip(request: web.Request) -> web.StreamResponse:
    body = gzip_body(int(request.match_info["n"]))
    return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})


async def _slow(request: web.Request) -> web.StreamResponse:
    events = request.app[EVENTS]
    events.put_nowait(("slow-start", request.raw_path))
    if request.query.get("body") == "1":
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        await response.write(b"partial")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        events.put_nowait(("slow-cancelled", request.raw_path))
        raise
    raise AssertionError("unreachable")


async def _trickle(request: web.Request) -> web.StreamResponse:
    """``?chunks=N&gap=S``: N chunks of ``PATTERN``, S seconds apart (a slow but live upstream)."""
    chunks, gap = int(request.query["chunks"]), float(request.query["gap"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    for index in range(chunks):
        if index:
            await asyncio.sleep(gap)  # the behaviour under test: time passing between chunks
        await response.write(PATTERN)
    await response.write_eof()
    return response


async def _status(request: web.Request) -> web.StreamResponse:
    return web.Response(status=int(request.match_info["code"]))


async def _drop(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("cl") == "1":
        response.content_length = 1024 * 1024
    await response.prepare(request)
    await response.write(PATTERN)
    assert request.transport is not None
    request.transport.close()
    request.app[EVENTS].put_nowait(("drop-closed", request.raw_path))
    return response


class HeldRequests:
    """An upstream whose ``GET /held`` answers only when the test lets it, counting how many wait at once."""

    def __init__(self) -> None:
        self.started: asyncio.Queue[None] = asyncio.Queue()
        self._release: asyncio.Queue[None] = asyncio.Queue()
        self.in_flight = 0
        self.peak = 0
        self.app = web.Application()
        self.app.router.add_get("/held", self._held)

    async def _held(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.started.put_nowait(None)
        await self._release.get()
        self.in_flight -= 1
        return web.Response(text="done")

    async def release_one(self) -> None:
        """Wait until one more request has arrived, then let one answer."""
        await asyncio.wait_for(self.started.get(), PROMPT)
        self._release.put_nowait(None)


def make_upstream_app() -> web.Application:
    app = web.Application()
    app[EVENTS] = asyncio.Queue()
    app.router.add_route("*", "/bytes/{n:[0-9]+}", _bytes)
    app.router.add_route("*", "/gzip/{n:[0-9]+}", _gzip)
    app.router.add_route("*", "/slow", _slow)
    app.router.add_route("*", "/trickle", _trickle)
    app.router.add_route("*", "/status/{code:[0-9]{3}}", _status)
    app.router.add_route("*", "/drop", _drop)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


@asynccontextmanager
async def run_app(app: web.Application, host: str = "127.0.0.1", **runner_kwargs: Any) -> AsyncIterator[str]:
    """Serve ``app`` on a free port of ``host``; yields the base URL (``http://host:port``).

    ``ssl_context`` is passed to the site (the URL then starts with https); other keyword arguments go
    to ``web.AppRunner``. Handlers are cancelled when their client disconnects (unless overridden) and
    shutdown waits at most a second, so a test never hangs on a handler that waits forever.
    """
    ssl_context = runner_kwargs.pop("ssl_context", None)
    runner_kwargs.setdefault("handler_cancellation", True)
    runner_kwargs.setdefault("shutdown_timeout", 1.0)
    runner_kwargs.setdefault("access_log", None)
    runner = web.AppRunner(app, **runner_kwargs)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0, ssl_context=ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        scheme = "https" if ssl_context is not None else "http"
        yield f"{scheme}://{host}:{port}"
    finally:
        await runner.cleanup()
