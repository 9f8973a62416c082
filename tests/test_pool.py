"""proxy.http.pool under proxy.http.forward: connection reuse, the retry of a stale connection, the bound on
open connections, and upstream answers the pool must not take at face value. Real loopback sockets; the
misbehaving upstreams are scripted byte by byte with asyncio streams."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from yarl import URL

from proxy.core.errors import UpstreamTimeout, UpstreamUnavailable
from proxy.http.forward import Forwarder
from proxy.http.pool import ConnectionPool, Endpoint
from tests import forwarding
from tests.forwarding import make_upstream, run_proxy, started_forwarder
from tests.upstream_app import HeldRequests, pattern_chunks, run_app

# (reader, writer, requests read per connection so far, this connection's index in that list)
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[int], int], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted_upstream(script: Script) -> AsyncIterator[tuple[str, list[int]]]:
    """An upstream that runs ``script`` per connection; yields its URL and a list with one entry per
    connection, for the script to count the requests it read."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(connections)
        connections.append(0)
        try:
            await script(reader, writer, connections, index)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        server.close()
        await server.wait_closed()


# The same fixtures as test_forward's: a plain client session and a started Forwarder.
client = forwarding.client
forwarder = forwarding.forwarder


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def fetch_through(
    forwarder: Forwarder, url: str, client: aiohttp.ClientSession
) -> tuple[aiohttp.ClientResponse, bytes, object]:
    """GET /x through a proxy on ``forwarder`` to ``url``: the answer, its body, forward()'s outcome."""
    async with run_proxy(forwarder, make_upstream(url)) as proxy, client.get(proxy.url + "/x") as response:
        body = await response.read()
        return response, body, await asyncio.wait_for(proxy.outcomes.get(), 10)


def pool_of(forwarder: Forwarder) -> ConnectionPool:
    pool = forwarder.pool
    assert pool is not None, "the forwarder has not been started"
    return pool


@contextlib.asynccontextmanager
async def listening_pool(limit: int) -> AsyncIterator[tuple[ConnectionPool, Endpoint]]:
    """A pool with ``limit`` and the endpoint of a server that accepts connections and says nothing."""
    accepted: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda _, writer: accepted.append(writer), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tls = ssl.create_default_context()
    pool = ConnectionPool(connect_timeout=5.0, read_timeout=5.0, tls=tls, limit=limit)
    try:
        yield pool, pool.endpoint(f"http://127.0.0.1:{port}")
    finally:
        await pool.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert pool.open_connections == 0


# -- a kept-alive connection the upstream closes ----------------------------------------------------


async def one_answer_then_hang_up(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connections: list[int], index: int
) -> None:
    """Answers the first request on its connection, then reads the next one and closes unanswered:
    the race a keep-alive timeout on the upstream makes."""
    await read_head(reader)
    connections[index] += 1
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()
    await read_head(reader)
    connections[index] += 1


async def one_answer_then_reset(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connections: list[int], index: int
) -> None:
    """Like ``one_answer_then_hang_up``, but the second request gets a TCP reset (SO_LINGER 0)."""
    await one_answer_then_hang_up(reader, writer, connections, index)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.mark.parametrize("script", [one_answer_then_hang_up, one_answer_then_reset], ids=["close", "reset"])
async def test_a_stale_connection_is_retried_once_for_an_idempotent_request(
    forwarder: Forwarder, client: aiohttp.ClientSession, script: Script
) -> None:
    async with (
        scripted_upstream(script) as (url, connections),
        run_proxy(forwarder, make_upstream(url)) as proxy,
    ):
        for _ in range(3):
            async with client.get(proxy.url + "/x") as response:
                assert response.status == 200
                assert await response.read() == b"ok"
    # Requests 2 and 3 each met the previous connection closing under them and went on a new one.
    assert connections == [2, 2, 1]


@pytest.mark.parametrize(
    ("method", "body"), [("POST", None), ("PUT", b"payload")], ids=["not-idempotent", "has-a-body"]
)
async def test_a_stale_connection_is_not_retried_when_resending_could_repeat_or_lose_something(
    forwarder: Forwarder, client: aiohttp.ClientSession, method: str, body: bytes | None
) -> None:
    async with (
        scripted_upstream(one_answer_then_hang_up) as (url, connections),
        run_proxy(forwarder, make_upstream(url)) as proxy,
    ):
        async with client.get(proxy.url + "/x") as response:
            assert response.status == 200
        assert await proxy.outcomes.get() == 200
        async with client.request(method, proxy.url + "/x", data=body) as response:
            assert response.status == 502
        error = await proxy.outcomes.get()
    assert isinstance(error, UpstreamUnavailable)
    assert connections == [2]


