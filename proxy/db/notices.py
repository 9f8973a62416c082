"""LISTEN on a few PostgreSQL channels and call back with each payload, reconnecting forever.

asyncpg shell for the control plane's JWKS fetcher (``proxy.jwks``): it hears refresh requests from
workers (``proxy.db.issuers.REFRESH_CHANNEL``) and issuer changes (``proxy.db.changelog.CHANNEL``).
A notification lost while disconnected is not replayed here: the fetcher rescans its issuers after
every (re)connect (``on_connect``) and on a timer, so a missed one delays, never loses, a fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Mapping

import asyncpg

from proxy.db.errors import CONNECTION_ERRORS

__all__ = ["Notices"]

log = logging.getLogger("signalgate.notices")

PROBE_INTERVAL = 30.0  # seconds between liveness probes of the listening connection


class Notices:
    def __init__(
        self,
        dsn: str,
        channels: Mapping[str, Callable[[str], None]],
        *,
        on_connect: Callable[[], None] = lambda: None,
        backoff: tuple[float, float] = (0.05, 2.0),
        connect_timeout: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._channels = dict(channels)
        self._on_connect = on_connect
        self._backoff = backoff
        self._connect_timeout = connect_timeout
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="signalgate-notices")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay = self._backoff[0]
        while True:
            lost = asyncio.Event()
            conn = None
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self._connect_timeout,
                    server_settings={"application_name": "signalgate-notices"},
                )
                conn.add_termination_listener(functools.partial(_set, lost))
                for channel, callback in self._channels.items():
                    await conn.add_listener(channel, _listener(callback))
                self.connected.set()
                delay = self._backoff[0]
                self._on_connect()
                while not lost.is_set():  # a probe now and then: a silent partition is noticed too
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(PROBE_INTERVAL):
                            await lost.wait()
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=self._connect_timeout)
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                log.debug("notices: cannot listen: %s: %s", type(exc).__name__, exc)
            finally:
                self.connected.clear()
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])


def _set(event: asyncio.Event, conn: object) -> None:
    event.set()


def _listener(callback: Callable[[str], None]) -> Callable[[object, int, str, str], None]:
    def heard(conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            callback(payload)
        except Exception:
            log.exception("handling a notification on %s failed", channel)

    return heard
