"""Request-target normalisation: the one form that is both matched and forwarded.

The rules (README, "Path normalisation"):

- only origin-form targets (``/path?query``); anything else is refused;
- the path may hold RFC 3986 ``pchar`` and ``/`` only: no spaces, backslashes, raw non-ASCII or controls;
- percent-encoded unreserved characters are decoded (``%7E`` -> ``~``, ``%2e`` -> ``.``), every other
  escape is kept with upper-case hex;
- escapes an upstream may read as structure are refused as ambiguous: ``%2F`` (slash), ``%5C`` (backslash),
  ``%00``, and double encoding (``%25`` followed by two hex digits);
- repeated slashes collapse, ``.`` and ``..`` segments are removed (RFC 3986 5.2.4; ``..`` never climbs
  above ``/``), and ``..;`` / ``.;`` segments (servlet path parameters) are refused;
- the query is passed on byte-exact; it may not hold controls, spaces or raw non-ASCII.

So ``/metrics/%2e%2e/admin`` becomes ``/admin`` before any route is matched, and ``/metrics/..%2fadmin``
is refused: the upstream never sees a form other than the one the policy judged.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

__all__ = ["Target", "decode", "normalize"]

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PATH_CHARS = _UNRESERVED | frozenset("!$&'()*+,;=:@%/")
_HEX = frozenset("0123456789abcdefABCDEF")
_AMBIGUOUS = {"2F": "encoded slash %2F", "5C": "encoded backslash %5C", "00": "encoded NUL %00"}


@dataclass(frozen=True, slots=True)
class Target:
    """A normalised request target; ``problem`` is set (and the rest empty) when it was refused."""

    path: str
    query: str | None  # text after "?", None when there was no "?"
    problem: str | None = None

    @property
    def path_qs(self) -> str:
        return self.path if self.query is None else f"{self.path}?{self.query}"


def _refuse(problem: str) -> Target:
    return Target("", None, problem)


def decode(raw: str) -> str | Target:
    """Decode unreserved escapes, upper-case the others; a Target naming the problem when refused."""
    if "%" not in raw:
        return raw
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        pair = raw[i + 1 : i + 3]
        if len(pair) != 2 or not _HEX.issuperset(pair):
            return _refuse("invalid percent-encoding")
        pair = pair.upper()
        if pair in _AMBIGUOUS:
            return _refuse(_AMBIGUOUS[pair])
        if pair == "25" and len(raw) >= i + 5 and _HEX.issuperset(raw[i + 3 : i + 5]):
            return _refuse("double percent-encoding")
        decoded = chr(int(pair, 16))
        out.append(decoded if decoded in _UNRESERVED else "%" + pair)
        i += 3
    return "".join(out)


@functools.lru_cache(maxsize=1024)  # hot APIs see the same targets again and again
def normalize(target: str) -> Target:
    if not target.startswith("/"):
        return _refuse("request target must start with '/'")
    raw, sep, query = target.partition("?")
    if "#" in target:
        return _refuse("fragment in request target")
    if not _PATH_CHARS.issuperset(raw):
        return _refuse("path holds a character that must be percent-encoded")
    if sep and any(c <= " " or c > "~" for c in query):
        return _refuse("query holds a control, space or non-ASCII character")
    decoded = decode(raw)
    if isinstance(decoded, Target):
        return decoded
    segments: list[str] = []
    for seg in decoded.split("/"):
        if seg == "" or seg == ".":
            continue
        if seg == "..":
            if segments:
                segments.pop()
            continue
        if seg.startswith((".;", "..;")):
            return _refuse("path parameter on a dot segment")
        segments.append(seg)
    path = "/" + "/".join(segments)
    if segments and decoded.endswith(("/", "/.", "/..")):
        path += "/"
    return Target(path, query if sep else None)
