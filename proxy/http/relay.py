"""One answer relayed from an upstream connection to its client, driven by the transports' callbacks.

httptools shell (MagicStack's binding of llhttp, strict). A request without a body goes upstream as one
write of its head; the answer is parsed as it arrives (``proxy.http.pool.Connection.data_received`` feeds
``Relay.feed``) and written to the client from there: no task, future or stream per request, one write
to the client per read from the upstream. Backpressure goes through the transports: while the client
takes nothing (its transport paused writing) reading from the upstream pauses, and the pool's client
deadline runs (``ConnectionPool._check_deadlines`` cuts a client that takes nothing for the read timeout).

The rules are the streaming forwarder's (``proxy.http.forward``):

- an answer with a Content-Length of at most ``SMALL_BODY`` bytes is held whole and sent with one write,
  so a failure before its end is still a clean 502 or 504;
- a larger or unframed answer is streamed: its head at once, its body as it comes, chunked to an HTTP/1.1
  client when its length is unknown (to the end of the connection for HTTP/1.0); a failure after the head
  cuts the client (a reset), so a short answer never passes for a complete one;
- interim (1xx) answers are dropped; a ``101`` is refused (no upgrade was asked for);
- hop-by-hop and framing headers never pass (the client side frames the answer itself), the proxy's own
  (``X-Request-Id``) replace any of the same name;
- the connection goes back to the pool only after a complete answer both sides keep alive, with nothing
  after it; an answer framed by the end of the connection ends there (a clean close; a reset cuts it).

``done(status, error)`` is called exactly once: ``error`` is an ``UpstreamUnavailable`` or
``UpstreamTimeout`` when nothing was sent to the client (the caller answers 502/504), else ``None``, and
``status`` is what the client was sent (``CLIENT_CLOSED_REQUEST`` when it left before any answer).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping

import httptools

from proxy.core.errors import UpstreamTimeout, UpstreamUnavailable
from proxy.core.headers import downstream_headers
from proxy.core.redact import logged_path
from proxy.http.pool import Connection, ConnectionPool
from proxy.http.request import Request

__all__ = ["CLIENT_CLOSED_REQUEST", "SMALL_BODY", "Done", "Relay", "translate_client_error"]

log = logging.getLogger("signalgate.forward")

SMALL_BODY = 64 * 1024
# aiohttp's client limits, kept: a longer status line or header field is refused as malformed; and the
# whole head is bounded too (httptools itself bounds neither).
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEAD_SIZE = 64 * 1024
# nginx's status for "the client closed the connection before the answer": only ever seen in logs.
CLIENT_CLOSED_REQUEST = 499
# The client side frames every answer itself (proxy.http.request.Request): the upstream's length never passes.
_FRAMING = frozenset({"content-length"})
_NO_BODY = frozenset({204, 304})

# What a relay reports when it is over: the status the client was sent, and the error when it was sent
# nothing (the caller answers it).
Done = Callable[[int, "UpstreamUnavailable | UpstreamTimeout | None"], None]


def translate_client_error(exc: BaseException, upstream: str) -> UpstreamUnavailable | UpstreamTimeout:
    """The one place upstream failures become ours; the caller chains ``exc``.

    ``TimeoutError`` (connect timeout, a read timeout, aiohttp's ``ServerTimeoutError`` family) means a
    timeout; every other error (refused, reset, an answer a parser refused, an answer header the
    serialiser refuses as ``ValueError``) means the upstream is unavailable.
    """
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"upstream {upstream} timed out: {type(exc).__name__}: {exc}")
    if isinstance(exc, ValueError):
        return UpstreamUnavailable(f"upstream {upstream} sent an invalid answer: {exc}")
    return UpstreamUnavailable(f"upstream {upstream} unavailable: {type(exc).__name__}: {exc}")


class Relay:
    """One request's answer, from ``connection`` (lent by ``pool``) to ``request``'s client."""

    __slots__ = (
        "_after",
        "_base",
        "_chunked",
        "_complete",
        "_connection",
        "_done",
        "_eof_body",
        "_extra",
        "_fields",
        "_head_only",
        "_head_size",
        "_held",
        "_interim",
        "_keep",
        "_out",
        "_parser",
        "_pool",
        "_reason",
        "_received",
        "_retry",
        "_status",
        "_streaming",
        "request",
    )

    def __init__(self, connection: Connection, pool: ConnectionPool) -> None:
        # One per connection, reused for each answer on it (as its parser is): no allocation, and no
        # reference cycle (relay <-> parser) left to the garbage collector, per request.
        self._connection = connection
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self.request: Request | None = None
        self._base = ""  # the upstream, for messages
        self._extra: Mapping[str, str] | None = None
        self._done: Done | None = None
        self._retry: Callable[[], None] | None = None  # a reused connection found closed unanswered
        self._fields: list[tuple[str, str]] = []
        self._head_size = 0  # bytes read before the final answer's head was complete
        self._head_only = False  # the answer to a HEAD: its head is all of it, whatever it says of a body
        self._reason = ""
        self._status = 0  # the final answer's status, once its head is parsed
        self._interim = False  # parsing a 1xx answer, dropped
        self._held: list[bytes] | None = None  # the body of a small answer, sent whole at its end
        self._streaming = False  # the head went to the client; the body follows as it comes
        self._chunked = False  # the body goes to the client chunked
        self._eof_body = False  # the body ends where the upstream closes the connection
        self._complete = False
        self._keep = False
        self._after = False  # the upstream sent bytes after its answer: the connection is not reused
        self._received = False  # any byte of an answer came
        self._out: list[bytes] = []  # what one read from the upstream makes for the client: one write

    @classmethod
    def on(cls, connection: Connection, pool: ConnectionPool) -> Relay:
        """The relay of ``connection``, made the first time it relays."""
        relay = connection.relayer
        if not isinstance(relay, Relay):
            relay = connection.relayer = cls(connection, pool)
        return relay

    def start(
        self,
        request: Request,
        head: bytes,
        base: str,
        extra: Mapping[str, str] | None,
        done: Done,
        retry: Callable[[], None] | None = None,
    ) -> None:
        """Write the request head upstream and relay what comes back; ``done`` is called at the end."""
        self.request = request
        self._base = base
        self._extra = extra
        self._done = done
        self._retry = retry
        self._head_only = request.method == "HEAD"
        connection = self._connection
        transport = connection.transport
        if transport is None or transport.is_closing():
            self._failed(ConnectionResetError("closed before the request was written"))
            return
        connection.relay = self
        connection.client = request  # cut by the pool when it takes nothing for too long
        request.relay = self
        transport.write(head)
        connection.start_timeout()

    # --- from the upstream connection ------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._received = True
        if self._status == 0:  # no final head yet: bounded (after feeding, for the body may follow)
            self._head_size += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._failed(ValueError("the upstream switched protocols unasked"))
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # what a callback raised (a refused head), else the parser's own
            self._failed(cause if isinstance(cause, ValueError) else ValueError(f"malformed answer: {exc}"))
            return
        if self._done is None:
            return  # failed in a callback (a head the serialiser refused)
        if self._status == 0 and self._head_size > MAX_HEAD_SIZE:
            self._failed(ValueError(f"answer head larger than {MAX_HEAD_SIZE} bytes"))
            return
        if self._out:
            out, self._out = self._out, []
            self._write(out[0] if len(out) == 1 else b"".join(out))
        if self._complete:
            if self._head_only:  # the parser waits for the body the head announced, and none comes
                self._parser = httptools.HttpResponseParser(self)
            self._finish(self._keep and not self._after)

    def upstream_lost(self, exc: BaseException | None) -> None:
        """The upstream connection closed: the end of a body framed by it (a clean close), else a failure."""
        if self._done is None:
            return
        if exc is None and self._eof_body and not self._complete:
            if self._chunked:
                self._write(b"0\r\n\r\n")
            self._finish(False)
            return
        if exc is None:
            if self._complete or self._held is not None or self._streaming:
                exc = ConnectionResetError("the upstream closed the connection before the answer's end")
            else:
                exc = ConnectionResetError("the upstream closed the connection before answering")
        self._failed(exc)

    def timed_out(self) -> None:
        """The pool's read deadline passed with nothing from the upstream."""
        self._failed(TimeoutError("no answer within the read timeout"))

    # --- from the client connection --------------------------------------------------------------

    def client_lost(self) -> None:
        """The client is gone: the rest of the answer has nowhere to go; the connection is not reused."""
        if self._done is None:
            return
        self._end(False, self._status if self._streaming else CLIENT_CLOSED_REQUEST, None)

    def client_paused(self) -> None:
        """The client takes nothing for now: read no more from the upstream, and start the client's clock."""
        connection = self._connection
        transport = connection.transport
        if self._done is None or transport is None:
            return
        transport.pause_reading()
        connection.read_deadline = None
        connection.start_client_timeout()

    def client_resumed(self) -> None:
        connection = self._connection
        transport = connection.transport
        if self._done is None or transport is None:
            return
        connection.client_deadline = None
        transport.resume_reading()
        connection.start_timeout()

    # --- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            self._after = True

    def on_status(self, status: bytes) -> None:
        if len(status) > MAX_LINE_SIZE:
            raise ValueError(f"answer status line larger than {MAX_LINE_SIZE} bytes")
        self._reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_FIELD_SIZE:
            raise ValueError(f"answer header field larger than {MAX_FIELD_SIZE} bytes")
        self._fields.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                raise ValueError("the upstream switched protocols unasked")
            self._interim = True
            self._fields = []
            return
        self._status = status
        length: int | None = None
        chunked = False
        for name, value in self._fields:
            lower = name.lower()
            if lower == "content-length":
                length = int(value) if value.isdigit() else None
            elif lower == "transfer-encoding":
                chunked = True
        if self._head_only:
            self._head_answered(length)
            return
        body = status not in _NO_BODY
        self._eof_body = body and length is None and not chunked
        if length is not None and length <= SMALL_BODY:
            self._held = []
            return
        request = self.request
        assert request is not None
        head, with_body = request.head(status, self._reason, self._headers(), length)
        self._streaming = True
        self._chunked = with_body and length is None and request.version >= (1, 1)
        self._out.append(head)

    def _head_answered(self, length: int | None) -> None:
        """The answer to a HEAD is complete with its head, which states the ``length`` it stands for."""
        request = self.request
        assert request is not None
        head, _ = request.head(self._status, self._reason, self._headers(), length)
        self._streaming = True
        self._out.append(head)
        self._complete = True
        # Read now, as on_message_complete does: with a length stated (or chunked) the connection is
        # kept when both sides say so; an answer framed by the connection's end is not kept.
        self._keep = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self._complete:  # bytes after a HEAD's answer: the connection is not reused
            self._after = True
            return
        if self._interim:
            return
        if self._held is not None:
            self._held.append(body)
        elif self._chunked:
            self._out.append(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self._out.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._complete:
            return
        self._complete = True
        self._keep = self._parser.should_keep_alive()  # read now: the parser forgets it after the message
        held = self._held
        if held is not None:
            body = held[0] if len(held) == 1 else b"".join(held)
            assert self.request is not None
            head, with_body = self.request.head(self._status, self._reason, self._headers(), len(body))
            self._streaming = True
            self._out.append(head + body if with_body and body else head)
        elif self._chunked:
            self._out.append(b"0\r\n\r\n")

    # --- the end ---------------------------------------------------------------------------------

    def _headers(self) -> list[tuple[str, str]]:
        extra = self._extra
        if not extra:
            return downstream_headers(self._fields, also_drop=_FRAMING)
        pairs = downstream_headers(self._fields, also_drop=_framing_and(tuple(extra)))
        pairs.extend(extra.items())
        return pairs

    def _write(self, data: bytes) -> None:
        assert self.request is not None
        transport = self.request.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _failed(self, exc: BaseException) -> None:
        if self._done is None:
            return
        request = self.request
        assert request is not None
        if self._streaming:  # the status is on the wire: the client must see a truncated answer
            log.warning(
                "%s %s: aborting the client connection after the response started: %s",
                request.method,
                logged_path(request.raw_path),
                translate_client_error(exc, self._base),
            )
            request.abort()
            self._end(False, self._status, None)
            return
        retry = self._retry
        if retry is not None and not self._received and isinstance(exc, ConnectionError):
            self._end(False, 0, None, report=False)
            retry()
            return
        error = translate_client_error(exc, self._base)
        error.__cause__ = exc
        self._end(False, 0, error)

    def _finish(self, keep: bool) -> None:
        self._end(keep, self._status, None)

    def _end(
        self,
        keep: bool,
        status: int,
        error: UpstreamUnavailable | UpstreamTimeout | None,
        *,
        report: bool = True,
    ) -> None:
        done, self._done = self._done, None
        if done is None:
            return
        connection = self._connection
        if connection.relay is self:
            connection.relay = None
        request = self.request
        if request is not None and request.relay is self:
            request.relay = None
        self._reset()
        if keep:
            self._pool.release(connection)
        else:
            self._pool.discard(connection)
        if report:
            done(status, error)


@functools.lru_cache(maxsize=16)
def _framing_and(names: tuple[str, ...]) -> frozenset[str]:
    """The names an answer loses besides hop-by-hop: framing, and the proxy's own (fixed) ``names``."""
    return _FRAMING | {name.lower() for name in names}
