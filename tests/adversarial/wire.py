"""Both ends of the wire for the raw-socket corpus: a client that sends exact bytes and reads answers,
and an upstream that records exactly the bytes each request it got was made of.

Nothing here uses the proxy's own parsers or aiohttp: what the corpus checks must not depend on the
implementation it checks (the data plane is due to move off aiohttp's parser; this corpus is what the new
one must pass).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from tests.bounds import PROMPT

__all__ = ["Answer", "RecordingUpstream", "read_answer", "send"]

# No close within this after the last answer counts as a connection kept open: a proxy that closes does
# so right after its answer.
KEPT_OPEN_AFTER = 0.5


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; the last value of a repeated name
    body: bytes


async def _head(reader: asyncio.StreamReader) -> tuple[bytes, bytes, dict[str, str]]:
    """A message head: its bytes as received, its first line, its fields by lower-case name."""
    raw = await reader.readuntil(b"\r\n\r\n")
    first, *lines = raw[:-4].split(b"\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return raw, first, headers


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body, its framing kept byte for byte (the upstream records what it was sent)."""
    out = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        out += line
        size = int(line.split(b";")[0], 16)
        if size == 0:
            while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                out += trailer
            out += b"\r\n"
            return bytes(out)
        out += await reader.readexactly(size + 2)


def _decoded(body: bytes) -> bytes:
    out, rest = bytearray(), body
    while True:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        rest = rest[size + 2 :]


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One answer from the proxy (framed by Content-Length or chunked, as it always frames them)."""
    _raw, first, headers = await asyncio.wait_for(_head(reader), PROMPT)
    status = int(first.split(b" ")[1])
    if "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), PROMPT)
    elif headers.get("transfer-encoding") == "chunked":
        body = _decoded(await asyncio.wait_for(_chunked(reader), PROMPT))
    else:
        body = b""
    return Answer(status, headers, body)


async def send(url: str, data: bytes, answers: int) -> tuple[list[Answer], bool]:
    """Send ``data`` on a new connection, read ``answers`` answers; also whether the proxy then closed
    the connection (rather than waiting for more)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        got = [await read_answer(reader) for _ in range(answers)]
        try:
            closed = await asyncio.wait_for(reader.read(1), KEPT_OPEN_AFTER) == b""
        except TimeoutError:
            closed = False  # still open, waiting for the next request
        except ConnectionResetError:
            closed = True
        return got, closed
    finally:
        writer.close()


@dataclass
class RecordingUpstream:
    """An HTTP/1.1 upstream on loopback that answers every request ``200 ok`` and records its bytes."""

    requests: list[bytes] = field(default_factory=list)
    url: str = ""
    _server: asyncio.Server | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def __aenter__(self) -> RecordingUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def wait_for(self, count: int) -> list[bytes]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.requests) >= count), PROMPT)
        return list(self.requests)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            while True:
                raw, _first, headers = await _head(reader)
                if "content-length" in headers:
                    raw += await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    raw += await _chunked(reader)
                async with self._changed:
                    self.requests.append(raw)
                    self._changed.notify_all()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
                await writer.drain()
        writer.close()
