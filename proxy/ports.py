"""The proxy port, owned by one instance: bound once by the supervisor, and who holds it when it is taken.

Why one socket: workers used to bind the port each with SO_REUSEPORT, and so could anything else of the
same user, a second signalgate included; the kernel then spread connections over both instances, each
with its own keys. Now the supervisor binds and listens on one socket per address, without
SO_REUSEPORT, and hands it to its workers, which all accept from it (one accept queue). Nothing else can
bind the port while it is held, and a worker that stops leaves no queued connection behind: the others
take them. SO_REUSEADDR is set, so a restart does not wait for connections in TIME_WAIT.

Who holds it: the supervisor registers each bound address in a small JSON file in a per-user runtime
directory (``$XDG_RUNTIME_DIR/signalgate``, else ``<tmp>/signalgate-<uid>``, mode 0700): pid, process
start time and data dir. A start-up that finds the address in use names the live registered signalgate
on it; a registration whose process is gone (or whose pid now belongs to another process, by its start
time) is ignored and removed. A file rather than /proc/net/tcp and /proc/*/fd: the data dir is in no
table of the kernel, and a holder of another user cannot be looked into anyway.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from proxy.config.values import Listen
from proxy.core.errors import ConfigError, SignalgateError

__all__ = ["BACKLOG", "Holder", "bind", "cannot_listen", "holders", "registered", "runtime_dir", "why"]

log = logging.getLogger("signalgate.ports")

BACKLOG = 1024  # the listen backlog, shared by every worker accepting from the socket


def why(exc: OSError) -> str:
    """An OSError as a few words: its errno's text, without the path or call it repeats."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def cannot_listen(setting: str, where: object, exc: OSError, holder: str = "") -> ConfigError:
    """The one-line error for an address that cannot be bound (in use, or not this host's)."""
    return ConfigError(setting, str(where), f"cannot listen there: {why(exc)}{holder}")


# --------------------------------------------------------------------------------------------- binding


def bind(listen: Listen, environ: Mapping[str, str] = os.environ) -> tuple[int, list[socket.socket]]:
    """A concrete port for ``listen`` and the listening sockets holding it, one per address."""
    try:
        infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError("SIGNALGATE_LISTEN", str(listen), f"cannot resolve the host: {exc}") from exc
    addresses = list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos))
    for _ in range(20):  # port 0 on several addresses: the first one's free port may be taken on another
        port, held, host = listen.port, [], listen.host
        try:
            for family, sockaddr in addresses:
                host = str(sockaddr[0])
                sock = socket.socket(family, socket.SOCK_STREAM)
                held.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not REUSEPORT: no one joins
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio binds
                sock.bind((host, port, *sockaddr[2:]))
                sock.listen(BACKLOG)
                port = sock.getsockname()[1]
            return port, held
        except OSError as exc:
            for sock in held:
                sock.close()
            if listen.port != 0 or exc.errno != errno.EADDRINUSE:
                found = holders(host, listen.port, environ) if exc.errno == errno.EADDRINUSE else []
                held_by = f" (held by {found[0]})" if found else ""
                raise cannot_listen("SIGNALGATE_LISTEN", listen, exc, held_by) from exc
    raise SignalgateError(f"cannot find one free port on every address of {listen.host!r}")


# ----------------------------------------------------------------------------------------- registration


@dataclass(frozen=True, slots=True)
class Holder:
    """A registered signalgate holding an address."""

    pid: int
    data_dir: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"signalgate pid {self.pid}, data dir {self.data_dir}"


def runtime_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """This user's directory for registrations; None if there is no safe one."""
    base = environ.get("XDG_RUNTIME_DIR", "")
    path = Path(base) / "signalgate" if base and Path(base).is_dir() else None
    if path is None:
        path = Path(tempfile.gettempdir()) / f"signalgate-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        log.debug("no runtime directory for port registrations at %s: %s", path, why(exc))
        return None
    # Someone else's directory (or a link to one) in a shared /tmp: do not trust it, do not write there.
    if not path.is_dir() or path.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o022:
        log.debug("not using %s for port registrations: not a private directory of this user", path)
        return None
    return path


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22; the name in parentheses may hold spaces


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return started is None or _started(pid) in (None, started)


def _file(directory: Path, host: str, port: int) -> Path:
    return directory / f"listen-{port}-{host.replace(':', '_')}.json"


@contextlib.contextmanager
def registered(
    sockets: list[socket.socket], data_dir: Path, environ: Mapping[str, str] = os.environ
) -> Iterator[None]:
    """Register this process as the holder of ``sockets``' addresses while the block runs."""
    directory = runtime_dir(environ)
    written: list[Path] = []
    if directory is not None:
        pid = os.getpid()
        for sock in sockets:
            host, port = sock.getsockname()[:2]
            record = {"pid": pid, "started": _started(pid), "data_dir": str(data_dir.resolve())}
            path = _file(directory, host, port)
            try:
                temporary = path.with_suffix(f".{pid}.tmp")
                temporary.write_text(json.dumps({**record, "host": host, "port": port}))
                temporary.replace(path)
                written.append(path)
            except OSError as exc:
                log.debug("cannot register %s:%d in %s: %s", host, port, directory, why(exc))
    try:
        yield
    finally:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()


def holders(host: str, port: int, environ: Mapping[str, str] = os.environ) -> list[Holder]:
    """The live registered signalgates whose address conflicts with ``host``:``port``."""
    directory = runtime_dir(environ)
    if directory is None:
        return []
    found = []
    for path in sorted(directory.glob(f"listen-{port}-*.json")):
        try:
            record = json.loads(path.read_text())
            holder = Holder(
                int(record["pid"]), str(record["data_dir"]), str(record["host"]), int(record["port"])
            )
            started = record.get("started")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _alive(holder.pid, started):
            with contextlib.suppress(OSError):
                path.unlink()  # left by a process that was killed
            continue
        if holder.port == port and Listen(holder.host, port).overlaps(Listen(host, port)):
            found.append(holder)
    return found
