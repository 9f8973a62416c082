"""Route patterns: the segment matcher for several ``**`` agrees with the regex semantics everywhere."""

from __future__ import annotations

import itertools
import re

import pytest

from proxy.core.patterns import Blocks, compile_route_pattern
from proxy.core.policy import compile_policy, evaluate
from tests.values import signals as sig

TOKENS = ("a", "b", "*", "**")
SEGMENTS = ("a", "b", "c")


def regex_of(pattern: str) -> re.Pattern[str]:
    """The plain translation, right but slow for several ``**``: the reference to agree with."""
    parts = []
    for seg in pattern.strip("/").split("/") if pattern.strip("/") else []:
        parts.append({"**": "(?:/[^/]+)*", "*": "/[^/]+"}.get(seg, "/" + re.escape(seg)))
    return re.compile("".join(parts) + "/?\\Z")


def paths() -> list[str]:
    out = ["/", "//", "/a//b"]
    for n in range(6):
        for segs in itertools.product(SEGMENTS, repeat=n):
            body = "/" + "/".join(segs)
            out += [body, body + "/"] if segs else []
    return out


def patterns() -> list[str]:
    every = ["/" + "/".join(t) for n in range(1, 6) for t in itertools.product(TOKENS, repeat=n)]
    # longer blocks between several "**", where a block found must not be reused by the next
    return [*every, "/**/a/b/**/b/**", "/**/a/*/**/a/**", "/**/*/*/**/*/**", "/a/**/b/a/**/a/b/**/b"]


def test_every_small_pattern_matches_exactly_what_the_regex_translation_matches() -> None:
    every_path = paths()
    checked = 0
    for pattern in patterns():
        matcher, reference = compile_route_pattern(pattern, "p"), regex_of(pattern)
        for path in every_path:
            assert bool(matcher.match(path)) == bool(reference.match(path)), (pattern, path)
            checked += 1
    assert checked > 500_000


@pytest.mark.parametrize(
    ("pattern", "kind"),
    [
        ("/**/a/**/x", Blocks),  # two: matched segment by segment
        ("/v1/**/items/**", Blocks),
        ("/**/**/x", re.Pattern),  # adjacent ones merge into one
        ("/v1/orders/**", re.Pattern),
        ("/v1/*/profile", re.Pattern),
    ],
)
def test_only_patterns_with_several_double_stars_leave_the_regex(pattern: str, kind: type) -> None:
    assert isinstance(compile_route_pattern(pattern, "p"), kind)


def test_a_long_path_against_several_double_stars_is_decided() -> None:
    policy = compile_policy({"routes": [{"path": "/**/a/**/x"}, {"path": "/**/**/**/y"}]})
    long_path = "/a" * 30_000  # a regex would backtrack for minutes over this
    assert not evaluate(policy, sig(path=long_path)).allowed
    assert evaluate(policy, sig(path=long_path + "/x")).allowed
    assert evaluate(policy, sig(path=long_path + "/y")).allowed
