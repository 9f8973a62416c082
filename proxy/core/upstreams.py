"""Which upstream serves a request: a table of path-prefix routes, parsed and checked once.

Pure core (stdlib only). All URL parsing and validation happens in ``UpstreamTable.__init__``, which
rejects bad settings with a message quoting the bad value; ``pick`` then walks the request path's segment
boundaries with dictionary lookups, so its cost does not grow with the number of routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Upstream", "UpstreamRoute", "UpstreamTable"]


@dataclass(frozen=True, slots=True)
class UpstreamRoute:
    """One configured route: requests under ``prefix`` (and for ``host``, when set) go to ``upstream``."""

    prefix: str
    upstream: str
    host: str | None = None
    preserve_host: bool = True


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where to send a request: ``base`` + ``base_path`` + the request's path and query."""

    base: str  # scheme://host[:port], no trailing slash
    base_path: str  # path prefix of the upstream URL, "" if none, never ends with "/"
    preserve_host: bool


def _normal_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ValueError(f"route prefix {prefix!r} must start with '/'")
    if any(c in prefix for c in "?# \t\r\n"):
        raise ValueError(f"route prefix {prefix!r} must be a plain path (no query, fragment or spaces)")
    # "/api/" and "/api" mean the same route: matching is on segment boundaries anyway.
    return prefix.rstrip("/") or "/"


def _normal_host(host: str) -> str:
    """Lower-case host without port or trailing dot; IPv6 literals keep their brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.partition(":")[0].rstrip(".")


def _parse_upstream(url: str, preserve_host: bool) -> Upstream:
    if not isinstance(url, str):
        raise ValueError(f"upstream {url!r} must be a URL string")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError(f"upstream {url!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"upstream {url!r} must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"upstream {url!r} has no host")
    if "@" in parts.netloc:
        # Do not quote the URL: the user info may hold a password.
        raise ValueError(f"upstream for {scheme}://{parts.hostname} must not contain user info")
    if parts.query or url.rstrip().endswith("?"):
        raise ValueError(f"upstream {url!r} must not have a query")
    if parts.fragment or "#" in url:
        raise ValueError(f"upstream {url!r} must not have a fragment")
    if any(c.isspace() for c in url):
        raise ValueError(f"upstream {url!r} must not contain whitespace")
    hostname = parts.hostname
    host = f"[{hostname}]" if ":" in hostname else hostname
    base = f"{scheme}://{host}" if port is None else f"{scheme}://{host}:{port}"
    return Upstream(base=base, base_path=parts.path.rstrip("/"), preserve_host=preserve_host)


class UpstreamTable:
    """Routes keyed by (host or None, prefix); ``pick`` tries the longest prefix first."""

    __slots__ = ("_default", "_hosts", "_routes")

    def __init__(self, routes: Sequence[UpstreamRoute], default: str | None) -> None:
        table: dict[tuple[str | None, str], Upstream] = {}
        hosts: set[str] = set()
        for route in routes:
            prefix = _normal_prefix(route.prefix)
            host: str | None = None
            if route.host is not None:
                host = _normal_host(route.host)
                if not host or "/" in host or " " in host:
                    raise ValueError(f"route host {route.host!r} must be a plain host name")
                hosts.add(host)
            key = (host, prefix)
            if key in table:
                where = f" for host {route.host!r}" if host else ""
                raise ValueError(f"route prefix {route.prefix!r}{where} is configured twice")
            table[key] = _parse_upstream(route.upstream, route.preserve_host)
        self._routes = table
        self._hosts = frozenset(hosts)
        self._default = None if default is None else _parse_upstream(default, True)

    @property
    def empty(self) -> bool:
        """No upstream at all: every request would be refused with no_upstream."""
        return not self._routes and self._default is None

    def pick(self, path: str, host: str | None) -> Upstream | None:
        """The upstream for ``path`` (no query) and the request's Host header, or None."""
        routes = self._routes
        if not routes:  # one upstream for everything: the common case, and the hot path's
            return self._default
        if host is not None and self._hosts:
            host = _normal_host(host)
            if host not in self._hosts:
                host = None
        else:
            host = None
        candidate = path or "/"
        while True:
            if host is not None:
                found = routes.get((host, candidate))
                if found is not None:
                    return found
            found = routes.get((None, candidate))
            if found is not None:
                return found
            if candidate == "/":
                return self._default
            cut = candidate.rfind("/")
            candidate = candidate[:cut] if cut > 0 else "/"
