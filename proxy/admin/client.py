"""The admin API's command-line client machinery, shared by ``signalgate keys|issuers|jobs ...``.

The CLI talks HTTP to the admin listener rather than to PostgreSQL, so it needs only the admin URL and
token, goes through the same validation and change feed as any other client, and never handles a key
secret except one printed once. The environment and the output streams are passed in, so tests run a
command against a real admin app on loopback without touching the process's own.

Settings, from the environment: ``SIGNALGATE_ADMIN_URL`` (default ``DEFAULT_URL``),
``SIGNALGATE_ADMIN_TOKEN``, and ``SIGNALGATE_ADMIN_CA`` (a CA bundle that signed the admin listener's
certificate, for an https URL with a private CA).

Exit codes: 0 success, 1 the API refused or could not be reached, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

import aiohttp
from yarl import URL

__all__ = [
    "DEFAULT_URL",
    "TIMEOUT",
    "Api",
    "Body",
    "Command",
    "Exit",
    "Failed",
    "admin_session",
    "aligned",
    "clip",
    "command_parser",
    "json_argument",
    "print_secret",
    "run_command",
    "usage",
    "when",
]

DEFAULT_URL = "http://127.0.0.1:8081"
TIMEOUT = 30.0
PAGE = 1000
NAME_WIDTH = 40


class Exit(Exception):
    """End the command with this exit status (usage errors: 2), before or instead of calling the API."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Failed(Exception):
    """The API answered with an error or could not be reached: message already readable."""


Command = Callable[["Api", argparse.Namespace, Any, TextIO, TextIO], Awaitable[None]]
Body = Callable[[argparse.Namespace, TextIO], dict[str, Any]]  # a command's request body from its args


def run_command(
    prog: str,
    parser: Callable[[TextIO, TextIO], argparse.ArgumentParser],
    commands: Mapping[str, Command],
    argv: list[str],
    environ: Mapping[str, str],
    out: TextIO,
    err: TextIO,
    bodies: Mapping[str, Body] | None = None,
) -> int:
    """Parse ``argv``, then run its command against the admin API; the process exit code."""
    try:
        args = parser(out, err).parse_args(argv)
        if args.command is None:
            err.write(f"{prog}: a subcommand is required ({', '.join(commands)})\n")
            return 2
        token = environ.get("SIGNALGATE_ADMIN_TOKEN", "").strip()
        if not token:
            err.write(
                f"{prog}: SIGNALGATE_ADMIN_TOKEN is not set; export the admin token to use the admin API\n"
            )
            return 2
        base = _base_url(environ.get("SIGNALGATE_ADMIN_URL", "").strip() or DEFAULT_URL, err, prog)
        context = _tls(environ.get("SIGNALGATE_ADMIN_CA", "").strip(), err, prog)
        build = (bodies or {}).get(args.command)
        body = build(args, err) if build is not None else None
        return asyncio.run(_run(prog, commands[args.command], args, base, token, body, out, err, context))
    except Exit as exc:
        return exc.code


def command_parser(prog: str, description: str, out: TextIO, err: TextIO) -> argparse.ArgumentParser:
    """An argument parser that writes to ``out``/``err`` and exits by raising, never by ``sys.exit``."""

    class Parser(argparse.ArgumentParser):
        # argparse writes to the process's streams and calls sys.exit; keep both inside run_command.
        def _print_message(self, message: str, file: Any = None) -> None:
            if message:
                (out if file is None or file is sys.stdout else err).write(message)

        def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
            if message:
                err.write(message)
            raise Exit(status)

    return Parser(prog=prog, description=description)


def usage(prog: str, err: TextIO, message: str) -> NoReturn:
    err.write(f"{prog}: {message}\n")
    raise Exit(2)


