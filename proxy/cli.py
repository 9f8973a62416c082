"""The ``signalgate`` command: serve, demo, migrate, config, the operators' ``keys``, ``issuers``,
``jobs``, ``decisions``, ``explain`` and ``candidate`` commands, and ``bench``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from proxy import version
from proxy.core.errors import ConfigError, SignalgateError, StartupTimeout
from proxy.logs import configure_logging
from proxy.worker import install_uvloop

if TYPE_CHECKING:
    from proxy.config.settings import Settings
    from proxy.geoip import GeoIP

__all__ = ["main"]

log = logging.getLogger("signalgate")

T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signalgate", description="Signal-driven authorization proxy.")
    parser.add_argument("--version", action="version", version=f"signalgate {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "run the proxy and the admin API"),
        ("demo", "run with the built-in demo upstream and print a demo key with curl lines"),
        ("migrate", "apply pending database migrations and exit"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", type=Path, help="TOML settings file (default: $SIGNALGATE_CONFIG)")
        if name == "serve":
            sub.add_argument(
                "--workers",
                type=_worker_count,
                metavar="N",
                help="proxy worker processes sharing the port (default: $SIGNALGATE_WORKERS, else CPU count)",
            )
    config = commands.add_parser("config", help="the configuration file")
    config.add_subparsers(dest="config_command", required=True).add_parser(
        "example", help="print the commented default configuration (every setting, its default, its variable)"
    )
    commands.add_parser("keys", help="manage API keys through the admin API", add_help=False)
    commands.add_parser("issuers", help="manage attestation issuers through the admin API", add_help=False)
    commands.add_parser("jobs", help="manage jobs, whose keys live only while they are open", add_help=False)
    commands.add_parser("bench", help="load-test locally, or a deployment with --target", add_help=False)
    commands.add_parser("decisions", help="read the decision log (tail [--follow])", add_help=False)
    commands.add_parser("explain", help="explain the decision on a described request", add_help=False)
    commands.add_parser("candidate", help="a key's candidate (dry-run) policy", add_help=False)
    return parser


EXAMPLE_CONFIG = "signalgate.toml"  # in config/, shipped in the wheel as the package proxy.examples


def example_config() -> str:
    """The commented default configuration, as shipped (config/signalgate.toml)."""
    return files("proxy.examples").joinpath(EXAMPLE_CONFIG).read_text(encoding="utf-8")


def _worker_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"must be 1-256, got {text!r}")
    return int(text)


class _Signals:
    """The command's signal handlers, installed before start-up and removed once everything stopped.

    SIGINT and SIGTERM set ``stop``. SIGHUP calls ``on_hangup`` once there is one (``serve``: the
    supervisor, which has the workers reload GeoIP; ``demo``: its GeoIP database) and is logged and
    ignored otherwise. Left to its default action, SIGHUP would end the process at once and leave the
    embedded PostgreSQL running with nobody to stop it.
    """

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.received: signal.Signals | None = None  # the first stop signal
        self.on_hangup: Callable[[], None] | None = None
        self._loop = asyncio.get_running_loop()

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, self._stopping, sig)
        self._loop.add_signal_handler(signal.SIGHUP, self._hangup)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._loop.remove_signal_handler(sig)

    def _stopping(self, sig: signal.Signals) -> None:
        if self.received is None:
            self.received = sig
        self.stop.set()

    def _hangup(self) -> None:
        if self.on_hangup is None:
            log.info("SIGHUP: nothing to reload now, ignored")
        else:
            self.on_hangup()


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """``work``'s result; or None if ``stop`` is set first, once ``work`` has been cancelled and ended."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def _reload_geoip(geoip: GeoIP | None) -> None:
    if geoip is None:
        log.info("SIGHUP: no GeoIP database to reload")
    else:
        log.info("SIGHUP: GeoIP database %s", "reloaded" if geoip.reload_if_changed() else "unchanged")


ADMIN_TOKEN_FILE = "admin-token"  # in the data dir, mode 0600, when the token cannot be shown on a terminal


def _announce_token(err: TextIO, settings: Settings, token: str | None) -> None:
    """Say where the admin token is: a new one is shown once on a terminal, else written to a file
    (under systemd or docker standard error ends up in a journal); an older one is only referred to."""
    if token is None:
        if settings.admin_token is None:
            err.write(
                "signalgate: the admin API takes the admin token created when this database was first served"
                " (only its hash is kept); lost it? set SIGNALGATE_ADMIN_TOKEN to a new one and restart"
                " (docs/deployment.md: The admin token)\n"
            )
        return
    if err.isatty():
        err.write(
            f"\nAdmin token (shown once, only its hash is kept):\n  {token}\n"
            "Keep it: set SIGNALGATE_ADMIN_TOKEN to it for `signalgate keys ...`.\n\n"
        )
        return
    path = write_secret(settings.data_dir / ADMIN_TOKEN_FILE, token)
    err.write(
        f"signalgate: admin token created, written to {path} (mode 0600; only its hash is kept):"
        " store it, then delete the file; `signalgate keys` reads it from SIGNALGATE_ADMIN_TOKEN\n"
    )


