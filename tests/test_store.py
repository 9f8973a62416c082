"""The store against a real PostgreSQL: round trips, pages, errors, and the write protocol."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from proxy.core import keys
from proxy.core.errors import Conflict, NotFound, SignalgateError, StoreUnavailable, ValidationError
from proxy.core.model import ALLOW, KeyStatus
from proxy.core.trace import Trace
from proxy.db.changelog import CHANNEL, Change
from proxy.db.decisions import drop_expired, ensure_partitions, insert_rows, row
from proxy.db.errors import translate_errors
from proxy.db.store import Store
from tests.bounds import DATABASE
from tests.faultrelay import FaultRelay
from tests.pgtools import Listener, counts, dbname_of, eventually, new_key

T0 = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


async def test_create_and_get_round_trip(store: Store) -> None:
    key_id, _, digest = keys.generate()
    policy = {"routes": [{"methods": ["GET"], "path": "/v1/*"}], "networks": {"allow": ["10.0.0.0/8"]}}
    labels = {"env": "prod", "team": "ünïcode"}
    created = await store.create_key(
        key_id=key_id,
        name="deploy bot",
        owner="team-a",
        secret_hash=digest,
        policy=policy,
        labels=labels,
        not_before=T0,
        expires_at=T0 + timedelta(days=30),
    )

    assert created.id == key_id and created.status is KeyStatus.ACTIVE
    assert created.secret_hash == digest and isinstance(created.secret_hash, bytes)
    assert created.policy == policy and created.labels == labels
    assert created.not_before == T0 and created.expires_at == T0 + timedelta(days=30)
    assert created.created_at.tzinfo is not None and created.created_at == created.updated_at
    assert created.revision == await store.latest_revision() > 0
    assert await store.get_key(key_id) == created
    assert await store.get_key("0000000000000000") is None


async def test_update_changes_only_the_given_fields(store: Store) -> None:
    created = await new_key(store, labels={"a": "1"}, policy={"x": 1})

    updated = await store.update_key(
        created.id,
        {"name": "renamed", "labels": {"b": "2"}, "status": "suspended", "expires_at": T0},
    )

    assert (updated.name, updated.labels, updated.status, updated.expires_at) == (
        "renamed",
        {"b": "2"},
        KeyStatus.SUSPENDED,
        T0,
    )
    assert (updated.owner, updated.policy, updated.secret_hash) == (
        created.owner,
        {"x": 1},
        created.secret_hash,
    )
    assert updated.created_at == created.created_at and updated.updated_at >= created.updated_at
    assert updated.revision > created.revision
    assert await store.get_key(created.id) == updated
    cleared = await store.update_key(created.id, {"expires_at": None, "status": KeyStatus.ACTIVE})
    assert cleared.expires_at is None and cleared.status is KeyStatus.ACTIVE


BAD_UPDATES: list[tuple[dict[str, Any], str]] = [
    ({"secret_hash": b"x" * 32}, "secret_hash"),
    ({"id": "0000000000000000"}, "id"),
    ({}, "fields"),
    ({"status": "deleted"}, "status"),
    ({"labels": ["a"]}, "labels"),
    ({"expires_at": datetime(2030, 1, 1)}, "expires_at"),  # naive: ambiguous
    ({"name": 5}, "name"),
]


async def test_update_rejects_bad_fields(store: Store) -> None:
    created = await new_key(store)
    for fields, path in BAD_UPDATES:
        with pytest.raises(ValidationError) as caught:
            await store.update_key(created.id, fields)
        assert caught.value.path == path, fields
    assert await store.get_key(created.id) == created
    assert await store.latest_revision() == created.revision


async def test_revoke_and_delete(store: Store) -> None:
    created = await new_key(store)

    revoked = await store.revoke_key(created.id)
    assert revoked.status is KeyStatus.REVOKED and revoked.revision > created.revision

    # Revocation is final, enforced by the UPDATE itself (no read-then-write window).
    with pytest.raises(Conflict, match="revoked"):
        await store.update_key(created.id, {"status": KeyStatus.ACTIVE})
    assert (await store.get_key(created.id)).status is KeyStatus.REVOKED
    assert await store.latest_revision() == revoked.revision
    renamed = await store.update_key(created.id, {"name": "still revoked"})
    assert renamed.status is KeyStatus.REVOKED

    await store.delete_key(created.id)
    assert await store.get_key(created.id) is None


async def test_absent_key_is_not_found(store: Store, db_dsn: str) -> None:
    absent = "00000000000000aa"
    before = await counts(db_dsn)
    with pytest.raises(NotFound, match=absent):
        await store.update_key(absent, {"name": "x"})
    with pytest.raises(NotFound, match=absent):
        await store.revoke_key(absent)
    with pytest.raises(NotFound, match=absent):
        await store.delete_key(absent)
    assert await counts(db_dsn) == before


async def test_duplicate_id_is_a_conflict(store: Store) -> None:
    created = await new_key(store)
    with pytest.raises(Conflict) as caught:
        await new_key(store, created.id, name="other")
    assert isinstance(caught.value.__cause__, asyncpg.UniqueViolationError)
    assert await store.get_key(created.id) == created


async def test_id_and_hash_shape_are_checked_by_the_database(store: Store) -> None:
    with pytest.raises(ValidationError, match="api_keys_id_check"):
        await new_key(store, key_id="NOT-HEX")
    with pytest.raises(ValidationError, match="api_keys_secret_hash_check"):
        await new_key(store, secret_hash=b"short")


async def test_list_filters_and_pages_by_id(store: Store) -> None:
    made = [await new_key(store, owner="a" if i % 2 else "b") for i in range(7)]
    await store.update_key(made[1].id, {"status": "suspended"})
    await store.revoke_key(made[2].id)
    ids = sorted(k.id for k in made)

    assert [k.id for k in await store.list_keys()] == ids
    assert [k.id for k in await store.list_keys(owner="a")] == sorted(k.id for k in made if k.owner == "a")
    assert [k.id for k in await store.list_keys(status=KeyStatus.SUSPENDED)] == [made[1].id]
    assert [k.id for k in await store.list_keys(owner="b", status=KeyStatus.REVOKED)] == [made[2].id]
    assert await store.list_keys(owner="nobody") == []

    pages: list[list[str]] = []
    after: str | None = None
    while page := await store.list_keys(limit=3, after=after):
        pages.append([k.id for k in page])
        after = page[-1].id
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]
    active_a = sorted(made[i].id for i in (3, 5))  # made[1] is owner a but suspended
    first = await store.list_keys(owner="a", status=KeyStatus.ACTIVE, limit=1)
    second = await store.list_keys(owner="a", status=KeyStatus.ACTIVE, limit=1, after=first[0].id)
    assert [first[0].id, second[0].id] == active_a
    assert await store.list_keys(owner="a", status=KeyStatus.ACTIVE, after=active_a[-1]) == []

    with pytest.raises(ValidationError, match="limit"):
        await store.list_keys(limit=0)


async def test_every_write_records_a_change_and_notifies(store: Store, db_dsn: str) -> None:
    async with Listener(db_dsn) as listener:
        created = await new_key(store)
        updated = await store.update_key(created.id, {"name": "n2"})
        revoked = await store.revoke_key(created.id)
        await store.delete_key(created.id)

        payloads = [await listener.next() for _ in range(4)]
        await listener.marker()  # and nothing else was announced

    changes = await store.changes_since(0)
    assert [(c.entity, c.entity_id, c.action) for c in changes] == [
        ("key", created.id, action) for action in ("create", "update", "revoke", "delete")
    ]
    assert payloads == [f"{c.revision}:key:{created.id}" for c in changes]
    assert [c.revision for c in changes[:3]] == [created.revision, updated.revision, revoked.revision]
    assert await store.latest_revision() == changes[-1].revision
    assert await store.changes_since(changes[1].revision, limit=1) == [changes[2]]


async def test_failed_write_leaves_nothing_behind(store: Store, db_dsn: str) -> None:
    created = await new_key(store)
    before = await counts(db_dsn)
    async with Listener(db_dsn) as listener:
        # each fails after its change row was inserted and its NOTIFY queued
        with pytest.raises(Conflict):
            await new_key(store, created.id)
        with pytest.raises(ValidationError):
            await new_key(store, key_id="zz")
        with pytest.raises(NotFound):
            await store.revoke_key("0123456789abcdef")

        with pytest.raises(TimeoutError):  # silence for a moment, then proof by the marker
            await asyncio.wait_for(listener.queue.get(), 0.2)
        await listener.marker()
    assert await counts(db_dsn) == before
    assert await store.latest_revision() == created.revision


async def test_rolled_back_notify_is_never_delivered(store: Store, db_dsn: str) -> None:
    created = await new_key(store)
    async with Listener(db_dsn) as listener:
        conn = await asyncpg.connect(db_dsn)
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SELECT pg_notify($1, 'rolled-back')", CHANNEL)
            await tx.rollback()
        finally:
            await conn.close()
        revoked = await store.revoke_key(created.id)
        assert await listener.next() == f"{revoked.revision}:key:{created.id}"


async def test_concurrent_writes_commit_in_revision_order(store: Store, db_dsn: str) -> None:
    async with Listener(db_dsn) as listener:
        made = await asyncio.gather(*(new_key(store) for _ in range(20)))
        payloads = [await listener.next() for _ in range(20)]
    revisions = [int(p.split(":")[0]) for p in payloads]
    # notifications arrive in commit order; revisions taken under the lock make that ascending
    assert revisions == sorted(revisions) == sorted(k.revision for k in made)
    assert revisions == list(range(revisions[0], revisions[0] + 20))


async def test_settings(store: Store) -> None:
    assert await store.get_setting("admin.token_hash") is None
    assert await store.set_setting("admin.token_hash", "one", only_if_absent=True) is True
    assert await store.set_setting("admin.token_hash", "two", only_if_absent=True) is False
    assert await store.get_setting("admin.token_hash") == "one"
    assert await store.set_setting("admin.token_hash", "three") is True
    assert await store.get_setting("admin.token_hash") == "three"


async def test_prune_keeps_latest_revision(store: Store) -> None:
    first = await new_key(store)
    second = await store.revoke_key(first.id)
    assert await store.prune_changes(second.revision) == 2
    assert await store.changes_since(0) == []
    assert await store.latest_revision() == second.revision
    third = await store.update_key(first.id, {"name": "after prune"})
    assert await store.changes_since(0) == [Change(third.revision, "key", first.id, "update")]


# -- unreachable PostgreSQL ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        OSError("network down"),
        ConnectionRefusedError("refused"),
        ConnectionResetError("reset"),
        TimeoutError(),
        asyncpg.PostgresConnectionError("connection failure"),
        asyncpg.exceptions.ConnectionDoesNotExistError("closed in the middle"),
        asyncpg.InterfaceError("pool is closed"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction"),
    ],
    ids=type,
)
def test_every_driver_failure_becomes_store_unavailable(error: Exception) -> None:
    with pytest.raises(StoreUnavailable) as caught, translate_errors("probe"):
        raise error
    assert caught.value.__cause__ is error
    assert str(caught.value).startswith("probe: PostgreSQL")


def _asyncpg_exceptions() -> list[type[Exception]]:
    """Every exception class asyncpg defines (warnings aside: they are never raised)."""
    found: set[type[Exception]] = set()
    for module in (asyncpg.exceptions, asyncpg.exceptions._base):
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Exception)
                and not issubclass(value, Warning)
                and value.__module__.startswith("asyncpg")
            ):
                found.add(value)
    return sorted(found, key=lambda cls: cls.__qualname__)


@pytest.mark.parametrize("cls", _asyncpg_exceptions(), ids=lambda cls: cls.__qualname__)
def test_no_asyncpg_exception_leaves_the_store_untranslated(cls: type[Exception]) -> None:
    """The 500 of issue 10: asyncpg's InternalClientError (raised for a connection left broken by an
    unsolicited FATAL during ``pg_ctl stop -m fast``) passed through and became ``internal_error``."""
    error = cls("from the driver")
    with pytest.raises(SignalgateError) as caught, translate_errors("probe"):
        raise error
    assert caught.value.__cause__ is error


def test_our_own_errors_pass_through_untouched() -> None:
    with pytest.raises(NotFound), translate_errors("probe"):
        raise NotFound("x")


async def test_open_on_a_closed_port_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(StoreUnavailable) as caught:
            await Store.open(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=DATABASE)
    assert isinstance(caught.value.__cause__, OSError)


async def test_lost_database_makes_calls_unavailable(store: Store, db_dsn: str, pg_server: str) -> None:
    created = await new_key(store)
    name = dbname_of(db_dsn)
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        with pytest.raises(StoreUnavailable):
            await store.get_key(created.id)
        with pytest.raises(StoreUnavailable):
            await store.revoke_key(created.id)
        assert await store.ready() is False

        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert await store.get_key(created.id) == created  # the pool reconnects by itself
        assert await store.ready() is True
    finally:
        await admin.close()


async def _pool_backends(dsn: str) -> set[int]:
    """The backends serving a store's pool on this test's database."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'signalgate'"
        )
    finally:
        await conn.close()
    return {row["pid"] for row in rows}


