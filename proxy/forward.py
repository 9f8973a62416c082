"""The upstream half of the proxy: send an authorized request on and stream the answer back.

aiohttp shell. One pooled keep-alive ``ClientSession`` is shared by every request. Bodies are streamed in
both directions in bounded chunks, never held whole, and bytes pass untouched: no decompression, no
cookie jar, no redirects, no automatic headers, the path and query sent exactly as given.

Failures are translated at this edge, in ``translate_client_error`` only:

- before the response has started, an unreachable upstream raises ``UpstreamUnavailable`` and a timeout
  raises ``UpstreamTimeout`` (both chained to the aiohttp exception), so the caller can answer 502/504;
- after the response has started, the status is already on the wire: the client connection is aborted
  so the client sees a truncated response, never a clean short one, and a warning is logged;
- when the client goes away, the upstream request is dropped quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from yarl import URL

from .errors import ConfigError, SignalgateError
from .headers import downstream_headers
from .upstreams import Upstream

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "Forwarder",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "translate_client_error",
]

log = logging.getLogger("signalgate.forward")

CHUNK_SIZE = 64 * 1024
# nginx's status for "the client closed the connection before the answer": only ever seen in logs.
CLIENT_CLOSED_REQUEST = 499

# aiohttp adds these unless told not to; a proxy must send only what the client sent.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")


class UpstreamUnavailable(SignalgateError):
    """The upstream could not be reached or broke the exchange before answering (502)."""


class UpstreamTimeout(SignalgateError):
    """The upstream did not accept the connection or answer in time (504)."""


def translate_client_error(exc: BaseException, upstream: str) -> UpstreamUnavailable | UpstreamTimeout:
    """The one place aiohttp client failures become ours; the caller chains ``exc``.

    ``asyncio.TimeoutError`` covers aiohttp's ``ServerTimeoutError`` family (connect and read timeouts);
    every other ``aiohttp.ClientError`` or ``OSError`` means the upstream is unavailable.
    """
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout(f"upstream {upstream} timed out: {type(exc).__name__}: {exc}")
    return UpstreamUnavailable(f"upstream {upstream} unavailable: {type(exc).__name__}: {exc}")


class _ClientBody:
    """Streams the client's request body and remembers whether reading it failed (client gone)."""

    __slots__ = ("client_gone", "content")

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self.content = content
        self.client_gone = False

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self.content
        while True:
            try:
                chunk = await content.read(CHUNK_SIZE)
            except Exception:
                self.client_gone = True
                raise
            if not chunk:
                return
            yield chunk


class Forwarder:
    """Sends requests to upstreams over one pooled client session; ``start``/``close`` bound its life."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        verify_tls: bool = True,
        ca_file: str | None = None,
        limit: int = 1000,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._limit = limit
        self._ssl: ssl.SSLContext | bool
        if verify_tls:
            try:
                self._ssl = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError("ca_file", ca_file, f"cannot load CA certificates: {exc}") from exc
        else:
            self._ssl = False  # aiohttp: no certificate verification
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(limit=self._limit, ssl=self._ssl)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            raise_for_status=False,
            trust_env=False,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def forward(
        self,
        request: web.BaseRequest,
        upstream: Upstream,
        path_qs: str,
        headers: list[tuple[str, str]],
        response_headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        """Send ``request`` to ``upstream`` and stream the answer back to the client.

        ``path_qs`` is the already-normalised path and query, sent byte for byte. ``headers`` come from
        ``proxy.headers.upstream_headers``; ``response_headers`` (the proxy's own, such as X-Request-Id)
        replace any the upstream sent under the same names. Raises ``UpstreamUnavailable`` or
        ``UpstreamTimeout`` only before anything was sent to the client.
        """
        session = self._session
        if session is None:
            raise RuntimeError("Forwarder.start() has not been awaited")
        url = URL(upstream.base + upstream.base_path + path_qs, encoded=True)
        if not upstream.preserve_host:
            # aiohttp then derives Host from the upstream URL.
            headers = [(name, value) for name, value in headers if name.lower() != "host"]
        body = _ClientBody(request.content) if request.body_exists else None
        try:
            answer = await session.request(
                request.method,
                url,
                headers=headers,
                data=None if body is None else body.chunks(),
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError) as exc:
            if body is not None and body.client_gone:
                log.debug("client went away during upload to %s", upstream.base)
                return web.Response(status=CLIENT_CLOSED_REQUEST)
            raise translate_client_error(exc, upstream.base) from exc
        try:
            return await self._relay(request, answer, upstream, body, response_headers)
        finally:
            answer.close()  # no-op for a fully read answer, whose connection is already back in the pool

    async def _relay(
        self,
        request: web.BaseRequest,
        answer: aiohttp.ClientResponse,
        upstream: Upstream,
        body: _ClientBody | None,
        extra: Mapping[str, str] | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=answer.status, reason=answer.reason)
        for name, value in downstream_headers(answer.headers.items()):
            response.headers.add(name, value)
        if extra:
            response.headers.update(extra)
        try:
            await response.prepare(request)
        except ConnectionError:
            return response  # the client is gone; nothing to tell it
        content = answer.content
        while True:
            try:
                chunk = await content.read(CHUNK_SIZE)
            except (aiohttp.ClientError, OSError) as exc:
                if body is not None and body.client_gone:
                    log.debug("client went away during upload to %s", upstream.base)
                else:
                    error = translate_client_error(exc, upstream.base)
                    log.warning(
                        "%s %s: aborting the client connection after the response started: %s",
                        request.method,
                        request.path,
                        error,
                    )
                _abort(request, response)
                return response
            if not chunk:
                break
            try:
                await response.write(chunk)
            except ConnectionError:
                return response  # the client is gone; ``answer.close()`` drops the upstream side
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        answer.release()
        return response


def _abort(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Cut the client connection so a partial body cannot pass for a complete one."""
    response.force_close()
    transport = request.transport
    if transport is not None:
        transport.abort()
