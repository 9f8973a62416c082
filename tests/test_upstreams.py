"""Table tests for proxy.core.upstreams: route validation and picking. No sockets."""

from __future__ import annotations

import pytest

from proxy.core.upstreams import Upstream, UpstreamRoute, UpstreamTable

TABLE = UpstreamTable(
    [
        UpstreamRoute("/api", "http://api:8080"),
        UpstreamRoute("/api/v2", "http://api-v2:8080/base/"),
        UpstreamRoute("/api/v2/admin/", "https://admin.internal", preserve_host=False),
        UpstreamRoute("/api", "http://tenant-a:9000", host="A.Example.com"),
        UpstreamRoute("/", "http://tenant-b", host="b.example.com"),
        UpstreamRoute("/v6", "http://[::1]:8081/x"),
    ],
    default="http://fallback:80",
)

API = Upstream("http://api:8080", "", True)
V2 = Upstream("http://api-v2:8080", "/base", True)
ADMIN = Upstream("https://admin.internal", "", False)
TENANT_A = Upstream("http://tenant-a:9000", "", True)
TENANT_B = Upstream("http://tenant-b", "", True)
V6 = Upstream("http://[::1]:8081", "/x", True)
FALLBACK = Upstream("http://fallback:80", "", True)

PICK_CASES = [
    # (path, host, expected)
    ("/api", None, API),
    ("/api/", None, API),
    ("/api/x/y", None, API),
    ("/apix", None, FALLBACK),  # segment boundary: /api does not match /apix
    ("/api/v2", None, V2),  # longest prefix wins
    ("/api/v2/things", None, V2),
    ("/api/v2x", None, API),
    ("/api/v2/admin", None, ADMIN),  # prefix configured with a trailing slash
    ("/api/v2/admin/users", None, ADMIN),
    ("/", None, FALLBACK),
    ("", None, FALLBACK),
    ("/other", "api.example.com", FALLBACK),
    ("/api/x", "a.example.com", TENANT_A),  # host route beats the generic one at equal prefix
    ("/api/x", "A.EXAMPLE.COM:8443", TENANT_A),  # case-insensitive, port ignored
    ("/api/x", "a.example.com.", TENANT_A),
    ("/api/v2/x", "a.example.com", V2),  # a longer generic prefix still wins over a shorter host one
    ("/api/x", "c.example.com", API),
    ("/anything", "b.example.com:80", TENANT_B),
    ("/api", "b.example.com", API),
    ("/v6/z", None, V6),
    ("/api/x", "[::1]:443", API),
]


@pytest.mark.parametrize(("path", "host", "expected"), PICK_CASES)
def test_pick(path: str, host: str | None, expected: Upstream) -> None:
    assert TABLE.pick(path, host) == expected


def test_no_default_and_no_match_is_none() -> None:
    table = UpstreamTable([UpstreamRoute("/api", "http://api")], default=None)
    assert table.pick("/other", None) is None
    assert table.pick("/apix", "api") is None
    assert table.pick("/api/1", None) == Upstream("http://api", "", True)


def test_host_only_route_does_not_match_other_hosts() -> None:
    table = UpstreamTable([UpstreamRoute("/", "http://a", host="a.example")], default=None)
    assert table.pick("/x", "a.example") == Upstream("http://a", "", True)
    assert table.pick("/x", "b.example") is None
    assert table.pick("/x", None) is None


def test_without_routes_every_path_and_host_gets_the_default_or_none() -> None:
    table = UpstreamTable([], default="http://only:8080")
    for path, host in [("/", None), ("/a/b/c", "x.example"), ("", None)]:
        assert table.pick(path, host) == Upstream("http://only:8080", "", True)
    assert UpstreamTable([], default=None).pick("/a", None) is None


def test_root_prefix_catches_everything() -> None:
    table = UpstreamTable([UpstreamRoute("/", "HTTPS://Upstream.Example:8443/")], default=None)
    assert table.pick("/deep/path/here", None) == Upstream("https://upstream.example:8443", "", True)


BAD_ROUTES = [
    # (route, fragment expected in the message)
    (UpstreamRoute("api", "http://a"), "'api'"),
    (UpstreamRoute("/api?x=1", "http://a"), "'/api?x=1'"),
    (UpstreamRoute("/api", "ftp://a"), "'ftp://a'"),
    (UpstreamRoute("/api", "a.example:80"), "'a.example:80'"),
    (UpstreamRoute("/api", "http://"), "'http://'"),
    (UpstreamRoute("/api", "http:///path"), "'http:///path'"),
    (UpstreamRoute("/api", "http://a/?q=1"), "'http://a/?q=1'"),
    (UpstreamRoute("/api", "http://a/?"), "'http://a/?'"),
    (UpstreamRoute("/api", "http://a/#frag"), "'http://a/#frag'"),
    (UpstreamRoute("/api", "http://a:notaport"), "'http://a:notaport'"),
    (UpstreamRoute("/api", "http://a:99999"), "'http://a:99999'"),
    (UpstreamRoute("/api", "http://a /x"), "'http://a /x'"),
    (UpstreamRoute("/api", "http://a", host="a/b"), "'a/b'"),
]


@pytest.mark.parametrize(("route", "quoted"), BAD_ROUTES)
def test_invalid_routes_are_rejected_naming_the_value(route: UpstreamRoute, quoted: str) -> None:
    with pytest.raises(ValueError) as info:
        UpstreamTable([route], default=None)
    assert quoted in str(info.value)


def test_invalid_default_is_rejected() -> None:
    with pytest.raises(ValueError, match="'gopher://x'"):
        UpstreamTable([], default="gopher://x")


def test_user_info_is_rejected_without_echoing_the_password() -> None:
    with pytest.raises(ValueError) as info:
        UpstreamTable([UpstreamRoute("/", "http://user:s3cret@a")], default=None)
    assert "user info" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_duplicate_route_is_rejected() -> None:
    with pytest.raises(ValueError, match="'/api/'"):
        UpstreamTable([UpstreamRoute("/api", "http://a"), UpstreamRoute("/api/", "http://b")], default=None)
    # The same prefix for different hosts is fine.
    UpstreamTable(
        [UpstreamRoute("/api", "http://a", host="a"), UpstreamRoute("/api", "http://b", host="b")], None
    )
