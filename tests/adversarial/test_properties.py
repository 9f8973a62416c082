"""Properties of the request-reading core, checked by Hypothesis over generated inputs.

- path normalisation: normalising twice changes nothing, and no percent-encoding of a path (single,
  double, either hex case, any of its characters) is judged as another path: it is the same path, or it
  is refused, so a route that denies a path denies every spelling of it;
- X-Forwarded-For: an untrusted peer is the client whatever it claims, and nothing left of the rightmost
  untrusted entry is ever read (a client cannot choose its own address);
- key extraction: however a key is spelled into the key-carrying headers, no header sent upstream holds it.
"""

from __future__ import annotations

import ipaddress
import string
from datetime import UTC, datetime

from hypothesis import assume, given
from hypothesis import strategies as st

from proxy.core import keys
from proxy.core.errors import PolicyError
from proxy.core.facts import Facts
from proxy.core.headers import upstream_headers
from proxy.core.paths import normalize
from proxy.core.policy import compile_policy, evaluate
from proxy.core.signals import TrustedProxies, client_address, presented_key

UNRESERVED = string.ascii_letters + string.digits + "-._~"
PCHAR = UNRESERVED + "!$&'()*+,;=:@"
NOW = datetime(2030, 1, 1, tzinfo=UTC)
CLIENT = ipaddress.ip_address("192.0.2.1")

# -- paths ---------------------------------------------------------------------------------------------

segments = st.one_of(st.text(alphabet=UNRESERVED, min_size=1, max_size=6), st.sampled_from([".", "..", ""]))
plain_paths = st.lists(segments, max_size=8).map(lambda parts: "/" + "/".join(parts))
escapes = st.tuples(st.sampled_from(string.hexdigits), st.sampled_from(string.hexdigits)).map(
    lambda pair: "%" + "".join(pair)
)
raw_targets = st.builds(
    lambda path, query: path + query,
    st.lists(
        st.one_of(st.sampled_from(PCHAR + "/"), escapes, st.sampled_from(["%25", "%2F", "%00", "%"]))
    ).map(lambda parts: "/" + "".join(parts)),
    st.one_of(st.just(""), st.text(alphabet=PCHAR + "/?%", max_size=10).map(lambda q: "?" + q)),
)


@given(raw_targets)
def test_normalising_twice_changes_nothing(raw: str) -> None:
    once = normalize(raw)
    assume(once.problem is None)
    twice = normalize(once.path_qs)
    assert (twice.problem, twice.path, twice.query) == (None, once.path, once.query)


@st.composite
def spellings(draw: st.DrawFn, path: str) -> str:
    """``path`` with any of its characters percent-encoded, once or twice, in either hex case."""
    out = []
    for ch in path:
        how = draw(st.sampled_from(["as is", "upper", "lower", "twice"]))
        code = f"{ord(ch):02X}"
        out.append(
            {"as is": ch, "upper": "%" + code, "lower": "%" + code.lower(), "twice": "%25" + code}[how]
        )
    return "".join(out)


@given(st.data(), plain_paths)
def test_no_spelling_of_a_path_is_judged_as_another_path(data: st.DataObject, path: str) -> None:
    spelled = data.draw(spellings(path))
    target = normalize(spelled)
    assert target.problem is not None or target.path == normalize(path).path, spelled


patterns = st.lists(
    st.one_of(
        st.text(alphabet=string.ascii_lowercase + "~-", min_size=1, max_size=4), st.sampled_from(["*", "**"])
    ),
    min_size=1,
    max_size=4,
).map(lambda parts: "/" + "/".join(parts))


@given(st.data(), st.lists(patterns, min_size=1, max_size=3), plain_paths)
def test_nothing_a_route_denies_is_allowed_in_another_spelling(
    data: st.DataObject, allowed: list[str], path: str
) -> None:
    try:
        policy = compile_policy({"routes": [{"methods": ["GET"], "path": pattern} for pattern in allowed]})
    except PolicyError:
        assume(False)
        raise
    judged = normalize(path)
    assume(not evaluate(policy, Facts(CLIENT, "GET", judged.path, NOW)).allowed)
    spelled = normalize(data.draw(spellings(path)))
    assert (
        spelled.problem is not None or not evaluate(policy, Facts(CLIENT, "GET", spelled.path, NOW)).allowed
    )


