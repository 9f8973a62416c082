"""The aiohttp internals the data plane relies on (``proxy.http._aiohttp``) are still there.

An aiohttp upgrade that renames or removes one must fail here, naming it, rather than be silently
bypassed (an override of a renamed method is simply never called).
"""

from __future__ import annotations

import asyncio

import pytest

from proxy.http import _aiohttp
from proxy.http._aiohttp import PRIVATE_MEMBERS, BaseProtocol, ResponseHandler


@pytest.mark.parametrize(
    ("cls", "member", "use"), PRIVATE_MEMBERS, ids=[f"{c.__name__}.{m}" for c, m, _ in PRIVATE_MEMBERS]
)
async def test_private_member_exists(cls: type, member: str, use: str) -> None:
    loop = asyncio.get_running_loop()
    instance = ResponseHandler(loop) if cls is ResponseHandler else BaseProtocol(loop)
    assert hasattr(cls, member) or hasattr(instance, member), (
        f"aiohttp {cls.__module__}.{cls.__name__} no longer has {member} ({use}): see proxy/http/_aiohttp.py"
    )


def test_overridden_timeout_methods_are_methods_of_the_base() -> None:
    for name in ("_reschedule_timeout", "_drop_timeout", "_on_read_timeout"):
        assert callable(getattr(ResponseHandler, name, None)), f"ResponseHandler.{name} is gone"


def test_every_name_is_exported() -> None:
    missing = [name for name in _aiohttp.__all__ if not hasattr(_aiohttp, name)]
    assert not missing


def test_parser_errors_are_mapped_by_class_including_subclasses() -> None:
    from aiohttp.http_exceptions import BadHttpMessage, InvalidHeader, TransferEncodingError

    class Subclassed(InvalidHeader):
        pass

    assert _aiohttp.parser_error_text(Subclassed(b"X-API-Key : sg_secret")) == "invalid header field"
    assert _aiohttp.parser_error_text(TransferEncodingError("x")) == "invalid transfer encoding"
    assert _aiohttp.parser_error_text(BadHttpMessage("x")) == "the request is not valid HTTP/1.1"