async def test_an_upstream_that_takes_no_more_of_the_body_and_does_not_answer_is_504() -> None:
    stop = asyncio.Event()

    async def read_the_head_only(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connections: list[int], index: int
    ) -> None:
        await read_head(reader)
        connections[index] += 1
        await stop.wait()  # reads nothing more, answers nothing

    size = 64 * 1024 * 1024  # more than the socket buffers between the proxy and the upstream hold

    async def upload(writer: asyncio.StreamWriter) -> None:
        writer.write(f"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        with contextlib.suppress(ConnectionError):  # the proxy stops reading once it has answered
            for chunk in pattern_chunks(size):
                writer.write(chunk)
                await writer.drain()

    async with (
        started_forwarder(read_timeout=0.3) as forwarder,
        scripted_upstream(read_the_head_only) as (url, connections),
        run_proxy(forwarder, make_upstream(url)) as proxy,
    ):
        try:
            address = URL(proxy.url)
            reader, writer = await asyncio.open_connection(address.host, address.port)
            uploading = asyncio.create_task(upload(writer))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 504 ")
            error = await proxy.outcomes.get()
            assert isinstance(error, UpstreamTimeout)
            assert pool_of(forwarder).open_connections == 0
            uploading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await uploading
            writer.transport.abort()
        finally:
            stop.set()
    assert connections == [1]


# -- answers taken apart --------------------------------------------------------------------------


def answer(raw: bytes) -> Script:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connections: list[int], index: int
    ) -> None:
        await read_head(reader)
        connections[index] += 1
        writer.write(raw)
        await writer.drain()

    return script


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return int(value)
    return 0


