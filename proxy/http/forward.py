"""The upstream half of the proxy: send an authorized request on and stream the answer back.

Connections come from ``proxy.http.pool`` (pooled and kept alive); request heads go through aiohttp's C
header serialiser (it refuses control characters). Two ways, by the request:

- without a body, or with a small one (``SMALL_BODY``, framed by Content-Length) that has come whole
  already: ``relay`` writes the head, and the body with it, in one write and the answer is relayed by
  ``proxy.http.relay`` from the connection's callbacks (httptools), synchronously when an idle
  connection is at hand; ``forward`` awaits the same relay;
- with any other body (still arriving, chunked, larger, or one whose signed digest must be checked
  before its last byte goes up): an ``Exchange`` (aiohttp's client protocol and parser) uploads the
  body from its own task while the answer is awaited, and the answer is streamed back below; the body
  goes through aiohttp's ``StreamWriter`` (its chunked encoder frames bodies of unknown length).

Answers go to the client through the listener's ``Request``, which frames them. Bodies
are streamed in both directions in bounded chunks and bytes pass untouched: no decompression, no
cookies, no redirects, no automatic headers, the path and query sent exactly as given.

An answer with a ``Content-Length`` of at most ``SMALL_BODY`` bytes is read whole before anything goes
to the client and sent with one write; a larger or unframed answer is streamed.

Failures are translated at this edge, in ``translate_client_error`` only:

- before the answer has started, an unreachable upstream or an answer that cannot be relayed (one the
  parser refuses, or a header the serialiser refuses) raises ``UpstreamUnavailable`` and a timeout
  raises ``UpstreamTimeout`` (both chained to the original exception), so the caller can answer
  502/504; a pooled connection the upstream had closed is retried once on a new connection when the
  request is idempotent and has no body;
- after a streamed answer has started, the status is already on the wire: the client connection is
  aborted so the client sees a truncated response, never a clean short one, and a warning is logged;
- when the client goes away, the upstream request is dropped quietly; so it is when the client
  stalls (sends no more of its body, or takes none of a streamed answer, for the read timeout): the
  pool then aborts the client connection (``ConnectionPool._check_deadlines``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Coroutine, Mapping

import aiohttp

from proxy.core.digest import BodyDigest
from proxy.core.errors import (
    ConfigError,
    ContentDigestMismatch,
    RequestBodyInvalid,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.core.headers import downstream_headers
from proxy.core.redact import logged_path
from proxy.core.upstreams import Upstream
from proxy.http._aiohttp import EMPTY_PAYLOAD, HttpProcessingError, StreamReader, StreamWriter, serialize_head
from proxy.http.exchange import CHUNK_SIZE, Exchange
from proxy.http.pool import Connection, ConnectionPool, Endpoint
from proxy.http.relay import (
    _FRAMING,
    CLIENT_CLOSED_REQUEST,
    SMALL_BODY,
    Done,
    Relay,
    _framing_and,
    translate_client_error,
)
from proxy.http.request import Fields, Request

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "SMALL_BODY",
    "Forwarder",
    "translate_client_error",
]

log = logging.getLogger("signalgate.forward")

# Safe to send again when a reused connection turns out to be closed before any answer (RFC 9110 9.2.2).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# What the upstream side raises: aiohttp's client errors, socket errors, an unparsable answer head.
_UPSTREAM_FAILURES = (aiohttp.ClientError, OSError, HttpProcessingError)
# What a pooled connection the upstream closed while idle looks like on the next request.
_STALE = (
    aiohttp.ServerDisconnectedError,  # closed cleanly
    aiohttp.ClientOSError,  # reset (aiohttp turns the socket's ConnectionResetError into this)
    aiohttp.ClientConnectionResetError,  # closed before the request could be written
    ConnectionResetError,
)


def _tls_context(verify_tls: bool, ca_file: str | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=ca_file if verify_tls else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("ca_file", ca_file, f"cannot load CA certificates: {exc}") from exc
    if not verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Forwarder:
    """Sends requests to upstreams over pooled keep-alive connections; ``start``/``close`` bound its life."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        verify_tls: bool = True,
        ca_file: str | None = None,
        limit: int = 1000,
        idle_timeout: float = 15.0,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._limit = limit
        self._idle_timeout = idle_timeout
        self._tls = _tls_context(verify_tls, ca_file)
        self._pool: ConnectionPool | None = None
        self._connecting: set[asyncio.Task[None]] = set()  # relays waiting for a connection

    @property
    def pool(self) -> ConnectionPool | None:
        return self._pool

    async def start(self) -> None:
        if self._pool is None:
            self._pool = ConnectionPool(
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
                tls=self._tls,
                limit=self._limit,
                idle_timeout=self._idle_timeout,
            )

    async def close(self) -> None:
        for task in list(self._connecting):
            task.cancel()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _started(self) -> ConnectionPool:
        pool = self._pool
        if pool is None:
            raise RuntimeError("Forwarder.start() has not been awaited")
        return pool

    def relay(
        self,
        request: Request,
        upstream: Upstream,
        path_qs: str,
        headers: list[tuple[str, str]],
        extra: Mapping[str, str] | None,
        done: Done,
        body: bytes = b"",
    ) -> None:
        """Send ``request`` to ``upstream`` with ``body`` (all of it: ``Request.whole_body``) and relay the
        answer to its client (``proxy.http.relay``); ``done(status, error)`` tells when it is over.
        Synchronous when an idle connection is at hand; otherwise a connection is opened (or waited
        for) first."""
        pool = self._started()
        endpoint = pool.endpoint(upstream.base)
        fields = _request_fields(request, upstream, endpoint.host_header, headers)
        head = serialize_head(f"{request.method} {upstream.base_path}{path_qs} HTTP/1.1", fields)
        if body:
            head += body
        # A stale connection is tried again only where resending cannot repeat or lose anything: an
        # idempotent method without a body (as the streaming path, whose body is spent once sent).
        again = not body and request.method in _IDEMPOTENT
        connection = pool.take_idle(endpoint)
        if connection is None:
            self._relay_later(self._relay_new(request, endpoint, upstream.base, head, extra, done))
            return

        def retry() -> None:
            self._relay_later(self._relay_new(request, endpoint, upstream.base, head, extra, done))

        Relay.on(connection, pool).start(request, head, upstream.base, extra, done, retry if again else None)

    def _relay_later(self, relaying: Coroutine[None, None, None]) -> None:
        """Run ``relaying`` (``_relay_new``) as a task, kept until it ends."""
        task = asyncio.get_running_loop().create_task(relaying)
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _relay_new(
        self,
        request: Request,
        endpoint: Endpoint,
        base: str,
        head: bytes,
        extra: Mapping[str, str] | None,
        done: Done,
    ) -> None:
        """Relay on a new connection (or one that came free under the bound)."""
        pool = self._started()
        try:
            connection, _ = await pool.acquire(endpoint, head=False)
        except OSError as exc:  # TimeoutError (connect timeout, no room in time) is an OSError too
            error = translate_client_error(exc, base)
            error.__cause__ = exc
            done(0, error)
            return
        except Exception as exc:  # the pool closed: the proxy is shutting down
            done(0, UpstreamUnavailable(f"upstream {base} unavailable: {exc}"))
            return
        except BaseException:
            done(0, UpstreamUnavailable(f"upstream {base}: the proxy is shutting down"))
            raise
        if request.client_gone:
            pool.release(connection)
            done(CLIENT_CLOSED_REQUEST, None)
            return
        Relay.on(connection, pool).start(request, head, base, extra, done)

    async def forward(
        self,
        request: Request,
        upstream: Upstream,
        path_qs: str,
        headers: list[tuple[str, str]],
        response_headers: Mapping[str, str] | None = None,
        *,
        body_check: BodyDigest | None = None,
    ) -> int:
        """Send ``request`` to ``upstream``, answer the client with what came back; the status sent.

        ``body_check`` (a signed Content-Digest) holds back the body's last byte until the digest is
        known to match; when it does not, the upload stops short and ``ContentDigestMismatch`` is
        raised (before the upstream answered), so the upstream never receives a whole forged body.

        ``path_qs`` is the already-normalised path and query, sent byte for byte. ``headers`` come from
        ``proxy.core.headers.upstream_headers``; ``response_headers`` (the proxy's own, such as X-Request-Id)
        replace any the upstream sent under the same names. Raises ``UpstreamUnavailable`` or
        ``UpstreamTimeout`` only before anything was sent to the client, ``RequestBodyInvalid`` when the
        client's body failed before the upstream answered; returns ``CLIENT_CLOSED_REQUEST`` when the
        client went away while its body was being sent.
        """
        body = request.whole_body(SMALL_BODY) if body_check is None else None
        if body is not None:  # no body, or a small one already here: relayed (proxy.http.relay)
            waiter: asyncio.Future[tuple[int, UpstreamUnavailable | UpstreamTimeout | None]]
            waiter = asyncio.get_running_loop().create_future()

            def done(status: int, error: UpstreamUnavailable | UpstreamTimeout | None) -> None:
                if not waiter.done():
                    waiter.set_result((status, error))

            self.relay(request, upstream, path_qs, headers, response_headers, done, body)
            status, error = await waiter
            if error is not None:
                raise error
            return status
        pool = self._started()
        endpoint = pool.endpoint(upstream.base)
        method = request.method
        fields = _request_fields(request, upstream, endpoint.host_header, headers)
        content = request.content if request.body_exists else None
        chunked = content is not None and not fields.has("content-length")
        if chunked:
            fields.append(("Transfer-Encoding", "chunked"))
        status_line = f"{method} {upstream.base_path}{path_qs} HTTP/1.1"
        retry = content is None and method in _IDEMPOTENT
        while True:
            try:
                connection, reused = await pool.acquire(endpoint, head=method == "HEAD")
            except OSError as exc:  # TimeoutError (connect timeout) is an OSError too
                raise translate_client_error(exc, upstream.base) from exc
            exchange = Exchange(connection, content, chunked=chunked, client=request, body_check=body_check)
            try:
                message, payload = await exchange.send(status_line, fields)
            except BaseException as exc:
                await exchange.end(pool, completed=False)
                if isinstance(exchange.body_error, ContentDigestMismatch):
                    raise exchange.body_error from None
                if exchange.body_error is not None:
                    raise RequestBodyInvalid(str(exchange.body_error)) from exchange.body_error
                if exchange.client_gone:
                    log.debug("client went away during upload to %s", upstream.base)
                    return CLIENT_CLOSED_REQUEST
                if not isinstance(exc, _UPSTREAM_FAILURES):
                    raise
                if reused and retry and isinstance(exc, _STALE):
                    retry = False
                    continue
                raise translate_client_error(exc, upstream.base) from exc
            break
        try:
            status = await self._answer(request, message, payload, exchange, upstream, response_headers)
        except BaseException:
            await exchange.end(pool, completed=False)
            raise
        await exchange.end(pool, completed=True)
        return status

    async def _answer(
        self,
        request: Request,
        message: object,
        payload: StreamReader,
        exchange: Exchange,
        upstream: Upstream,
        extra: Mapping[str, str] | None,
    ) -> int:
        status: int = message.code  # type: ignore[attr-defined]
        reason: str = message.reason  # type: ignore[attr-defined]
        fields = message.headers  # type: ignore[attr-defined]
        value = fields.get("Content-Length")
        length = int(value) if value is not None and value.isdigit() else None
        headers = _client_headers(fields, extra)
        if payload is not EMPTY_PAYLOAD and length is not None and length <= SMALL_BODY:
            try:
                body = await payload.read()
            except (aiohttp.ClientError, OSError) as exc:
                raise translate_client_error(exc, upstream.base) from exc
            try:
                request.respond(status, reason, headers, body)
            except ValueError as exc:  # nothing was sent
                raise translate_client_error(exc, upstream.base) from exc
            return status
        try:
            writer = await request.stream(status, reason, headers, length)
        except ConnectionError:
            return status  # the client is gone; nothing to tell it
        except ValueError as exc:  # nothing was sent
            raise translate_client_error(exc, upstream.base) from exc
        if writer is None:
            return status
        client = writer.protocol
        while True:
            try:
                chunk = await payload.read(CHUNK_SIZE)
            except (aiohttp.ClientError, OSError) as exc:
                if exchange.client_gone:
                    log.debug("client went away during upload to %s", upstream.base)
                else:
                    error = translate_client_error(exc, upstream.base)
                    log.warning(
                        "%s %s: aborting the client connection after the response started: %s",
                        request.method,
                        logged_path(request.raw_path),
                        error,
                    )
                request.abort()
                return status
            if not chunk:
                break
            try:
                await writer.write(chunk, drain=False)
                if client.writing_paused:
                    await _drain(writer, exchange.connection)
            except ConnectionError:  # the client is gone (or was cut off for not reading)
                exchange.connection.force_close()  # the answer was not read to its end
                return status
        with contextlib.suppress(ConnectionError):
            # Not drained: the upstream side is done, and a client that does not take the last bytes
            # holds only its own connection (as with Request.respond).
            writer.set_eof()
        return status


