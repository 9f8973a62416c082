"""The change feed: how a worker learns that a key changed, within milliseconds and without gaps.

Why LISTEN plus a table: NOTIFY is fast but lost while the connection is down, while the
``changes`` table is complete but must be polled. The feed keeps one dedicated connection LISTENing;
a notification only says "revision N exists", and the feed then reads every change above the last
one it applied from ``changes`` (the notification payload carries no action, and reading the table
also fills any gap). After a reconnect it catches up the same way *before* reporting itself
connected. If the changes it needs were pruned (``proxy.db.changelog.PRUNED_SETTING``), it calls
``on_reset`` so the caller drops its cache.

Freshness is measured, not assumed: a catch-up that succeeds proves every change committed before it
began is applied, and ``stale_for()`` counts from the last such proof. While listening, a catch-up
also runs every ``check_interval`` as a liveness probe with ``probe_timeout``; a connection that dies
without a word (a partition, a frozen host) is thus noticed by age within ``check_interval +
probe_timeout``, and its staleness counts from the last proof, not from when the failure was noticed.

A catch-up that fails or is cut short (by the probe timeout, or by its caller going away) discards
its connection there and then, under the lock that serialises catch-ups, so no other catch-up can
start on it: asyncpg refuses an operation on a connection whose last one broke off (after an
unsolicited FATAL from a server shutting down it raises ``InternalClientError``), and a query
abandoned by a timeout may still be running. ``sync`` turns every failure into ``StoreUnavailable``.

Every failure of the connection is retried with exponential backoff; ``start`` never fails.

``on_change`` may return an awaitable (a reload of what the change names, such as an issuer's keys):
the feed awaits it before counting the change as applied, so ``wait_applied`` means "enforced here".
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

from proxy.core.errors import StoreUnavailable
from proxy.db.changelog import (
    CHANNEL,
    MAX_PAGE,
    Change,
    fetch_changes_checked,
    fetch_latest_revision,
)
from proxy.db.errors import CONNECTION_ERRORS

__all__ = ["ChangeFeed"]

log = logging.getLogger("signalgate.feed")


def _retrieved(task: asyncio.Task[None]) -> None:
    """Mark a shared task's failure as seen: every caller may have given up on it (a deadline), and
    asyncio would then log it as an error nobody retrieved."""
    if not task.cancelled():
        task.exception()


class _Lost(Exception):
    """The listening connection went away."""


class ChangeFeed:
    """One LISTEN connection per worker process, delivering changes in revision order."""

    def __init__(
        self,
        dsn: str,
        *,
        on_change: Callable[[Change], Awaitable[None] | None],
        on_reset: Callable[[], None],
        load_revision: int = 0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        check_interval: float = 1.0,
        probe_timeout: float = 2.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._on_change = on_change
        self._on_reset = on_reset
        self._revision = load_revision
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._clock = clock
        self._check_interval = check_interval
        self._probe_timeout = probe_timeout
        self._grace = check_interval + probe_timeout  # the longest a healthy feed goes unproven
        self._connect_timeout = connect_timeout
        self._task: asyncio.Task[None] | None = None
        self._stopping = False  # stop() was asked: the connection ends on purpose, nothing to warn about
        self._connected = False
        self._proven_at = clock()  # when the last successful catch-up began (or the feed was made)
        self._was_up = False
        self._conn: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._down.set()
        self._last_error: BaseException | None = None
        self._catch_up_lock = asyncio.Lock()
        self._sync_asked = 0  # sync tickets handed out
        self._sync_done = 0  # every ticket up to this one is covered by a finished catch-up
        self._sync_task: asyncio.Task[None] | None = None
        self._advanced = asyncio.Event()  # set (and replaced) each time ``revision`` moves forward

    # -- public surface -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def revision(self) -> int:
        """The last revision applied."""
        return self._revision

    def stale_for(self) -> float:
        """0.0 while listening and recently caught up; else seconds since the last catch-up began."""
        age = self._clock() - self._proven_at
        return 0.0 if self._connected and age <= self._grace else max(0.0, age)

    async def start(self) -> None:
        """Start the background loop; it connects, listens, catches up and reconnects forever."""
        if self._task is not None:
            return
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="signalgate-change-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # A timeout parameter rather than asyncio.timeout at the caller: the failure is worth more as
    # StoreUnavailable chained to the last connection error than as a bare TimeoutError.
    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until listening and caught up; StoreUnavailable after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError as exc:
            raise StoreUnavailable(
                f"change feed not connected after {timeout:g}s (last error: {self._last_error!r})"
            ) from (self._last_error or exc)

    async def advanced(self, past: int) -> int:
        """Wait until ``revision`` is above ``past``; the new revision."""
        while self._revision <= past:
            await self._advanced.wait()
        return self._revision

    async def wait_applied(self, revision: int) -> None:
        """Wait until every change up to ``revision`` has been applied."""
        await self.advanced(revision - 1)

    async def sync(self) -> None:
        """Apply every change committed before this call; StoreUnavailable when not listening.

        Concurrent callers share catch-ups: each waits for one that *began* after it asked, so a
        flood of callers makes about one query per round trip, not one each.
        """
        self._sync_asked += 1
        ticket = self._sync_asked
        while self._sync_done < ticket:
            if self._sync_task is None:
                self._sync_task = asyncio.ensure_future(self._synced_catch_up())
                self._sync_task.add_done_callback(_retrieved)
            await asyncio.shield(self._sync_task)

    async def _synced_catch_up(self) -> None:
        covers = self._sync_asked
        try:
            conn = self._conn
            if conn is None or not self._connected:
                raise StoreUnavailable("change feed is not listening")
            try:
                await self._catch_up(conn)
            except (*CONNECTION_ERRORS, asyncpg.PostgresError, _Lost) as exc:
                raise StoreUnavailable(f"change feed catch-up failed: {type(exc).__name__}: {exc}") from exc
            except Exception as exc:  # a bug: logged, and the feed's answer is still "not proven"
                log.exception("change feed catch-up failed unexpectedly")
                raise StoreUnavailable(f"change feed catch-up failed: {type(exc).__name__}") from exc
            self._sync_done = max(self._sync_done, covers)
        finally:
            self._sync_task = None

    async def wait_disconnected(self) -> None:
        """Wait until the feed is not (or no longer) listening."""
        await self._down.wait()

    # -- the loop -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._backoff_initial
        try:
            while True:
                self._was_up = False
                try:
                    await self._session()
                except (*CONNECTION_ERRORS, asyncpg.PostgresError, _Lost) as exc:
                    self._failed(exc, quiet=delay > self._backoff_initial)
                except Exception as exc:  # a bug must not end the feed: log it and retry
                    log.exception("change feed failed unexpectedly")
                    self._failed(exc, quiet=True)
                if self._was_up:  # a session that got listening resets the backoff
                    delay = self._backoff_initial
                await asyncio.sleep(delay)  # backoff before reconnecting
                delay = min(delay * 2, self._backoff_max)
        finally:
            self._mark_down()

    async def _session(self) -> None:
        """One connection's life: connect, LISTEN, catch up, then follow notifications until lost."""
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            server_settings={"application_name": "signalgate-feed"},
        )
        self._conn = conn
        try:
            self._wake.clear()
            conn.add_termination_listener(self._on_terminated)
            await conn.add_listener(CHANNEL, self._on_notification)
            await self._catch_up(conn)
            self._mark_up()
            while True:
                # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation (feed.stop) that
                # arrives as the wait ends, and the loop would then run on forever
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._check_interval):
                        await self._wake.wait()
                self._wake.clear()
                if conn.is_closed():
                    raise _Lost("connection closed")
                await self._catch_up(conn)  # also the liveness probe: a dead peer fails or times out
        finally:
            self._conn = None
            self._mark_down()
            conn.terminate()

    async def _catch_up(self, conn: asyncpg.Connection) -> None:
        """Apply every change above ``revision``; reset first if some were pruned."""
        async with self._catch_up_lock:  # one query at a time on the connection, changes in order
            if conn.is_closed() or conn is not self._conn:
                raise _Lost("connection discarded by a failed catch-up")
            try:
                await self._catch_up_locked(conn)
            except BaseException:
                self._discard(conn)
                raise

    def _discard(self, conn: asyncpg.Connection) -> None:
        """Never use ``conn`` again: a catch-up on it failed or was cut short."""
        if conn is self._conn:
            self._conn = None
            self._mark_down()
        conn.terminate()
        self._wake.set()  # the session loop notices at once and reconnects

    async def _catch_up_locked(self, conn: asyncpg.Connection) -> None:
        before, began = self._revision, self._clock()
        try:
            await self._apply_all(conn)
            self._proven_at = began
        finally:
            if self._revision != before:
                self._advanced.set()
                self._advanced = asyncio.Event()

    async def _apply_all(self, conn: asyncpg.Connection) -> None:
        # Each round trip is bounded by the probe timeout, not the whole catch-up: a long backlog is read
        # page by page, and only a peer that stops answering is a lost connection.
        timeout = self._probe_timeout
        while True:
            async with asyncio.timeout(timeout):
                pruned, changes = await fetch_changes_checked(conn, self._revision, MAX_PAGE)
            if pruned > self._revision:
                async with asyncio.timeout(timeout):
                    latest = await fetch_latest_revision(conn)
                log.warning("changes up to %d were pruned, feed at %d: resetting", latest, self._revision)
                self._revision = latest
                try:
                    self._on_reset()
                except Exception:
                    log.exception("on_reset failed")
                continue
            for change in changes:
                await self._apply(change)
            if len(changes) < MAX_PAGE:
                return

    async def _apply(self, change: Change) -> None:
        if change.revision <= self._revision:
            return
        try:
            applying = self._on_change(change)
            if inspect.isawaitable(applying):
                async with asyncio.timeout(self._probe_timeout):
                    await applying
        except Exception:  # fail closed: what could not be applied selectively is dropped wholesale
            log.exception("on_change failed for revision %d; resetting", change.revision)
            self._on_reset()
        self._revision = change.revision

    # -- callbacks and state ------------------------------------------------------------------------

    def _on_notification(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            revision = int(payload.split(":", 1)[0])
        except ValueError:
            log.warning("ignoring malformed notification payload %r; catching up instead", payload)
            self._wake.set()
            return
        if revision > self._revision:
            self._wake.set()

    def _on_terminated(self, conn: object) -> None:
        if conn is self._conn:  # not a late callback from an earlier connection
            self._mark_down()
            self._wake.set()

    def _mark_up(self) -> None:
        self._connected = True
        self._was_up = True
        self._last_error = None
        self._down.clear()
        self._up.set()
        log.info("change feed listening at revision %d", self._revision)

    def _mark_down(self) -> None:
        if self._connected:
            if self._stopping:
                log.info("change feed stopped at revision %d", self._revision)
            else:
                log.warning("change feed lost its connection at revision %d", self._revision)
        self._connected = False
        self._up.clear()
        self._down.set()

    def _failed(self, exc: BaseException, *, quiet: bool) -> None:
        self._last_error = exc
        (log.debug if quiet else log.warning)("change feed cannot listen: %s: %s", type(exc).__name__, exc)