def answering(answer: Callable[[bytes, bytes], bytes]) -> Script:
    """Answer every request on the connection with ``answer(head, body)`` (a body framed by
    Content-Length), until the proxy closes it."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connections: list[int], index: int
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await read_head(reader)
                connections[index] += 1
                body = await reader.readexactly(content_length(head))
                writer.write(answer(head, body))
                await writer.drain()

    return script


def by_method(answers: dict[bytes, bytes]) -> Script:
    """Answer every request with ``answers[its method]``."""
    return answering(lambda head, _body: answers[head.split(b" ", 1)[0]])


@pytest.mark.parametrize(
    "head_answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
    ids=["length", "chunked"],
)
async def test_a_head_answer_ends_with_its_head_and_its_connection_is_reused(
    client: aiohttp.ClientSession, head_answer: bytes
) -> None:
    """The relay's parser would wait for the body the head announces: a HEAD's answer must end at its
    head, and the next answer on the same upstream connection be read as the next answer."""
    answers = {b"HEAD": head_answer, b"GET": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"}
    async with (
        scripted_upstream(by_method(answers)) as (url, connections),
        started_forwarder() as forwarder,
        run_proxy(forwarder, make_upstream(url)) as proxy,
    ):
        for _ in range(2):
            async with client.head(proxy.url + "/h") as response:
                assert response.status == 200
                assert response.headers.get("Content-Length") == ("1000" if b"1000" in head_answer else None)
                assert "Transfer-Encoding" not in response.headers
                assert await response.read() == b""
            async with client.get(proxy.url + "/g") as response:
                assert await response.read() == b"hello"
        assert connections == [4]


async def test_bytes_after_a_head_answer_are_not_taken_for_the_next_answer(
    client: aiohttp.ClientSession,
) -> None:
    """An upstream that sends a body with its HEAD answer: the client gets the head only, and the
    connection is not reused (those bytes would be read as the next request's answer)."""
    answers = {
        b"HEAD": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nWRONG",
        b"GET": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    }
    async with (
        scripted_upstream(by_method(answers)) as (url, connections),
        started_forwarder() as forwarder,
        run_proxy(forwarder, make_upstream(url)) as proxy,
    ):
        async with client.head(proxy.url + "/h") as response:
            assert response.headers["Content-Length"] == "5"
            assert await response.read() == b""
        async with client.get(proxy.url + "/g") as response:
            assert await response.read() == b"hello"
        assert connections == [1, 1]


async def test_a_small_body_that_came_whole_goes_up_with_its_head_and_the_connection_goes_on() -> None:
    """A body that arrived with its head (one write from the client) is sent on whole (the relay
    writes head and body at once): the upstream reads exactly it, then the next request on the same
    upstream connection, and each answer reaches the client in order."""

    def echo(_head: bytes, body: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\necho:%b" % (len(body) + 5, body)

    async with (
        scripted_upstream(answering(echo)) as (url, connections),
        started_forwarder() as forwarder,
        run_proxy(forwarder, make_upstream(url)) as proxy,
    ):
        proxy_url = URL(proxy.url)
        reader, writer = await asyncio.open_connection(proxy_url.host, proxy_url.port)
        try:
            writer.write(
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\npayload"
                b"PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            answers = []
            for _ in range(3):
                head = await asyncio.wait_for(read_head(reader), 10)
                answers.append(await reader.readexactly(content_length(head)))
        finally:
            writer.close()
        assert answers == [b"echo:payload", b"echo:abc", b"echo:"]
        assert [await proxy.outcomes.get() for _ in range(3)] == [200, 200, 200]
        assert connections == [3]


async def test_interim_answers_are_skipped(forwarder: Forwarder, client: aiohttp.ClientSession) -> None:
    raw = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nfinal"
    )
    async with scripted_upstream(answer(raw)) as (url, _):
        response, body, _ = await fetch_through(forwarder, url, client)
    assert response.status == 200
    assert response.headers["X-Final"] == "yes"
    assert "Link" not in response.headers
    assert body == b"final"


async def test_a_switch_of_protocols_nobody_asked_for_is_502(
    forwarder: Forwarder, client: aiohttp.ClientSession
) -> None:
    raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    async with scripted_upstream(answer(raw)) as (url, _):
        response, _, error = await fetch_through(forwarder, url, client)
    assert response.status == 502
    assert isinstance(error, UpstreamUnavailable)
    assert "switched protocols" in str(error.__cause__)


async def test_a_small_answer_cut_short_is_502_not_a_short_200(
    forwarder: Forwarder, client: aiohttp.ClientSession
) -> None:
    # Small answers are read whole before the client sees anything, so a failure can still be told.
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    async with scripted_upstream(answer(raw)) as (url, _):
        response, _, error = await fetch_through(forwarder, url, client)
    assert response.status == 502
    assert isinstance(error, UpstreamUnavailable)
    assert isinstance(error.__cause__, ConnectionError)
    assert "before the answer's end" in str(error.__cause__)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 2OO OK\r\n\r\n",
        # Framing a client could be desynchronised by: never relayed.
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["bad-status", "length-and-chunked", "two-lengths", "oversized-header"],
)
async def test_a_malformed_answer_is_502(
    forwarder: Forwarder, client: aiohttp.ClientSession, raw: bytes
) -> None:
    async with scripted_upstream(answer(raw)) as (url, _):
        response, _, error = await fetch_through(forwarder, url, client)
    assert response.status == 502
    assert isinstance(error, UpstreamUnavailable)


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 2\r\n\r\nok",
        b"Content-Length: 100000\r\n\r\n" + b"x" * 100000,
        b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ],
    ids=["small", "streamed", "chunked"],
)
async def test_a_control_character_in_an_answer_header_is_502(
    forwarder: Forwarder, client: aiohttp.ClientSession, framing: bytes
) -> None:
    # aiohttp's lenient parser lets it through; its serialiser refuses to send it on.
    raw = b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\n" + framing
    async with scripted_upstream(answer(raw)) as (url, _):
        response, _, error = await fetch_through(forwarder, url, client)
    assert response.status == 502
    assert isinstance(error, UpstreamUnavailable) and "invalid answer" in str(error)
    assert isinstance(error.__cause__, ValueError)
    assert pool_of(forwarder).open_connections == 0


# -- answers whose end is the end of the connection -----------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",  # no framing at all: the body runs to the close (RFC 9112 6.3)
    ],
    ids=["http-1.0", "connection-close", "unframed"],
)
@pytest.mark.parametrize("size", [33, 200 * 1024], ids=["small", "200k"])
async def test_an_answer_ended_by_the_upstream_closing_arrives_whole(
    forwarder: Forwarder, client: aiohttp.ClientSession, head: bytes, size: int
) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    async with scripted_upstream(answer(head + body)) as (url, _):  # answer() closes after writing
        response, received, outcome = await fetch_through(forwarder, url, client)
        assert (response.status, outcome) == (200, 200)
        assert received == body
        # Its end was the end of the connection: it is never lent again.
        assert pool_of(forwarder).open_connections == 0
        response, received, _ = await fetch_through(forwarder, url, client)
        assert received == body


async def test_an_answer_ended_by_a_reset_is_cut_short_for_the_client(
    forwarder: Forwarder, client: aiohttp.ClientSession
) -> None:
    """A close-delimited body is complete at a clean close only: a reset means it was cut short."""

    async def part_then_reset(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connections: list[int], index: int
    ) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        linger = struct.pack("ii", 1, 0)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        writer.transport.abort()

    async with (
        scripted_upstream(part_then_reset) as (url, _),
        run_proxy(forwarder, make_upstream(url)) as proxy,
        client.get(proxy.url + "/x") as response,
    ):
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
        assert await proxy.outcomes.get() == 200


