"""The ``[[routes]]`` setting: one upstream per path prefix (and optionally Host), checked when loaded.

Like ``proxy.config.values``, of which it is the part for routes: each parser raises ``InvalidValue``
naming what is wrong. Stdlib only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.config.values import InvalidValue, is_digits, is_host, parse_boolean, parse_text, parse_url

__all__ = ["RouteSetting", "parse_routes"]


@dataclass(frozen=True, slots=True)
class RouteSetting:
    prefix: str  # path prefix, starts with "/"
    upstream: str  # http(s) URL, no trailing "/"
    host: str | None = None  # only requests whose Host header is this name (lower case); None = any
    preserve_host: bool = True  # forward the client's Host header (False: the upstream's host)


_ROUTE_KEYS = ("prefix", "upstream", "host", "preserve_host")


def parse_prefix(raw: object) -> str:
    text = parse_text(raw)
    if not text.startswith("/") or any(ch in text for ch in "?# \t") or "/../" in f"{text}/":
        raise InvalidValue('must start with "/" and contain no spaces, "?", "#" or ".." segments')
    return text


def parse_route_host(raw: object) -> str:
    text = parse_text(raw).lower()
    if text.startswith("["):
        name, _, port = text[1:].partition("]")
        ok = ":" in name and is_host(name) and (not port or (port[0] == ":" and is_digits(port[1:])))
    else:
        name, colon, port = text.partition(":")
        ok = is_host(name) and (not colon or is_digits(port))
    if not ok:
        raise InvalidValue("expected a host name, optionally with :port")
    return text


def parse_route(raw: object) -> RouteSetting:
    if not isinstance(raw, dict):
        raise InvalidValue("each route must be a table with prefix and upstream")
    for key in raw:
        if key not in _ROUTE_KEYS:
            raise InvalidValue(f"unknown route key; expected {', '.join(_ROUTE_KEYS)}", raw[key], f".{key}")
    for key in ("prefix", "upstream"):
        if key not in raw:
            raise InvalidValue(f"route has no {key}", None, f".{key}")

    def parse(key: str, parser: Callable[[object], Any]) -> Any:
        try:
            return parser(raw[key])
        except InvalidValue as exc:
            raise InvalidValue(exc.reason, raw[key], f".{key}") from None

    return RouteSetting(
        prefix=parse("prefix", parse_prefix),
        upstream=parse("upstream", parse_url),
        host=parse("host", parse_route_host) if "host" in raw else None,
        preserve_host=parse("preserve_host", parse_boolean) if "preserve_host" in raw else True,
    )


def parse_routes(raw: object) -> tuple[RouteSetting, ...]:
    if not isinstance(raw, list):
        raise InvalidValue("expected [[routes]] tables")
    routes: list[RouteSetting] = []
    seen: dict[tuple[str | None, str], int] = {}
    for index, item in enumerate(raw):
        try:
            route = parse_route(item)
        except InvalidValue as exc:
            raise InvalidValue(exc.reason, exc.value, f"[{index}]{exc.suffix}") from None
        # Matching ignores a trailing "/" and the Host port, so "/api" and "/api/" are the same route.
        host = route.host
        if host is not None:
            host = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0].rstrip(".")
        first = seen.setdefault((host, route.prefix.rstrip("/") or "/"), index)
        if first != index:
            raise InvalidValue(f"duplicates routes[{first}]", route.prefix, f"[{index}].prefix")
        routes.append(route)
    return tuple(routes)
