"""The "enforcement off" baseline: signalgate's server and forwarder with no key or policy check.

Same listener (``proxy.http.listener.Listener``), same uvloop, same ``proxy.http.forward.Forwarder``
and header rules (``proxy.core.headers.upstream_headers``), same upstream table;
the handler forwards every request as it came. The difference between this and the ``hot`` scenario is
what enforcement costs: target normalisation, key extraction, SHA-256, cache lookup, GeoIP lookup,
policy evaluation and the identity headers.

This is the only bench module that imports ``proxy.http``: when the data plane is rebuilt, this module
follows it (the other scenarios use only ``signalgate serve``).

Run as ``python -m proxy.bench.passthrough --listen 127.0.0.1:PORT --upstream URL [--workers N]``; with N > 1
it starts N copies of itself sharing the port (SO_REUSEPORT) and waits for them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Awaitable

from proxy.core.errors import UpstreamTimeout, UpstreamUnavailable
from proxy.core.headers import upstream_headers
from proxy.core.upstreams import Upstream, UpstreamTable
from proxy.http.answers import RequestIds
from proxy.http.forward import SMALL_BODY, Forwarder
from proxy.http.listener import Listener
from proxy.http.listener import serve as serve_listener
from proxy.http.request import Request

__all__ = ["PassthroughHandler", "main"]


class PassthroughHandler:
    """Forwards everything: pick the upstream, rewrite hop-by-hop/forwarding headers, stream."""

    def __init__(self, upstreams: UpstreamTable, forwarder: Forwarder) -> None:
        self._upstreams = upstreams
        self._forwarder = forwarder
        self.ids = RequestIds()

    async def __call__(self, request: Request) -> None:
        rest = self.start(request)
        if rest is not None:
            await rest
        await request.finished()

    def start(self, request: Request) -> Awaitable[None] | None:
        """The handler's callback path, as ``proxy.http.handler.ProxyHandler.start``: a request without
        a body, or with a small one already here, is relayed from here, without waiting; the rest is
        streamed by the forwarder."""
        request_id = self.ids.next()
        path_qs = request.raw_path
        upstream = self._upstreams.pick(path_qs.partition("?")[0], request.host)
        if upstream is None:
            request.respond(404, "Not Found", [])
            request.finish()
            return None
        forwarded = upstream_headers(
            request.headers.items(),
            peer=request.remote or "",
            peer_trusted=False,
            scheme="http",
            host=request.host,
            key_headers=frozenset(),
            identity={"X-Request-Id": request_id},
        )
        extra = {"X-Request-Id": request_id}
        body = request.whole_body(SMALL_BODY)
        if body is None:  # a body to stream up
            return self._streamed(request, upstream, path_qs, forwarded, extra)

        def done(status: int, error: UpstreamUnavailable | UpstreamTimeout | None) -> None:
            if error is not None:
                _answer_error(request, error)
            request.finish()

        self._forwarder.relay(request, upstream, path_qs, forwarded, extra, done, body)
        return None

    async def _streamed(
        self,
        request: Request,
        upstream: Upstream,
        path_qs: str,
        forwarded: list[tuple[str, str]],
        extra: dict[str, str],
    ) -> None:
        if request.withheld_body:
            await request.send_continue()
        try:
            await self._forwarder.forward(request, upstream, path_qs, forwarded, extra)
        except (UpstreamTimeout, UpstreamUnavailable) as exc:
            _answer_error(request, exc)
        finally:
            request.finish()

    def refuse(self, request: Request, error: Exception) -> None:
        request.respond(400, "Bad Request", [])

    def fail(self, request: Request, error: BaseException) -> None:
        request.respond(500, "Internal Server Error", [])


def _answer_error(request: Request, error: UpstreamUnavailable | UpstreamTimeout) -> None:
    if isinstance(error, UpstreamTimeout):
        request.respond(504, "Gateway Timeout", [])
    else:
        request.respond(502, "Bad Gateway", [])


async def serve(host: str, port: int, upstream: str, *, reuse_port: bool) -> None:
    forwarder = Forwarder(connect_timeout=5.0, read_timeout=60.0)
    await forwarder.start()
    listener = Listener(PassthroughHandler(UpstreamTable([], upstream), forwarder))
    server = await serve_listener(listener, host, port, reuse_port=reuse_port)
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        server.close()
        await listener.shutdown(5.0)
        await forwarder.close()


def _supervise(argv: list[str], workers: int) -> int:
    """Start ``workers`` single-process copies on the shared port; stop them all on SIGTERM/SIGINT."""
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "proxy.bench.passthrough", *argv, "--workers=1", "--reuse-port"]
        )
        for _ in range(workers)
    ]

    def forward_signal(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward_signal)
    signal.signal(signal.SIGINT, forward_signal)
    return max(child.wait() for child in children)


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--upstream", required=True, help="http://host:port")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--reuse-port", action="store_true")
    opts = parser.parse_args(args)
    if opts.workers > 1:
        return _supervise(["--listen", opts.listen, "--upstream", opts.upstream], opts.workers)
    host, _, port = opts.listen.rpartition(":")
    import uvloop

    uvloop.run(serve(host, int(port), opts.upstream, reuse_port=opts.reuse_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
