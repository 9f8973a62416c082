"""``signalgate keys ...``: the operator's command line for keys, a client of the admin API.

It talks HTTP to the admin listener rather than to PostgreSQL, so the CLI needs only the admin URL and
token, goes through the same validation and change feed as any other client, and never handles a key
secret except the one printed once on create. The environment and the output streams are passed in,
so tests run it against a real admin app on loopback without touching the process's own.

Exit codes: 0 success, 1 the API refused or could not be reached, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

import aiohttp
from yarl import URL

from proxy.core.keys import is_key_id

__all__ = [
    "DEFAULT_URL",
    "TIMEOUT",
    "Api",
    "Command",
    "aligned",
    "clip",
    "command_parser",
    "run_command",
    "run_keys",
    "when",
]

DEFAULT_URL = "http://127.0.0.1:8081"
TIMEOUT = 30.0
PAGE = 1000
NAME_WIDTH = 40
PROG = "signalgate keys"


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Failed(Exception):
    """The API answered with an error or could not be reached: message already readable."""


def run_keys(argv: list[str], environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    """Run one ``keys`` subcommand; returns the process exit code."""
    return run_command(PROG, _parser, _COMMANDS, argv, environ, out, err, body_of=_create_body)


Command = Callable[["Api", argparse.Namespace, Any, TextIO, TextIO], Awaitable[None]]


def run_command(
    prog: str,
    parser: Callable[[TextIO, TextIO], argparse.ArgumentParser],
    commands: Mapping[str, Command],
    argv: list[str],
    environ: Mapping[str, str],
    out: TextIO,
    err: TextIO,
    body_of: Callable[[argparse.Namespace, TextIO], dict[str, Any] | None] = lambda args, err: None,
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
        body = body_of(args, err) if args.command == "create" else None
        return asyncio.run(_run(prog, commands[args.command], args, base, token, body, out, err))
    except _Exit as exc:
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
            raise _Exit(status)

    return Parser(prog=prog, description=description)


def _parser(out: TextIO, err: TextIO) -> argparse.ArgumentParser:
    parser = command_parser(PROG, "Manage signalgate API keys through the admin API.", out, err)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    create = sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--owner", required=True)
    create.add_argument("--policy", help="policy document as JSON, or @FILE to read it from a file")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    create.add_argument("--expires-at", metavar="TS", help="RFC 3339, e.g. 2026-12-01T00:00:00Z")
    create.add_argument("--not-before", metavar="TS", help="RFC 3339, e.g. 2026-06-01T00:00:00Z")
    create.add_argument(
        "--ttl-s", type=int, metavar="SECONDS", help="lifetime from now (instead of --expires-at)"
    )
    create.add_argument("--job", metavar="JOB_ID", help="bind the key to an open job (signalgate jobs open)")
    create.add_argument("--can-close-job", action="store_true", help="the key may close its job itself")
    create.add_argument("--json", action="store_true", help="print the created key as JSON")

    listing = sub.add_parser("list", help="list keys")
    listing.add_argument("--owner")
    listing.add_argument("--status", choices=["active", "suspended", "revoked"])
    listing.add_argument("--json", action="store_true", help="print a JSON array")

    show = sub.add_parser("show", help="show one key")
    show.add_argument("id", type=_key_id)
    show.add_argument("--json", action="store_true")

    for name, text in (
        ("revoke", "revoke a key for good"),
        ("suspend", "suspend a key (it can be resumed)"),
        ("resume", "make a suspended key active again"),
        ("delete", "delete a key's record"),
    ):
        sub.add_parser(name, help=text).add_argument("id", type=_key_id)
    rotate = sub.add_parser("rotate", help="give a key a new secret, printed once")
    rotate.add_argument("id", type=_key_id)
    rotate.add_argument(
        "--grace-s",
        type=int,
        default=0,
        metavar="SECONDS",
        help="how long the old secret keeps working (default 0)",
    )
    rotate.add_argument("--json", action="store_true", help="print the rotated key as JSON")
    return parser


def _key_id(value: str) -> str:
    if not is_key_id(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a key id (16 lower-case hex digits)")
    return value


def _base_url(raw: str, err: TextIO, prog: str = PROG) -> URL:
    url = URL(raw)
    if url.scheme not in ("http", "https") or not url.host:
        err.write(f"{prog}: SIGNALGATE_ADMIN_URL must be an http(s) URL, got {raw!r}\n")
        raise _Exit(2)
    return url


def _create_body(args: argparse.Namespace, err: TextIO) -> dict[str, Any]:
    body: dict[str, Any] = {"name": args.name, "owner": args.owner}
    if args.policy is not None:
        body["policy"] = _policy(args.policy, err)
    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _usage(err, f"--label {item!r} must look like KEY=VALUE")
        if key in labels:
            _usage(err, f"--label {key!r} is given twice")
        labels[key] = value
    if labels:
        body["labels"] = labels
    if args.expires_at is not None:
        body["expires_at"] = args.expires_at
    if args.not_before is not None:
        body["not_before"] = args.not_before
    if args.ttl_s is not None:
        body["ttl_s"] = args.ttl_s
    if args.job is not None:
        body["job_id"] = args.job
    if args.can_close_job:
        body["can_close_job"] = True
    return body


def _policy(raw: str, err: TextIO) -> object:
    text = raw
    if raw.startswith("@"):
        try:
            with open(raw[1:], encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            _usage(err, f"cannot read policy file {raw[1:]!r}: {exc.strerror}")
    try:
        return json.loads(text)
    except ValueError as exc:
        _usage(err, f"--policy is not valid JSON: {exc}")


def _usage(err: TextIO, message: str) -> NoReturn:
    err.write(f"{PROG}: {message}\n")
    raise _Exit(2)


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
) -> int:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    try:
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            await command(Api(session, base), args, body, out, err)
    except _Failed as exc:
        err.write(f"{prog}: error: {exc}\n")
        return 1
    return 0


class Api:
    """One narrow method per call; aiohttp's exceptions become ``_Failed`` here and nowhere else."""

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
            raise _Failed(f"cannot connect to the admin API at {self.base}: {cause}") from exc
        except TimeoutError as exc:
            raise _Failed(f"the admin API at {self.base} did not answer within {TIMEOUT:g} s") from exc
        except aiohttp.ClientError as exc:
            raise _Failed(f"request to the admin API at {self.base} failed: {exc}") from exc
        data: Any = None
        if text:
            try:
                data = json.loads(text)
            except ValueError:
                data = None
        if status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise _Failed(f"{message or reason or 'request failed'} (HTTP {status})")
        return data


