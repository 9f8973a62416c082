"""One request on one pooled upstream connection: the head written, the body uploaded, the answer awaited.

aiohttp shell, used by ``proxy.http.forward`` only. A request body is uploaded by its own task while the
answer is awaited, since an upstream may answer before it has read the whole body. Until the upstream
answers, the exchange waits on the client for each piece of the body under the pool's client deadline,
and on the upstream to take it under the read timeout (``proxy.http.pool``).
"""

from __future__ import annotations

import asyncio

import aiohttp

from proxy.core.digest import BodyDigest
from proxy.core.errors import ContentDigestMismatch
from proxy.http._aiohttp import RequestPayloadError, StreamReader, StreamWriter, serialize_head
from proxy.http.pool import Connection, ConnectionPool
from proxy.http.request import Fields, Request

__all__ = ["CHUNK_SIZE", "Exchange"]

CHUNK_SIZE = 64 * 1024


class Exchange:
    """One request on one upstream connection; a request body is uploaded by its own task."""

    __slots__ = (
        "answered",
        "body_check",
        "body_error",
        "chunked",
        "client_gone",
        "connection",
        "content",
        "uploaded",
        "uploader",
    )

    def __init__(
        self,
        connection: Connection,
        content: StreamReader | None,
        *,
        chunked: bool,
        client: Request,
        body_check: BodyDigest | None = None,
    ) -> None:
        self.connection = connection
        connection.client = client  # aborted by the pool when it stalls (ConnectionPool._check_deadlines)
        self.content = content
        self.chunked = chunked  # a body of unknown length, sent with chunked framing
        self.client_gone = False
        # the parser refused the client's body, or it did not match its signed Content-Digest
        self.body_error: RequestPayloadError | ContentDigestMismatch | None = None
        self.body_check = body_check
        self.answered = False
        self.uploaded = content is None
        self.uploader: asyncio.Task[None] | None = None

    async def send(self, status_line: str, fields: Fields) -> tuple[object, StreamReader]:
        """Write the request and return the final (non-1xx) answer head and its body stream."""
        connection = self.connection
        if self.content is None:  # the head alone, in one write
            transport = connection.transport
            if transport is None or transport.is_closing():
                raise aiohttp.ClientConnectionResetError("closed before the request was written")
            transport.write(serialize_head(status_line, fields))  # refuses CR/LF in any field
            connection.start_timeout()
        else:
            writer = StreamWriter(connection, connection.loop)
            if self.chunked:
                writer.enable_chunking()
            await writer.write_headers(status_line, fields)  # type: ignore[arg-type]  # .items() is all it reads
            writer.send_headers()
            self.uploader = connection.loop.create_task(self._upload(writer))
        while True:
            message, payload = await connection.read()
            if message.code == 101:
                raise aiohttp.ClientConnectionError("the upstream switched protocols unasked")
            if message.code >= 200:
                self.answered = True
                connection.client_deadline = None  # the upload may go on, at the client's pace
                return message, payload

    async def _upload(self, writer: StreamWriter) -> None:
        content = self.content
        assert content is not None
        connection = self.connection
        try:
            while True:
                if not self.answered:  # until then the exchange waits on the client's body
                    connection.start_client_timeout()
                try:
                    chunk = await content.read(CHUNK_SIZE)
                except RequestPayloadError as exc:
                    self.body_error = exc
                    raise
                except Exception:  # gone, or aborted by the pool for sending nothing for too long
                    self.client_gone = True
                    raise
                if not self.answered:
                    connection.client_deadline = None
                last = not chunk
                if self.body_check is not None:
                    chunk = self._checked(chunk)
                if chunk:
                    await writer.write(chunk, drain=False)
                    if connection.writing_paused:
                        await self._drain(writer)
                if last:
                    break
            writer.set_eof()
            if connection.writing_paused:
                await self._drain(writer)
        except Exception as exc:
            if not self.answered:
                self.connection.set_exception(exc)  # wakes ``send`` with it
            return
        self.uploaded = True
        if not self.answered:
            self.connection.start_timeout()  # the read timeout runs from the end of the request

    def _checked(self, chunk: bytes) -> bytes:
        """What of the body may go upstream now: all but the last byte until the end, then the last
        byte only if the body matched its signed digest (else ``ContentDigestMismatch``)."""
        check = self.body_check
        assert check is not None
        try:
            return check.take(chunk) if chunk else check.finish()
        except ContentDigestMismatch as exc:
            self.body_error = exc
            raise

    async def _drain(self, writer: StreamWriter) -> None:
        """Wait for the upstream to take more of the body; until it answers, the read timeout runs
        meanwhile, so an upstream that neither reads the body nor answers is a timeout (504)."""
        connection = self.connection
        if self.answered:
            await writer.drain()
            return
        connection.start_timeout()
        connection.upload_unsent = connection.unsent()  # the pool renews the timeout while this shrinks
        try:
            await writer.drain()
        finally:
            connection.upload_unsent = None
        if not self.answered:
            connection.read_deadline = None  # the client's turn: its own deadline covers the next read

    async def end(self, pool: ConnectionPool, *, completed: bool) -> None:
        """Give the connection back when the exchange completed and it can carry another request;
        otherwise stop any upload still running and close the connection. An upload stopped is waited
        for: the listener may then read (drain) the rest of the client's body itself."""
        connection = self.connection
        if completed and self.uploaded and not connection.should_close:
            pool.release(connection)
            return
        pool.discard(connection)
        uploader = self.uploader
        if uploader is not None and not uploader.done():
            uploader.cancel()
            await asyncio.wait([uploader])
