"""KeySource against a real PostgreSQL: single-flight loads, the key directory and its reloads.

The store is the real one; where a test needs a read to stall or fail at a chosen moment it wraps one
store method (a gate, not a fake answer), so the interleaving is exact without sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.core.cache import KeyCache
from proxy.core.errors import StoreUnavailable
from proxy.core.model import KeyStatus
from proxy.db.changelog import Change
from proxy.db.feed import ChangeFeed
from proxy.db.keysource import KeySource
from proxy.db.store import Store
from tests.bounds import DATABASE
from tests.pgtools import new_key


class StubFeed:
    """Freshness as the test sets it; ``sync`` runs what the test hands it (a change feed's part)."""

    def __init__(self, on_sync: Callable[[], Awaitable[None]]) -> None:
        self.on_sync = on_sync

    def stale_for(self) -> float:
        return 0.0

    async def sync(self) -> None:
        await self.on_sync()


def stall(target: Any, name: str) -> tuple[asyncio.Event, asyncio.Event]:
    """Make ``target.name`` do its real work, then wait: (read done, release)."""
    real = getattr(target, name)
    done, release = asyncio.Event(), asyncio.Event()

    async def stalled(*args: Any) -> Any:
        result = await real(*args)
        done.set()
        await release.wait()
        return result

    setattr(target, name, stalled)
    return done, release


async def test_a_request_after_a_revocation_never_joins_a_load_from_before_it(
    store: Store, db_dsn: str
) -> None:
    key = await new_key(store)
    keys = KeySource(store, KeyCache(100, 100), max_stale=10.0)
    feed = ChangeFeed(
        db_dsn, on_change=keys.on_change, on_reset=keys.on_reset, load_revision=await keys.load_directory()
    )
    keys.follow(feed)
    await feed.start()
    try:
        await feed.wait_connected(DATABASE)
        read, release = stall(store, "get_key")
        before = asyncio.ensure_future(keys.lookup(key.id))  # reads the row while it is active
        await read.wait()
        del store.get_key  # back to the real method for every later read

        revoked = await store.revoke_key(key.id)
        await asyncio.wait_for(feed.wait_applied(revoked.revision), DATABASE)  # the admin call returns here
        after = await asyncio.wait_for(keys.lookup(key.id), DATABASE)  # joining the stalled read would hang
        release.set()
        earlier = await before
    finally:
        await feed.stop()
    assert after is not None and after.record.status is KeyStatus.REVOKED
    assert earlier is not None and earlier.record.status is KeyStatus.ACTIVE  # it came before the revoke


async def test_a_second_reset_during_a_reload_restarts_it(store: Store) -> None:
    keys = KeySource(store, KeyCache(10, 10), max_stale=10.0)
    await keys.load_directory()
    read, release = stall(store, "key_directory")
    keys.on_reset()
    await read.wait()  # the first reload holds a snapshot from before the key below
    del store.key_directory
    created = await new_key(store)  # its change is among those the second reset says were missed
    keys.on_reset()
    release.set()
    await keys.directory_loaded()

    keys.follow(StubFeed(_nothing))
    entry = await keys.lookup(created.id)
    assert entry is not None and entry.record.id == created.id


async def test_a_failed_directory_reload_is_retried(store: Store) -> None:
    keys = KeySource(store, KeyCache(10, 10), max_stale=10.0)
    await keys.load_directory()
    created = await new_key(store)
    real = store.key_directory
    calls = 0

    async def failing_twice() -> Any:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise StoreUnavailable("database down")
        return await real()

    store.key_directory = failing_twice  # type: ignore[method-assign]
    keys.on_reset()
    await keys.directory_loaded()
    assert calls == 3

    async def no_catch_up() -> None:
        raise AssertionError("a known id needs no catch-up")

    keys.follow(StubFeed(no_catch_up))
    entry = await keys.lookup(created.id)  # found in the reloaded directory
    assert entry is not None and entry.record.id == created.id


async def test_changes_during_a_reload_keep_the_last_action_per_key(store: Store) -> None:
    keys = KeySource(store, KeyCache(10, 10), max_stale=10.0)
    await keys.load_directory()
    known = await new_key(store)
    await keys.load_directory()
    reads = 0
    real_directory = store.key_directory

    async def counted_directory() -> Any:
        nonlocal reads
        reads += 1
        return await real_directory()

    store.key_directory = counted_directory  # type: ignore[method-assign]
    read, release = stall(store, "key_directory")
    keys.on_reset()
    await read.wait()  # the reload's snapshot is taken: the changes below come after it
    created = await new_key(store)
    gone = "0123456789abcdef"
    keys.on_change(Change(1, "key", created.id, "create"))
    keys.on_change(Change(2, "key", gone, "create"))
    keys.on_change(Change(3, "key", gone, "delete"))
    for revision in range(4, 20_004):  # a long stream of writes to one key: remembered once
        keys.on_change(Change(revision, "key", known.id, "update"))
    release.set()
    await keys.directory_loaded()
    del store.key_directory
    assert reads == 1  # the stream of changes never restarted the reload

    async def no_catch_up() -> None:
        raise AssertionError("known ids need no catch-up")

    keys.follow(StubFeed(no_catch_up))
    entry = await keys.lookup(created.id)  # in the directory through the queued create
    assert entry is not None and entry.record.id == created.id
    assert (await keys.lookup(known.id)) is not None

    caught_up = 0

    async def counted() -> None:
        nonlocal caught_up
        caught_up += 1

    keys.follow(StubFeed(counted))
    assert await keys.lookup(gone) is None  # created and deleted while reloading: unknown
    assert caught_up == 1


class StaleFeed:
    """A feed whose freshness went unproven (a stalled loop) until the next catch-up."""

    def __init__(self) -> None:
        self.stale = 3.5
        self.catch_ups = 0

    def stale_for(self) -> float:
        return self.stale

    async def sync(self) -> None:
        self.catch_ups += 1
        self.stale = 0.0


async def test_a_miss_while_freshness_is_unproven_catches_up_rather_than_querying(store: Store) -> None:
    cache = KeyCache(10, 10)
    keys = KeySource(store, cache, max_stale=10.0)
    await keys.load_directory()
    queries = 0
    real = store.get_key

    async def counted(key_id: str) -> Any:
        nonlocal queries
        queries += 1
        return await real(key_id)

    store.get_key = counted  # type: ignore[method-assign]
    feed = StaleFeed()
    keys.follow(feed)
    assert await keys.lookup("0123456789abcdef") is None
    assert (feed.catch_ups, queries) == (1, 0)  # the catch-up proved the directory current: no query
    created = await new_key(store)
    keys.on_change(Change(created.revision, "key", created.id, "create"))
    assert await keys.lookup(created.id) is not None
    assert await keys.lookup(created.id) is not None
    assert queries == 1  # loaded once, then cached: freshness is proven again


async def test_a_reset_during_the_catch_up_makes_the_lookup_ask_the_database(store: Store) -> None:
    keys = KeySource(store, KeyCache(10, 10), max_stale=10.0)
    await keys.load_directory()
    created = await new_key(store)  # not in the directory loaded above

    async def catch_up_that_resets() -> None:
        keys.on_reset()  # the catch-up found its changes pruned

    keys.follow(StubFeed(catch_up_that_resets))
    entry = await keys.lookup(created.id)
    assert entry is not None and entry.record.id == created.id
    await keys.close()


async def test_an_answer_read_while_the_feed_broke_is_not_remembered(store: Store) -> None:
    cache = KeyCache(10, 10)
    keys = KeySource(store, cache, max_stale=10.0)
    await keys.load_directory()

    async def broken() -> None:
        raise StoreUnavailable("change feed is not listening")

    keys.follow(StubFeed(broken))
    unknown = "0123456789abcdef"
    assert await keys.lookup(unknown) is None  # asked the database: no such key
    assert not cache.known_missing(unknown)  # but a key created meanwhile must not meet this "no"


async def _nothing() -> None:
    return None


async def test_a_job_change_evicts_nothing_its_keys_are_announced_one_by_one(store: Store) -> None:
    keys = KeySource(store, KeyCache(10, 10), max_stale=10.0)
    keys.follow(StubFeed(lambda: asyncio.sleep(0)))
    bystander, closing = await new_key(store), await new_key(store)
    await keys.load_directory()
    assert await keys.lookup(bystander.id) is not None and await keys.lookup(closing.id) is not None
    keys.on_change(Change(100, "job", "0123456789abcdef", "close"))
    assert len(keys._cache) == 2  # a job's change alone: every cached key stays
    keys.on_change(Change(101, "key", closing.id, "revoke"))
    assert keys._cache.get(bystander.id) is not None and keys._cache.get(closing.id) is None
