"""The raw-socket corpus: request smuggling and desync attempts, and what each one may cause.

Every case is bytes a client could send on one connection, the statuses it must get (in order), whether
the proxy must close the connection after them, and exactly what the upstream must receive, byte for
byte: nothing, for every framing the proxy refuses (and then nothing that came after it on the
connection, which is why most cases carry a ``GET /smuggled`` behind them); for a request it forwards,
the request as the proxy rewrites it (normalised path, key headers gone, the X-Forwarded-* and
X-Signalgate-* it vouches for).

The data plane under test is whatever ``proxy.app`` runs; the two ends of the wire (``wire.py``) use
no parser of the proxy's, so this corpus is the contract a new data plane must pass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from tests.adversarial.wire import Answer, RecordingUpstream, send
from tests.harness import Gate, gate, settings_for
from tests.pgtools import create_database, drop_database, random_name

pytestmark = pytest.mark.asyncio(loop_scope="module")

HOST = "Host: api.example\r\n"
KEY = "X-API-Key: {key}\r\n"
SMUGGLED = "GET /smuggled HTTP/1.1\r\n" + HOST + KEY + "\r\n"


@dataclass(frozen=True)
class Forwarded:
    """One request as the upstream must receive it."""

    line: str  # the request line
    fields: str = ""  # the client's own fields kept, in their order, after Host
    framing: str = ""  # a framing field the forwarder adds after the proxy's own
    body: bytes = b""
    key: str = "key"  # whose id X-Signalgate-Key-Id carries

    def bytes_for(self, key_id: str, request_id: str) -> bytes:
        head = (
            f"{self.line}\r\n{HOST}{self.fields}"
            "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: api.example\r\n"
            f"X-Signalgate-Key-Id: {key_id}\r\nX-Signalgate-Owner: team-test\r\n"
            f"X-Request-Id: {request_id}\r\n{self.framing}\r\n"
        )
        return head.encode() + self.body


@dataclass(frozen=True)
class Case:
    raw: str  # {key}: a key that may do anything; {narrow}: one allowed only GET/POST /allowed/**
    statuses: tuple[int, ...]
    closed: bool
    forwarded: tuple[Forwarded, ...] = ()  # one per 200, in order


def refused(*fields: str, body: str = "", line: str = "POST /echo HTTP/1.1") -> Case:
    """A head the proxy must refuse outright: 400, the connection closed, nothing upstream, and the
    request behind it (which a desynced server would read from the body) never read."""
    return Case(f"{line}\r\n{HOST}{KEY}{''.join(fields)}\r\n{body}{SMUGGLED}", (400,), closed=True)


CHUNKED_HELLO = "5\r\nhello\r\n0\r\n\r\n"
INNER = "GET /inner HTTP/1.1\r\n" + HOST + "\r\n"  # a request inside a body is just bytes

CASES: dict[str, Case] = {
    # -- ambiguous or malformed lengths ------------------------------------------------------------
    "CL+TE": refused("Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n", body=CHUNKED_HELLO),
    "TE+CL": refused("Transfer-Encoding: chunked\r\n", "Content-Length: 5\r\n", body=CHUNKED_HELLO),
    "two lengths": refused("Content-Length: 5\r\n", "Content-Length: 6\r\n", body="hello!"),
    "the same length twice": refused("Content-Length: 5\r\n", "Content-Length: 5\r\n", body="hello"),
    "a length list": refused("Content-Length: 5, 5\r\n", body="hello"),
    "a signed length": refused("Content-Length: +5\r\n", body="hello"),
    "a negative length": refused("Content-Length: -1\r\n"),
    "a hex length": refused("Content-Length: 0x5\r\n", body="hello"),
    "a length with a space before the colon": refused("Content-Length : 5\r\n", body="hello"),
    # -- transfer codings ----------------------------------------------------------------------------
    "TE gzip, chunked": refused("Transfer-Encoding: gzip, chunked\r\n", body=CHUNKED_HELLO),
    "TE identity, chunked": refused("Transfer-Encoding: identity, chunked\r\n", body=CHUNKED_HELLO),
    "TE foo, chunked": refused("Transfer-Encoding: foo, chunked\r\n", body=CHUNKED_HELLO),
    "TE chunked, chunked": refused("Transfer-Encoding: chunked, chunked\r\n", body=CHUNKED_HELLO),
    "TE chunked then identity": refused(
        "Transfer-Encoding: chunked\r\n", "Transfer-Encoding: identity\r\n", body=CHUNKED_HELLO
    ),
    "TE identity": refused("Transfer-Encoding: identity\r\n", body="hello"),
    "TE xchunked": refused("Transfer-Encoding: xchunked\r\n", body=CHUNKED_HELLO),
    "TE with a space before the colon": refused("Transfer-Encoding : chunked\r\n", body=CHUNKED_HELLO),
    "chunk size overflow": refused(
        "Transfer-Encoding: chunked\r\n", body="ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"
    ),
    "chunk size not hex": refused("Transfer-Encoding: chunked\r\n", body="5x\r\nhello\r\n0\r\n\r\n"),
    "bare LF in a chunked body": refused("Transfer-Encoding: chunked\r\n", body="5\nhello\n0\n\n"),
    # -- head syntax ---------------------------------------------------------------------------------
    "obs-fold": refused("X-A: a\r\n b\r\n"),
    "a line starting with a space": refused(" X-A: b\r\n"),
    "NUL in a value": refused("X-A: a\x00b\r\n"),
    "CR alone in a value": refused("X-A: a\rb\r\n"),
    "a control character in a value": refused("X-A: a\x01b\r\n"),
    "two Host fields": refused("Host: other.example\r\n"),
    "more than 128 fields": refused(*(f"X-F{i}: v\r\n" for i in range(128))),
    "bare LF line ends": Case(f"GET /echo HTTP/1.1\n{HOST[:-2]}\n{KEY[:-2]}\n\n{SMUGGLED}", (400,), True),
    "HTTP/0.9": Case(f"GET /echo\r\n\r\n{SMUGGLED}", (400,), True),
    "NUL in the target": Case(f"GET /echo\x00 HTTP/1.1\r\n{HOST}{KEY}\r\n{SMUGGLED}", (400,), True),
    "a space in the target": Case(f"GET /a b HTTP/1.1\r\n{HOST}{KEY}\r\n{SMUGGLED}", (400,), True),
    "a lower-case method": Case(f"get /echo HTTP/1.1\r\n{HOST}{KEY}\r\n{SMUGGLED}", (400,), True),
    # -- targets the parser takes and the proxy refuses (the connection stays usable) ------------------
    "absolute-form target": Case(
        f"GET http://evil.example/echo HTTP/1.1\r\n{HOST}{KEY}\r\nGET /after HTTP/1.1\r\n{HOST}{KEY}\r\n",
        (400, 200),
        closed=False,
        forwarded=(Forwarded("GET /after HTTP/1.1"),),
    ),
    "asterisk-form target": Case(f"OPTIONS * HTTP/1.1\r\n{HOST}{KEY}\r\n", (400,), closed=False),
    "encoded slash": Case(f"GET /allowed%2F..%2Fsecret HTTP/1.1\r\n{HOST}{KEY}\r\n", (400,), closed=False),
    "dot segments are forwarded as judged": Case(
        f"GET /allowed/%2e%2e/secret?q=%2e%2e HTTP/1.1\r\n{HOST}{KEY}\r\n",
        (200,),
        closed=False,
        forwarded=(Forwarded("GET /secret?q=%2e%2e HTTP/1.1"),),
    ),
    # -- pipelining: each request judged on its own key, the connection kept -------------------------
    "pipelining after a denial": Case(
        f"GET /no-key HTTP/1.1\r\n{HOST}\r\n"
        f"GET /one HTTP/1.1\r\n{HOST}{KEY}\r\n"
        f"GET /denied HTTP/1.1\r\n{HOST}X-API-Key: {{narrow}}\r\n\r\n"
        f"GET /allowed/two HTTP/1.1\r\n{HOST}X-API-Key: {{narrow}}\r\n\r\n"
        f"GET /bad-key HTTP/1.1\r\n{HOST}X-API-Key: sg_0000000000000000_{'0' * 48}\r\n\r\n"
        f"POST /three HTTP/1.1\r\n{HOST}{KEY}Content-Length: 5\r\n\r\nhello",
        (401, 200, 403, 200, 401, 200),
        closed=False,
        forwarded=(
            Forwarded("GET /one HTTP/1.1"),
            Forwarded("GET /allowed/two HTTP/1.1", key="narrow"),
            Forwarded("POST /three HTTP/1.1", fields="Content-Length: 5\r\n", body=b"hello"),
        ),
    ),
    "a body that looks like a request": Case(
        f"POST /echo HTTP/1.1\r\n{HOST}{KEY}Content-Length: {len(INNER)}\r\n\r\n{INNER}",
        (200,),
        closed=False,
        forwarded=(
            Forwarded("POST /echo HTTP/1.1", fields=f"Content-Length: {len(INNER)}\r\n", body=INNER.encode()),
        ),
    ),
    # -- bodies the proxy takes and frames again -------------------------------------------------------
    "chunked in any case": Case(
        f"POST /echo HTTP/1.1\r\n{HOST}{KEY}Transfer-Encoding: Chunked\r\n\r\n{CHUNKED_HELLO}",
        (200,),
        closed=False,
        forwarded=(
            Forwarded(
                "POST /echo HTTP/1.1",
                framing="Transfer-Encoding: chunked\r\n",
                body=CHUNKED_HELLO.encode(),
            ),
        ),
    ),
    "chunk extensions are not passed on": Case(
        f"POST /echo HTTP/1.1\r\n{HOST}{KEY}Transfer-Encoding: chunked\r\n\r\n"
        '5;ext="x"\r\nhello\r\n0\r\n\r\n',
        (200,),
        closed=False,
        forwarded=(
            Forwarded(
                "POST /echo HTTP/1.1", framing="Transfer-Encoding: chunked\r\n", body=CHUNKED_HELLO.encode()
            ),
        ),
    ),
    # -- keys: none reaches the upstream, however it is spelled ------------------------------------
    "a second key after Bearer and a TAB": Case(
        f"GET /echo HTTP/1.1\r\n{HOST}{KEY}Authorization: Bearer\t{{narrow}}\r\n\r\n",
        (200,),
        closed=False,
        forwarded=(Forwarded("GET /echo HTTP/1.1"),),
    ),
    "a second key after Bearer and spaces and TABs": Case(
        f"GET /echo HTTP/1.1\r\n{HOST}{KEY}Authorization: bearer \t \t{{narrow}}\r\n\r\n",
        (200,),
        closed=False,
        forwarded=(Forwarded("GET /echo HTTP/1.1"),),
    ),
    "a second key after Bearer and a no-break space": Case(
        f"GET /echo HTTP/1.1\r\n{HOST}{KEY}Authorization: Bearer\u00a0{{narrow}}\r\n\r\n",
        (200,),
        closed=False,
        forwarded=(Forwarded("GET /echo HTTP/1.1"),),
    ),
    "the only key after Bearer and a TAB": Case(
        f"GET /echo HTTP/1.1\r\n{HOST}Authorization: Bearer\t{{key}}\r\n\r\n",
        (200,),
        closed=False,
        forwarded=(Forwarded("GET /echo HTTP/1.1"),),
    ),
    "the upstream's own bearer token passes": Case(
        f"GET /echo HTTP/1.1\r\n{HOST}{KEY}Authorization: Bearer\tupstream-token\r\n\r\n",
        (200,),
        closed=False,
        forwarded=(Forwarded("GET /echo HTTP/1.1", fields="Authorization: Bearer\tupstream-token\r\n"),),
    ),
}


@dataclass
class Wired:
    gate: Gate
    upstream: RecordingUpstream
    keys: dict[str, dict[str, str]]  # "key", "narrow": the admin API's create answers


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def wired(pg_server: str, migrated_template: str) -> AsyncIterator[Wired]:
    """One proxy for the whole corpus, in front of a recording upstream (a proxy per case would cost
    most of the suite's minute)."""
    name = random_name("t")
    dsn = await create_database(pg_server, name, template=migrated_template)
    try:
        async with RecordingUpstream() as upstream, gate(settings_for(dsn, upstream.url, None)) as g:
            keys = {
                "key": await g.create_key(),
                "narrow": await g.create_key(
                    policy={"routes": [{"methods": ["GET", "POST"], "path": "/allowed/**"}]}
                ),
            }
            yield Wired(g, upstream, keys)
    finally:
        await drop_database(pg_server, name)


def _expected(case: Case, answers: list[Answer], wired: Wired) -> list[bytes]:
    request_ids = [answer.headers["x-request-id"] for answer in answers if answer.status == 200]
    return [
        forwarded.bytes_for(wired.keys[forwarded.key]["id"], request_id)
        for forwarded, request_id in zip(case.forwarded, request_ids, strict=True)
    ]


@pytest.mark.parametrize("name", CASES)
async def test_corpus(wired: Wired, name: str) -> None:
    case = CASES[name]
    raw = case.raw.format(key=wired.keys["key"]["key"], narrow=wired.keys["narrow"]["key"]).encode()
    wired.upstream.requests.clear()
    answers, closed = await send(wired.gate.url, raw, len(case.statuses))
    assert [answer.status for answer in answers] == list(case.statuses), [a.body for a in answers]
    assert closed == case.closed
    expected = _expected(case, answers, wired)
    assert await wired.upstream.wait_for(len(expected)) == expected
    # and nothing more arrives: a request the proxy answers last on a connection is sent upstream before
    # its answer, so after the last answer everything that was forwarded is there
    assert wired.upstream.requests == expected
