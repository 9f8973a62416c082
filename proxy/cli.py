"""The ``signalgate`` command: serve, demo, migrate, and the operators' ``keys`` commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from proxy.decisionlog import BufferedLineHandler
from proxy.errors import ConfigError, SignalgateError

if TYPE_CHECKING:
    from proxy.config import Settings

__all__ = ["configure_logging", "install_uvloop", "main"]

log = logging.getLogger("signalgate")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signalgate", description="Signal-driven authorization proxy.")
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
    commands.add_parser("keys", help="manage API keys through the admin API", add_help=False)
    return parser


def _worker_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"must be 1-256, got {text!r}")
    return int(text)


def configure_logging(level: str, out: TextIO, err: TextIO) -> None:
    """Decision lines (JSON) on stdout; everything else on stderr."""
    root = logging.getLogger()
    root.handlers.clear()
    other = logging.StreamHandler(err)
    other.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    other.addFilter(lambda record: record.name != "signalgate.decision")
    root.addHandler(other)
    root.setLevel(level.upper())
    decisions = logging.getLogger("signalgate.decision")
    for handler in decisions.handlers:
        handler.close()
    decisions.handlers.clear()
    decisions.addHandler(BufferedLineHandler(out))
    decisions.propagate = False


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _wait_for_stop() -> None:
    await _stop_event().wait()


def _announce_token(out: TextIO, token: str | None) -> None:
    if token:
        out.write(
            f"\nAdmin token (shown once, only its hash is kept):\n  {token}\n"
            "Keep it: set SIGNALGATE_ADMIN_TOKEN to it for `signalgate keys ...`.\n\n"
        )


async def _serve(
    settings_path: Path | None,
    environ: Mapping[str, str],
    out: TextIO,
    *,
    demo: bool,
    workers: int | None = None,
) -> int:
    from proxy import app, config, demo_key

    settings = config.load(settings_path, environ)
    if workers is not None:
        settings = replace(settings, workers=workers)
    configure_logging(settings.log_level, out, sys.stderr)
    if not demo and not settings.upstream and not settings.routes:
        raise ConfigError("SIGNALGATE_UPSTREAM", "", "no upstream configured (try `signalgate demo`)")
    if not demo:
        return await _supervise(settings, out)
    async with app.running(settings, demo=True) as runtime:
        _announce_token(out, runtime.generated_admin_token)
        out.write(await demo_key.announce(runtime))
        out.write(f"signalgate: proxy on {runtime.proxy_url}, admin API on {runtime.admin_url}\n")
        out.flush()
        await _wait_for_stop()
    return 0


async def _supervise(settings: Settings, out: TextIO) -> int:
    """``serve``: a supervisor with ``settings.workers`` worker processes on one port."""
    from proxy.supervisor import supervised

    stop = _stop_event()  # before start-up: a signal during it stops the instance once it is up
    async with supervised(settings) as supervisor:
        _announce_token(out, supervisor.generated_admin_token)
        out.write(f"signalgate: proxy on {supervisor.proxy_url}, admin API on {supervisor.admin_url}\n")
        pids = ", ".join(str(pid) for pid in supervisor.pids)
        out.write(f"signalgate: workers: {settings.workers} (pids {pids})\n")
        out.flush()
        await stop.wait()
        log.info("stopping")
    return 0


async def _migrate(settings_path: Path | None, environ: Mapping[str, str], out: TextIO) -> int:
    from proxy import app, config
    from proxy.store import Store

    settings = config.load(settings_path, environ)
    configure_logging(settings.log_level, out, sys.stderr)
    async with app.database(settings) as dsn:
        store = await Store.open(dsn)
        try:
            applied = await store.migrate()
        finally:
            await store.close()
    out.write(f"applied: {', '.join(applied)}\n" if applied else "nothing to apply\n")
    return 0


def install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["keys"]:
        from proxy.adminclient import run_keys

        return run_keys(argv[1:], os.environ, sys.stdout, sys.stderr)
    args = _parser().parse_args(argv)
    install_uvloop()
    try:
        if args.command == "migrate":
            return asyncio.run(_migrate(args.config, os.environ, sys.stdout))
        workers = getattr(args, "workers", None)
        return asyncio.run(
            _serve(args.config, os.environ, sys.stdout, demo=args.command == "demo", workers=workers)
        )
    except ConfigError as exc:
        print(f"signalgate: bad setting {exc}", file=sys.stderr)
        return 2
    except SignalgateError as exc:
        print(f"signalgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
