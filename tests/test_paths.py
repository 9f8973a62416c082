"""Path normalisation: every trick that could make an upstream see another path than the one judged."""

from __future__ import annotations

import pytest

from proxy.core.paths import normalize

NORMALISED = [
    ("/", "/", None),
    ("/metrics", "/metrics", None),
    ("/metrics/../admin", "/admin", None),
    ("/metrics/%2e%2e/admin", "/admin", None),
    ("/metrics/%2E%2E/admin", "/admin", None),
    ("/metrics/.%2e/admin", "/admin", None),
    ("/metrics/%2e./admin", "/admin", None),
    ("/metrics/./a", "/metrics/a", None),
    ("/metrics/%2e/a", "/metrics/a", None),
    ("//metrics///a", "/metrics/a", None),
    ("/a/b/..", "/a/", None),
    ("/a/b/../", "/a/", None),
    ("/a/.", "/a/", None),
    ("/../../etc/passwd", "/etc/passwd", None),
    ("/a/", "/a/", None),
    ("/%7Euser/%41", "/~user/A", None),
    ("/caf%c3%a9", "/caf%C3%A9", None),
    ("/a%20b", "/a%20b", None),
    ("/a;b=c/d", "/a;b=c/d", None),
    ("/a?x=%20&y=1+2", "/a", "x=%20&y=1+2"),
    ("/a?", "/a", ""),
    ("/a/../b?q=../x", "/b", "q=../x"),
]


@pytest.mark.parametrize(("raw", "path", "query"), NORMALISED)
def test_normalised(raw: str, path: str, query: str | None) -> None:
    target = normalize(raw)
    assert (target.problem, target.path, target.query) == (None, path, query)


REFUSED = [
    ("/metrics/..%2fadmin", "encoded slash"),
    ("/metrics/..%2Fadmin", "encoded slash"),
    ("/a%5c..%5cb", "encoded backslash"),
    ("/a\\..\\b", "must be percent-encoded"),
    ("/a%00b", "NUL"),
    ("/a/%252e%252e/b", "double percent-encoding"),
    ("/a/%zz", "invalid percent-encoding"),
    ("/a/%4", "invalid percent-encoding"),
    ("/a/%", "invalid percent-encoding"),
    ("/metrics/..;/admin", "path parameter on a dot segment"),
    ("/metrics/.;x/admin", "path parameter on a dot segment"),
    ("/caf\u00e9", "must be percent-encoded"),
    ("/a b", "must be percent-encoded"),
    ("/a\tb", "must be percent-encoded"),
    ("/a#frag", "fragment"),
    ("http://evil/a", "must start with '/'"),
    ("*", "must start with '/'"),
    ("", "must start with '/'"),
    ("/a?x=\u00e9", "query"),
    ("/a?x y", "query"),
]


@pytest.mark.parametrize(("raw", "problem"), REFUSED)
def test_refused(raw: str, problem: str) -> None:
    target = normalize(raw)
    assert target.problem is not None and problem in target.problem, target


def test_path_qs_keeps_query_byte_exact() -> None:
    assert normalize("/x/./y?a=%2F&b=%zz").path_qs == "/x/y?a=%2F&b=%zz"
    assert normalize("/x?").path_qs == "/x?"
    assert normalize("/x").path_qs == "/x"
