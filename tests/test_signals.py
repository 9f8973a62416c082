"""Client address and key extraction: a client never chooses its own address or smuggles a second key."""

from __future__ import annotations

import ipaddress

import pytest

from proxy.core.signals import TrustedProxies, client_address, parse_ip, presented_key

TRUSTED = TrustedProxies([ipaddress.ip_network("127.0.9.0/24"), ipaddress.ip_network("2001:db8:ffff::/48")])
NONE = TrustedProxies([])

ADDRESS_CASES = [
    # peer, X-Forwarded-For values, trusted, expected client, expected problem
    ("127.0.0.5", [], TRUSTED, "127.0.0.5", None),
    ("127.0.0.5", ["1.2.3.4"], TRUSTED, "127.0.0.5", None),  # spoof from an untrusted peer is ignored
    ("127.0.0.5", ["1.2.3.4"], NONE, "127.0.0.5", None),
    ("127.0.9.1", [], TRUSTED, "127.0.9.1", None),
    ("127.0.9.1", ["5.6.7.8"], TRUSTED, "5.6.7.8", None),
    ("127.0.9.1", ["1.2.3.4, 5.6.7.8"], TRUSTED, "5.6.7.8", None),  # client-chosen left part never read
    ("127.0.9.1", ["1.2.3.4", "5.6.7.8"], TRUSTED, "5.6.7.8", None),  # several header lines, in order
    ("127.0.9.1", ["1.2.3.4, 127.0.9.3"], TRUSTED, "1.2.3.4", None),  # trusted hops skipped
    ("127.0.9.1", ["127.0.9.4, 127.0.9.3"], TRUSTED, "127.0.9.4", None),  # all trusted: the leftmost
    ("127.0.9.1", ["garbage, 5.6.7.8"], TRUSTED, "5.6.7.8", None),
    ("127.0.9.1", ["5.6.7.8, garbage"], TRUSTED, None, "malformed"),
    ("127.0.9.1", [""], TRUSTED, None, "malformed"),
    ("127.0.9.1", ["2001:db8:1::7"], TRUSTED, "2001:db8:1::7", None),
    ("127.0.9.1", ["[2001:db8:1::7]:443"], TRUSTED, "2001:db8:1::7", None),
    ("127.0.9.1", ["192.0.2.1:443"], TRUSTED, "192.0.2.1", None),
    ("127.0.9.1", ["::ffff:10.0.0.1"], TRUSTED, "10.0.0.1", None),  # mapped v6 judged as v4
    ("::ffff:127.0.0.5", ["1.2.3.4"], TRUSTED, "127.0.0.5", None),
    ("2001:db8:ffff::1", ["2001:db8:2::9"], TRUSTED, "2001:db8:2::9", None),
    (None, [], TRUSTED, None, "peer"),
    ("127.0.9.1", [", ".join(["127.0.9.2"] * 1000)], TRUSTED, None, "too many"),
    ("127.0.9.1", [", ".join(["1.1.1.1"] * 999 + ["5.6.7.8"])], TRUSTED, "5.6.7.8", None),
    ("127.0.9.1", ["\u00e9\u00e9, 1.2.3.\u0661"], TRUSTED, None, "malformed"),
]


@pytest.mark.parametrize(("peer", "xff", "trusted", "client", "problem"), ADDRESS_CASES)
def test_client_address(peer, xff, trusted, client, problem) -> None:
    got = client_address(peer, xff, trusted)
    assert (str(got.ip) if got.ip else None) == client
    assert (got.problem is None) == (problem is None)
    if problem:
        assert problem in got.problem


def test_parse_ip_rejects_scoped_and_garbage() -> None:
    assert parse_ip("fe80::1%eth0") is None
    assert parse_ip("not-an-ip") is None
    assert parse_ip(" 10.0.0.1 ") == ipaddress.ip_address("10.0.0.1")


KEY_CASES = [
    # key header values, authorization values, value, headers never forwarded, problem
    ([], [], None, set(), None),
    (["sg_x"], [], "sg_x", {"x-api-key"}, None),
    ([" sg_x "], [], "sg_x", {"x-api-key"}, None),
    ([], ["Bearer sg_y"], "sg_y", {"authorization"}, None),
    ([], ["bearer sg_y"], "sg_y", {"authorization"}, None),
    ([], ["Basic dXNlcjpw"], None, set(), None),  # left for the upstream
    (["sg_x"], ["Basic dXNlcjpw"], "sg_x", {"x-api-key"}, None),
    (["sg_x"], ["Bearer upstream-token"], "sg_x", {"x-api-key"}, None),  # the upstream's own token
    (["sg_x"], ["Bearer sg_x"], "sg_x", {"x-api-key", "authorization"}, None),  # a key: never forwarded
    (["sg_x"], ["bearer  sg_z"], "sg_x", {"x-api-key", "authorization"}, None),
    # any whitespace the parser lets through a value separates the scheme (issue 10: a TAB did not)
    (["sg_x"], ["Bearer\tsg_z"], "sg_x", {"x-api-key", "authorization"}, None),
    (["sg_x"], ["Bearer \t sg_z"], "sg_x", {"x-api-key", "authorization"}, None),
    (["sg_x"], ["Bearer\xa0sg_z"], "sg_x", {"x-api-key", "authorization"}, None),  # UTF-8 NBSP
    (["sg_x"], ["sg_z"], "sg_x", {"x-api-key", "authorization"}, None),  # a bare key, or another scheme's
    (["sg_x"], ["Token sg_z"], "sg_x", {"x-api-key", "authorization"}, None),
    (["sg_x"], ["Bearer a,sg_z"], "sg_x", {"x-api-key", "authorization"}, None),
    ([], ["Bearer\tsg_y"], "sg_y", {"authorization"}, None),
    ([], ["BEARER \t sg_y\t"], "sg_y", {"authorization"}, None),
    ([], ["Bearer"], None, set(), None),
    ([], ["Bearerx sg_y"], None, set(), None),  # another scheme: not presented, nothing to forward
    (["sg_x", "sg_z"], [], None, {"x-api-key"}, "more than one"),
    ([], ["Bearer a", "Bearer b"], None, {"authorization"}, "more than one"),
]


@pytest.mark.parametrize(("key_values", "auth", "value", "strip", "problem"), KEY_CASES)
def test_presented_key(key_values, auth, value, strip, problem) -> None:
    got = presented_key(key_values, auth, "X-API-Key")
    assert (got.value, got.strip) == (value, strip)
    assert (got.problem is None) == (problem is None)


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("::ffff:10.0.0.1", 4),  # IPv4-mapped: judged as the IPv4 address it maps
        ("::10.0.0.1", 6),  # IPv4-compatible (deprecated): not mapped, as the README says
        ("64:ff9b::a00:1", 6),  # NAT64 well-known prefix: not mapped
        ("2002:a00:1::1", 6),  # 6to4: not mapped
    ],
)
def test_only_ipv4_mapped_addresses_are_judged_as_ipv4(text: str, version: int) -> None:
    ip = parse_ip(text)
    assert ip is not None and ip.version == version
