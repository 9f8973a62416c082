"""The supervisor: what ``signalgate serve`` runs. One control plane, N worker processes on one port.

Why a supervisor: the proxy scales by processes (``proxy.worker``), and someone must own what exists
once per instance (PostgreSQL, migrations, the admin token, the admin API), keep N workers alive, and
stop them in order. It is event-driven: it learns that a worker exited from the process sentinel and
what a worker reports from its pipe, both through ``loop.add_reader``; it never polls.

- Port: the supervisor binds and listens on the proxy port itself, first of all (``proxy.ports``: one
  socket per address, SO_REUSEADDR and no SO_REUSEPORT, so no other process can join it; port 0
  becomes one concrete free port), and hands the listening sockets to every worker it spawns,
  restarts included: the workers accept from one shared queue. A port in use stops start-up at once,
  naming the signalgate that holds it when it is one. The supervisor never accepts; connections made
  before the first worker listens wait in the queue. It closes its copy first when stopping, so the
  port refuses new connections as soon as the workers have closed theirs.
- Restarts: a worker that exits while the supervisor is not stopping is replaced after a backoff
  (``RESTART_MIN`` doubling to ``RESTART_MAX``; reset once a worker has run ``STABLE_AFTER`` seconds),
  so a crash loop costs little. A worker that fails before its first ``Listening`` at start-up is fatal
  instead: a bad certificate or an unbindable port will not fix itself.
- Metrics: ``/metrics`` asks every listening worker for a snapshot of its counts over its pipe and
  renders their sum (``proxy.metrics``); a worker that does not answer within ``SNAPSHOT_TIMEOUT``
  contributes its last snapshot.
- Readiness: ``/readyz`` is ready when the store is, and every one of the N workers is listening and
  reports its change feed connected.
- Signals: the caller (the CLI) owns the handlers, from before start-up until the control plane has
  stopped; it decides when to stop, and forwards SIGHUP here (``forward``) for the workers, which reload
  the GeoIP database. On exit, workers get SIGTERM and ``worker.DRAIN_TIMEOUT`` + ``STOP_GRACE``
  seconds to drain before SIGKILL; then the admin API and the control plane stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from proxy import ports, worker
from proxy.config.settings import Settings
from proxy.controlplane import control_plane, start_admin
from proxy.core.errors import SignalgateError
from proxy.metrics import Metrics
from proxy.observe import control_snapshot

__all__ = [
    "RESTART_MAX",
    "RESTART_MIN",
    "STABLE_AFTER",
    "STARTUP_TIMEOUT",
    "STOP_GRACE",
    "Supervisor",
    "supervised",
]

log = logging.getLogger("signalgate.supervisor")

RESTART_MIN = 0.5  # seconds before replacing a worker that died
RESTART_MAX = 30.0
STABLE_AFTER = 30.0  # a worker that ran this long resets its slot's backoff
STARTUP_TIMEOUT = 60.0  # for every worker to be listening at start-up
STOP_GRACE = 5.0  # beyond worker.DRAIN_TIMEOUT, before SIGKILL
SNAPSHOT_TIMEOUT = 2.0  # seconds a scrape waits for the workers' counts


@dataclass(eq=False)
class _Slot:
    """One worker position: the process in it now, what it reported, and its restart backoff."""

    index: int
    process: BaseProcess | None = None
    conn: Connection | None = None
    started_at: float = 0.0
    listening: bool = False
    feed_connected: bool = False
    applied: int = 0  # the change-feed revision this worker enforces
    quick_deaths: int = 0
    restart: asyncio.TimerHandle | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    snapshot: asyncio.Future[None] | None = None  # a scrape waiting for this worker's counts

    @property
    def ready(self) -> bool:
        return self.listening and self.feed_connected


class Supervisor:
    """Starts, watches, replaces and stops the worker processes of one instance."""

    def __init__(self, settings: Settings, dsn: str, sockets: list[socket.socket]) -> None:
        self.settings = settings  # listen holds the concrete port the sockets are bound to
        self._dsn = dsn
        self._sockets = sockets  # listening, shared by the workers
        self._context = multiprocessing.get_context("spawn")
        self._loop = asyncio.get_running_loop()
        self._slots = [_Slot(i) for i in range(settings.workers)]
        self._stopping = False
        self._started: asyncio.Future[str] = self._loop.create_future()
        self.proxy_url = ""
        self.admin_url = ""
        self.generated_admin_token: str | None = None
        self._advanced = asyncio.Event()  # set (and replaced) when any worker reports a new revision
        self.metrics = Metrics()
        self.control_counts: Callable[[], dict[str, Any]] | None = None  # the control plane's own
        self._scrapes = 0

    # -- what the CLI and /readyz see ---------------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots if slot.process is not None and slot.process.pid]

    def workers(self) -> bool:
        """The readiness check: every worker listening with its change feed connected."""
        return not self._stopping and all(slot.ready for slot in self._slots)

    async def wait_applied(self, revision: int) -> None:
        """Return once every running worker enforces ``revision`` (a replacement starts past it)."""
        while any(slot.process is not None and slot.applied < revision for slot in self._slots):
            await self._advanced.wait()

    async def metrics_page(self) -> bytes:
        """The metrics page, with fresh counts from every worker that answers in time."""
        self._scrapes += 1
        waits = []
        for slot in self._slots:
            if slot.process is not None and slot.conn is not None and slot.listening:
                if slot.snapshot is None or slot.snapshot.done():
                    slot.snapshot = self._loop.create_future()
                    try:
                        slot.conn.send(worker.SnapshotWanted(self._scrapes))
                    except OSError:
                        slot.snapshot.set_result(None)
                waits.append(slot.snapshot)
        if waits:
            await asyncio.wait(waits, timeout=SNAPSHOT_TIMEOUT)
        if self.control_counts is not None:
            self.metrics.update("control", self.control_counts())
        return self.metrics.render()

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker; return once all are listening. A worker failing first is fatal."""
        for slot in self._slots:
            self._spawn(slot)
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                self.proxy_url = await asyncio.shield(self._started)
        except TimeoutError:
            raise SignalgateError(f"workers not listening after {STARTUP_TIMEOUT:g}s") from None

    def forward(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every worker that has its handlers installed (it reported Listening)."""
        if self._stopping:  # the workers are draining; they may be past their handlers
            log.info("%s while stopping: not forwarded to the workers", sig.name)
            return
        for slot in self._slots:
            if slot.process is not None and slot.listening and slot.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid or 0, sig)

    async def stop(self) -> None:
        """SIGTERM every worker, wait for them to drain, SIGKILL the ones that do not."""
        self._stopping = True
        for sock in self._sockets:  # the port refuses connections once the workers close theirs
            sock.close()
        running = []
        for slot in self._slots:
            if slot.restart is not None:
                slot.restart.cancel()
                slot.restart = None
            if slot.process is not None:
                running.append(slot)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid or 0, signal.SIGTERM)
        if not running:
            return
        log.info("stopping %d workers (drain up to %gs)", len(running), worker.DRAIN_TIMEOUT)
        waits = [asyncio.ensure_future(slot.exited.wait()) for slot in running]
        _, late = await asyncio.wait(waits, timeout=worker.DRAIN_TIMEOUT + STOP_GRACE)
        for slot in running:
            if slot.process is not None and not slot.exited.is_set():
                log.warning(
                    "worker %d (pid %s) did not stop in time: killing it", slot.index, slot.process.pid
                )
                slot.process.kill()
        if late:
            await asyncio.wait(late, timeout=STOP_GRACE)
        for task in waits:
            task.cancel()

    # -- one worker ---------------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        slot.restart = None
        if self._stopping:
            return
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker.run,
            args=(self.settings, self._dsn, slot.index, theirs, self._sockets),
            name=f"signalgate-worker-{slot.index}",
            daemon=False,
        )
        try:
            process.start()
        except OSError as exc:  # out of processes or descriptors: try again later, like a crash
            ours.close()
            theirs.close()
            if not self._started.done():
                raise SignalgateError(f"cannot start worker {slot.index}: {exc}") from exc
            self._replace_later(slot, f"could not be started ({exc})")
            return
        theirs.close()  # only the worker holds its end now: its death is our end-of-file, and ours its
        slot.process, slot.conn = process, ours
        slot.started_at = time.monotonic()
        slot.listening = slot.feed_connected = False
        slot.applied = 0
        slot.exited.clear()
        self._loop.add_reader(process.sentinel, self._on_exit, slot, process)
        self._loop.add_reader(ours.fileno(), self._on_message, slot, ours)
        log.info("worker %d started (pid %d)", slot.index, process.pid)

    def _on_message(self, slot: _Slot, conn: Connection) -> None:
        try:
            while conn.poll():
                message = conn.recv()
                if isinstance(message, worker.Listening):
                    slot.listening = True
                    self._maybe_started(message.url)
                elif isinstance(message, worker.Applied):
                    slot.applied = message.revision
                    self._advanced.set()
                    self._advanced = asyncio.Event()
                elif isinstance(message, worker.Snapshot):
                    self.metrics.update(str(slot.index), message.data)
                    if slot.snapshot is not None and not slot.snapshot.done():
                        slot.snapshot.set_result(None)
                elif isinstance(message, worker.FeedState):
                    slot.feed_connected = message.connected
                    if message.connected:
                        log.info("worker %d: change feed connected", slot.index)
                    else:
                        log.warning("worker %d: change feed disconnected", slot.index)
        except (EOFError, OSError):
            self._loop.remove_reader(conn.fileno())

    def _maybe_started(self, url: str) -> None:
        if not self._started.done() and all(slot.listening for slot in self._slots):
            self._started.set_result(url)

    def _on_exit(self, slot: _Slot, process: BaseProcess) -> None:
        self._loop.remove_reader(process.sentinel)
        process.join(1.0)  # the sentinel fires as it exits; reaping it takes no longer than that
        code, pid = process.exitcode, process.pid
        if slot.conn is not None:
            self._on_message(slot, slot.conn)  # what it sent last (its final counts) before it went
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(slot.conn.fileno())
            slot.conn.close()
        self.metrics.retire(str(slot.index))
        if slot.snapshot is not None and not slot.snapshot.done():
            slot.snapshot.set_result(None)
        was_listening = slot.listening
        slot.process, slot.conn = None, None
        slot.listening = slot.feed_connected = False
        self._advanced.set()  # a waiter no longer waits for this one
        self._advanced = asyncio.Event()
        with contextlib.suppress(ValueError):
            process.close()
        slot.exited.set()
        how = _exit_text(code)
        if self._stopping:
            (log.info if code == 0 else log.warning)("worker %d (pid %s) exited (%s)", slot.index, pid, how)
            return
        if not self._started.done():
            self._started.set_exception(
                SignalgateError(f"worker {slot.index} failed to start ({how}); see its log above")
            )
            return
        if time.monotonic() - slot.started_at >= STABLE_AFTER:
            slot.quick_deaths = 0
        before = "" if was_listening else " before listening"
        self._replace_later(slot, f"(pid {pid}) exited unexpectedly ({how}){before}")

    def _replace_later(self, slot: _Slot, what: str) -> None:
        delay = min(RESTART_MIN * 2**slot.quick_deaths, RESTART_MAX)
        slot.quick_deaths += 1
        log.error("worker %d %s; replacing it in %.1fs", slot.index, what, delay)
        slot.restart = self._loop.call_later(delay, self._spawn, slot)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@contextlib.asynccontextmanager
async def supervised(
    settings: Settings, created: Callable[[Supervisor], None] = lambda supervisor: None
) -> AsyncIterator[Supervisor]:
    """The control plane, the admin API and ``settings.workers`` workers, all listening; stop on exit.

    ``created`` gets the supervisor as soon as it exists, before its workers start (to forward signals).
    """
    async with contextlib.AsyncExitStack() as stack:
        # The port first: a second instance on it stops before it touches the database.
        port, sockets = ports.bind(settings.listen)
        for sock in sockets:
            stack.callback(sock.close)
        stack.enter_context(ports.registered(sockets, settings.data_dir))
        control = await stack.enter_async_context(control_plane(settings))
        # Workers get the concrete port, and not the admin token: they have no use for it.
        for_workers = replace(settings, listen=replace(settings.listen, port=port), admin_token=None)
        supervisor = Supervisor(for_workers, control.dsn, sockets)
        supervisor.generated_admin_token = control.generated_admin_token
        supervisor.control_counts = functools.partial(control_snapshot, control.refresher)
        created(supervisor)
        supervisor.admin_url = await start_admin(
            stack, settings, control, [supervisor.workers], supervisor.wait_applied, supervisor.metrics_page
        )
        stack.push_async_callback(supervisor.stop)  # before the admin API and the database stop
        await supervisor.start()
        log.info(
            "proxy listening on %s (%d workers), admin API on %s",
            supervisor.proxy_url,
            settings.workers,
            supervisor.admin_url,
        )
        yield supervisor