@pytest.mark.parametrize("fault", ["freeze", "slow"])
async def test_an_operation_past_its_deadline_is_unavailable_and_its_connection_discarded(
    db_dsn: str, fault: str
) -> None:
    async with FaultRelay(db_dsn) as relay:
        store = await Store.open(relay.dsn, min_size=1, max_size=1, operation_timeout=0.3)
        try:
            created = await new_key(store)
            (before,) = await _pool_backends(db_dsn)
            if fault == "freeze":
                relay.freeze()
            else:
                relay.slow(1.0)  # every chunk a second late: slower than the deadline, not stopped
            for call in (store.get_key(created.id), store.revoke_key(created.id), store.key_directory()):
                with pytest.raises(StoreUnavailable, match=r"within 0\.3s"):
                    await asyncio.wait_for(call, DATABASE)  # bounded by the deadline: this only guards a hang
            relay.restore()
            for _ in range(10):  # a connect the slow relay was still delaying may cost one more deadline
                with contextlib.suppress(StoreUnavailable):
                    assert await store.get_key(created.id) == created  # the revoke never committed
                    break
            else:
                pytest.fail("the store did not recover")

            async def dropped() -> bool:  # its backend ends once the relay passes on the close
                return before not in await _pool_backends(db_dsn)

            await asyncio.wait_for(eventually(dropped), DATABASE)
        finally:
            relay.restore()
            await store.close()


