"""The proxy's client side: HTTP/1.1 connections read with aiohttp's C parser, one loop per connection.

aiohttp shell, below ``aiohttp.web``. aiohttp's ``HttpRequestParser`` (llhttp) does everything that
decides what a request *is*: the request line, header syntax and size limits, Content-Length versus
Transfer-Encoding, chunked decoding, and it refuses what it cannot frame. Request bodies come as aiohttp
``StreamReader``s with its flow control; streamed answers go out through aiohttp's ``StreamWriter`` (its
C header serialiser refuses control characters, its chunked encoder frames bodies of unknown length).
What is ours is the small part around them on which ``aiohttp.web`` spent about 50 µs of CPU per
request on the bench machine: requests answered in order, and whole answers written with one
``transport.write``.

Two ways a request is handled, in the same order on a connection:

- the callback path: a request without a body that comes while the connection is free (nothing in
  hand, the client reading its answers) is handed to the handler's ``start`` from ``data_received``;
  the handler decides and starts the answer there (on a cache hit, its relay: ``proxy.http.relay``),
  and ``request.finish()`` says when it is over, from whichever callback ends it; no task, future or
  await per request. What the handler must wait for (a key not cached, an admission doing IO) is
  handed back and awaited by the connection's task;
- the task path: one task per connection (not per request) takes the rest, in order: requests with a
  body (streamed up by ``proxy.http.forward``), requests refused by the parser, requests queued
  behind another, and every request of a handler without ``start``.

Connection rules, the same as ``aiohttp.web``'s where it has one:

- requests on a connection are answered in order (pipelining); at most ``MAX_QUEUED`` parsed requests
  wait, then reading pauses until the queue has drained to half; while the answers written wait past the
  transport's high-water mark (the client is not reading) no request is taken and reading pauses too;
  a client that reads none of them for ``KEEPALIVE_TIMEOUT`` is cut (a reset);
- a request the parser refuses is answered by ``Handler.refuse`` and the connection closes after it;
  requests that came in the same read before it are dropped unanswered and unhandled, as aiohttp.web
  does (the parser keeps them to itself once it fails); so is one the parser took but whose framing
  ``proxy.core.framing`` refuses (``Transfer-Encoding: gzip, chunked``), requests before it in the same
  read being answered as usual;
- an answer that started and did not finish (the handler raised, or shutdown cancelled it) ends with a
  reset: a clean close would pass it for complete over HTTP/1.0 with no length;
- keep-alive unless the client asked to close (HTTP/1.0 without ``keep-alive``, ``Connection: close``),
  the answer has no framing, the listener is shutting down, or an upgrade was asked for (what follows an
  upgrade request is not HTTP); idle connections close after ``KEEPALIVE_TIMEOUT``;
- a request body the handler did not read is drained (up to ``LINGER_BYTES`` within ``LINGER_SECONDS``)
  so the answer is not lost to a reset; past either bound the connection closes instead;
- a client that half-closes after its requests still gets their answers (not over TLS, which cannot
  stay half-open), then the connection closes; one that goes away, ends a body short or sends a body
  the parser refuses midway sets an error on that body; the handler finishes the request (its log
  line is written) and its writes become no-ops once the client is gone;
- a connection waiting for a request, a partial head included, counts as idle;
- ``shutdown(grace)``: idle connections close at once, busy ones after their current answer (with
  ``Connection: close``; a request body still arriving is read); requests still running after
  ``grace`` seconds are cancelled, as is waiting on a client to read its answers (it is cut).

Answers always say HTTP/1.1 (RFC 9112 2.5) and carry a ``Date`` when the sender gave none (RFC 9110
6.6.1); the proxy adds no ``Server`` and no default ``Content-Type``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core.framing import transfer_coding_problem
from proxy.core.redact import logged_path
from proxy.http._aiohttp import (
    EMPTY_PAYLOAD,
    BaseProtocol,
    HttpProcessingError,
    HttpRequestParser,
    RequestPayloadError,
    StreamReader,
    TransferEncodingError,
)
from proxy.http.request import ClientSide, Clock, Request

__all__ = [
    "KEEPALIVE_TIMEOUT",
    "LINGER_BYTES",
    "LINGER_SECONDS",
    "MAX_QUEUED",
    "ClientConnection",
    "Handler",
    "Listener",
    "serve",
]

log = logging.getLogger("signalgate.listener")

MAX_QUEUED = 32  # parsed requests waiting on one connection (aiohttp.web's MAX_MSG_QUEUE_SIZE)
READ_BUFSIZE = 2**16  # request body buffer before reading pauses (aiohttp.web's read_bufsize)
KEEPALIVE_TIMEOUT = 75.0  # seconds an idle keep-alive connection stays open (aiohttp.web's default)
LINGER_BYTES = 1024 * 1024  # unread request body drained after an answer before giving up
LINGER_SECONDS = 5.0
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with a reset, dropping what is unsent


class Handler(Protocol):
    """What the listener calls: ``__call__`` answers a request; ``refuse`` answers what the parser refused.

    A handler may also have ``start(request)``: it handles a request as far as it goes without waiting,
    from ``data_received``, and returns None (answered, or its answer under way: ``request.finish()``
    says when it is over) or what is left to await. The listener then calls it for every request
    without a body that comes while the connection is free (``ClientConnection._take``).
    """

    async def __call__(self, request: Request) -> None: ...

    def refuse(self, request: Request, error: HttpProcessingError) -> None: ...

    def fail(self, request: Request, error: BaseException) -> None: ...


class _Refused:
    """Stands in for a message the parser could not read, so it can be answered in its turn."""

    __slots__ = ("error", "headers")
    method = "GET"
    path = ""
    version = (1, 1)
    should_close = True
    upgrade = False

    def __init__(self, error: HttpProcessingError) -> None:
        self.error = error
        self.headers = _NO_HEADERS


class ClientConnection(BaseProtocol):
    """One client connection: the parser feeds a queue, one task answers it in order."""

    __slots__ = (
        "_current",
        "_pending",
        "_queue",
        "_stalled_since",
        "_start",
        "_stop",
        "_taken",
        "_taking",
        "_unsent",
        "_waiter",
        "closing",
        "idle_since",
        "input_done",
        "listener",
        "peer",
        "task",
        "tls",
    )

    def __init__(self, listener: Listener) -> None:
        loop = listener.loop
        parser = HttpRequestParser(
            self,
            loop,
            READ_BUFSIZE,
            max_line_size=listener.max_line_size,
            max_field_size=listener.max_field_size,
            payload_exception=RequestPayloadError,
            auto_decompress=False,
            max_msg_queue_size=MAX_QUEUED,
        )
        super().__init__(loop, parser)
        self.listener = listener
        self.peer: str | None = None
        self.tls = False
        self.closing = False  # answer the request in hand, then close
        self.input_done = False  # nothing more will be parsed: EOF, an upgrade, or a refused request
        self.idle_since: float | None = None
        self._queue: deque[tuple[Any, StreamReader]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._current: Request | None = None  # the request the task is handling
        # The callback path: a handler with ``start`` handles a request as far as it can from
        # data_received (proxy.http.handler); the task takes over what must wait (``_pending``).
        self._start: Callable[[Request], Awaitable[None] | None] | None = getattr(
            listener.handler, "start", None
        )
        self._taken: Request | None = None  # the request taken in data_received, until it is finished
        self._pending: Awaitable[None] | None = None  # what is left of it, for the task to await
        self._taking = False
        self._stop = False  # the request taken was the last on this connection: the task closes it
        self._stalled_since: float | None = None  # see check_stalled
        self._unsent = 0
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        self.tls = transport.get_extra_info("sslcontext") is not None
        self.listener.connections.add(self)
        self.task = self._loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self.input_done or self._parser is None:
            return
        try:
            messages, upgraded, _tail = self._parser.feed_data(data)
        except HttpProcessingError as exc:
            messages, upgraded = [(_Refused(exc), EMPTY_PAYLOAD)], False
            self.input_done = True
            # A body being read when the bytes turned bad will never complete: fail it now.
            self._fail_bodies(RequestPayloadError(f"malformed request body: {exc.message}"))
        else:
            for index, (message, _payload) in enumerate(messages):
                problem = transfer_coding_problem(message.headers.getall("Transfer-Encoding", ()))
                if problem is not None:  # it and everything after it on this connection go unread
                    messages = [*messages[:index], (_Refused(TransferEncodingError(problem)), EMPTY_PAYLOAD)]
                    upgraded = False
                    self.input_done = True
                    break
        if messages:
            self._queue.extend(messages)
            if self._start is not None and self._waiter is not None:
                self._take()
            else:
                self._wake()
            if len(self._queue) >= MAX_QUEUED and not self._buffer_paused:
                self._pause_reading_for_buffer()
        if upgraded:
            self.input_done = True  # what follows an upgrade request is not HTTP

    def _take(self) -> None:
        """Start queued requests here, without the task, while the connection is free: the task parked
        idle, nothing taken, the client reading its answers. A request with a body, or refused, and what
        a request taken here must wait for, go to the task."""
        start = self._start
        queue = self._queue
        parser = self._parser
        assert start is not None and parser is not None
        self._taking = True
        try:
            while queue and self._taken is None and not (self.closing or self._stop or self._paused):
                if self._buffer_paused:
                    break  # a backlog: the task drains it and resumes reading (see _serve)
                message, payload = queue[0]
                if payload is not EMPTY_PAYLOAD or isinstance(message, _Refused) or self.transport is None:
                    break
                queue.popleft()
                parser.message_consumed()
                request = self._taken = Request(message, payload, self)
                self.idle_since = None
                rest = start(request)
                if rest is not None:
                    self._pending = rest
                    break
        finally:
            self._taking = False
        if self._pending is not None or self._stop or (queue and self._taken is None):
            self._wake()
        elif self._taken is None:
            self.idle_since = self._loop.time()

    def finished(self, request: Request) -> None:
        """A request taken in ``_take`` is over (the task was not waiting for it): go on from here."""
        if request is not self._taken:
            return  # the task's own request: it goes on by itself
        self._taken = None
        if not request.keep_alive or self.closing or self.transport is None:
            self._stop = True
            self._wake()
        elif not self._taking:
            if self._queue:
                self._take()
            else:
                self.idle_since = self._loop.time()

    def _relay_now(self) -> ClientSide | None:
        request = self._taken or self._current
        return request.relay if request is not None else None

    def pause_writing(self) -> None:
        super().pause_writing()
        relay = self._relay_now()
        if relay is not None:
            relay.client_paused()

    def eof_received(self) -> bool | None:
        """The client will send nothing more. A clean end (HTTP/1.0 style half-close) still gets its
        answers when the transport can stay half-open; a body cut short fails and the connection closes."""
        self.input_done = True
        cut_short = False
        if self._parser is not None:
            try:
                self._parser.feed_eof()
            except HttpProcessingError as exc:
                cut_short = True  # the client left mid-body: gone, as for a reset
                self._fail_bodies(ConnectionResetError(f"request body cut short: {exc}"))
        self._wake()
        if cut_short or self.tls or (self._current is None and self._taken is None and not self._queue):
            return None  # close now (TLS cannot stay half-open)
        return True  # answer what is in hand; _serve closes after it

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.input_done = self.closing = True
        self._fail_bodies(ConnectionResetError("the client closed the connection"))
        self._wake()
        self.listener.connections.discard(self)
        relay = self._relay_now()
        if relay is not None:
            relay.client_lost()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stalled_since = None  # the client has read what was waiting
        relay = self._relay_now()
        if relay is not None:
            relay.client_resumed()

    def check_stalled(self, now: float, deadline: float) -> None:
        """For the sweep while writing is paused: cut a client that has read nothing since ``deadline``.
        Progress counts, not speed (as nginx's ``send_timeout``): a slow but steady reader is kept."""
        unsent = self.transport.get_write_buffer_size() if self.transport is not None else 0
        if self._stalled_since is None or unsent < self._unsent:
            self._stalled_since, self._unsent = now, unsent
        elif self._stalled_since <= deadline:
            self.cut()

    def cut(self) -> None:
        """End with a reset. A close waits for the client to read what is unsent, and a plain abort (as a
        close) ends cleanly once the request is read: an answer cut short could pass for complete."""
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        transport.abort()

    def _fail_bodies(self, error: BaseException) -> None:
        """Wake anything waiting on a request body that will now never be complete."""
        current = self._current
        payloads = [payload for _, payload in self._queue]
        if current is not None:
            payloads.append(current.content)
        for payload in payloads:
            if payload is not EMPTY_PAYLOAD and not payload.is_eof() and payload.exception() is None:
                payload.set_exception(error)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def date(self) -> str:
        return self.listener.clock.date()

    @property
    def queued(self) -> bool:
        """Parsed requests (or a refusal) wait to be answered after the one in hand."""
        return bool(self._queue)

    def stop(self) -> None:
        """Close once the request in hand (if any) is answered; its body, if still coming, is still read."""
        self.closing = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _serve(self) -> None:
        handler = self.listener.handler
        queue = self._queue
        loop = self._loop
        try:
            while True:
                if self._stop:
                    break
                taken = self._taken
                if taken is not None:
                    if not await self._see_through(taken):
                        break
                    continue
                if not queue:
                    if self.input_done or self.closing or self.transport is None:
                        break
                    self.idle_since = loop.time()
                    self._waiter = loop.create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                        self.idle_since = None
                    continue
                if self._paused and not await self._catch_up():
                    break
                message, payload = queue.popleft()
                parser = self._parser
                if parser is not None:
                    parser.message_consumed()
                if self._buffer_paused and len(queue) <= MAX_QUEUED // 2:
                    self._resume_reading_for_buffer()
                    self.data_received(b"")  # parse what was held back
                request = Request(message, payload, self)
                if isinstance(message, _Refused):
                    handler.refuse(request, message.error)
                    break
                self._current = request
                try:
                    await handler(request)
                except Exception as exc:
                    request.keep_alive = False
                    if request.status == 0:
                        handler.fail(request, exc)
                    else:
                        log.exception(
                            "answer to %s %s failed midway", request.method, logged_path(request.raw_path)
                        )
                        self.cut()  # a short answer must not pass for complete
                    break
                except asyncio.CancelledError:  # shutdown's grace ran out
                    if request.status:
                        self.cut()  # likewise (HTTP/1.0 with no length would otherwise end cleanly)
                    raise
                finally:
                    self._current = None
                if not request.keep_alive or self.closing or self.transport is None:
                    break
                # A body withheld for "100 Continue" may never come: what arrives next could be the next
                # request, so it must not be read as this one's body. Close instead.
                if (
                    request.body_exists
                    and not payload.is_eof()
                    and (request.withheld_body or not await self._linger(payload))
                ):
                    break
        finally:
            transport = self.transport
            if transport is not None:
                transport.close()  # sends what is buffered first

    async def _see_through(self, request: Request) -> bool:
        """Wait for a request taken in ``_take`` to finish; whether the connection goes on after it."""
        pending, self._pending = self._pending, None
        try:
            if pending is not None:
                await pending
            await request.finished()
        except Exception as exc:
            request.keep_alive = False
            if request.status == 0:
                self.listener.handler.fail(request, exc)
            else:
                log.exception("answer to %s %s failed midway", request.method, logged_path(request.raw_path))
                self.cut()
            return False
        except asyncio.CancelledError:  # shutdown's grace ran out
            if request.status:
                self.cut()
            raise
        finally:
            self._taken = None
        return request.keep_alive and not self.closing and self.transport is not None

    async def _catch_up(self) -> bool:
        """Wait, reading nothing, for the client to read the answers waiting for it; False once it is gone.
        The kernel then pushes back on a client that sends and never reads, rather than its answers piling
        up here. Reading resumes in ``_serve`` as after a full queue."""
        self._pause_reading_for_buffer()
        try:
            await self._drain_helper()
        except ConnectionError:
            return False
        except asyncio.CancelledError:  # shutdown's grace ran out: a close would wait on the client
            self.cut()
            raise
        return self.transport is not None

    async def _linger(self, payload: StreamReader) -> bool:
        """Read and drop the rest of a request body nobody read; False when it was too much or too slow."""
        drained = 0
        try:
            async with asyncio.timeout(LINGER_SECONDS):
                while not payload.is_eof():
                    drained += len(await payload.readany())
                    if drained > LINGER_BYTES:
                        return False
        except Exception:  # too slow (TimeoutError), or the body failed: either way, do not reuse
            return False
        return True


class Listener:
    """The protocol factory for ``loop.create_server``, and the set of its open connections."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_line_size: int = 8190,
        max_field_size: int = 8190,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    ) -> None:
        self.handler = handler
        self.max_line_size = max_line_size
        self.max_field_size = max_field_size
        self.keepalive_timeout = keepalive_timeout
        self.loop = asyncio.get_running_loop()
        self.clock = Clock()
        self.connections: set[ClientConnection] = set()
        self._sweeper = self.loop.call_later(keepalive_timeout / 4, self._sweep)

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    def _sweep(self) -> None:
        """Close connections idle for longer than the timeout, cut those whose client read nothing for
        as long; one timer for all of them."""
        now = self.loop.time()
        deadline = now - self.keepalive_timeout
        for conn in list(self.connections):
            if conn.idle_since is not None and conn.idle_since <= deadline:
                conn.stop()
            elif conn.writing_paused:
                conn.check_stalled(now, deadline)
        self._sweeper = self.loop.call_later(self.keepalive_timeout / 4, self._sweep)

    async def shutdown(self, grace: float) -> None:
        """Close idle connections now and busy ones after their answer; cancel what runs past ``grace``."""
        self._sweeper.cancel()
        tasks = []
        for conn in list(self.connections):
            conn.stop()
            if conn.task is not None:
                tasks.append(conn.task)
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def serve(
    listener: Listener,
    host: str | None = None,
    port: int = 0,
    *,
    ssl: Any = None,
    reuse_port: bool = False,
    sock: socket.socket | None = None,
) -> asyncio.Server:
    """Bind and start accepting (or accept from ``sock``, bound and listening already: the supervisor's,
    shared by the workers); the caller closes the server, then awaits ``listener.shutdown``."""
    if sock is not None:
        return await listener.loop.create_server(listener, sock=sock, ssl=ssl, backlog=1024)
    return await listener.loop.create_server(
        listener, host, port, ssl=ssl, reuse_address=True, reuse_port=reuse_port or None, backlog=1024
    )
