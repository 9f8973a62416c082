"""Signals taken from the raw request: the client's address and the presented key.

Client address: the TCP peer, unless the peer is a trusted proxy; then X-Forwarded-For is walked from
the right, trusted hops skipped, and the first untrusted address is the client. A client can therefore
never choose its own address: entries left of the first untrusted one are never read. A malformed entry
where the client's address should be is refused, never guessed around.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from proxy.core.intervals import AddressSet
from proxy.core.keys import PREFIX as KEY_PREFIX
from proxy.core.model import IPAddress

__all__ = [
    "NO_CREDENTIAL",
    "ClientAddress",
    "PresentedCredential",
    "TrustedProxies",
    "bearer_token",
    "carries_key",
    "client_address",
    "parse_ip",
    "presented_key",
]

MAX_TRUSTED_HOPS = 32

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)  # peers and proxies repeat: a hit costs far less than a parse
def parse_ip(text: str) -> IPAddress | None:
    """An address from a peer name or an X-Forwarded-For entry; IPv4-mapped IPv6 becomes IPv4."""
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]" or "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:443"
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.scope_id is not None:
            return None
    return ip


class TrustedProxies:
    """The networks whose X-Forwarded-For is believed; parsed once at start."""

    __slots__ = ("_addresses",)

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self._addresses = AddressSet.of(networks)  # a bisect per check, however many networks

    def __bool__(self) -> bool:
        return bool(self._addresses)

    def __contains__(self, ip: IPAddress) -> bool:
        return ip in self._addresses


class ClientAddress(NamedTuple):  # per request: cheaper to build than a frozen dataclass
    ip: IPAddress | None
    peer_trusted: bool
    problem: str | None = None


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: TrustedProxies) -> ClientAddress:
    peer_ip = parse_ip(peer) if peer else None
    if peer_ip is None:
        return ClientAddress(None, False, "peer address unknown")
    if not trusted or peer_ip not in trusted:
        return ClientAddress(peer_ip, False)
    if not forwarded_for:
        return ClientAddress(peer_ip, True)
    entries = ",".join(forwarded_for).split(",")
    candidate = peer_ip
    for hop, entry in enumerate(reversed(entries)):
        if hop >= MAX_TRUSTED_HOPS:
            return ClientAddress(None, True, "too many trusted X-Forwarded-For hops")
        ip = parse_ip(entry)
        if ip is None:
            return ClientAddress(None, True, "malformed X-Forwarded-For entry")
        candidate = ip
        if ip not in trusted:
            break
    return ClientAddress(candidate, True)


class PresentedCredential(NamedTuple):  # per request: cheaper to build than a frozen dataclass
    """What the client presented; ``value`` is None when nothing was presented."""

    value: str | None
    strip: frozenset[str]  # lower-case names of the headers never to forward: they carry a key
    problem: str | None = None


_AUTHORIZATION = frozenset({"authorization"})
NO_CREDENTIAL = PresentedCredential(None, frozenset())


@functools.lru_cache(maxsize=16)
def _key_headers(key_header: str, with_authorization: bool) -> frozenset[str]:
    return frozenset({key_header.lower(), *(_AUTHORIZATION if with_authorization else ())})


# The key-carrying rules, all here. Whitespace is what ``str.isspace`` calls whitespace: every
# separator the request parser lets through a header value (SP, HTAB, and non-ASCII spaces such as a
# UTF-8 NBSP) and more, so no spelling of a key the parser accepts slips past these rules.


def bearer_token(value: str) -> str | None:
    """The token of an ``Authorization`` value ``Bearer <token>`` (scheme in any case, then any run of
    whitespace); None for any other scheme."""
    if len(value) < 7 or not value[6].isspace() or value[:6].lower() != "bearer":
        return None
    return value[7:].strip()


def carries_key(value: str) -> bool:
    """Whether an ``Authorization`` value holds something shaped like a signalgate key in any of its
    parts (split on whitespace and commas): ``Bearer sg_...`` however spaced, a bare ``sg_...``,
    another scheme's ``sg_...``. Such a header never reaches an upstream."""
    return KEY_PREFIX in value and any(
        part.startswith(KEY_PREFIX) for part in value.replace(",", " ").split()
    )


def presented_key(
    key_header_values: Sequence[str], authorization: Sequence[str], key_header: str
) -> PresentedCredential:
    """The key from ``<key_header>: <key>``, else from ``Authorization: Bearer <key>``.

    More than one key header is ambiguous and refused. An Authorization header that is not Bearer is left
    for the upstream, and so is a Bearer token next to a key header, unless it carries a signalgate key
    too (``carries_key``): no key ever reaches the upstream, whichever header carried it.
    """
    if key_header_values:
        strip = _key_headers(key_header, bool(authorization) and any(carries_key(v) for v in authorization))
        if len(key_header_values) > 1:
            return PresentedCredential(None, strip, "more than one key header")
        return PresentedCredential(key_header_values[0].strip(), strip)
    tokens = [token for value in authorization if (token := bearer_token(value)) is not None]
    if not tokens:
        return NO_CREDENTIAL
    if len(tokens) > 1 or len(authorization) > 1:
        return PresentedCredential(None, _AUTHORIZATION, "more than one Authorization header")
    return PresentedCredential(tokens[0], _AUTHORIZATION)
