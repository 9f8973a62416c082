"""What reaches the log from a hostile or unlucky request: never a query string, never a header value.

Real sockets and captured log records at DEBUG; the rule itself is ``proxy.core.redact``.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.bounds import PROMPT
from tests.harness import ADMIN_TOKEN, Gate


async def _raw(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), PROMPT)  # the server closes after an error
    finally:
        writer.close()


@pytest.mark.parametrize("bad", ["\x01", "\x7f", "\x00"], ids=["SOH", "DEL", "NUL"])
async def test_an_admin_token_in_a_malformed_header_never_reaches_the_log(
    proxy: Gate, caplog: pytest.LogCaptureFixture, bad: str
) -> None:
    caplog.set_level(logging.DEBUG)
    raw = f"GET /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}{bad}\r\n\r\n".encode()
    answer = await _raw(proxy.runtime.admin_url, raw)
    assert answer.split(b" ", 2)[1] == b"400", answer  # aiohttp's own answer (its body quotes the line
    # back to the client that sent it, which tells that client nothing new; the log is the leak)
    assert ADMIN_TOKEN not in caplog.text
    # what is logged says what went wrong, without the bytes
    assert any("BadHttpMessage" in record.getMessage() for record in caplog.records), caplog.text


async def test_an_answer_cut_midway_is_logged_without_its_query(
    proxy: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    key = (await proxy.create_key())["key"]
    caplog.set_level(logging.DEBUG)
    raw = (
        f"GET /drop?cl=1&access_token=s3cr3t-t0ken HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with pytest.raises(ConnectionResetError):  # the upstream cut its answer: so is the client's
        await _raw(proxy.url, raw)
    warnings = [r.getMessage() for r in caplog.records if "aborting the client connection" in r.getMessage()]
    assert len(warnings) == 1 and "GET /drop:" in warnings[0], caplog.text
    assert "s3cr3t-t0ken" not in caplog.text