async def _drain(writer: StreamWriter, connection: Connection) -> None:
    """Wait for the client to take what was written; the pool aborts it past the read timeout."""
    connection.start_client_timeout()
    try:
        await writer.drain()
    finally:
        connection.client_deadline = None
    if writer.transport is None:  # aiohttp ends the wait quietly when the connection closes
        raise ConnectionResetError("the client connection closed")


def _client_headers(fields: Mapping[str, str], extra: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """The upstream's answer headers for the client: no hop-by-hop, no framing (the listener frames the
    answer itself), and the proxy's own ``extra`` in place of any of the same name."""
    if not extra:
        return downstream_headers(fields.items(), also_drop=_FRAMING)
    pairs = downstream_headers(fields.items(), also_drop=_framing_and(tuple(extra)))
    pairs.extend(extra.items())
    return pairs


def _request_fields(
    request: Request, upstream: Upstream, host_header: str, headers: list[tuple[str, str]]
) -> Fields:
    """The request's header fields as sent upstream: its own Host kept (``preserve_host``) or the
    upstream's put in its place."""
    if upstream.preserve_host:
        fields = Fields(headers)
        if request.host is None:  # HTTP/1.0 may omit Host; the HTTP/1.1 request sent on may not
            fields.append(("Host", host_header))
    else:
        fields = Fields(pair for pair in headers if pair[0].lower() != "host")
        fields.append(("Host", host_header))
    return fields