def json_argument(prog: str, option: str, raw: str, err: TextIO) -> object:
    """A JSON option's value: inline JSON, or ``@FILE`` to read it from a file."""
    text = raw
    if raw.startswith("@"):
        try:
            with open(raw[1:], encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            usage(prog, err, f"cannot read {option} file {raw[1:]!r}: {exc.strerror}")
    try:
        return json.loads(text)
    except ValueError as exc:
        usage(prog, err, f"{option} is not valid JSON: {exc}")


def _base_url(raw: str, err: TextIO, prog: str) -> URL:
    url = URL(raw)
    if url.scheme not in ("http", "https") or not url.host:
        err.write(f"{prog}: SIGNALGATE_ADMIN_URL must be an http(s) URL, got {raw!r}\n")
        raise Exit(2)
    return url


def _tls(ca_file: str, err: TextIO, prog: str) -> ssl.SSLContext | None:
    """A client TLS context trusting ``ca_file`` too (SIGNALGATE_ADMIN_CA), or None for the defaults."""
    if not ca_file:
        return None
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        err.write(f"{prog}: SIGNALGATE_ADMIN_CA={ca_file!r}: cannot load it: {exc}\n")
        raise Exit(2) from exc


# --- talking to the API -------------------------------------------------------------------------


async def _run(
    prog: str,
    command: Command,
    args: argparse.Namespace,
    base: URL,
    token: str,
    body: dict[str, Any] | None,
    out: TextIO,
    err: TextIO,
    context: ssl.SSLContext | None,
) -> int:
    try:
        async with admin_session(token, context) as session:
            await command(Api(session, base), args, body, out, err)
    except Failed as exc:
        err.write(f"{prog}: error: {exc}\n")
        return 1
    return 0


def admin_session(token: str, context: ssl.SSLContext | None) -> aiohttp.ClientSession:
    """A client session for the admin API: the token, JSON, ``TIMEOUT``, and ``context`` for https."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        connector=aiohttp.TCPConnector(ssl=context if context is not None else True),
    )


class Api:
    """One narrow method per call; aiohttp's exceptions become ``Failed`` here and nowhere else."""

    def __init__(self, session: aiohttp.ClientSession, base: URL) -> None:
        self.session = session
        self.base = base

    async def every(self, collection: str, **filters: str | None) -> list[dict[str, Any]]:
        """Every item of ``/v1/<collection>`` matching ``filters`` (None: not filtered), page by page."""
        params = {name: value for name, value in filters.items() if value is not None}
        params["limit"] = str(PAGE)
        items: list[dict[str, Any]] = []
        while True:
            page = await self.call("GET", self.url("v1", collection), params=params)
            items.extend(page["items"])
            if not page.get("next"):
                return items
            params["after"] = page["next"]

    def url(self, *segments: str) -> URL:
        url = self.base
        for segment in segments:
            url = url / segment
        return url

    async def call(
        self, method: str, url: URL, *, json_body: object = None, params: Mapping[str, str] | None = None
    ) -> Any:
        try:
            async with self.session.request(method, url, json=json_body, params=params) as response:
                text = await response.text()
                status = response.status
                reason = response.reason or ""
        except aiohttp.ClientConnectorError as exc:
            cause = "connection refused" if isinstance(exc.os_error, ConnectionRefusedError) else exc.strerror
            raise Failed(f"cannot connect to the admin API at {self.base}: {cause}") from exc
        except TimeoutError as exc:
            raise Failed(f"the admin API at {self.base} did not answer within {TIMEOUT:g} s") from exc
        except aiohttp.ClientError as exc:
            raise Failed(f"request to the admin API at {self.base} failed: {exc}") from exc
        data: Any = None
        if text:
            try:
                data = json.loads(text)
            except ValueError:
                data = None
        if status >= 400:
            # The admin API's errors are {"error", "reason", "field"?}; the proxy's carry a request_id.
            if isinstance(data, dict) and "error" in data and "reason" in data and "request_id" not in data:
                raise Failed(f"{data['error']} (HTTP {status})")
            raise self._not_admin(f"HTTP {status} {reason}".strip(), data)
        if status != 204 and not isinstance(data, dict):
            raise self._not_admin(f"HTTP {status}, not a JSON object", data)
        return data

    def _not_admin(self, answered: str, data: Any) -> Failed:
        proxy = isinstance(data, dict) and "request_id" in data
        like = "the signalgate proxy" if proxy else "something else"
        return Failed(
            f"this is not the signalgate admin API: {self.base} answered like {like} ({answered});"
            f" is {self.base} the proxy port? The admin API listens on admin_listen"
            f" (default {DEFAULT_URL}); set SIGNALGATE_ADMIN_URL to it"
        )


# --- printing -------------------------------------------------------------------------------------


def print_secret(key: Mapping[str, Any], what: str, as_json: bool, out: TextIO, err: TextIO) -> None:
    """A key record with its secret, shown this once."""
    warning = "This is the only time the key is shown: store it now. It cannot be retrieved again."
    if as_json:
        out.write(json.dumps(key, indent=2) + "\n")
        err.write(warning + "\n")
        return
    out.write(f"{what}\n\n")
    out.write(f"    {key['key']}\n\n")
    out.write(f"WARNING: {warning}\n")


def aligned(header: tuple[str, ...], body: Sequence[tuple[str, ...]]) -> str:
    """Rows as columns padded to their widest cell."""
    rows = [header, *body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines) + "\n"


def clip(text: str) -> str:
    return text if len(text) <= NAME_WIDTH else text[: NAME_WIDTH - 3] + "..."


def when(value: str | None, empty: str) -> str:
    if not value:
        return empty
    try:
        return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return value
