"""Route patterns: compiled once per policy, matched per request against the normalised path.

Pure core. The grammar is in ``proxy.core.policy``'s docstring. A pattern with at most one ``**`` compiles
to a regular expression, which matches in time linear in the path: every other token consumes exactly
one segment. Several ``**`` in one regular expression would backtrack polynomially (``/**/a/**/x``
against a 64 KiB path of ``/a`` segments takes seconds, blocking the worker), so such a pattern is
matched segment by segment instead, in linear time: its fixed blocks between the ``**`` are found
leftmost first, which is exact because each block has a fixed length.
"""

from __future__ import annotations

import re

from proxy.core.errors import PolicyError
from proxy.core.paths import decode

__all__ = ["Matcher", "compile_route_pattern"]

_SEGMENT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()+,;=:@%")

# One segment test: a literal segment, or None for "*" (any one non-empty segment).
_Block = tuple[str | None, ...]


class Blocks:
    """``head ** middle[0] ** ... ** tail``: the segment-by-segment matcher for several ``**``."""

    __slots__ = ("head", "middle", "tail")

    def __init__(self, head: _Block, middle: tuple[_Block, ...], tail: _Block) -> None:
        self.head, self.middle, self.tail = head, middle, tail

    def match(self, path: str) -> bool | None:
        """True when ``path`` matches, None when not (the truthiness of ``re.Pattern.match``)."""
        trimmed = path[:-1] if path.endswith("/") else path  # one trailing "/" is not significant
        if trimmed and not trimmed.startswith("/"):
            return None
        segments = trimmed[1:].split("/") if trimmed else []
        if "" in segments:  # no token matches an empty segment
            return None
        head, tail = self.head, self.tail
        end = len(segments) - len(tail)
        if end < len(head) or not _fits(head, segments, 0) or not _fits(tail, segments, end):
            return None
        at = len(head)
        for block in self.middle:
            while at + len(block) <= end and not _fits(block, segments, at):
                at += 1
            if at + len(block) > end:
                return None
            at += len(block)
        return True


Matcher = re.Pattern[str] | Blocks


def _fits(block: _Block, segments: list[str], at: int) -> bool:
    return all(test is None or segments[at + offset] == test for offset, test in enumerate(block))


def compile_route_pattern(pattern: str, path: str) -> Matcher:
    """Validate ``pattern`` (errors name ``path``) and compile it."""
    if not pattern.startswith("/"):
        raise PolicyError(path, f"route pattern {pattern!r} must start with '/'")
    tokens: list[str | None] = []  # a literal, None for "*", "**"
    for seg in pattern.strip("/").split("/") if pattern.strip("/") else []:
        if seg == "**":
            if tokens and tokens[-1] == "**":
                continue  # "**/**" matches what one "**" matches
            tokens.append("**")
        elif seg == "*":
            tokens.append(None)
        elif seg in ("", ".", ".."):
            raise PolicyError(path, f"route pattern {pattern!r} has an empty or dot segment")
        elif "*" in seg:
            raise PolicyError(path, f"route pattern {pattern!r}: '*' and '**' must be whole segments")
        elif not _SEGMENT_CHARS.issuperset(seg):
            raise PolicyError(
                path, f"route pattern {pattern!r} holds a character that must be percent-encoded"
            )
        else:  # escaped as paths are (proxy.core.paths), or the segment could never match a normalised path
            literal = decode(seg)
            if not isinstance(literal, str):
                raise PolicyError(path, f"route pattern {pattern!r}: {literal.problem}")
            if literal in (".", ".."):
                raise PolicyError(path, f"route pattern {pattern!r} has an empty or dot segment")
            tokens.append(literal)
    if tokens.count("**") > 1:
        blocks: list[_Block] = [()]
        for token in tokens:
            if token == "**":
                blocks.append(())
            else:
                blocks[-1] += (token,)
        return Blocks(blocks[0], tuple(blocks[1:-1]), blocks[-1])
    parts = [
        "(?:/[^/]+)*" if token == "**" else "/[^/]+" if token is None else "/" + re.escape(token)
        for token in tokens
    ]
    return re.compile("".join(parts) + "/?\\Z")