# -- X-Forwarded-For -------------------------------------------------------------------------------------

TRUSTED = TrustedProxies([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")])
trusted_ips = st.one_of(st.ip_addresses(network="10.0.0.0/8"), st.ip_addresses(network="2001:db8::/32")).map(
    str
)
untrusted_ips = st.one_of(
    st.ip_addresses(network="192.0.2.0/24"), st.ip_addresses(network="2001:db9::/32")
).map(str)
garbage = st.sampled_from(["", "unknown", "_hidden", "1.2.3", "::g", "[::1", "10.0.0.1:99999x"])
entries = st.lists(st.one_of(trusted_ips, untrusted_ips, garbage), max_size=40)


def _header(values: list[str], split: int) -> list[str]:
    """The entries as X-Forwarded-For header values: one, or two headers split at ``split``."""
    if not values:
        return []
    if 0 < split < len(values):
        return [", ".join(values[:split]), ", ".join(values[split:])]
    return [", ".join(values)]


@given(untrusted_ips, entries, st.integers(0, 40))
def test_an_untrusted_peer_is_the_client_whatever_it_claims(
    peer: str, claimed: list[str], split: int
) -> None:
    address = client_address(peer, _header(claimed, split), TRUSTED)
    assert (address.ip, address.peer_trusted, address.problem) == (ipaddress.ip_address(peer), False, None)


@given(trusted_ips, entries, untrusted_ips, st.lists(trusted_ips, max_size=5), st.integers(0, 40))
def test_nothing_left_of_the_rightmost_untrusted_entry_is_read(
    peer: str, left: list[str], client: str, hops: list[str], split: int
) -> None:
    """Whatever a client writes (``left``), the address the trusted hops (``hops``) saw is its address."""
    address = client_address(peer, _header([*left, client, *hops], split), TRUSTED)
    assert (address.ip, address.peer_trusted, address.problem) == (ipaddress.ip_address(client), True, None)


# -- keys ------------------------------------------------------------------------------------------------

whitespace = st.text(alphabet=" \t\u00a0", min_size=1, max_size=3)
schemes = st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"])


@st.composite
def key_headers(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[str]]:
    """Request headers carrying one or two keys in key-carrying headers, spelled every way the request
    parser lets through, among headers of the upstream's own; and the keys."""
    made = [keys.generate()[1] for _ in range(2)]
    headers: list[tuple[str, str]] = [("Host", "api.example")]
    if draw(st.booleans()):
        headers.append(
            (
                draw(st.sampled_from(["X-API-Key", "x-api-key"])),
                draw(whitespace.map(lambda w: w.replace("\u00a0", " "))) + made[0],
            )
        )
    for key in made[draw(st.integers(0, 1)) :]:
        if draw(st.booleans()):
            value = draw(schemes) + draw(whitespace) + key + draw(st.sampled_from(["", " ", "\t"]))
            headers.append((draw(st.sampled_from(["Authorization", "authorization"])), value))
    if draw(st.booleans()):
        headers.append(
            ("Authorization", draw(st.sampled_from(["Basic dXNlcjpwYXNz", "Bearer upstream-token"])))
        )
    return draw(st.permutations(headers)), made


@given(key_headers())
def test_no_header_sent_upstream_holds_a_key(generated: tuple[list[tuple[str, str]], list[str]]) -> None:
    headers, made = generated
    by_name: dict[str, list[str]] = {}
    for name, value in headers:
        by_name.setdefault(name.lower(), []).append(value)
    credential = presented_key(by_name.get("x-api-key", []), by_name.get("authorization", []), "X-API-Key")
    if credential.problem is not None or credential.value not in made:
        return  # refused (two keys, none, not a key: 401 key_missing or key_invalid): nothing is forwarded
    sent = upstream_headers(
        headers,
        peer="192.0.2.1",
        peer_trusted=False,
        scheme="http",
        host="api.example",
        key_headers=credential.strip,
        identity={},
    )
    assert not [pair for pair in sent if any(key in pair[1] for key in made)], sent