def write_secret(path: Path, secret: str) -> Path:
    """``secret`` in a new file readable by this user only, replacing any older one; its absolute path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    temporary.replace(path)
    return path.resolve()


async def _serve(
    settings_path: Path | None,
    environ: Mapping[str, str],
    out: TextIO,
    err: TextIO,
    *,
    demo: bool,
    workers: int | None = None,
) -> int:
    """``serve`` and ``demo``: decision lines (JSON) on ``out``, everything else on ``err``."""
    from proxy import app
    from proxy import demo as demo_key
    from proxy.config import settings as config

    settings = config.load(settings_path, environ)
    if workers is not None:
        settings = replace(settings, workers=workers)
    configure_logging(settings.log_level, out, err)
    if not demo and not settings.upstream and not settings.routes:
        raise ConfigError("SIGNALGATE_UPSTREAM", "", "no upstream configured (try `signalgate demo`)")
    with _Signals() as signals:
        if not demo:
            return await _supervise(settings, err, signals)
        async with contextlib.AsyncExitStack() as stack:
            runtime = await _start(signals, stack.enter_async_context(app.running(settings, demo=True)))
            if runtime is None:
                return 0
            signals.on_hangup = functools.partial(_reload_geoip, runtime.geoip)
            try:
                _announce_token(err, settings, runtime.generated_admin_token)
                err.write(await demo_key.announce(runtime))
                err.write(f"signalgate: proxy on {runtime.proxy_url}, admin API on {runtime.admin_url}\n")
                err.flush()
                await signals.stop.wait()
                try:  # the demo key does not outlive the demo
                    revoked = await demo_key.retire(runtime)
                    log.info("demo stopping: demo key %s revoked", ", ".join(revoked) or "already")
                except SignalgateError as exc:
                    log.error("demo stopping: cannot revoke the demo key (it still expires): %s", exc)
            finally:
                signals.on_hangup = None  # the GeoIP database closes with the runtime
    return 0


async def _start(signals: _Signals, starting: Awaitable[T]) -> T | None:
    """What ``starting`` starts; None if a stop signal came first: start-up (which may wait up to
    ``database_wait`` for PostgreSQL) is abandoned, and what it had started is stopped."""
    started = await _unless_stopped(signals.stop, starting)
    if started is None:
        assert signals.received is not None
        log.info("stopped by %s during start-up", signals.received.name)
    return started


async def _supervise(settings: Settings, err: TextIO, signals: _Signals) -> int:
    """``serve``: a supervisor with ``settings.workers`` worker processes on one port."""
    from proxy.supervisor import Supervisor, supervised

    def created(supervisor: Supervisor) -> None:
        signals.on_hangup = functools.partial(supervisor.forward, signal.SIGHUP)

    async with contextlib.AsyncExitStack() as stack:
        supervisor = await _start(signals, stack.enter_async_context(supervised(settings, created)))
        if supervisor is None:
            return 0
        _announce_token(err, settings, supervisor.generated_admin_token)
        err.write(f"signalgate: proxy on {supervisor.proxy_url}, admin API on {supervisor.admin_url}\n")
        pids = ", ".join(str(pid) for pid in supervisor.pids)
        err.write(f"signalgate: workers: {settings.workers} (pids {pids})\n")
        err.flush()
        await signals.stop.wait()
        log.info("stopping")
    return 0


async def _migrate(settings_path: Path | None, environ: Mapping[str, str], out: TextIO) -> int:
    from proxy.config import settings as config

    settings = config.load(settings_path, environ)
    configure_logging(settings.log_level, out, sys.stderr)
    with _Signals() as signals:
        applied = await _unless_stopped(signals.stop, _apply_migrations(settings))
    if applied is None:
        assert signals.received is not None
        print(f"signalgate: stopped by {signals.received.name} before migrating was done", file=sys.stderr)
        return 128 + signals.received
    out.write(f"applied: {', '.join(applied)}\n" if applied else "nothing to apply\n")
    return 0


async def _apply_migrations(settings: Settings) -> list[str]:
    from proxy.controlplane import database
    from proxy.db.store import open_when_reachable

    async with database(settings) as dsn:
        store = await open_when_reachable(dsn, settings.database_wait)
        try:
            return await store.migrate()
        finally:
            await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["keys"]:
        from proxy.admin.keysclient import run_keys

        return run_keys(argv[1:], os.environ, sys.stdout, sys.stderr)
    if argv[:1] == ["issuers"]:
        from proxy.admin.issuerclient import run_issuers

        return run_issuers(argv[1:], os.environ, sys.stdout, sys.stderr)
    if argv[:1] == ["jobs"]:
        from proxy.admin.jobsclient import run_jobs

        return run_jobs(argv[1:], os.environ, sys.stdout, sys.stderr)
    if argv[:1] == ["bench"]:
        from proxy.bench.command import main as bench

        return bench(argv[1:])
    if argv[:1] in (["decisions"], ["explain"], ["candidate"]):
        from proxy.admin import opsclient

        run = {"decisions": opsclient.run_decisions, "explain": opsclient.run_explain}.get(
            argv[0], opsclient.run_candidate
        )
        return run(argv[1:], os.environ, sys.stdout, sys.stderr)
    args = _parser().parse_args(argv)
    if args.command == "config":
        sys.stdout.write(example_config())
        return 0
    install_uvloop()
    try:
        if args.command == "migrate":
            return asyncio.run(_migrate(args.config, os.environ, sys.stdout))
        workers = getattr(args, "workers", None)
        return asyncio.run(
            _serve(
                args.config, os.environ, sys.stdout, sys.stderr, demo=args.command == "demo", workers=workers
            )
        )
    except ConfigError as exc:
        print(f"signalgate: bad setting {exc}", file=sys.stderr)
        return 2
    except StartupTimeout as exc:
        print(f"signalgate: {exc}", file=sys.stderr)
        return 2
    except SignalgateError as exc:
        print(f"signalgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