async def test_a_connection_a_statement_error_leaves_healthy_stays_in_the_pool(db_dsn: str) -> None:
    store = await Store.open(db_dsn, min_size=1, max_size=1)
    try:
        key = await new_key(store)
        before = await _pool_backends(db_dsn)
        with pytest.raises(Conflict):
            await new_key(store, key.id)  # a unique violation: the server refused one statement
        with pytest.raises(NotFound):
            await store.revoke_key("0123456789abcdef")
        assert await _pool_backends(db_dsn) == before
    finally:
        await store.close()


async def test_closed_store_is_unavailable(db_dsn: str) -> None:
    closed = await Store.open(db_dsn)
    await closed.close()
    with pytest.raises(StoreUnavailable):
        await closed.get_key("0123456789abcdef")
    assert await closed.ready() is False


async def test_infinite_validity_bounds_read_back_as_aware_datetimes(store: Store, db_dsn: str) -> None:
    key = await new_key(store)  # rows written before the range check may hold +/-infinity
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute(
            "UPDATE api_keys SET not_before = '-infinity', expires_at = 'infinity' WHERE id = $1", key.id
        )
    finally:
        await conn.close()
    record = await store.get_key(key.id)
    assert record is not None and record.expires_at is not None and record.not_before is not None
    now = datetime.now(UTC)
    assert record.not_before < now < record.expires_at  # comparable with the clock: no TypeError


