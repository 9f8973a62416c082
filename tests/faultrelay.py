"""A fault-injection TCP relay between signalgate and PostgreSQL.

Point signalgate's ``database_url`` at ``relay.dsn`` and the relay passes bytes both ways until told to
misbehave, as the network or the server would:

- ``freeze()``: nothing passes in either direction and nothing is closed, on open connections and on
  new ones (which are accepted, as the kernel accepts them for a server stopped with SIGSTOP); a hung
  VM, a stalled disk, a partition. ``thaw()`` lets what was held flow again.
- ``drop()``: every open connection is closed and new ones are closed as soon as they are accepted; a
  stopped server. ``restore()`` ends it (and any other fault).
- ``slow(delay)``: every chunk waits ``delay`` seconds before it is passed on.
- ``reset()``: every open connection is aborted with a TCP reset; new connections pass.
- ``hold_eof()``: bytes pass, but the server's close is not passed on to the client until ``restore()``:
  the client sees what the server said last (a FATAL error, say) on a socket that still looks open,
  as it does for a moment while PostgreSQL shuts down.

It counts what it did, so a test can await a state instead of sleeping: ``held_eofs`` is how many
server closes are being held back, ``accepted`` how many connections came in.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from urllib.parse import urlsplit, urlunsplit

__all__ = ["FaultRelay"]

_CHUNK = 65536
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with a reset


class _Link:
    """One relayed connection: the client's socket and the server's."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server

    def close(self, *, reset: bool = False) -> None:
        for writer in (self.client, self.server):
            if reset:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                writer.transport.abort()
            else:
                writer.close()


class FaultRelay:
    """``async with FaultRelay(dsn) as relay``: ``relay.dsn`` reaches the server of ``dsn`` through it."""

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        self._parts = parts
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._eof_released = asyncio.Event()
        self._eof_released.set()
        self._dropping = False
        self._delay = 0.0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()
        self.accepted = 0
        self.held_eofs = 0
        self.dsn = ""

    async def __aenter__(self) -> FaultRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        credentials = self._parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
        self.dsn = urlunsplit(self._parts._replace(netloc=netloc))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.restore()
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close(reset=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- faults ------------------------------------------------------------------------------------

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def drop(self) -> None:
        self._dropping = True
        for link in list(self._links):
            link.close()

    def slow(self, delay: float) -> None:
        self._delay = delay

    def reset(self) -> None:
        for link in list(self._links):
            link.close(reset=True)

    def hold_eof(self) -> None:
        self._eof_released.clear()

    def restore(self) -> None:
        """Back to passing everything promptly."""
        self._dropping = False
        self._delay = 0.0
        self._flowing.set()
        self._eof_released.set()

    async def wait_for(self, predicate: object) -> None:
        """Wait until ``predicate(self)`` is true; it is checked whenever the relay's counters change."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self))  # type: ignore[operator]

    # -- relaying ----------------------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await self._notify()
        if self._dropping:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, from_server=False)),
            asyncio.create_task(self._pump(up_reader, writer, from_server=True)),
        ]
        for task in pumps:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._links.discard(link)
            link.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, from_server: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while True:
                await (
                    self._flowing.wait()
                )  # frozen: read nothing, so the kernel's buffers fill as for a stopped peer
                data = await source.read(_CHUNK)
                if self._delay:
                    await asyncio.sleep(self._delay)
                await self._flowing.wait()
                if not data:
                    break
                sink.write(data)
                await sink.drain()
            if from_server and not self._eof_released.is_set():
                self.held_eofs += 1
                await self._notify()
                try:
                    await self._eof_released.wait()
                finally:
                    self.held_eofs -= 1
        sink.close()
