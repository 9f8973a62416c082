"""Where the hot path gets key records: the cache first, PostgreSQL on a miss, never a stale answer.

- A cache hit costs no query. Many concurrent requests for an uncached key share one query; a change
  to that key detaches the query in flight, so a request arriving after the change is applied never
  joins a read from before it.
- Every worker knows the set of existing key ids (the directory: loaded once, kept current by the
  change feed). A presented id not in it is unknown without a query of its own: the request waits for
  a feed catch-up that began after it arrived (shared by all such requests, so a flood of random keys
  costs about one query per round trip, not one per request), and a key created before the request is
  found that way; it is never refused for being new.
- While the directory is not trustworthy (being reloaded after a reset, retried until it succeeds),
  unknown ids fall back to one query each, remembered in the bounded negative cache.
- Fail closed: while the feed is disconnected, cached entries are used for at most ``max_stale``
  seconds; after that every request re-reads its key from PostgreSQL, and when that fails the answer is
  ``AuthorizationUnavailable`` (503), never an allow and never a 401 for a key we could not check.
- A lookup that must wait for PostgreSQL (a read, a catch-up) waits at most ``deadline`` seconds, then
  it is ``AuthorizationUnavailable`` too: a frozen database answers as a stopped one does, only later.
  The read and the catch-up it waits on are shared and carry deadlines of their own (the store's and
  the feed's), so a request giving up never cancels them for the others.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Protocol

from proxy.core.cache import MISSING, Entry, KeyCache, Missing, compile_entry
from proxy.core.errors import AuthorizationUnavailable, PolicyError, StoreUnavailable
from proxy.db.changelog import Change
from proxy.db.store import Store

__all__ = ["Feed", "KeySource"]

log = logging.getLogger("signalgate.keys")

RELOAD_BACKOFF = (0.05, 2.0)  # first and longest wait between failed directory reloads, seconds
DEFAULT_DEADLINE = 2.0  # seconds a lookup may wait for PostgreSQL (settings: database_timeout)


class Feed(Protocol):
    def stale_for(self) -> float: ...

    async def sync(self) -> None: ...


async def _not_following() -> None:
    raise StoreUnavailable("not following a change feed")


class KeySource:
    __slots__ = (
        "_cache",
        "_deadline",
        "_directory",
        "_inflight",
        "_max_stale",
        "_pending",
        "_reload",
        "_stale_for",
        "_store",
        "_sync",
    )

    def __init__(
        self, store: Store, cache: KeyCache, *, max_stale: float, deadline: float = DEFAULT_DEADLINE
    ) -> None:
        self._store = store
        self._cache = cache
        self._max_stale = max_stale
        self._deadline = deadline
        self._stale_for: Callable[[], float] = lambda: math.inf  # fail closed until following a feed
        self._sync: Callable[[], Awaitable[None]] = _not_following
        self._directory: set[str] | None = None
        self._inflight: dict[str, asyncio.Task[Entry | None]] = {}
        self._reload: asyncio.Task[None] | None = None
        # the last action per key id seen while the directory is being reloaded
        self._pending: dict[str, str] = {}

    @property
    def cache(self) -> KeyCache:
        return self._cache

    def follow(self, feed: Feed) -> None:
        """Take freshness from ``feed``: its staleness bounds the cache, its catch-ups find new ids."""
        self._stale_for = feed.stale_for
        self._sync = feed.sync

    async def load_directory(self) -> int:
        """Read every key id; the revision the feed must continue from."""
        ids, revision = await self._store.key_directory()
        self._directory = ids
        return revision

    def cached(self, key_id: str) -> Entry | Missing:
        """The key's entry when the cache holds it and is current enough to vouch for it; else MISSING
        (``lookup`` then finds out, with at most one round trip to PostgreSQL)."""
        if self._stale_for() <= self._max_stale:
            entry = self._cache.get(key_id)
            if entry is not None:
                return entry
        return MISSING

    async def lookup(self, key_id: str) -> Entry | None:
        entry = self.cached(key_id)
        if not isinstance(entry, Missing):
            return entry
        stale = self._stale_for()
        try:
            async with asyncio.timeout(self._deadline):
                return await self._lookup_uncached(key_id, stale)
        except TimeoutError as exc:
            raise AuthorizationUnavailable(
                f"key {key_id}: no answer from PostgreSQL within {self._deadline:g}s"
            ) from exc

    async def _lookup_uncached(self, key_id: str, stale: float) -> Entry | None:
        if stale > self._max_stale:
            return await self._joined(key_id, cacheable=False)  # re-read every time, remember nothing
        fresh = stale == 0.0
        if not fresh or (self._directory is not None and key_id not in self._directory):
            # A miss while freshness is unproven (the loop stalled past the probe's cadence, say), or an
            # id the directory does not know: one catch-up, shared by all such requests, proves the feed
            # current again and brings in keys created meanwhile. Failing that (the feed broke): ask
            # the database and remember nothing.
            fresh = await self._synced()
        if fresh:
            directory = self._directory  # read again: the catch-up may have reset it
            if directory is not None:
                return None if key_id not in directory else await self._joined(key_id, cacheable=True)
        if self._cache.known_missing(key_id):
            return None
        return await self._joined(key_id, cacheable=fresh)

    async def _synced(self) -> bool:
        """Whether a catch-up (shared with concurrent callers) left the feed proven current."""
        try:
            await self._sync()
        except StoreUnavailable:
            return False
        return self._stale_for() == 0.0

    async def _joined(self, key_id: str, *, cacheable: bool) -> Entry | None:
        """The load in flight for ``key_id``, or a new one."""
        task = self._inflight.get(key_id)
        if task is None:
            task = asyncio.ensure_future(self._load(key_id, cacheable=cacheable))
            self._inflight[key_id] = task
            task.add_done_callback(functools.partial(self._landed, key_id))
        return await asyncio.shield(task)

    def _landed(self, key_id: str, task: asyncio.Task[Entry | None]) -> None:
        if self._inflight.get(key_id) is task:  # not a load a change detached and a newer one replaced
            del self._inflight[key_id]
        if not task.cancelled():
            task.exception()  # seen: every request may have given up on it (a deadline) before it failed

    async def _load(self, key_id: str, *, cacheable: bool) -> Entry | None:
        generation = self._cache.generation
        try:
            record = await self._store.get_key(key_id)
        except StoreUnavailable as exc:
            raise AuthorizationUnavailable(f"cannot read key {key_id}: {exc}") from exc
        entry = None
        if record is not None:
            try:
                entry, problem = compile_entry(record)
            except PolicyError as exc:
                log.error("stored policy of key %s does not compile: %s", key_id, exc)
                raise AuthorizationUnavailable(f"stored policy of key {key_id} does not compile") from exc
            if problem is not None:
                log.error(
                    "stored candidate policy of key %s does not compile, not evaluated: %s", key_id, problem
                )
        if cacheable:
            self._cache.store(key_id, entry, generation)
        return entry

    def on_change(self, change: Change) -> None:
        """Evict what ``change`` names; a load in flight for it may have read the old row, so later
        requests must not join it (the requests already waiting on it arrived before the change)."""
        if change.entity == "job":  # what a decision reads of a job comes with its keys, announced apart
            return
        if change.entity != "key":  # something a decision may depend on, not tied to one key
            self._cache.clear()
            self._inflight.clear()
            return
        self._cache.invalidate(change.entity_id)
        self._inflight.pop(change.entity_id, None)
        if self._directory is not None:
            _apply(self._directory, change.entity_id, change.action)
        else:  # the last action per id: bounded by the ids written, however many writes
            self._pending[change.entity_id] = change.action

    def on_reset(self) -> None:
        """Changes were missed: drop everything and reload the directory in the background."""
        self._cache.clear()
        self._inflight.clear()
        self._directory = None
        self._start_reload()

    def _start_reload(self) -> None:
        """(Re)start the directory reload: its snapshot must be taken after everything missed so far."""
        if self._reload is not None:
            self._reload.cancel()
        self._pending = {}
        self._reload = asyncio.ensure_future(self._reload_directory())

    async def directory_loaded(self) -> None:
        """Wait until the directory is loaded again after a reset (reloads may restart meanwhile)."""
        while self._directory is None and self._reload is not None:
            reload = self._reload
            await asyncio.wait([reload])  # returns, never raises, if the reload is cancelled
            if self._reload is reload:  # ended without a directory (closed): nothing more to wait for
                return

    async def close(self) -> None:
        """Stop a directory reload still running."""
        reload, self._reload = self._reload, None
        if reload is not None:
            reload.cancel()
            await asyncio.wait([reload])  # a cancellation of our caller still reaches it

    async def _reload_directory(self) -> None:
        delay = RELOAD_BACKOFF[0]
        while True:
            try:
                ids, _ = await self._store.key_directory()
                break
            except StoreUnavailable as exc:
                log.warning("key directory not reloaded (%s); retrying in %gs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RELOAD_BACKOFF[1])
        # Changes seen while reading may be older or newer than the snapshot; applying them all is safe
        # because ids are never reused: an extra id only costs a lookup, a deleted id stays deleted.
        for key_id, action in self._pending.items():
            _apply(ids, key_id, action)
        self._pending = {}
        self._directory = ids


def _apply(directory: set[str], key_id: str, action: str) -> None:
    if action == "delete":
        directory.discard(key_id)
    else:
        directory.add(key_id)
