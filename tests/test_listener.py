"""proxy.http.listener on real loopback sockets, driven byte by byte: framing, pipelining, keep-alive,
draining, shutdown. A small handler stands in for the proxy so each connection rule is seen on its own."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from proxy.http.listener import LINGER_BYTES, MAX_QUEUED, Listener, serve
from proxy.http.request import Request

READ_TIMEOUT = 10.0
BIG = b"b" * 4096
PIPELINED = 2000  # answers of 4 KiB: far more than the socket buffers between a client and the server hold
HUGE = BIG * 2048  # 8 MiB: more than the kernel takes (loopback send buffers grow to 4 MiB)
UNSENT_BOUND = 64 * 1024 + 2 * len(BIG)  # the transports' default high-water mark, and the answer past it


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated name keeps the last value
    names: list[str]  # lower-case names in order, repeats kept
    body: bytes


@dataclass
class Handler:
    """Answers by path; records what it saw."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    finished: list[str] = field(default_factory=list)
    done: asyncio.Queue[str] = field(default_factory=asyncio.Queue)  # each finished path, as it finishes
    refused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unsent: int = 0  # the most answer bytes seen waiting in a connection's write buffer
    paused: asyncio.Event = field(default_factory=asyncio.Event)  # an answer filled a write buffer

    async def __call__(self, request: Request) -> None:
        path = request.raw_path
        self.started.put_nowait(path)
        try:
            await self._answer(request, path.partition("?")[0])
        finally:
            self.finished.append(path)
            self.done.put_nowait(path)

    async def _answer(self, request: Request, path: str) -> None:
        if path == "/hold":
            await self.release.wait()
        if path == "/read":
            if request.withheld_body:
                await request.send_continue()
            body = await request.content.read()
            request.respond(200, "OK", [("X-Length", str(len(body)))], body[:16])
        elif path == "/stream":
            writer = await request.stream(200, "OK", [("Content-Type", "text/plain")], None)
            if writer is not None:
                for part in (b"one,", b"two,", b"three"):
                    await writer.write(part)
                await writer.write_eof()
        elif path.startswith("/big/") or path == "/huge":
            request.respond(200, "OK", [("X-Path", path)], BIG if path != "/huge" else HUGE)
            conn = request._conn  # the server side: how much of what it wrote still waits for the client
            if conn.transport is not None:
                self.unsent = max(self.unsent, conn.transport.get_write_buffer_size())
            if conn.writing_paused:
                self.paused.set()
        elif path == "/dated":
            request.respond(200, "OK", [("Date", "Mon, 01 Jan 2024 00:00:00 GMT")], b"x")
        elif path == "/no-content":
            request.respond(204, "No Content", [])
        elif path == "/boom":
            raise RuntimeError("handler bug")
        elif path == "/bad-head":  # the serialiser refuses a control character: nothing is sent
            await request.stream(200, "OK", [("X-Bad", "a\x01b")], None)
        elif path == "/abort-open":  # as the forwarder does when the upstream fails midway
            writer = await request.stream(200, "OK", [], None)
            assert writer is not None
            await writer.write(b"partial")
            request.abort()
        elif path in ("/boom-late", "/boom-open", "/stream-hold"):
            writer = await request.stream(200, "OK", [], 100 if path == "/boom-late" else None)
            assert writer is not None
            await writer.write(b"partial")
            if path == "/stream-hold":
                await self.release.wait()  # till shutdown cancels it
            raise RuntimeError("handler bug after the head")
        else:
            request.respond(200, "OK", [("Content-Type", "text/plain")], path.encode())

    def refuse(self, request: Request, error: Exception) -> None:
        self.refused.append(type(error).__name__)
        request.respond(400, "Bad Request", [], b"refused")

    def fail(self, request: Request, error: BaseException) -> None:
        self.failed.append(str(error))
        request.respond(500, "Internal Server Error", [], b"failed")


@dataclass
class Running:
    handler: Handler
    listener: Listener
    server: asyncio.Server
    port: int

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@contextlib.asynccontextmanager
async def running(**options: float) -> AsyncIterator[Running]:
    handler = Handler()
    listener = Listener(handler, **options)  # type: ignore[arg-type]
    server = await serve(listener, "127.0.0.1", 0)
    try:
        yield Running(handler, listener, server, server.sockets[0].getsockname()[1])
    finally:
        handler.release.set()
        server.close()
        await listener.shutdown(1.0)


