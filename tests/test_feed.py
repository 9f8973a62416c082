"""The change feed against a real PostgreSQL: delivery, gaps, lost connections, resets."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from proxy.core.errors import StoreUnavailable
from proxy.db.changelog import CHANNEL, Change, fetch_changes_checked
from proxy.db.feed import ChangeFeed
from proxy.db.store import Store
from tests.bounds import DATABASE
from tests.faultrelay import FaultRelay
from tests.pgtools import dbname_of, new_key

# 20001 changes read in pages by a consumer spending about 0.1 ms on each: about 2 s of work.
BACKLOG = 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """on_change/on_reset targets that remember what arrived and whether the feed was connected."""

    def __init__(self) -> None:
        self.changes: asyncio.Queue[Change] = asyncio.Queue()
        self.connected_at_delivery: list[bool] = []
        self.reset = asyncio.Event()
        self.feed: ChangeFeed | None = None
        self.fail_next = False

    def on_change(self, change: Change) -> None:
        assert self.feed is not None
        self.connected_at_delivery.append(self.feed.connected)
        self.changes.put_nowait(change)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("consumer bug")

    def on_reset(self) -> None:
        self.reset.set()

    async def next(self) -> Change:
        return await asyncio.wait_for(self.changes.get(), DATABASE)

    def drain(self) -> list[Change]:
        out = []
        while not self.changes.empty():
            out.append(self.changes.get_nowait())
        return out


MakeFeed = Callable[..., tuple[ChangeFeed, Recorder]]


@pytest.fixture
async def make_feed() -> AsyncIterator[MakeFeed]:
    feeds: list[ChangeFeed] = []

    def make(dsn: str, **options: Any) -> tuple[ChangeFeed, Recorder]:
        recorder = Recorder()
        options.setdefault("backoff_max", 0.2)
        feed = ChangeFeed(dsn, on_change=recorder.on_change, on_reset=recorder.on_reset, **options)
        recorder.feed = feed
        feeds.append(feed)
        return feed, recorder

    yield make
    for feed in feeds:
        await feed.stop()


@asynccontextmanager
async def cut_off(pg_server: str, db_dsn: str) -> AsyncIterator[None]:
    """Kill the feed's connection and refuse new ones to its database until the block ends.

    Connections that already exist (the store's pool) keep working, so writes can happen meanwhile.
    """
    name = dbname_of(db_dsn)
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        pid = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'signalgate-feed'",
            name,
        )
        assert pid is not None
        assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid) is True
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def test_delivers_every_write_in_order(store: Store, db_dsn: str, make_feed: MakeFeed) -> None:
    feed, seen = make_feed(db_dsn)
    await feed.start()
    await feed.wait_connected(DATABASE)
    assert feed.connected and feed.stale_for() == 0.0

    key = await new_key(store)
    await store.update_key(key.id, {"name": "renamed"})
    await store.revoke_key(key.id)
    await store.delete_key(key.id)

    got = [await seen.next() for _ in range(4)]
    assert got == await store.changes_since(0)
    assert [c.action for c in got] == ["create", "update", "revoke", "delete"]
    assert {c.entity_id for c in got} == {key.id}
    assert feed.revision == got[-1].revision
    assert seen.connected_at_delivery == [True] * 4


async def test_start_catches_up_from_the_loaded_revision(
    store: Store, db_dsn: str, make_feed: MakeFeed
) -> None:
    first, second, third = [await new_key(store) for _ in range(3)]
    feed, seen = make_feed(db_dsn, load_revision=first.revision)

    await feed.start()
    await feed.wait_connected(DATABASE)

    # catch-up finishes before the feed reports itself connected, so everything is already here
    assert [c.entity_id for c in seen.drain()] == [second.id, third.id]
    assert seen.connected_at_delivery == [False, False]
    assert feed.revision == third.revision


async def test_a_change_without_notification_is_read_from_the_table(
    store: Store, db_dsn: str, make_feed: MakeFeed
) -> None:
    feed, seen = make_feed(db_dsn)
    await feed.start()
    await feed.wait_connected(DATABASE)
    conn = await asyncpg.connect(db_dsn)
    try:  # a change whose notification never came (as if it were lost)
        silent = await conn.fetchval(
            "INSERT INTO changes (entity, entity_id, action) VALUES ('key', '0123456789abcdef', 'update')"
            " RETURNING revision"
        )
    finally:
        await conn.close()

    key = await new_key(store)

    assert await seen.next() == Change(silent, "key", "0123456789abcdef", "update")
    assert await seen.next() == Change(key.revision, "key", key.id, "create")


async def test_a_failing_consumer_does_not_stop_the_feed(
    store: Store, db_dsn: str, make_feed: MakeFeed
) -> None:
    feed, seen = make_feed(db_dsn)
    await feed.start()
    await feed.wait_connected(DATABASE)
    seen.fail_next = True

    first = await new_key(store)
    second = await new_key(store)

    assert (await seen.next()).entity_id == first.id
    assert (await seen.next()).entity_id == second.id
    assert feed.connected


async def test_lost_connection_reconnects_and_catches_up(
    store: Store, db_dsn: str, pg_server: str, make_feed: MakeFeed
) -> None:
    clock = FakeClock()
    feed, seen = make_feed(db_dsn, clock=clock)
    await feed.start()
    await feed.wait_connected(DATABASE)
    key = await new_key(store)
    assert (await seen.next()).action == "create"

    async with cut_off(pg_server, db_dsn):
        await asyncio.wait_for(feed.wait_disconnected(), DATABASE)
        assert not feed.connected
        clock.now += 7.5
        assert feed.stale_for() == 7.5
        revoked = await store.revoke_key(key.id)  # announced while nobody listens
        assert feed.stale_for() == 7.5

    assert await seen.next() == Change(revoked.revision, "key", key.id, "revoke")
    assert seen.connected_at_delivery[-1] is False  # delivered by the catch-up, before "connected"
    await feed.wait_connected(DATABASE)
    assert feed.stale_for() == 0.0
    assert feed.revision == revoked.revision
    assert not seen.reset.is_set()

    deleted_before = await store.latest_revision()
    await store.delete_key(key.id)  # and notifications flow again
    assert (await seen.next()).revision > deleted_before


async def test_pruned_changes_make_the_feed_reset(
    store: Store, db_dsn: str, pg_server: str, make_feed: MakeFeed
) -> None:
    feed, seen = make_feed(db_dsn)
    await feed.start()
    await feed.wait_connected(DATABASE)
    key = await new_key(store)
    await seen.next()

    async with cut_off(pg_server, db_dsn):
        await asyncio.wait_for(feed.wait_disconnected(), DATABASE)
        revoked = await store.revoke_key(key.id)
        await store.prune_changes(revoked.revision)  # the revoke the feed needs is gone

    await asyncio.wait_for(seen.reset.wait(), DATABASE)
    await feed.wait_connected(DATABASE)
    assert seen.drain() == []
    assert feed.revision == revoked.revision
    renamed = await store.update_key(key.id, {"name": "after reset"})
    assert await seen.next() == Change(renamed.revision, "key", key.id, "update")


async def test_start_never_fails_without_a_server(make_feed: MakeFeed) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        port = sock.getsockname()[1]
        clock = FakeClock()
        feed, _ = make_feed(f"postgresql://postgres@127.0.0.1:{port}/postgres", clock=clock)

        await feed.start()
        with pytest.raises(StoreUnavailable, match="not connected") as caught:
            await feed.wait_connected(0.2)

    assert isinstance(caught.value.__cause__, OSError)
    assert not feed.connected
    clock.now += 3.0
    assert feed.stale_for() == 3.0
    await feed.stop()
    await feed.stop()  # idempotent


async def test_staleness_counts_from_the_last_catch_up_even_while_connected(
    db_dsn: str, make_feed: MakeFeed
) -> None:
    clock = FakeClock()
    feed, _ = make_feed(db_dsn, clock=clock, check_interval=1.0, probe_timeout=2.0)
    await feed.start()
    await feed.wait_connected(DATABASE)
    clock.now += 3.0  # the probe cadence: one check interval plus one probe timeout
    assert feed.stale_for() == 0.0
    clock.now += 0.5  # no catch-up has proved anything for longer than that
    assert feed.connected
    assert feed.stale_for() == 3.5


async def test_a_connection_gone_silent_is_noticed_and_counted_from_before_it(
    store: Store, db_dsn: str, make_feed: MakeFeed
) -> None:
    async with FaultRelay(db_dsn) as relay:
        feed, _ = make_feed(relay.dsn, check_interval=0.2, probe_timeout=0.3, connect_timeout=0.5)
        try:
            await feed.start()
            await feed.wait_connected(DATABASE)
            relay.freeze()  # a partition: nothing arrives, nothing is reset
            silent_since = time.monotonic()
            with pytest.raises(StoreUnavailable, match="catch-up failed"):
                await asyncio.wait_for(feed.sync(), DATABASE)  # bounded by the probe timeout, not a hang
            await asyncio.wait_for(feed.wait_disconnected(), DATABASE)
            assert feed.stale_for() >= time.monotonic() - silent_since  # not from when it was noticed
        finally:
            await feed.stop()


async def test_a_session_the_server_ended_fails_sync_closed_and_is_never_used_again(
    store: Store, db_dsn: str, make_feed: MakeFeed
) -> None:
    """What ``pg_ctl stop -m fast`` does to an idle session: a FATAL error, then (a moment later) the
    close. In that moment asyncpg refuses the next operation with InternalClientError; a catch-up for
    a request's sync hit it and it escaped as a 500 (issue 10)."""
    async with FaultRelay(db_dsn) as relay:
        feed, seen = make_feed(relay.dsn, check_interval=60.0)  # no probe: only the sync uses it
        await feed.start()
        await feed.wait_connected(DATABASE)
        relay.hold_eof()  # the close stays behind; the FATAL error gets through
        admin = await asyncpg.connect(db_dsn)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = 'signalgate-feed'"
            )
        finally:
            await admin.close()
        await relay.wait_for(lambda r: r.held_eofs == 1)
        for _ in range(3):  # the FATAL is in the feed's socket: let the loop read it before asking
            await asyncio.sleep(0)
        with pytest.raises(StoreUnavailable, match="catch-up failed"):
            await asyncio.wait_for(feed.sync(), DATABASE)
        assert not feed.connected and feed.stale_for() > 0  # discarded at once, and honest about it
        created = await new_key(store)
        relay.restore()
        await feed.wait_connected(DATABASE)  # a new session, caught up before it counts as connected
        await feed.sync()
        assert await seen.next() == Change(created.revision, "key", created.id, "create")