async def test_the_database_refuses_an_empty_validity_window(store: Store) -> None:
    key = await new_key(store)
    start = datetime(2030, 1, 1, tzinfo=UTC)
    await store.update_key(key.id, {"not_before": start})
    # As two concurrent PATCHes could leave it, each having checked the row it read before the other's
    with pytest.raises(ValidationError) as caught:
        await store.update_key(key.id, {"expires_at": start - timedelta(days=1)})
    assert caught.value.path == "expires_at" and "after not_before" in caught.value.reason
    record = await store.get_key(key.id)
    assert record is not None and record.expires_at is None  # nothing written


async def test_a_key_with_an_empty_window_from_before_the_check_can_still_be_revoked(
    store: Store, db_dsn: str
) -> None:
    key = await new_key(store)
    conn = await asyncpg.connect(db_dsn)
    try:  # as a row written before sql/002 could be; then the constraint exactly as sql/002 made it
        definition = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'api_keys_validity_window'"
        )
        await conn.execute("ALTER TABLE api_keys DROP CONSTRAINT api_keys_validity_window")
        await conn.execute(
            "UPDATE api_keys SET not_before = '2030-01-02', expires_at = '2030-01-01' WHERE id = $1", key.id
        )
        await conn.execute(f"ALTER TABLE api_keys ADD CONSTRAINT api_keys_validity_window {definition}")
    finally:
        await conn.close()
    revoked = await store.revoke_key(key.id)
    assert revoked.status is KeyStatus.REVOKED


# --- the decision log's partitions ----------------------------------------------------------------


async def test_partitions_are_made_for_the_days_written_and_dropped_after_retention(store: Store) -> None:
    def at(day: date) -> tuple[object, ...]:
        trace = Trace(f"r-{day.isoformat()}", "/p")
        trace.decision, trace.method, trace.status = ALLOW, "GET", 200
        trace.at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        return row(trace)

    today = date(2026, 12, 4)
    days = [today - timedelta(days=n) for n in (0, 1, 10, 40)]
    async with store.pool.acquire() as conn:
        await ensure_partitions(conn, days)
        await ensure_partitions(conn, days)  # again: nothing to do, no error
        rows = [at(day) for day in days]
        assert await insert_rows(conn, rows) == 4
        assert await insert_rows(conn, rows) == 0  # a batch written twice lands once
        dropped = await drop_expired(conn, 30, today)
        assert dropped == ["decisions_20261025"]  # 40 days old; 10 days is within 30
        left = await conn.fetch("SELECT request_id FROM decisions ORDER BY at")
    assert [r["request_id"] for r in left] == [f"r-{d.isoformat()}" for d in sorted(days)[1:]]
