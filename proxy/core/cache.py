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

from proxy.core.model import KeyRecord
from proxy.core.policy import CompiledPolicy

__all__ = ["Entry", "KeyCache"]


@dataclass(frozen=True, slots=True)
class Entry:
    record: KeyRecord
    policy: CompiledPolicy


class KeyCache:
    __slots__ = ("_entries", "_missing", "generation", "max_entries", "max_missing")

    def __init__(self, max_entries: int, max_missing: int) -> None:
        self.max_entries = max_entries
        self.max_missing = max_missing
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._missing: OrderedDict[str, None] = OrderedDict()
        self.generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key_id: str) -> Entry | None:
        entry = self._entries.get(key_id)
        if entry is not None:
            self._entries.move_to_end(key_id)
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
        return True

    def invalidate(self, key_id: str) -> None:
        self.generation += 1
        self._entries.pop(key_id, None)
        self._missing.pop(key_id, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._missing.clear()
