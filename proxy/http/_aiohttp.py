"""Every aiohttp name the data plane uses that is not part of aiohttp's documented public API.

The listener and the pool sit below ``aiohttp.web`` and ``ClientSession``: they use aiohttp's parsers,
protocols and stream writer directly, and override or read a few private members. All of them are
imported here and nowhere else, and ``PRIVATE_MEMBERS`` lists the private attributes the subclasses
rely on, so ``tests/test_aiohttp_internals.py`` fails with a clear message when an aiohttp upgrade
renames or removes one (an override renamed upstream would otherwise just be bypassed).
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_exceptions import ClientPayloadError
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.http_parser import HttpRequestParser
from aiohttp.http_writer import StreamWriter, _serialize_headers
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestPayloadError

__all__ = [
    "EMPTY_PAYLOAD",
    "PARSER_ERRORS",
    "PRIVATE_MEMBERS",
    "BaseProtocol",
    "ClientPayloadError",
    "HttpProcessingError",
    "HttpRequestParser",
    "LineTooLong",
    "RequestPayloadError",
    "ResponseHandler",
    "StreamReader",
    "StreamWriter",
    "TransferEncodingError",
    "parser_error_text",
    "serialize_head",
]


def serialize_head(first_line: str, fields: Iterable[tuple[str, str]]) -> bytes:
    """A request or status line and header pairs as bytes, by aiohttp's C serialiser (refuses CR/LF).
    ``fields`` needs only ``.items()`` (``proxy.http.request.Fields``)."""
    return _serialize_headers(first_line, fields)  # type: ignore[arg-type]


# aiohttp's request-parser errors, most specific first, with a fixed text each: their own messages
# quote the bytes they refused, which may hold a key.
PARSER_ERRORS: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (BadHttpMethod, "invalid method"),
    (BadStatusLine, "invalid request line"),
    (InvalidHeader, "invalid header field"),
    (InvalidURLError, "invalid request target"),
    (ContentLengthError, "invalid or missing body length"),
    (TransferEncodingError, "invalid transfer encoding"),
    (ContentEncodingError, "invalid content encoding"),
    (BadHttpMessage, "the request is not valid HTTP/1.1"),
)


def parser_error_text(error: HttpProcessingError) -> str:
    """A fixed description of a parser error, by its class."""
    for cls, text in PARSER_ERRORS:
        if isinstance(error, cls):
            return text
    return "the request could not be parsed"


# Private members the data plane's subclasses call, override or read: (class, member, how used).
PRIVATE_MEMBERS: tuple[tuple[type, str, str], ...] = (
    (BaseProtocol, "_parser", "listener: the request parser the connection feeds"),
    (BaseProtocol, "_buffer_paused", "listener: whether reading is paused for the request queue"),
    (BaseProtocol, "_pause_reading_for_buffer", "listener: pause reading while requests queue up"),
    (BaseProtocol, "_drain_helper", "listener: wait for the client to take written answers"),
    (ResponseHandler, "_reschedule_timeout", "pool: overridden, read deadlines are checked by one timer"),
    (ResponseHandler, "_drop_timeout", "pool: overridden, as above"),
    (ResponseHandler, "_on_read_timeout", "pool: called when a read deadline passes"),
    (ResponseHandler, "_read_timeout", "pool: the read timeout the connection was set up with"),
    (ResponseHandler, "_payload", "pool: the answer body being read"),
    (ResponseHandler, "_parser", "pool: the response parser, replaced for HEAD answers"),
)
