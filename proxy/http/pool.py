"""Keep-alive connections to upstreams: open, reuse, bound, close.

aiohttp shell, one level below ``ClientSession``. Each connection is aiohttp's own client protocol
(``aiohttp.client_proto.ResponseHandler``: its C HTTP response parser, its body ``StreamReader`` with
flow control, its read timeout, whose deadlines the pool checks with one timer), opened with the event
loop's ``create_connection``. The session, request and connector objects above it are left out: on
the proxy's hot path they cost about 250 µs of CPU per request on the bench machine, three times the
whole aiohttp server, for features a proxy turns off anyway (cookies, redirects, auto headers,
decompression, tracing).

A connection lent to a relay (``proxy.http.relay``) hands what it reads to it instead of aiohttp's
parser (``Connection.relay``); its deadlines are the pool's all the same.

What this module adds is only the pool: idle connections per upstream, most recently used first; a
bound on open connections shared by all upstreams (idle ones to other upstreams are closed to make
room, otherwise the request waits, at most the connect timeout); a connect timeout; an idle timeout,
after which a connection nobody used is closed (one timer per pool, not per connection); and a
deadline on waiting for the client an exchange serves (for the next piece of its request body, or
for it to take the answer): a client that stalls for the read timeout is aborted, which ends the
exchange, so no client holds an upstream connection without moving. A connection goes back to the
pool only when its answer was read to the end and neither side asked to close. An answer with
neither a length nor chunked framing ends where the upstream closes the connection (RFC 9112 6.3;
ClientSession reads it so too), so its connection never goes back; a reset instead of a clean close
cuts it short. All these deadlines are checked by one timer, which runs while a connection is busy
or a request waits.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import ssl
import struct
import termios
from collections import deque
from typing import Protocol
from urllib.parse import urlsplit

from proxy.http._aiohttp import ClientPayloadError, ResponseHandler

__all__ = ["Client", "Connection", "ConnectionPool", "Endpoint", "Relaying"]

# aiohttp's client defaults: a response head larger than this is refused as malformed.
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190


def queued(transport: asyncio.BaseTransport | None) -> int:
    """Bytes written to ``transport`` that its peer has not taken yet: the transport's own buffer plus
    the kernel's send queue (SIOCOUTQ). The kernel's part matters: a socket reports itself writable
    only once a third of its (autotuned, often megabytes) buffer is free, so a slow reader's progress
    shows in the transport's buffer only in rare large steps."""
    if transport is None:
        return 0
    total: int = transport.get_write_buffer_size()  # type: ignore[attr-defined]
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            total += int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])
    return total


def _deadline(waiter: tuple[float, asyncio.Future[None]]) -> float:
    return waiter[0]


class Client(Protocol):
    """The client side of an exchange, as far as the pool needs it: what it has yet to take, and a way
    to cut it off."""

    def unsent(self) -> int: ...

    def abort(self) -> None: ...


class Relaying(Protocol):
    """What a connection relaying an answer hands what it reads to (``proxy.http.relay.Relay``), in
    place of aiohttp's parser."""

    def feed(self, data: bytes) -> None: ...

    def upstream_lost(self, exc: BaseException | None) -> None: ...

    def timed_out(self) -> None: ...


