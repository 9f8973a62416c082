"""proxy.core.redact: what a log may say about a request."""

from __future__ import annotations

import pytest

from proxy.core.redact import MAX_LOGGED_PATH, logged_error, logged_path


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("/a/b", "/a/b"),
        ("/a/b?access_token=s3cr3t", "/a/b"),
        ("/a?", "/a"),
        ("/a#frag?x", "/a"),
        ("/a/..;/b?k=v", "/a/..;/b"),
        ("/a\x01b", "/a\\x01b"),  # one line per log record, whatever the client sent
        ("/caf\u00e9", "/caf\\xe9"),
        ("/" + "x" * 1000, "/" + "x" * (MAX_LOGGED_PATH - 1)),
        ("", ""),
        ("*", "*"),
        ("http://host/p?q=s3cr3t", "http://host/p"),
    ],
)
def test_a_logged_target_is_its_path_only(target: str, logged: str) -> None:
    assert logged_path(target) == logged


def test_a_logged_error_is_its_class_never_its_message() -> None:
    class ParserError(Exception):
        pass

    error = ParserError("Invalid header value char: b'Authorization: Bearer s3cr3t\\x01'")
    assert "s3cr3t" not in logged_error(error)
    assert logged_error(error).endswith("ParserError")
