"""The bench's Python servers built on plain aiohttp: ``python -m proxy.bench.pyservers static|proxy``.

- ``static``: answers every request with the bench's 64-byte body. The upstream when nginx is not
  installed (slower than nginx, so every figure is then lower; the report says which upstream ran).
- ``proxy``: the minimal aiohttp pass-through, the Python floor: an ``aiohttp.web`` catch-all handler
  that forwards each request with one shared ``ClientSession`` (keep-alive pool, no limit) and
  streams the answer back, on uvloop like signalgate. No key check, no header rules beyond dropping
  hop-by-hop fields: what a Python proxy costs before it does anything.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from aiohttp import ClientSession, TCPConnector, web

__all__ = ["BODY", "main"]

BODY = b"signalgate bench upstream: a small static body of 64 bytes".ljust(63, b".") + b"\n"
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
)


def static_app() -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="text/plain")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def proxy_app(upstream: str) -> web.Application:
    session_key = web.AppKey("session", ClientSession)

    async def session(app: web.Application):  # type: ignore[no-untyped-def]
        app[session_key] = ClientSession(connector=TCPConnector(limit=0), auto_decompress=False)
        yield
        await app[session_key].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with request.app[session_key].request(
            request.method,
            upstream + request.raw_path,
            headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False,
        ) as answer:
            response = web.StreamResponse(status=answer.status, reason=answer.reason)
            for name, value in answer.headers.items():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    response.headers.add(name, value)
            if answer.content_length is not None:
                response.content_length = answer.content_length
            await response.prepare(request)
            async for chunk in answer.content.iter_chunked(65536):
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("role", choices=("static", "proxy"))
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--upstream", help="http://host:port (proxy)")
    opts = parser.parse_args(argv)
    host, _, port = opts.listen.rpartition(":")
    if opts.role == "proxy" and not opts.upstream:
        parser.error("proxy needs --upstream")
    app = static_app() if opts.role == "static" else proxy_app(opts.upstream)
    uvloop.run(serve(app, host, int(port)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
