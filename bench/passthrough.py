"""The "enforcement off" baseline: signalgate's server and forwarder with no key or policy check.

Same aiohttp low-level server (``proxy.server.ProxyServer``), same uvloop, same
``proxy.forward.Forwarder`` and header rules (``proxy.headers.upstream_headers``), same upstream table;
the handler forwards every request as it came. The difference between this and the ``hot`` scenario is
what enforcement costs: target normalisation, key extraction, SHA-256, cache lookup, GeoIP lookup,
policy evaluation and the identity headers.

Run as ``python bench/passthrough.py --listen 127.0.0.1:PORT --upstream URL [--workers N]``; with N > 1
it starts N copies of itself sharing the port (SO_REUSEPORT) and waits for them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys

from aiohttp import web

from proxy.forward import Forwarder, UpstreamTimeout, UpstreamUnavailable
from proxy.headers import upstream_headers
from proxy.server import ProxyServer, RequestIds
from proxy.upstreams import UpstreamTable

__all__ = ["PassthroughHandler", "main"]


class PassthroughHandler:
    """Forwards everything: pick the upstream, rewrite hop-by-hop/forwarding headers, stream."""

    def __init__(self, upstreams: UpstreamTable, forwarder: Forwarder) -> None:
        self._upstreams = upstreams
        self._forwarder = forwarder
        self.ids = RequestIds()  # ProxyServer reads it for its error answers

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = self.ids.next()
        path_qs = request.raw_path
        upstream = self._upstreams.pick(path_qs.partition("?")[0], request.host)
        if upstream is None:
            return web.Response(status=404)
        forwarded = upstream_headers(
            request.headers.items(),
            peer=request.remote or "",
            peer_trusted=False,
            scheme="http",
            host=request.host,
            key_headers=frozenset(),
            identity={"X-Request-Id": request_id},
        )
        try:
            return await self._forwarder.forward(
                request, upstream, path_qs, forwarded, {"X-Request-Id": request_id}
            )
        except UpstreamTimeout:
            return web.Response(status=504)
        except UpstreamUnavailable:
            return web.Response(status=502)


async def serve(host: str, port: int, upstream: str, *, reuse_port: bool) -> None:
    forwarder = Forwarder(connect_timeout=5.0, read_timeout=60.0)
    await forwarder.start()
    handler = PassthroughHandler(UpstreamTable([], upstream), forwarder)
    server = ProxyServer(handler, access_log=None, auto_decompress=False)  # type: ignore[arg-type]
    runner = web.ServerRunner(server)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await forwarder.close()


def _supervise(argv: list[str], workers: int) -> int:
    """Start ``workers`` single-process copies on the shared port; stop them all on SIGTERM/SIGINT."""
    children = [
        subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--workers=1", "--reuse-port"])
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
