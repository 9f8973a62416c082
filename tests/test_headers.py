"""Table tests for proxy.core.headers: which headers cross the proxy and which it sets. No sockets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from proxy.core.errors import HeaderValueInvalid
from proxy.core.headers import HOP_BY_HOP, downstream_headers, upstream_headers

Pairs = list[tuple[str, str]]

IDENTITY = {"X-Signalgate-Key-Id": "0123456789abcdef", "X-Signalgate-Owner": "team-a"}


def up(headers: Pairs, **overrides: Any) -> Pairs:
    arguments: dict[str, Any] = {
        "peer": "198.51.100.2",
        "peer_trusted": False,
        "scheme": "https",
        "host": "api.example.com",
        "key_headers": frozenset({"x-api-key"}),
        "identity": IDENTITY,
    }
    arguments.update(overrides)
    return upstream_headers(headers, **arguments)


def values(headers: Pairs, name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def names(headers: Pairs) -> list[str]:
    return [k.lower() for k, _ in headers]


def test_hop_by_hop_set_is_the_rfc_list() -> None:
    assert {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    } == HOP_BY_HOP


HOP_CASES = [
    # (client headers, names that must not reach the upstream, names that must)
    ([("Connection", "keep-alive"), ("Keep-Alive", "timeout=5")], ["connection", "keep-alive"], []),
    (
        [("TRANSFER-ENCODING", "chunked"), ("te", "trailers"), ("Trailer", "x")],
        ["transfer-encoding", "te"],
        [],
    ),
    ([("Upgrade", "websocket"), ("Proxy-Connection", "x")], ["upgrade", "proxy-connection"], []),
    ([("Proxy-Authorization", "Basic eA=="), ("Proxy-Authenticate", "x")], ["proxy-authorization"], []),
    # Connection names extra hop-by-hop headers, in any case, with odd spacing and repeated headers.
    (
        [("Connection", "X-Hop ,  x-other"), ("connection", "close"), ("X-Hop", "1"), ("X-OTHER", "2")],
        ["x-hop", "x-other", "connection"],
        [],
    ),
    ([("Connection", "x-hop"), ("X-Hop", "1"), ("X-Stays", "3")], ["x-hop"], ["x-stays"]),
]


@pytest.mark.parametrize(("headers", "dropped", "kept"), HOP_CASES)
def test_upstream_drops_hop_by_hop(headers: Pairs, dropped: list[str], kept: list[str]) -> None:
    out = up(headers)
    for name in dropped:
        assert name not in names(out), (name, out)
    for name in kept:
        assert name in names(out), (name, out)


@pytest.mark.parametrize(("headers", "dropped", "kept"), HOP_CASES)
def test_downstream_drops_hop_by_hop(headers: Pairs, dropped: list[str], kept: list[str]) -> None:
    out = downstream_headers([*headers, ("Content-Type", "text/plain")])
    for name in dropped:
        assert name not in names(out), (name, out)
    for name in [*kept, "content-type"]:
        assert name in names(out), (name, out)


def test_downstream_keeps_order_duplicates_and_end_to_end_headers() -> None:
    headers = [
        ("Set-Cookie", "a=1"),
        ("Content-Encoding", "gzip"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "10"),
        ("Transfer-Encoding", "chunked"),
        ("set-cookie", "c=3"),
    ]
    assert downstream_headers(headers) == [
        ("Set-Cookie", "a=1"),
        ("Content-Encoding", "gzip"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "10"),
        ("set-cookie", "c=3"),
    ]


def test_downstream_also_drops_the_names_given_and_those_connection_names() -> None:
    headers = [
        ("Content-Length", "10"),
        ("X-Request-Id", "upstream's"),
        ("Connection", "close, X-Hop"),
        ("X-Hop", "1"),
        ("ETag", '"a"'),
    ]
    assert downstream_headers(headers, also_drop=frozenset({"content-length", "x-request-id"})) == [
        ("ETag", '"a"')
    ]


@pytest.mark.parametrize(
    ("headers", "key_headers", "expected_authorization"),
    [
        ([("X-Api-Key", "sg_x"), ("Authorization", "Basic dTpw")], frozenset({"x-api-key"}), ["Basic dTpw"]),
        ([("x-api-key", "sg_x"), ("X-API-KEY", "sg_y")], frozenset({"x-api-key"}), []),
        ([("Authorization", "Bearer sg_x")], frozenset({"x-api-key", "authorization"}), []),
    ],
)
def test_key_headers_are_stripped(
    headers: Pairs, key_headers: frozenset[str], expected_authorization: list[str]
) -> None:
    out = up(headers, key_headers=key_headers)
    assert "x-api-key" not in names(out)
    assert values(out, "Authorization") == expected_authorization


def test_client_cannot_spoof_signalgate_headers() -> None:
    out = up(
        [
            ("X-Signalgate-Key-Id", "forged"),
            ("x-signalgate-owner", "root"),
            ("X-SIGNALGATE-ANYTHING", "forged"),
            ("X-Signalgate-", "forged"),
            ("X-Signal", "kept: not our prefix"),
        ]
    )
    assert [(k, v) for k, v in out if k.lower().startswith("x-signalgate-")] == list(IDENTITY.items())
    assert values(out, "X-Signal") == ["kept: not our prefix"]


def test_identity_header_outside_our_prefix_replaces_the_client_header() -> None:
    out = up([("X-Tenant", "forged"), ("Accept", "*/*")], identity={"X-Tenant": "team-a"})
    assert values(out, "X-Tenant") == ["team-a"]
    assert values(out, "Accept") == ["*/*"]


def test_identity_value_with_line_break_is_refused() -> None:
    with pytest.raises(ValueError, match="X-Signalgate-Owner"):
        up([], identity={"X-Signalgate-Owner": "a\r\nX-Injected: 1"})


XFF_CASES = [
    # (client XFF headers, peer_trusted, expected single XFF value)
    ([], False, "198.51.100.2"),
    ([], True, "198.51.100.2"),
    (["1.1.1.1"], False, "198.51.100.2"),
    (["1.1.1.1, 2.2.2.2"], False, "198.51.100.2"),
    (["1.1.1.1"], True, "1.1.1.1, 198.51.100.2"),
    (["1.1.1.1, 2.2.2.2", " 3.3.3.3 "], True, "1.1.1.1, 2.2.2.2, 3.3.3.3, 198.51.100.2"),
    ([""], True, "198.51.100.2"),
]


@pytest.mark.parametrize(("client_xff", "trusted", "expected"), XFF_CASES)
def test_x_forwarded_for_appends_only_for_trusted_peers(
    client_xff: list[str], trusted: bool, expected: str
) -> None:
    out = up([("x-forwarded-for", v) for v in client_xff], peer_trusted=trusted)
    assert values(out, "X-Forwarded-For") == [expected]


PROTO_HOST_CASES = [
    # (client headers, trusted, scheme, host, expected proto, expected host list)
    ([], False, "https", "api.example.com", "https", ["api.example.com"]),
    ([], True, "http", "api.example.com", "http", ["api.example.com"]),
    (
        [("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "evil")],
        False,
        "https",
        "a.example",
        "https",
        ["a.example"],
    ),
    (
        [("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "lb.example")],
        True,
        "https",
        "a.example",
        "http",
        ["lb.example"],
    ),
    ([("X-Forwarded-Proto", "http")], True, "https", "a.example", "http", ["a.example"]),
    ([], False, "https", None, "https", []),
    ([("X-Forwarded-Host", "evil")], False, "https", None, "https", []),
]


@pytest.mark.parametrize(("headers", "trusted", "scheme", "host", "proto", "fwd_host"), PROTO_HOST_CASES)
def test_x_forwarded_proto_and_host(
    headers: Pairs, trusted: bool, scheme: str, host: str | None, proto: str, fwd_host: list[str]
) -> None:
    out = up(headers, peer_trusted=trusted, scheme=scheme, host=host)
    assert values(out, "X-Forwarded-Proto") == [proto]
    assert values(out, "X-Forwarded-Host") == fwd_host


def test_end_to_end_headers_pass_in_order_with_duplicates() -> None:
    headers = [
        ("Host", "api.example.com"),
        ("Accept", "a"),
        ("X-Multi", "1"),
        ("Content-Length", "12"),
        ("x-multi", "2"),
        ("Cookie", "c=1"),
        ("X-Multi", "3"),
    ]
    out = up(headers)
    identity: Mapping[str, str] = IDENTITY
    assert out == [
        *headers,
        ("X-Forwarded-For", "198.51.100.2"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "api.example.com"),
        *identity.items(),
    ]


def test_accepts_any_iterable_of_pairs() -> None:
    out = up(iter([("Accept", "x")]))
    assert ("Accept", "x") in out


CLAIMS = [
    ("Forwarded", "for=6.6.6.6"),
    ("X-Real-IP", "6.6.6.6"),
    ("True-Client-IP", "6.6.6.6"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X-Forwarded-Port", "8443"),
]


def test_claims_only_cross_from_a_trusted_proxy() -> None:
    untrusted = up([*CLAIMS, ("X-Kept", "1")])
    assert not {name.lower() for name, _ in CLAIMS} & set(names(untrusted))
    assert values(untrusted, "X-Kept") == ["1"]
    trusted = up([*CLAIMS, ("X-Kept", "1")], peer_trusted=True)
    assert {name.lower() for name, _ in CLAIMS} <= set(names(trusted))


def test_names_with_underscores_never_cross() -> None:
    out = up([("X_Forwarded_For", "6.6.6.6"), ("X_Signalgate_Owner", "root"), ("My_Header", "x")])
    assert not [name for name in names(out) if "_" in name]


def test_connection_cannot_name_host_or_content_length() -> None:
    out = up(
        [
            ("Host", "api"),
            ("Content-Length", "3"),
            ("Connection", "Host, content-length, X-Hop"),
            ("X-Hop", "1"),
        ]
    )
    assert values(out, "Host") == ["api"] and values(out, "Content-Length") == ["3"]
    assert "x-hop" not in names(out)


def test_a_value_that_is_not_utf8_is_refused() -> None:
    undecodable = b"caf\xe9".decode("utf-8", "surrogateescape")  # as aiohttp's parser keeps it
    with pytest.raises(HeaderValueInvalid, match="X-Name"):
        up([("X-Name", undecodable)])
    assert values(up([("X-Name", "café")]), "X-Name") == ["café"]  # UTF-8 proper passes


@pytest.mark.parametrize("name", ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"])
def test_a_forwarded_value_from_a_trusted_proxy_must_be_utf8_too(name: str) -> None:
    undecodable = b"h\xff".decode("utf-8", "surrogateescape")
    with pytest.raises(HeaderValueInvalid, match=name):
        up([(name, undecodable)], peer_trusted=True)
    assert undecodable not in values(up([(name, undecodable)]), name)  # from anyone else: replaced anyway


def test_headers_the_policy_strips_never_reach_the_upstream() -> None:
    sent = [("X-Task-Scope", "reporting"), ("x-data-sensitivity", "low"), ("X-Other", "kept")]
    stripped = up(sent, strip=frozenset({"x-task-scope", "x-data-sensitivity"}))
    assert "x-task-scope" not in names(stripped) and "x-data-sensitivity" not in names(stripped)
    assert values(stripped, "X-Other") == ["kept"]
    assert values(up(sent), "X-Task-Scope") == ["reporting"]  # nothing stripped unless asked