class Connection(ResponseHandler):
    """One upstream connection: aiohttp's client protocol plus which endpoint it belongs to."""

    def __init__(self, loop: asyncio.AbstractEventLoop, endpoint: Endpoint) -> None:
        super().__init__(loop)
        self.loop = loop  # asyncio.get_running_loop() costs a getpid() syscall per call on Python 3.11
        self.endpoint = endpoint
        self.skips_payload = False
        self.idle_since = 0.0  # loop time it last went back to the pool
        self.counted = True  # still counted in the pool's open connections
        self.read_deadline: float | None = None  # loop time the read timeout fires; None: not reading
        self.client: Client | None = None  # the client this connection's exchange serves
        self.client_deadline: float | None = None  # loop time the wait on the client ends; None: not waiting
        self.client_unsent = 0  # what the client had yet to take when that wait began or last moved
        self.upload_unsent: int | None = None  # body bytes queued for the upstream when its drain began
        self.relayer: object = None  # its proxy.http.relay.Relay, made the first time it relays
        self.relay: Relaying | None = None  # relaying an answer: it gets the bytes, not aiohttp's parser

    # aiohttp's ResponseHandler arms a loop timer for its read timeout when a request is sent and again
    # on every chunk received, and cancels it when the answer ends: two timers made and closed per
    # request (about 8% of a hot request's CPU under uvloop). Here those hooks only move a deadline;
    # the pool checks the deadlines of busy connections with one timer (ConnectionPool._check_deadlines).
    def _reschedule_timeout(self) -> None:
        timeout = self._read_timeout
        self.read_deadline = self.loop.time() + timeout if timeout else None

    def _drop_timeout(self) -> None:
        self.read_deadline = None

    def start_client_timeout(self) -> None:
        """The exchange waits on its client (its body, or its taking the answer): past the read timeout
        without progress the pool aborts the client. ``client_deadline = None`` stops it."""
        timeout = self._read_timeout
        self.client_deadline = self.loop.time() + timeout if timeout else None
        self.client_unsent = self.client.unsent() if self.client is not None else 0

    def unsent(self) -> int:
        """Bytes written to the upstream that it has not taken yet."""
        return queued(self.transport)

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay is None:
            super().data_received(data)
            return
        timeout = self._read_timeout
        if timeout:
            self.read_deadline = self.loop.time() + timeout
        relay.feed(data)

    def _on_read_timeout(self) -> None:
        relay = self.relay
        if relay is None:
            super()._on_read_timeout()
        else:
            relay.timed_out()

    def connection_lost(self, exc: BaseException | None) -> None:
        relay = self.relay
        if relay is not None:
            relay.upstream_lost(exc)
        # aiohttp ends a body read until EOF cleanly however the connection ended; only a clean close
        # ends it, a reset cuts it short (a length or chunked body cut short fails in aiohttp already).
        payload = self._payload
        if exc is not None and payload is not None and not payload.is_eof():
            payload.set_exception(ClientPayloadError(f"answer cut short: {exc!r}"))
        super().connection_lost(exc)

    def expect_answer(self, *, head: bool, read_timeout: float | None) -> None:
        """Set the parser for the next answer: a HEAD answer has headers only."""
        if head != self.skips_payload or self._parser is None:
            self.skips_payload = head
            self.set_response_params(
                skip_payload=head,
                read_until_eof=True,  # no length, not chunked: the body ends with the connection
                auto_decompress=False,
                read_timeout=read_timeout,
                max_line_size=MAX_LINE_SIZE,
                max_field_size=MAX_FIELD_SIZE,
            )


class Endpoint:
    """Where one upstream base URL connects, and its idle connections."""

    __slots__ = ("host", "host_header", "idle", "port", "server_hostname", "tls")

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.host_header = parts.netloc
        self.server_hostname = self.host if self.tls else None
        self.idle: deque[Connection] = deque()