# -- the bound on open connections ----------------------------------------------------------------


async def test_open_connections_stay_within_the_limit(client: aiohttp.ClientSession) -> None:
    upstream = HeldRequests()
    async with (
        started_forwarder(limit=2) as forwarder,
        run_app(upstream.app) as url,
        run_proxy(forwarder, make_upstream(url)) as proxy,
    ):
        pool = pool_of(forwarder)

        async def fetch() -> str:
            async with client.get(proxy.url + "/held") as response:
                return await response.text()

        requests = [asyncio.create_task(fetch()) for _ in range(6)]
        for _ in range(6):
            await upstream.release_one()
            assert pool.open_connections <= 2
        assert await asyncio.gather(*requests) == ["done"] * 6
    assert upstream.peak == 2


async def test_an_idle_connection_to_one_upstream_makes_room_for_another(
    client: aiohttp.ClientSession,
) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with (
        started_forwarder(limit=1) as forwarder,
        scripted_upstream(answer(ok)) as (first, _),
        scripted_upstream(answer(ok)) as (second, _),
    ):
        pool = pool_of(forwarder)
        for url in (first, second, first):
            response, body, _ = await fetch_through(forwarder, url, client)
            assert (response.status, body) == (200, b"ok")
            assert pool.open_connections == 1
    assert pool.open_connections == 0


async def test_a_waiter_cancelled_as_it_is_woken_passes_its_turn_on() -> None:
    async with listening_pool(limit=1) as (pool, endpoint):
        held, _ = await pool.acquire(endpoint, head=False)
        woken = asyncio.create_task(pool.acquire(endpoint, head=False))
        behind = asyncio.create_task(pool.acquire(endpoint, head=False))
        await asyncio.sleep(0)  # one scheduler pass: both tasks run up to their wait, no polling
        assert pool.waiting == 2
        pool.discard(held)  # wakes the first waiter...
        woken.cancel()  # ...which is cancelled before it runs
        connection, reused = await asyncio.wait_for(behind, 5)
        assert not reused and pool.open_connections == 1
        with pytest.raises(asyncio.CancelledError):
            await woken
        pool.discard(connection)


async def test_an_unused_connection_is_closed_after_the_idle_timeout(client: aiohttp.ClientSession) -> None:
    closed: asyncio.Queue[int] = asyncio.Queue()

    async def answer_then_wait_for_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connections: list[int], index: int
    ) -> None:
        await read_head(reader)
        connections[index] += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        assert await reader.read() == b""  # the proxy's side closed, nothing more was sent
        closed.put_nowait(index)

    async with (
        started_forwarder(read_timeout=5.0, idle_timeout=0.2) as forwarder,
        scripted_upstream(answer_then_wait_for_close) as (url, connections),
    ):
        response, body, _ = await fetch_through(forwarder, url, client)
        assert (response.status, body) == (200, b"ok")
        assert await asyncio.wait_for(closed.get(), 5) == 0
        assert pool_of(forwarder).open_connections == 0
        # The next request opens a new connection and gets the same answer.
        response, body, _ = await fetch_through(forwarder, url, client)
        assert (response.status, body) == (200, b"ok")
        assert connections == [1, 1]


async def test_discarding_twice_frees_one_place_only() -> None:
    async with listening_pool(limit=2) as (pool, endpoint):
        first, _ = await pool.acquire(endpoint, head=False)
        second, _ = await pool.acquire(endpoint, head=False)
        pool.discard(first)
        pool.discard(first)
        assert pool.open_connections == 1
        pool.release(second)  # still open and unused: back to the pool, still counted
        assert pool.open_connections == 1


async def test_a_release_wakes_the_first_waiter_still_waiting() -> None:
    async with listening_pool(limit=1) as (pool, endpoint):
        held, _ = await pool.acquire(endpoint, head=False)
        gone = asyncio.create_task(pool.acquire(endpoint, head=False))
        behind = asyncio.create_task(pool.acquire(endpoint, head=False))
        await asyncio.sleep(0)  # one scheduler pass: both tasks run up to their wait, no polling
        assert pool.waiting == 2
        gone.cancel()  # the first in line gives up before any room is made
        with pytest.raises(asyncio.CancelledError):
            await gone
        pool.release(held)  # the room goes to the one still waiting, not to the idle list
        connection, _ = await asyncio.wait_for(behind, 2)  # before the fix: only the 5 s timeout
        assert pool.waiting == 0
        pool.discard(connection)
