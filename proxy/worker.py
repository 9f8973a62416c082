"""One worker process: a data plane (own key cache, own change feed, own listener) on the shared port.

Why processes: the hot path is CPU-bound Python, so one event loop per core is how signalgate scales on a
host. Every worker accepts from the listening socket the supervisor bound and handed it (``proxy.ports``):
one accept queue, taken from by whichever worker is free; each keeps its own LISTEN connection, so a
revocation reaches every cache by itself.

The supervisor (``proxy.supervisor``) starts ``run`` in a "spawn" child and talks to it over one
``multiprocessing`` pipe. The worker sends ``Listening`` once its listener is bound, then ``FeedState``
whenever its change feed connects or drops, and ``Applied`` whenever the feed has applied more changes
(no polling: it awaits the feed's own events). The supervisor sends ``SnapshotWanted`` when
``/metrics`` is scraped, and the worker answers with a ``Snapshot`` of its counts
(``proxy.dataplane.DataPlane.snapshot``); it sends a last one, unasked, when it has stopped serving.
End-of-file on the pipe means the supervisor is gone, and the worker then stops.

Signals: SIGTERM or SIGINT stop the worker gracefully. Its listener closes at once (new connections go to
the other workers or are refused), idle keep-alive connections are closed, and in-flight requests get
``DRAIN_TIMEOUT`` seconds to finish (``Listener.shutdown``: busy connections close after their answer,
requests still running after that are cancelled), then the worker exits 0. SIGHUP reloads the GeoIP
database if its file changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from proxy.config.settings import Settings
from proxy.core.errors import SignalgateError
from proxy.db.feed import ChangeFeed
from proxy.geoip import GeoIP

__all__ = ["DRAIN_TIMEOUT", "Applied", "FeedState", "Listening", "Snapshot", "SnapshotWanted", "run"]

log = logging.getLogger("signalgate.worker")

DRAIN_TIMEOUT = 10.0  # seconds in-flight requests may run on after a stop signal


@dataclass(frozen=True, slots=True)
class Listening:
    """Sent once: the worker's listener is bound and accepting."""

    url: str


@dataclass(frozen=True, slots=True)
class Applied:
    """Sent whenever the worker's change feed has applied changes up to ``revision``."""

    revision: int


@dataclass(frozen=True, slots=True)
class FeedState:
    """Sent whenever the worker's change feed becomes connected (and caught up) or loses it."""

    connected: bool


@dataclass(frozen=True, slots=True)
class SnapshotWanted:
    """Sent by the supervisor: answer with a ``Snapshot`` carrying ``seq``."""

    seq: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The worker's counts for the metrics (``proxy.metrics``); ``seq`` -1 for the last, unasked."""

    seq: int
    data: dict[str, Any]


def run(settings: Settings, dsn: str, index: int, conn: Connection, sockets: Sequence[socket.socket]) -> None:
    """The process target: logging and uvloop as the CLI sets them up, then serve until told to stop.

    ``sockets`` arrive as descriptors passed to this process at spawn; nothing it starts inherits them."""
    from proxy.logs import configure_logging

    configure_logging(settings.log_level, sys.stdout, sys.stderr)
    install_uvloop()
    for sock in sockets:
        sock.set_inheritable(False)
    try:
        asyncio.run(_serve(settings, dsn, index, conn, sockets))
    except SignalgateError as exc:
        log.error("worker %d (pid %d) cannot serve: %s", index, os.getpid(), exc)
        raise SystemExit(1) from None
    except Exception:
        log.exception("worker %d (pid %d) failed", index, os.getpid())
        raise SystemExit(1) from None
    finally:
        conn.close()


async def _serve(
    settings: Settings, dsn: str, index: int, conn: Connection, sockets: Sequence[socket.socket]
) -> None:
    from proxy.dataplane import data_plane

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    geoip: list[GeoIP] = []  # filled once the data plane has opened it
    reloads: set[asyncio.Task[None]] = set()

    async def reload(database: GeoIP) -> None:
        try:
            changed = await asyncio.to_thread(database.reload_if_changed)
        except Exception:
            log.exception("worker %d: SIGHUP: GeoIP reload failed, keeping the loaded database", index)
            return
        log.info("worker %d: SIGHUP: GeoIP database %s", index, "reloaded" if changed else "unchanged")

    def reload_geoip() -> None:
        if not geoip:
            log.info("worker %d: SIGHUP: no GeoIP database to reload", index)
            return
        task = asyncio.create_task(reload(geoip[0]))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    snapshot: list[Callable[[], dict[str, Any]]] = []  # filled once the data plane exists

    def from_supervisor() -> None:
        try:
            while conn.poll():
                message = conn.recv()
                if isinstance(message, SnapshotWanted):
                    _send(conn, Snapshot(message.seq, snapshot[0]() if snapshot else {}))
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            log.warning("worker %d: supervisor gone, stopping", index)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_geoip)
    loop.add_reader(conn.fileno(), from_supervisor)
    try:
        async with data_plane(
            settings,
            dsn,
            sockets=sockets,
            shutdown_timeout=DRAIN_TIMEOUT,
            workers=settings.workers,
            name=f"worker-{index}",
        ) as data:
            snapshot.append(data.snapshot)
            if data.geoip is not None:
                geoip.append(data.geoip)
            _send(conn, Listening(data.proxy_url))
            log.info("worker %d (pid %d) listening on %s", index, os.getpid(), data.proxy_url)
            reporters = [
                asyncio.create_task(_report_feed(data.feed, conn), name="signalgate-feed-report"),
                asyncio.create_task(_report_applied(data.feed, conn), name="signalgate-applied-report"),
            ]
            try:
                await stop.wait()
            finally:
                for reporter in reporters:
                    reporter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reporter
            log.info(
                "worker %d (pid %d) draining: listener closing, in-flight requests get up to %gs",
                index,
                os.getpid(),
                DRAIN_TIMEOUT,
            )
        _send(conn, Snapshot(-1, data.snapshot()))  # what it counted up to the end
        log.info("worker %d (pid %d) stopped", index, os.getpid())
    finally:
        with contextlib.suppress(ValueError, OSError):  # the pipe may be closed already
            loop.remove_reader(conn.fileno())
        for task in list(reloads):
            with contextlib.suppress(Exception):
                await task


async def _report_feed(feed: ChangeFeed, conn: Connection) -> None:
    """Tell the supervisor about every change of the feed's state, awaiting the feed's own events."""
    while True:
        while not feed.connected:
            with contextlib.suppress(SignalgateError):  # StoreUnavailable: not yet; keep waiting
                await feed.wait_connected(60.0)
        _send(conn, FeedState(True))
        await feed.wait_disconnected()
        _send(conn, FeedState(False))


async def _report_applied(feed: ChangeFeed, conn: Connection) -> None:
    """Tell the supervisor how far the feed has applied, so admin writes can wait for every worker."""
    revision = feed.revision
    _send(conn, Applied(revision))
    while True:
        revision = await feed.advanced(revision)
        _send(conn, Applied(revision))


def _send(conn: Connection, message: Listening | FeedState | Applied | Snapshot) -> None:
    try:
        conn.send(message)
    except OSError:  # the supervisor is gone; its end-of-file stops this worker
        log.debug("cannot report %r: supervisor gone", message)


def install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
