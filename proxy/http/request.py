"""One request on a client connection, and the one way to answer it: framing, Date, keep-alive.

aiohttp shell, the answering half of ``proxy.http.listener``. Whole answers are serialised by aiohttp's C
header serialiser (it refuses CR/LF in any field) and written with one ``transport.write``; streamed
answers go through aiohttp's ``StreamWriter`` (its chunked encoder frames bodies of unknown length).
The listener frames every answer itself: Content-Length when known, else chunked (HTTP/1.0: the end of
the connection); no body for HEAD, 204 and 304.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any, Protocol

from multidict import CIMultiDictProxy

from proxy.http._aiohttp import EMPTY_PAYLOAD, StreamReader, StreamWriter, serialize_head
from proxy.http.pool import queued

__all__ = ["ClientSide", "Clock", "Fields", "Request"]

_NO_BODY = frozenset({204, 304})


class Fields(list[tuple[str, str]]):
    """Header pairs in the shape aiohttp's C serialiser reads (``.items()``), without a multidict."""

    __slots__ = ()

    def items(self) -> Fields:
        return self

    def has(self, lower_name: str) -> bool:
        return any(name.lower() == lower_name for name, _ in self)


class Clock:
    """The ``Date`` value, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def date(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True)
        return self._value


class ClientSide(Protocol):
    """What the client connection tells the relay bringing a request's answer (``proxy.http.relay.Relay``)."""

    def client_paused(self) -> None: ...

    def client_resumed(self) -> None: ...

    def client_lost(self) -> None: ...


class Connection(Protocol):
    """What a request needs of its client connection (``proxy.http.listener.ClientConnection``)."""

    peer: str | None
    closing: bool
    input_done: bool

    @property
    def transport(self) -> Any: ...

    @property
    def queued(self) -> bool: ...

    @property
    def loop(self) -> Any: ...

    def date(self) -> str: ...

    def cut(self) -> None: ...

    def finished(self, request: Request, /) -> None: ...