async def test_the_pruned_mark_and_the_changes_are_read_together(store: Store, db_dsn: str) -> None:
    first = await new_key(store)
    second = await new_key(store)
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await fetch_changes_checked(conn, 0) == (
            0,
            [
                Change(first.revision, "key", first.id, "create"),
                Change(second.revision, "key", second.id, "create"),
            ],
        )
        await store.prune_changes(first.revision)
        assert await fetch_changes_checked(conn, 0) == (
            first.revision,
            [Change(second.revision, "key", second.id, "create")],
        )
        assert await fetch_changes_checked(conn, second.revision) == (first.revision, [])
    finally:
        await conn.close()


async def test_a_long_backlog_is_read_page_by_page_without_losing_the_connection(
    db_dsn: str, make_feed: MakeFeed
) -> None:
    applied: list[int] = []

    def slow_consumer(change: Change) -> None:  # about 0.1 ms of work per change: ~2 s for the backlog
        applied.append(change.revision)
        until = time.perf_counter() + 0.0001
        while time.perf_counter() < until:
            pass

    feed = ChangeFeed(
        db_dsn, on_change=slow_consumer, on_reset=lambda: None, check_interval=0.5, probe_timeout=0.5
    )
    try:
        await feed.start()
        await feed.wait_connected(DATABASE)
        lost = asyncio.ensure_future(feed.wait_disconnected())
        conn = await asyncpg.connect(db_dsn)
        try:
            latest = await conn.fetchval(
                "WITH added AS (INSERT INTO changes (entity, entity_id, action)"
                " SELECT 'key', lpad(to_hex(n), 16, '0'), 'update' FROM generate_series(1, 20001) AS n"
                " RETURNING revision) SELECT max(revision) FROM added"
            )
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{latest}:key:x")
        finally:
            await conn.close()
        await asyncio.wait_for(feed.advanced(latest - 1), BACKLOG)
        assert not lost.done()  # every page answered within the probe timeout: still the same session
        assert len(applied) == 20001 and applied == sorted(applied)
        lost.cancel()
    finally:
        await feed.stop()


async def test_stop_ends_the_feed_even_when_a_wake_up_lands_with_the_cancellation(
    db_dsn: str, make_feed: MakeFeed
) -> None:
    """A stop signal that arrived with a notification left `signalgate demo` running forever: Python
    3.11's asyncio.wait_for swallows a cancellation that lands in the same loop turn as the awaited
    event, so the feed's loop went on and stop() waited on it for good."""
    feed, _ = make_feed(db_dsn, check_interval=30.0)
    await feed.start()
    await feed.wait_connected(DATABASE)
    await asyncio.sleep(0)  # the feed now waits for a wake-up or its check interval
    task = feed._task
    assert task is not None
    feed._wake.set()  # what a notification does, in the same loop turn as the cancellation
    task.cancel()  # what stop() does first
    done, _ = await asyncio.wait([task], timeout=5)
    assert task in done, "the feed's task went on after it was cancelled"
    await feed.stop()
    assert not feed.connected
