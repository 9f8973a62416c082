"""Policy documents: validated and compiled once when written or loaded, evaluated per request.

A policy document is a JSON object whose top-level fields are parts (``proxy.core.parts``); each part
compiles into a rule, and ``evaluate`` checks the rules in the parts' registered order. The first rule
that fails names the denial's reason. An absent part constrains nothing; an empty allow list allows
nothing. Unknown fields anywhere are errors, never ignored.

Decisions of the leading memoisable parts are remembered per compiled policy, keyed by the facts those
parts declare (``Part.memo_on``): the same client repeats the same calls. A changed policy is a new
``CompiledPolicy``, so a remembered decision never outlives the policy that made it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from proxy.core.errors import PolicyError
from proxy.core.facts import BASIC, UNAVAILABLE, Facts
from proxy.core.model import ALLOW, Decision
from proxy.core.part import Part, Rule, object_fields
from proxy.core.parts import PARTS

__all__ = ["EMPTY", "MEMO_SIZE", "CompiledPolicy", "compile_policy", "evaluate", "explain", "policy_schema"]

# Decisions remembered per compiled policy. Small, because every cached key has its own: at most
# cache_size x MEMO_SIZE.
MEMO_SIZE = 32

_MemoKey = Callable[[Facts], Hashable]


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    rules: tuple[tuple[Part, Rule], ...] = ()  # in evaluation order
    needs: frozenset[str] = frozenset()  # gathered facts its rules read
    strip: frozenset[str] = frozenset()  # lower-case request header names kept from the upstream
    memoised: tuple[Rule, ...] = field(default=(), compare=False, repr=False)  # the leading memoisable rules
    unmemoised: tuple[Rule, ...] = field(default=(), compare=False, repr=False)  # the rest, every request
    memo_key: _MemoKey | None = field(default=None, compare=False, repr=False)
    memo: dict[Hashable, Decision] = field(default_factory=dict, compare=False, repr=False)
    # (admission name, rule) of the parts that ask for one (Part.admits), in part order
    admissions: tuple[tuple[str, Rule], ...] = field(default=(), compare=False, repr=False)

    def rule(self, name: str) -> Rule | None:
        """The compiled rule of part ``name``; None when the policy does not have that part."""
        for part, rule in self.rules:
            if part.name == name:
                return rule
        return None


EMPTY = CompiledPolicy()


def evaluate(policy: CompiledPolicy, facts: Facts) -> Decision:
    """The policy's decision on ``facts``: the first rule's denial, else ALLOW."""
    if policy.memo_key is not None:
        memo = policy.memo
        key = policy.memo_key(facts)
        decision = memo.get(key)
        if decision is None:
            decision = _first_denial(policy.memoised, facts) or ALLOW
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[key] = decision
        if not decision.allowed:
            return decision
    return _first_denial(policy.unmemoised, facts) or ALLOW


def _first_denial(rules: tuple[Rule, ...], facts: Facts) -> Decision | None:
    for rule in rules:
        denied = rule.check(facts)
        if denied is not None:
            return denied
    return None


def explain(policy: CompiledPolicy, facts: Facts) -> list[tuple[str, Decision]]:
    """Every part's outcome on ``facts``, in evaluation order (no memo): ALLOW for a part that passed."""
    return [(part.name, rule.check(facts) or ALLOW) for part, rule in policy.rules]


def compile_policy(doc: object, path: str = "policy", parts: tuple[Part, ...] = PARTS) -> CompiledPolicy:
    """Validate and compile against the registered ``parts``; raises PolicyError naming the field
    path and the reason."""
    fields = object_fields(doc, path, tuple(part.name for part in parts))
    rules = tuple(
        (part, part.compile(fields[part.name], f"{path}.{part.name}"))
        for part in parts
        if part.name in fields
    )
    for _, rule in rules:  # a rule may rely on another part of the same policy (context on signature)
        for name, where in getattr(rule, "requires", {}).items():
            if name not in fields and any(known.name == name for known in parts):
                raise PolicyError(where, f"needs the {name!r} part in the same policy")
    if not rules:
        return CompiledPolicy()
    leading = 0
    while leading < len(rules) and rules[leading][0].memo_on is not None:
        leading += 1
    memo_on: list[str] = []
    for part, _ in rules[:leading]:
        memo_on.extend(name for name in part.memo_on or () if name not in memo_on)
    return CompiledPolicy(
        rules=rules,
        # A rule may narrow its part's needs (``context`` needs the signature only for signed headers).
        needs=frozenset().union(*(getattr(rule, "needs", part.needs) for part, rule in rules)),
        strip=frozenset().union(*(getattr(rule, "strip", ()) for _, rule in rules)),
        memoised=tuple(rule for _, rule in rules[:leading]),
        unmemoised=tuple(rule for _, rule in rules[leading:]),
        memo_key=_memo_key(memo_on) if leading else None,
        admissions=tuple((part.admits, rule) for part, rule in rules if part.admits is not None),
    )


def _memo_key(names: list[str]) -> _MemoKey:
    """A function of ``facts`` giving the values of ``names``, as cheap as the names allow (hot path)."""
    basic = [name for name in names if name in BASIC]
    gathered = tuple(name for name in names if name not in BASIC)
    of_basic = attrgetter(*basic) if basic else None
    if not gathered:
        if of_basic is None:  # parts whose verdict depends on no fact at all
            return lambda facts: None
        return of_basic
    if len(gathered) == 1:
        (only,) = gathered
        if of_basic is None:
            return lambda facts: facts.gathered.get(only, UNAVAILABLE)
        return lambda facts: (of_basic(facts), facts.gathered.get(only, UNAVAILABLE))

    def key(facts: Facts) -> Hashable:
        got = facts.gathered
        values = tuple([got.get(name, UNAVAILABLE) for name in gathered])
        return values if of_basic is None else (of_basic(facts), values)

    return key


def policy_schema() -> Mapping[str, Any]:
    """The JSON Schema of a policy document, assembled from the parts' own fragments."""
    return {
        "type": "object",
        "description": "Absent parts constrain nothing; an empty allow list allows nothing.",
        "properties": {part.name: part.schema for part in PARTS},
        "additionalProperties": False,
    }