@pytest.fixture
async def gate() -> AsyncIterator[Running]:
    async with running() as started:
        yield started


async def read_answer(reader: asyncio.StreamReader, *, head: bool = False) -> Answer:
    """One answer, framed as the client would frame it: Content-Length, chunked, or until EOF."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    lines = raw.decode("latin-1").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    names: list[str] = []
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            names.append(name.lower())
            headers[name.lower()] = value.strip()
    code = int(status)
    if head or code in (204, 304) or code < 200:
        body = b""
    elif "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), READ_TIMEOUT)
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), READ_TIMEOUT)).strip(), 16)
            chunk = await asyncio.wait_for(reader.readexactly(size + 2), READ_TIMEOUT)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await asyncio.wait_for(reader.read(), READ_TIMEOUT)
    return Answer(code, headers, names, body)


async def connect_small(gate: Running) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client with a small receive buffer: what it does not read soon waits on the server's side."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gate.port))
    return await asyncio.open_connection(sock=sock)


def pipeline_big(writer: asyncio.StreamWriter) -> None:
    writer.write(b"".join(b"GET /big/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(PIPELINED)))


async def read_to_the_end(reader: asyncio.StreamReader) -> None:
    while await asyncio.wait_for(reader.read(65536), READ_TIMEOUT):
        pass


async def closed(reader: asyncio.StreamReader) -> bool:
    """True when the server closed the connection (EOF or reset) with nothing more to read."""
    try:
        return await asyncio.wait_for(reader.read(1), READ_TIMEOUT) == b""
    except ConnectionResetError:
        return True


async def test_pipelined_requests_are_answered_in_order(gate: Running) -> None:
    reader, writer = await gate.connect()
    writer.write(b"".join(b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % name for name in (b"a", b"b", b"c")))
    bodies = [(await read_answer(reader)).body for _ in range(3)]
    assert bodies == [b"/a", b"/b", b"/c"]
    writer.close()


async def test_a_refused_request_is_answered_then_the_connection_closes(gate: Running) -> None:
    reader, writer = await gate.connect()
    writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_answer(reader)).body == b"/ok"
    writer.write(
        b"GET /d HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        b"GET /e HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    refused = await read_answer(reader)
    assert (refused.status, refused.headers["connection"], refused.body) == (400, "close", b"refused")
    assert await closed(reader)
    assert gate.handler.refused == ["BadHttpMessage"]
    assert gate.handler.finished == ["/ok"]  # nothing after a refused request is read as HTTP
    writer.close()


async def test_requests_before_a_refused_one_in_the_same_read_are_never_handled(gate: Running) -> None:
    reader, writer = await gate.connect()
    writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n")
    refused = await read_answer(reader)
    assert refused.status == 400
    assert await closed(reader)
    assert gate.handler.finished == []  # dropped, as aiohttp.web drops them: never half-handled
    writer.close()


async def test_more_pipelined_requests_than_the_queue_holds_are_all_answered(gate: Running) -> None:
    count = MAX_QUEUED * 3
    reader, writer = await gate.connect()
    writer.write(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(count)))
    for i in range(count):
        assert (await read_answer(reader)).body == b"/%d" % i
    writer.close()


async def test_requests_wait_for_a_client_that_does_not_read_then_all_answers_arrive(gate: Running) -> None:
    reader, writer = await connect_small(gate)
    pipeline_big(writer)
    await asyncio.wait_for(gate.handler.paused.wait(), READ_TIMEOUT)  # its answers now wait on it
    for i in range(PIPELINED):  # then it reads: every answer comes, in order
        assert (await read_answer(reader)).headers["x-path"] == f"/big/{i}"
    assert gate.handler.unsent <= UNSENT_BOUND  # answers were not taken on faster than it read them
    writer.close()


async def test_a_client_that_never_reads_its_answers_is_cut_after_the_idle_timeout() -> None:
    async with running(keepalive_timeout=0.2) as gate:
        reader, writer = await connect_small(gate)
        pipeline_big(writer)
        await asyncio.wait_for(gate.handler.paused.wait(), READ_TIMEOUT)
        (conn,) = gate.listener.connections
        assert conn.task is not None
        await asyncio.wait_for(conn.task, READ_TIMEOUT)
        assert len(gate.handler.finished) < PIPELINED and gate.handler.unsent <= UNSENT_BOUND
        with pytest.raises(ConnectionResetError):  # cut: a close would wait for it to read
            await read_to_the_end(reader)
        writer.close()


async def test_a_client_that_reads_slowly_is_kept_one_that_stops_is_cut(gate: Running) -> None:
    """The sweep's rule, with its clock given: progress within the timeout counts, not speed."""
    reader, writer = await connect_small(gate)
    writer.write(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\nGET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(gate.handler.paused.wait(), READ_TIMEOUT)
    (conn,) = gate.listener.connections
    assert conn.transport is not None
    unsent = conn.transport.get_write_buffer_size()
    conn.check_stalled(now=1.0, deadline=0.0)  # first seen stalled
    while conn.transport.get_write_buffer_size() >= unsent:  # the client reads a little
        await asyncio.wait_for(reader.read(4096), READ_TIMEOUT)
    assert conn.writing_paused  # far from drained: the same stall, timed since 1.0
    conn.check_stalled(now=100.0, deadline=50.0)  # but it read since: kept
    assert not conn.transport.is_closing()
    conn.check_stalled(now=200.0, deadline=150.0)  # nothing since
    with pytest.raises(ConnectionResetError):
        await read_to_the_end(reader)
    writer.close()


async def test_keep_alive_rules_for_http_1_0_and_connection_close(gate: Running) -> None:
    reader, writer = await gate.connect()
    writer.write(b"GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    answer = await read_answer(reader)
    assert (answer.body, answer.headers["connection"]) == (b"/ka", "keep-alive")
    writer.write(b"GET /last HTTP/1.0\r\n\r\n")
    answer = await read_answer(reader)
    assert (answer.body, answer.headers["connection"]) == (b"/last", "close")
    assert await closed(reader)
    writer.close()

    reader, writer = await gate.connect()
    writer.write(b"GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await read_answer(reader)
    assert answer.headers["connection"] == "close"
    assert await closed(reader)
    writer.close()


async def test_a_body_of_unknown_length_is_chunked_for_1_1_and_ends_with_the_connection_for_1_0(
    gate: Running,
) -> None:
    reader, writer = await gate.connect()
    writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await read_answer(reader)
    assert (answer.headers["transfer-encoding"], answer.body) == ("chunked", b"one,two,three")
    assert "content-length" not in answer.headers
    assert (await read_answer(reader)).body == b"/after"
    writer.close()

    reader, writer = await gate.connect()
    writer.write(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    answer = await read_answer(reader)
    assert "transfer-encoding" not in answer.headers and "content-length" not in answer.headers
    assert (answer.headers["connection"], answer.body) == ("close", b"one,two,three")
    writer.close()


async def test_head_and_204_answers_have_no_body_and_the_connection_stays_usable(gate: Running) -> None:
    reader, writer = await gate.connect()
    writer.write(b"HEAD /thing HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await read_answer(reader, head=True)
    assert answer.headers["content-length"] == "6"  # the length a GET would have
    writer.write(b"GET /no-content HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await read_answer(reader)
    assert answer.status == 204 and "content-length" not in answer.headers
    writer.write(b"HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await read_answer(reader, head=True)
    assert "transfer-encoding" not in answer.headers
    writer.write(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_answer(reader)).body == b"/next"  # no stray body bytes were sent
    writer.close()


async def test_answers_carry_one_date_and_no_server_header(gate: Running) -> None:
    reader, writer = await gate.connect()
    writer.write(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\nGET /dated HTTP/1.1\r\nHost: x\r\n\r\n")
    plain, dated = await read_answer(reader), await read_answer(reader)
    assert plain.headers["date"].endswith(" GMT")
    assert dated.names.count("date") == 1 and dated.headers["date"] == "Mon, 01 Jan 2024 00:00:00 GMT"
    assert "server" not in plain.names and "content-type" not in dated.names
    writer.close()


async def test_an_unread_body_is_drained_so_the_connection_can_carry_the_next_request(gate: Running) -> None:
    reader, writer = await gate.connect()
    body = b"z" * 100_000
    writer.write(b"POST /ignored HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    writer.write(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_answer(reader)).body == b"/ignored"
    assert (await read_answer(reader)).body == b"/next"
    writer.close()


async def test_an_unread_body_past_the_linger_bound_closes_the_connection_after_the_answer(
    gate: Running,
) -> None:
    reader, writer = await gate.connect()
    size = LINGER_BYTES * 4
    writer.write(b"POST /ignored HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
    sending = asyncio.create_task(_send_slowly(writer, size))
    answer = await read_answer(reader)
    assert answer.body == b"/ignored"
    assert await closed(reader)
    sending.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
        await sending
    writer.close()


async def _send_slowly(writer: asyncio.StreamWriter, size: int) -> None:
    chunk = b"z" * 65536
    for _ in range(size // len(chunk)):
        writer.write(chunk)
        await writer.drain()


async def test_a_body_withheld_for_100_continue_is_never_read_from_what_comes_next(gate: Running) -> None:
    """Refused without "100 Continue", the client sends no body; the bytes it sends next must not be
    taken as that body (and so must not be answered either): the connection closes instead."""
    reader, writer = await gate.connect()
    writer.write(b"POST /refuse HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 33\r\n\r\n")
    answer = await read_answer(reader)
    assert (answer.body, answer.headers["connection"]) == (b"/refuse", "close")
    writer.write(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await closed(reader)
    assert "/smuggled" not in gate.handler.finished
    writer.close()


async def test_a_body_sent_after_100_continue_is_read(gate: Running) -> None:
    reader, writer = await gate.connect()
    writer.write(b"POST /read HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    interim = await read_answer(reader)
    assert interim.status == 100
    writer.write(b"hello")
    answer = await read_answer(reader)
    assert (answer.status, answer.headers["x-length"], answer.body) == (200, "5", b"hello")
    writer.close()


async def test_an_upgrade_request_is_answered_then_the_connection_closes(gate: Running) -> None:
    reader, writer = await gate.connect()
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"GET /after-upgrade HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    answer = await read_answer(reader)
    assert (answer.body, answer.headers["connection"]) == (b"/ws", "close")
    assert await closed(reader)
    assert "/after-upgrade" not in gate.handler.finished
    writer.close()


async def test_a_handler_exception_is_a_500_before_the_answer_and_a_cut_connection_after(
    gate: Running,
) -> None:
    reader, writer = await gate.connect()
    writer.write(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await read_answer(reader)
    assert (answer.status, answer.body, answer.headers["connection"]) == (500, b"failed", "close")
    assert await closed(reader)
    assert gate.handler.failed == ["handler bug"]
    writer.close()

    # 100 bytes promised and 7 sent; or no length over HTTP/1.0, where a clean end would end the body
    for request in (b"GET /boom-late HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /boom-open HTTP/1.0\r\n\r\n"):
        reader, writer = await gate.connect()
        writer.write(request)
        with pytest.raises(ConnectionResetError):  # so the client cannot take it for complete
            await read_answer(reader)
        writer.close()
    assert gate.handler.failed == ["handler bug"]  # no second answer was attempted


async def test_an_answer_that_fails_midway_is_logged_without_its_query(
    gate: Running, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await gate.connect()
    writer.write(b"GET /boom-late?access_token=s3cr3t HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(ConnectionResetError):
        await read_answer(reader)
    writer.close()
    (record,) = [r for r in caplog.records if "failed midway" in r.getMessage()]
    assert record.getMessage() == "answer to GET /boom-late failed midway"
    assert "s3cr3t" not in caplog.text


async def test_an_aborted_answer_of_unknown_length_ends_with_a_reset(gate: Running) -> None:
    reader, writer = await gate.connect()
    writer.write(b"GET /abort-open HTTP/1.0\r\n\r\n")  # over HTTP/1.0 a clean end would end the body
    with pytest.raises(ConnectionResetError):
        await read_answer(reader)
    writer.close()


async def test_a_streamed_head_the_serialiser_refuses_leaves_the_request_unanswered(gate: Running) -> None:
    reader, writer = await gate.connect()
    writer.write(b"GET /bad-head HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await read_answer(reader)  # the status was not recorded as sent: a 500 can still be sent
    assert (answer.status, answer.body) == (500, b"failed")
    assert len(gate.handler.failed) == 1 and "control character" in gate.handler.failed[0]
    writer.close()


async def test_idle_keep_alive_connections_are_closed_after_the_timeout() -> None:
    async with running(keepalive_timeout=0.2) as gate:
        reader, writer = await gate.connect()
        writer.write(b"GET /once HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_answer(reader)).body == b"/once"
        assert await closed(reader)
        assert not gate.listener.connections
        writer.close()


async def test_shutdown_closes_idle_connections_and_lets_a_busy_one_finish_with_connection_close() -> None:
    async with running() as gate:
        idle_reader, idle_writer = await gate.connect()
        idle_writer.write(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_answer(idle_reader)
        busy_reader, busy_writer = await gate.connect()
        busy_writer.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await gate.handler.started.get() == "/warm"
        assert await gate.handler.started.get() == "/hold"
        gate.server.close()
        shutting = asyncio.create_task(gate.listener.shutdown(10.0))
        assert await closed(idle_reader)
        assert not shutting.done()
        gate.handler.release.set()
        answer = await read_answer(busy_reader)
        assert (answer.body, answer.headers["connection"]) == (b"/hold", "close")
        assert await closed(busy_reader)
        await asyncio.wait_for(shutting, READ_TIMEOUT)
        idle_writer.close()
        busy_writer.close()


async def test_shutdown_lets_a_request_whose_body_is_still_coming_finish() -> None:
    async with running() as gate:
        reader, writer = await gate.connect()
        writer.write(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        assert await gate.handler.started.get() == "/read"
        gate.server.close()
        shutting = asyncio.create_task(gate.listener.shutdown(10.0))
        await asyncio.sleep(0)  # one loop pass: shutdown's first step marks every connection closing
        assert [conn.closing for conn in gate.listener.connections] == [True]
        writer.write(b"world")
        answer = await read_answer(reader)
        assert (answer.headers["x-length"], answer.body) == ("10", b"helloworld")
        assert answer.headers["connection"] == "close"
        await asyncio.wait_for(shutting, READ_TIMEOUT)
        writer.close()


async def test_shutdown_cancels_a_request_that_runs_past_the_grace() -> None:
    async with running() as gate:
        reader, writer = await gate.connect()
        writer.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await gate.handler.started.get() == "/hold"
        gate.server.close()
        await asyncio.wait_for(gate.listener.shutdown(0.05), READ_TIMEOUT)
        assert gate.handler.finished == ["/hold"]  # its finally ran: it was cancelled, not abandoned
        assert not gate.handler.release.is_set()
        assert await closed(reader)
        writer.close()


async def test_an_answer_that_shutdown_cancels_midway_ends_with_a_reset() -> None:
    """Over HTTP/1.0 with no length, a clean end would pass the partial body for the whole of it."""
    async with running() as gate:
        reader, writer = await gate.connect()
        writer.write(b"GET /stream-hold HTTP/1.0\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"partial"), READ_TIMEOUT)
        gate.server.close()
        await asyncio.wait_for(gate.listener.shutdown(0.05), READ_TIMEOUT)
        with pytest.raises(ConnectionResetError):
            await read_to_the_end(reader)
        writer.close()


async def test_shutdown_cuts_a_client_that_has_not_read_its_answers_within_the_grace() -> None:
    async with running() as gate:
        reader, writer = await connect_small(gate)
        pipeline_big(writer)
        await asyncio.wait_for(gate.handler.paused.wait(), READ_TIMEOUT)
        gate.server.close()
        await asyncio.wait_for(gate.listener.shutdown(0.05), READ_TIMEOUT)
        with pytest.raises(ConnectionResetError):
            await read_to_the_end(reader)
        writer.close()


async def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(gate: Running) -> None:
    reader, writer = await gate.connect()
    writer.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\nGET /queued HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await gate.handler.started.get() == "/hold"
    writer.write_eof()
    # A round trip on a second connection: its request is readable no earlier than the first one's EOF,
    # so the server has taken the EOF in by the time this answer arrives.
    other_reader, other_writer = await gate.connect()
    other_writer.write(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_answer(other_reader)).body == b"/other"
    gate.handler.release.set()
    assert (await read_answer(reader)).body == b"/hold"
    assert (await read_answer(reader)).body == b"/queued"
    assert await closed(reader)
    writer.close()
    other_writer.close()


async def test_a_body_cut_short_by_the_client_fails_the_request_and_closes(gate: Running) -> None:
    reader, writer = await gate.connect()
    writer.write(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    assert await gate.handler.started.get() == "/read"
    writer.write_eof()
    assert await closed(reader)
    assert await asyncio.wait_for(gate.handler.done.get(), READ_TIMEOUT) == "/read"
    assert len(gate.handler.failed) == 1 and "cut short" in gate.handler.failed[0]
    writer.close()


async def test_a_connection_that_sends_part_of_a_head_is_closed_after_the_idle_timeout() -> None:
    async with running(keepalive_timeout=0.2) as gate:
        reader, writer = await gate.connect()
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert await closed(reader)
        assert gate.handler.finished == []
        writer.close()


async def test_a_connection_the_client_closes_is_forgotten(gate: Running) -> None:
    reader, writer = await gate.connect()
    writer.write(b"GET /once HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_answer(reader)).body == b"/once"
    (conn,) = gate.listener.connections
    assert conn.task is not None
    writer.close()
    await asyncio.wait_for(conn.task, READ_TIMEOUT)  # its loop ends when the client is gone
    assert conn.transport is None and not gate.listener.connections


# Framing tricks used for request smuggling (ambiguous Transfer-Encoding or Content-Length, header
# syntax a lenient parser would accept) and other malformed heads. Each must be refused outright,
# with nothing after it read as a request.
SMUGGLING = {
    "two TE, last not chunked": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
    "space before the colon": b"Transfer-Encoding : chunked\r\n",
    "unknown coding": b"Transfer-Encoding: xchunked\r\n",
    "chunked twice": b"Transfer-Encoding: chunked, chunked\r\n",
    "obs-fold": b"X-A: a\r\n b\r\n",
    "NUL in a value": b"X-A: a\x00b\r\n",
    "signed length": b"Content-Length: +5\r\n",
    "length list": b"Content-Length: 5, 5\r\n",
    "two lengths": b"Content-Length: 5\r\nContent-Length: 6\r\n",
    "length and TE": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
}


@pytest.mark.parametrize("fields", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_a_smuggling_head_is_refused_and_nothing_after_it_is_read(gate: Running, fields: bytes) -> None:
    reader, writer = await gate.connect()
    body = b"5\r\nhello\r\n0\r\n\r\n" if b"chunked" in fields else b"hello"
    writer.write(b"POST /read HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n" + body)
    writer.write(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await read_answer(reader)
    assert (answer.status, answer.headers["connection"]) == (400, "close")
    assert await closed(reader)
    assert gate.handler.finished == [] and len(gate.handler.refused) == 1
    writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /lf HTTP/1.1\nHost: x\n\n",  # bare LF line ends
        b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",  # space in the target
        b"GET /\r\n\r\n",  # HTTP/0.9
        b"POST /read HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nx\r\n",
    ],
    ids=["bare LF", "space in target", "HTTP/0.9", "chunk size overflow"],
)
async def test_a_malformed_request_is_refused_and_closes(gate: Running, raw: bytes) -> None:
    reader, writer = await gate.connect()
    writer.write(raw + b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await read_answer(reader)
    assert (answer.status, answer.headers["connection"]) == (400, "close")
    assert await closed(reader)
    assert "/after" not in gate.handler.finished
    writer.close()


async def test_a_body_that_turns_malformed_midway_fails_its_request_instead_of_hanging(gate: Running) -> None:
    reader, writer = await gate.connect()
    writer.write(b"POST /read HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert await gate.handler.started.get() == "/read"
    writer.write(b"zz-not-a-chunk-size\r\n")
    answer = await read_answer(reader)
    assert (answer.status, answer.body, answer.headers["connection"]) == (500, b"failed", "close")
    assert await closed(reader)
    writer.close()
