"""Which request and response headers cross the proxy, and which the proxy sets itself.

Pure core (stdlib only): header pairs in, header pairs out. The forwarder in ``proxy.http.forward`` owns the
sockets; this module owns the rules, so they can be checked with tables and no network:

- hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection and never cross the proxy, nor does
  any header the sender named in ``Connection``;
- the API key never reaches the upstream;
- ``X-Signalgate-*`` headers are ours: a client cannot send them, the proxy sets them from the identity it
  verified;
- ``X-Forwarded-*`` are only believed when the peer is a trusted proxy; from any other peer, the other
  headers through which a client could claim an address, host or URL (``Forwarded``, ``X-Real-IP``,
  ``X-Original-URL``...) are dropped too;
- a header name with ``_`` never crosses (some servers read ``X_Forwarded_For`` as ``X-Forwarded-For``);
  nginx drops them by default as well;
- ``Connection`` cannot name ``Host`` or ``Content-Length`` away;
- a request header value that is not UTF-8 is refused (``HeaderValueInvalid``): it could not be sent on
  as received.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping

from proxy.core.errors import HeaderValueInvalid

__all__ = [
    "HOP_BY_HOP",
    "IDENTITY_PREFIX",
    "downstream_headers",
    "upstream_headers",
]

HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

IDENTITY_PREFIX = "x-signalgate-"

_XFF = "x-forwarded-for"
_XFP = "x-forwarded-proto"
_XFH = "x-forwarded-host"
_FORWARDED = frozenset({_XFF, _XFP, _XFH})
# The proxy answers "Expect: 100-continue" itself once the request is allowed; upstreams never see it.
_ANSWERED_BY_PROXY = frozenset({"expect"})
_ALWAYS_DROPPED = HOP_BY_HOP | _FORWARDED | _ANSWERED_BY_PROXY
# Claims about the client's address, host or URL that only a trusted proxy may make (besides X-Forwarded-*,
# all of which are dropped from other peers); X-Original-URL and X-Rewrite-URL override the path on some
# frameworks, past the policy that judged it.
_CLAIMS = frozenset(
    {
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "x-cluster-client-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-original-host",
    }
)
_CLAIM_PREFIX = "x-forwarded-"
# What a Connection header may not name away: the forwarder needs them to frame and route the request.
_NOT_NAMEABLE = frozenset({"host", "content-length"})


def _connection_tokens(value: str) -> Iterator[str]:
    """The header names one ``Connection`` value lists: they are hop-by-hop for this message."""
    for token in value.split(","):
        token = token.strip().lower()
        if token:
            yield token


def _without_named(out: list[tuple[str, str]], lowers: list[str], named: set[str]) -> list[tuple[str, str]]:
    """``out`` minus the headers a ``Connection`` header named (``lowers``: their lower-case names)."""
    return [pair for pair, lower in zip(out, lowers, strict=True) if lower not in named]


# Per message these sets would be rebuilt from the same few inputs: the key header names, the
# identity header names and the names the proxy sets on answers are fixed by configuration, so each
# is computed once.
@functools.lru_cache(maxsize=64)
def _dropped_with(key_headers: frozenset[str], peer_trusted: bool, strip: frozenset[str]) -> frozenset[str]:
    return _ALWAYS_DROPPED | key_headers | strip | (frozenset() if peer_trusted else _CLAIMS)


_OURS = (IDENTITY_PREFIX,)
_OURS_AND_CLAIMS = (IDENTITY_PREFIX, _CLAIM_PREFIX)  # prefixes dropped from a peer that is not trusted


@functools.lru_cache(maxsize=64)
def _hop_by_hop_and(also_drop: frozenset[str]) -> frozenset[str]:
    return HOP_BY_HOP | also_drop


@functools.lru_cache(maxsize=64)
def _lower_names(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(name.lower() for name in names)


def _require_utf8(name: str, value: str) -> None:
    """Refuse a non-ASCII value in which the parser kept undecodable bytes as lone surrogates
    (surrogateescape): aiohttp's serialiser would drop them, so it could not be sent on as received."""
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        raise HeaderValueInvalid(f"header {name!r} has a value that is not UTF-8")


def _joined(values: list[str]) -> str:
    return ", ".join(v.strip() for v in values if v.strip())


def upstream_headers(
    headers: Iterable[tuple[str, str]],
    *,
    peer: str,
    peer_trusted: bool,
    scheme: str,
    host: str | None,
    key_headers: frozenset[str],
    identity: Mapping[str, str],
    strip: frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    """The headers to send upstream for one request, in the client's order.

    ``key_headers`` are lower-case names carrying the API key (``x-api-key``; ``authorization`` only when
    the key came from ``Authorization: Bearer``). ``identity`` maps header names (normally
    ``X-Signalgate-*``) to the values the proxy vouches for; any client header of the same name is
    dropped first. ``strip`` are lower-case names the key's policy keeps from the upstream (request
    context headers with ``forward: false``). ``Content-Length`` and ``Host`` pass through: the
    forwarder decides about them.
    """
    drop = _dropped_with(key_headers, peer_trusted, strip)
    prefixes = _OURS if peer_trusted else _OURS_AND_CLAIMS
    identity_names = _lower_names(tuple(identity))
    out: list[tuple[str, str]] = []
    kept: list[str] = []  # lower-case names of ``out``, for the Connection-named filter below
    named: set[str] = set()
    xff: list[str] = []
    xfp: list[str] = []
    xfh: list[str] = []
    for name, value in headers:  # one pass: this runs on every request
        lower = name.lower()
        if lower in drop:
            if lower == "connection":
                named.update(_connection_tokens(value))
                continue
            if peer_trusted and lower in _FORWARDED and not value.isascii():  # believed, so sent on
                _require_utf8(name, value)
            if lower == _XFF:
                xff.append(value)
            elif lower == _XFP:
                xfp.append(value)
            elif lower == _XFH:
                xfh.append(value)
            continue
        if lower.startswith(prefixes) or lower in identity_names or "_" in lower:
            continue
        if not value.isascii():  # the common case costs one C call
            _require_utf8(name, value)
        out.append((name, value))
        kept.append(lower)
    if named:
        out = _without_named(out, kept, named - _NOT_NAMEABLE)

    chain = _joined(xff) if peer_trusted else ""
    out.append(("X-Forwarded-For", f"{chain}, {peer}" if chain else peer))
    proto = _joined(xfp) if peer_trusted else ""
    out.append(("X-Forwarded-Proto", proto or scheme))
    forwarded_host = _joined(xfh) if peer_trusted else ""
    if forwarded_host or host:
        out.append(("X-Forwarded-Host", forwarded_host or host or ""))

    for name, value in identity.items():
        if "\r" in value or "\n" in value or "\x00" in value:
            # A stored value with a line break would split the header block: refuse loudly.
            raise ValueError(f"identity header {name!r} has a control character in its value")
        out.append((name, value))
    return out


def downstream_headers(
    headers: Iterable[tuple[str, str]], *, also_drop: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """The upstream's response headers minus hop-by-hop ones and ``also_drop`` (lower-case names), in
    order, duplicates kept. One pass: this runs on every answer."""
    drop = _hop_by_hop_and(also_drop) if also_drop else HOP_BY_HOP
    out: list[tuple[str, str]] = []
    kept: list[str] = []  # lower-case names of ``out``, for the Connection-named filter below
    named: set[str] = set()
    for name, value in headers:
        lower = name.lower()
        if lower in drop:
            if lower == "connection":
                named.update(_connection_tokens(value))
            continue
        out.append((name, value))
        kept.append(lower)
    return _without_named(out, kept, named) if named else out
