"""The per-process cache of compiled key records, and of key ids known not to exist.

Pure data structure: no IO, no asyncio; the loader around it (``proxy.db.keysource``) does the waiting.

Invalidation is by generation: every change announced on the feed bumps ``generation`` and evicts the
key it names. A load that started before a change may have read the old row, so its result is only
stored when the generation did not move while it ran. That is also why a newly created key can never be
refused because of a negative entry: its creation is announced on the feed, which evicts the id and bumps
the generation, so a "not found" read from before the creation is never stored (and ids are 64 random
bits chosen by the server, so nobody can poison a future id by probing it).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from proxy.core.errors import PolicyError
from proxy.core.model import KeyRecord
from proxy.core.policy import CompiledPolicy, compile_policy

__all__ = ["METRICS_LABEL", "MISSING", "Entry", "KeyCache", "Missing", "compile_entry"]


class Missing:
    """Not in the cache (or the cache cannot vouch for it now): the key must be looked up."""

    __slots__ = ()


MISSING = Missing()

# A key labelled ``metrics=on`` gets its own series in the metrics (bounded: only keys an operator marks).
METRICS_LABEL = ("metrics", "on")


@dataclass(frozen=True, slots=True)
class Entry:
    record: KeyRecord
    policy: CompiledPolicy
    candidate: CompiledPolicy | None = None  # evaluated beside ``policy``, never enforced
    needs: frozenset[str] = frozenset()  # gathered facts either policy reads
    metrics: bool = False  # the key has its own metric series


def compile_entry(record: KeyRecord) -> tuple[Entry, PolicyError | None]:
    """The record with its policies compiled; raises PolicyError when the policy does not compile.

    A candidate that does not compile (stored before a validation change) is left out, and its error
    returned: it is never enforced, so it must not stop the key from being served.
    """
    policy = compile_policy(record.policy)
    candidate, problem = None, None
    if record.candidate_policy is not None:
        try:
            candidate = compile_policy(record.candidate_policy, "candidate_policy")
        except PolicyError as exc:
            problem = exc
    needs = policy.needs | candidate.needs if candidate is not None else policy.needs
    name, value = METRICS_LABEL
    return Entry(record, policy, candidate, needs, record.labels.get(name) == value), problem


class KeyCache:
    __slots__ = (
        "_entries",
        "_missing",
        "evictions",
        "generation",
        "hits",
        "invalidations",
        "max_entries",
        "max_missing",
        "misses",
    )

    def __init__(self, max_entries: int, max_missing: int) -> None:
        self.max_entries = max_entries
        self.max_missing = max_missing
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._missing: OrderedDict[str, None] = OrderedDict()
        self.generation = 0
        # for the metrics: lookups answered and not, entries pushed out by size and by changes
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.invalidations = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key_id: str) -> Entry | None:
        entry = self._entries.get(key_id)
        if entry is not None:
            self._entries.move_to_end(key_id)
            self.hits += 1
        else:
            self.misses += 1
        return entry

    def known_missing(self, key_id: str) -> bool:
        return key_id in self._missing

    def store(self, key_id: str, entry: Entry | None, generation: int) -> bool:
        """Keep a load's result unless something changed since the load began (at ``generation``)."""
        if generation != self.generation:
            return False
        if entry is None:
            self._missing[key_id] = None
            self._missing.move_to_end(key_id)
            if len(self._missing) > self.max_missing:
                self._missing.popitem(last=False)
        else:
            self._missing.pop(key_id, None)
            self._entries[key_id] = entry
            self._entries.move_to_end(key_id)
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.evictions += 1
        return True

    def invalidate(self, key_id: str) -> None:
        self.generation += 1
        if self._entries.pop(key_id, None) is not None:
            self.invalidations += 1
        self._missing.pop(key_id, None)

    def clear(self) -> None:
        self.generation += 1
        self.invalidations += len(self._entries)
        self._entries.clear()
        self._missing.clear()