async def _create(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    created = await api.call("POST", api.url("v1", "keys"), json_body=body)
    what = f"Created key {created['id']} (name {created['name']!r}, owner {created['owner']!r})."
    _print_secret(created, what, args.json, out, err)


async def _rotate(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    rotated = await api.call(
        "POST", api.url("v1", "keys", args.id, "rotate"), json_body={"grace_s": args.grace_s}
    )
    until = rotated.get("previous_valid_until")
    old = f"the old secret works until {when(until, '-')}" if until else "the old secret no longer works"
    _print_secret(rotated, f"Rotated key {rotated['id']}: {old}.", args.json, out, err)


def _print_secret(key: Mapping[str, Any], what: str, as_json: bool, out: TextIO, err: TextIO) -> None:
    warning = "This is the only time the key is shown: store it now. It cannot be retrieved again."
    if as_json:
        out.write(json.dumps(key, indent=2) + "\n")
        err.write(warning + "\n")
        return
    out.write(f"{what}\n\n")
    out.write(f"    {key['key']}\n\n")
    out.write(f"WARNING: {warning}\n")


async def _list(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    items = await api.every("keys", owner=args.owner, status=args.status)
    if args.json:
        out.write(json.dumps(items, indent=2) + "\n")
    elif not items:
        out.write("No keys.\n")
    else:
        out.write(_table(items))


def _table(items: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        (
            item["id"],
            clip(item["name"]),
            clip(item["owner"]),
            item["status"],
            when(item.get("expires_at"), "never"),
        )
        for item in items
    ]
    return aligned(("ID", "NAME", "OWNER", "STATUS", "EXPIRES"), rows)


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


async def _show(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    key = await api.call("GET", api.url("v1", "keys", args.id))
    if args.json:
        out.write(json.dumps(key, indent=2) + "\n")
        return
    labels = ", ".join(f"{k}={v}" for k, v in sorted(key["labels"].items())) or "-"
    fields = [
        ("id", key["id"]),
        ("name", key["name"]),
        ("owner", key["owner"]),
        ("status", key["status"]),
        ("not_before", when(key.get("not_before"), "-")),
        ("expires_at", when(key.get("expires_at"), "never")),
        ("created_at", when(key.get("created_at"), "-")),
        ("updated_at", when(key.get("updated_at"), "-")),
        ("revision", str(key["revision"])),
        ("job_id", key.get("job_id") or "-"),
        (
            "uses",
            str(key.get("uses", 0))
            + (f" ({key['uses_left']} left)" if key.get("uses_left") is not None else ""),
        ),
        ("labels", labels),
        ("policy", json.dumps(key["policy"], sort_keys=True)),
    ]
    if key.get("issuers"):  # the issuers its policy names, as they are now
        fields.append(
            ("issuers", "; ".join(_issuer(name, shown) for name, shown in sorted(key["issuers"].items())))
        )
    width = max(len(name) for name, _ in fields) + 1
    out.write("".join(f"{(name + ':').ljust(width)} {value}\n" for name, value in fields))


def _issuer(name: str, shown: Mapping[str, Any] | None) -> str:
    if shown is None:
        return f"{name} (no such issuer: its tokens are refused)"
    kids = ", ".join(str(key["kid"]) for key in shown["keys"]) or "no keys"
    return f"{name} ({shown['kind']}, iss {shown['issuer']}, keys {kids})"


async def _revoke(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    await api.call("POST", api.url("v1", "keys", args.id, "revoke"))
    out.write(f"Revoked key {args.id}.\n")


async def _suspend(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    await api.call("PATCH", api.url("v1", "keys", args.id), json_body={"status": "suspended"})
    out.write(f"Suspended key {args.id}.\n")


async def _resume(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    await api.call("PATCH", api.url("v1", "keys", args.id), json_body={"status": "active"})
    out.write(f"Resumed key {args.id}: it is active again.\n")


async def _delete(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    await api.call("DELETE", api.url("v1", "keys", args.id))
    out.write(f"Deleted key {args.id}.\n")


_COMMANDS = {
    "create": _create,
    "list": _list,
    "show": _show,
    "revoke": _revoke,
    "suspend": _suspend,
    "resume": _resume,
    "delete": _delete,
    "rotate": _rotate,
}
