"""Where the hot path gets key records: the cache first, PostgreSQL on a miss, never a stale answer.

- A cache hit costs no query. Many concurrent requests for an uncached key share one query.
- The change feed evicts what changed (``on_change``) or everything (``on_reset``).
- Fail closed: while the feed is disconnected, cached entries are used for at most ``max_stale``
  seconds; after that every request re-reads its key from PostgreSQL, and when that fails the answer is
  ``AuthorizationUnavailable`` (503), never an allow and never a 401 for a key we could not check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from proxy.cache import Entry, KeyCache
from proxy.errors import PolicyError, SignalgateError, StoreUnavailable
from proxy.policy import compile_policy
from proxy.store import Change, Store

__all__ = ["AuthorizationUnavailable", "KeySource"]

log = logging.getLogger("signalgate.keys")


class AuthorizationUnavailable(SignalgateError):
    """A key could not be checked against the source of truth."""


class KeySource:
    __slots__ = ("_cache", "_inflight", "_max_stale", "_stale_for", "_store", "queries")

    def __init__(
        self, store: Store, cache: KeyCache, *, max_stale: float, stale_for: Callable[[], float]
    ) -> None:
        self._store = store
        self._cache = cache
        self._max_stale = max_stale
        self._stale_for = stale_for
        self._inflight: dict[str, asyncio.Task[Entry | None]] = {}
        self.queries = 0

    @property
    def cache(self) -> KeyCache:
        return self._cache

    async def lookup(self, key_id: str) -> Entry | None:
        stale = self._stale_for()
        if stale <= self._max_stale:
            entry = self._cache.get(key_id)
            if entry is not None:
                return entry
            if self._cache.known_missing(key_id):
                return None
        task = self._inflight.get(key_id)
        if task is None:
            task = asyncio.ensure_future(self._load(key_id, cacheable=stale == 0.0))
            self._inflight[key_id] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key_id, None))
        return await asyncio.shield(task)

    async def _load(self, key_id: str, *, cacheable: bool) -> Entry | None:
        generation = self._cache.generation
        self.queries += 1
        try:
            record = await self._store.get_key(key_id)
        except StoreUnavailable as exc:
            raise AuthorizationUnavailable(f"cannot read key {key_id}: {exc}") from exc
        entry = None
        if record is not None:
            try:
                entry = Entry(record, compile_policy(record.policy))
            except PolicyError as exc:
                log.error("stored policy of key %s does not compile: %s", key_id, exc)
                raise AuthorizationUnavailable(f"stored policy of key {key_id} does not compile") from exc
        if cacheable:
            self._cache.store(key_id, entry, generation)
        return entry

    def on_change(self, change: Change) -> None:
        if change.entity == "key":
            self._cache.invalidate(change.entity_id)
        else:  # something a decision may depend on, not tied to one key: start afresh
            self._cache.clear()

    def on_reset(self) -> None:
        self._cache.clear()