class Request:
    """One parsed request and the one way to answer it."""

    __slots__ = (
        "_conn",
        "_finished",
        "_waiter",
        "content",
        "continued",
        "headers",
        "keep_alive",
        "method",
        "raw_path",
        "relay",
        "remote",
        "status",
        "version",
    )

    def __init__(self, message: Any, payload: StreamReader, conn: Connection) -> None:
        self.method: str = message.method
        self.raw_path: str = message.path
        self.headers: CIMultiDictProxy[str] = message.headers
        self.version = message.version
        self.content = payload
        self.remote = conn.peer
        self.keep_alive = not message.should_close and not message.upgrade
        self.status = 0  # the status sent, 0 until an answer has started
        self.continued = False  # "100 Continue" was sent
        self.relay: ClientSide | None = None  # the relay bringing this request's answer (proxy.http.relay)
        self._conn = conn
        self._finished = False
        self._waiter: Any = None  # a future for ``finished``, made only when something waits

    @property
    def host(self) -> str | None:
        return self.headers.get("Host")

    @property
    def body_exists(self) -> bool:
        return self.content is not EMPTY_PAYLOAD

    @property
    def transport(self) -> Any:
        return self._conn.transport

    @property
    def client_gone(self) -> bool:
        return self._conn.transport is None

    def whole_body(self, limit: int) -> bytes | None:
        """The request's body when all of it has come already, framed by ``Content-Length``, and is at
        most ``limit`` bytes: read here, for one write upstream with the head. None (nothing read) for
        a body still arriving, chunked, failed or larger; b"" for a request without a body."""
        content = self.content
        if content is EMPTY_PAYLOAD:
            return b""
        if (
            not content.is_eof()
            or content.exception() is not None
            or content.total_bytes > limit
            or "Content-Length" not in self.headers
        ):
            return None
        return content.read_nowait()

    @property
    def withheld_body(self) -> bool:
        """The client waits for "100 Continue" before sending its body, and was not sent one."""
        return not self.continued and self.headers.get("Expect", "").lower() == "100-continue"

    def _framing(self, status: int, fields: Fields, length: int | None) -> bool:
        """Add Date, framing and Connection headers; True when a body follows the head."""
        conn = self._conn
        if not fields.has("date"):
            fields.append(("Date", conn.date()))
        body = self.method != "HEAD" and status not in _NO_BODY and status >= 200
        if length is not None:
            if status != 204 and status >= 200:  # a 304 or a HEAD answer states the length it stands for
                fields.append(("Content-Length", str(length)))
        elif body:
            if self.version >= (1, 1):
                fields.append(("Transfer-Encoding", "chunked"))
            else:
                self.keep_alive = False  # the end of the body is the end of the connection
        if (
            conn.closing
            or (conn.input_done and not conn.queued)  # nothing more will be read, nor answered
            or (  # a body withheld (see ClientConnection._serve) or failed: it cannot be drained
                self.body_exists
                and not self.content.is_eof()
                and (self.withheld_body or self.content.exception() is not None)
            )
        ):
            self.keep_alive = False
        if not self.keep_alive:
            fields.append(("Connection", "close"))
        elif self.version < (1, 1):
            fields.append(("Connection", "keep-alive"))
        return body

    def head(
        self, status: int, reason: str, headers: list[tuple[str, str]], length: int | None
    ) -> tuple[bytes, bool]:
        """The answer's head, framed (``length``: the body's, when known), and whether a body follows;
        for the caller to write. Refused with ``ValueError`` (a control character in a field)."""
        fields = Fields(headers)
        with_body = self._framing(status, fields, length)
        head = serialize_head(f"HTTP/1.1 {status} {reason}", fields)
        self.status = status
        return head, with_body

    def respond(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        """Send a whole answer with one write. ``headers`` carry no framing; Content-Length is added."""
        head, with_body = self.head(status, reason, headers, len(body))
        transport = self._conn.transport
        if transport is not None and not transport.is_closing():
            transport.write(head + body if with_body and body else head)

    async def stream(
        self, status: int, reason: str, headers: list[tuple[str, str]], length: int | None
    ) -> StreamWriter | None:
        """Send the head of an answer whose body follows through the returned writer (None: no body).

        ``length`` is the body's Content-Length when known; otherwise the body is chunked (HTTP/1.1) or
        ends with the connection (HTTP/1.0).
        """
        fields = Fields(headers)
        with_body = self._framing(status, fields, length)
        writer = StreamWriter(self._conn, self._conn.loop)  # type: ignore[arg-type]
        if with_body and length is None and self.version >= (1, 1):
            writer.enable_chunking()
        # Serialised here, refused with ValueError (a control character in a field): nothing sent.
        await writer.write_headers(f"HTTP/1.1 {status} {reason}", fields)  # type: ignore[arg-type]
        self.status = status
        if not with_body:
            writer.set_eof()  # written, not drained: the caller does not wait on the client for it
            return None
        return writer

    async def send_continue(self) -> None:
        """Answer ``Expect: 100-continue``: the client may send its body now."""
        transport = self._conn.transport
        if transport is not None and not transport.is_closing() and self.version >= (1, 1):
            self.continued = True
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def unsent(self) -> int:
        """Bytes of the answer written but not yet taken by the client."""
        return queued(self._conn.transport)

    def finish(self) -> None:
        """The request is over (answered, refused, or given up): its connection may go on."""
        if self._finished:
            return
        self._finished = True
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
        else:
            self._conn.finished(self)

    async def finished(self) -> None:
        """Wait until ``finish`` is called."""
        if not self._finished:
            self._waiter = self._conn.loop.create_future()
            await self._waiter

    def abort(self) -> None:
        """Cut the connection so a partial answer cannot pass for a complete one."""
        self.keep_alive = False
        self._conn.cut()