class ConnectionPool:
    """Idle keep-alive connections per upstream base URL, with one bound on all open connections."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        tls: ssl.SSLContext,
        limit: int,
        idle_timeout: float = 15.0,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._tls = tls
        self._limit = limit
        self._idle_timeout = idle_timeout
        self._sweep_at: asyncio.TimerHandle | None = None
        # Deadlines (busy connections' reads and waits on clients, requests waiting for room) are checked
        # this often: a read timeout fires between read_timeout and read_timeout plus this interval after
        # the last byte.
        self._check_every = min(read_timeout / 4, connect_timeout / 4, 1.0)
        self._check_at: asyncio.TimerHandle | None = None
        self._busy: set[Connection] = set()
        self._endpoints: dict[str, Endpoint] = {}
        self._open = 0
        # Requests waiting for room, first come first served, with the loop time each gives up. All wait
        # connect_timeout, so the deadlines grow from left to right and only the left end is checked.
        self._waiters: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def waiting(self) -> int:
        """Requests waiting for room under the bound."""
        return sum(1 for _, waiter in self._waiters if not waiter.done())

    def endpoint(self, base: str) -> Endpoint:
        endpoint = self._endpoints.get(base)
        if endpoint is None:
            endpoint = self._endpoints[base] = Endpoint(base)
        return endpoint

    async def acquire(self, endpoint: Endpoint, *, head: bool) -> tuple[Connection, bool]:
        """A connection ready for one request, and whether it was reused from the pool.

        Raises ``OSError`` (refused, unreachable, TLS failure) or ``TimeoutError`` (no room under the bound
        within the connect timeout, or the connect timeout).
        """
        if self._closed:
            raise RuntimeError("the connection pool is closed")
        connection = self.take_idle(endpoint, head=head)
        if connection is not None:
            return connection, True
        deadline: float | None = None
        while self._open >= self._limit:
            if not self._close_an_idle_connection():
                loop = asyncio.get_running_loop()
                waiter = loop.create_future()
                if deadline is None:
                    deadline = loop.time() + self._connect_timeout
                    self._waiters.append((deadline, waiter))
                else:  # woken, and the room was taken meanwhile: back in line by its first deadline
                    bisect.insort(self._waiters, (deadline, waiter), key=_deadline)
                self._check_soon(loop)
                try:
                    await waiter
                except BaseException:
                    if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                        self._wake_one()  # woken, then cancelled: pass the turn on
                    else:
                        waiter.cancel()
                    raise
        self._open += 1
        try:
            connection = await self._connect(endpoint)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        connection.expect_answer(head=head, read_timeout=self._read_timeout)
        self._lend(connection)
        return connection, False

    def take_idle(self, endpoint: Endpoint, *, head: bool = False) -> Connection | None:
        """The most recently used idle connection to ``endpoint``, lent; None when there is none."""
        idle = endpoint.idle
        while idle:
            connection = idle.pop()
            if connection.is_connected() and not connection.should_close:
                connection.expect_answer(head=head, read_timeout=self._read_timeout)
                self._lend(connection)
                return connection
            self.discard(connection)
        return None

    def _lend(self, connection: Connection) -> None:
        self._busy.add(connection)
        if self._check_at is None:
            self._check_soon(connection.loop)

    def _check_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._check_at is None and not self._closed:
            self._check_at = loop.call_later(self._check_every, self._check_deadlines)

    def _check_deadlines(self) -> None:
        """Fail the reads and abort the clients whose deadline has passed, refuse the requests that
        waited too long for room; come back while any connection is busy or any request waits."""
        self._check_at = None
        busy, waiters = self._busy, self._waiters
        if not busy and not waiters:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        # A wait on a peer that is taking what it was sent is renewed: progress counts, not speed (as
        # nginx's send_timeout), so a slow but steady reader is kept.
        for connection in list(busy):
            deadline = connection.read_deadline
            if deadline is not None and deadline <= now:
                draining = connection.upload_unsent
                unsent = connection.unsent() if draining is not None else 0
                if draining is not None and unsent < draining:
                    connection.upload_unsent = unsent
                    connection.start_timeout()  # the upstream is reading the body: renewed
                else:
                    connection.read_deadline = None
                    connection._on_read_timeout()  # aiohttp's own: SocketTimeoutError to the reader
            deadline = connection.client_deadline
            if deadline is not None and deadline <= now:
                client = connection.client
                if client is not None and client.unsent() < connection.client_unsent:
                    connection.start_client_timeout()  # it took some of the answer: renewed
                else:
                    connection.client_deadline = None
                    if client is not None:
                        client.abort()  # the exchange then ends as for a client that left
        while waiters and (waiters[0][0] <= now or waiters[0][1].done()):
            _, waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_exception(
                    TimeoutError(f"no upstream connection came free within {self._connect_timeout} s")
                )
        self._check_soon(loop)

    async def _connect(self, endpoint: Endpoint) -> Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, connection = await loop.create_connection(
                lambda: Connection(loop, endpoint),
                endpoint.host,
                endpoint.port,
                ssl=self._tls if endpoint.tls else None,
                server_hostname=endpoint.server_hostname,
            )
        return connection

    def release(self, connection: Connection) -> None:
        """Back to the pool if it can carry another request, else closed."""
        self._busy.discard(connection)
        connection.read_deadline = connection.client_deadline = connection.client = None
        connection.upload_unsent = None
        if self._closed or connection.should_close or not connection.is_connected():
            self.discard(connection)
            return
        waiters = self._waiters
        while waiters and waiters[0][1].done():  # gave up (cancelled, timed out): not waiting any more
            waiters.popleft()
        if waiters and self._open >= self._limit:
            # Someone waits for room under the bound, possibly for another upstream: make it.
            self.discard(connection)
            return
        loop = connection.loop
        connection.idle_since = loop.time()
        connection.endpoint.idle.append(connection)
        if self._sweep_at is None:
            self._sweep_at = loop.call_later(self._idle_timeout, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for ``idle_timeout``; come back when the next one will be."""
        self._sweep_at = None
        now = asyncio.get_running_loop().time()
        oldest: float | None = None
        for endpoint in self._endpoints.values():
            idle = endpoint.idle
            while idle and now - idle[0].idle_since >= self._idle_timeout:
                self.discard(idle.popleft())  # the least recently used end
            if idle and (oldest is None or idle[0].idle_since < oldest):
                oldest = idle[0].idle_since
        if oldest is not None and not self._closed:
            delay = max(oldest + self._idle_timeout - now, 0.0)
            self._sweep_at = asyncio.get_running_loop().call_later(delay, self._sweep)

    def discard(self, connection: Connection) -> None:
        """Close a connection that must not carry another request (broken, half-used, unwanted)."""
        self._busy.discard(connection)
        connection.abort()
        if connection.counted:  # a second discard must not free a second place under the bound
            connection.counted = False
            self._open -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _close_an_idle_connection(self) -> bool:
        for endpoint in self._endpoints.values():
            if endpoint.idle:
                self.discard(endpoint.idle.popleft())  # the least recently used
                return True
        return False

    async def close(self) -> None:
        self._closed = True
        for timer in (self._sweep_at, self._check_at):
            if timer is not None:
                timer.cancel()
        self._sweep_at = self._check_at = None
        for endpoint in self._endpoints.values():
            while endpoint.idle:
                self.discard(endpoint.idle.popleft())
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(RuntimeError("the connection pool is closed"))
        self._waiters.clear()
