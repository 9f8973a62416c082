"""``signalgate keys ...``: the operator's command line for keys, a client of the admin API.

It talks HTTP to the admin listener rather than to PostgreSQL, so the CLI needs only the admin URL and
token, goes through the same validation and change feed as any other client, and never handles a key
secret except the one printed once on create. The environment and the output streams are passed in,
so tests run it against a real admin app on loopback without touching the process's own.

Exit codes: 0 success, 1 the API refused or could not be reached, 2 bad usage or configuration.

Settings, from the environment: ``SIGNALGATE_ADMIN_URL`` (default ``DEFAULT_URL``),
``SIGNALGATE_ADMIN_TOKEN``, and ``SIGNALGATE_ADMIN_CA`` (a CA bundle that signed the admin listener's
certificate, for an https URL with a private CA).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import aiohttp
from yarl import URL

from proxy.admin.keyargs import PROG, Exit, create_body, labels, parser, update_body

__all__ = ["DEFAULT_URL", "TIMEOUT", "admin_session", "run_keys"]

DEFAULT_URL = "http://127.0.0.1:8081"
TIMEOUT = 30.0
PAGE = 1000
NAME_WIDTH = 40


class _Failed(Exception):
    """The API answered with an error or could not be reached: message already readable."""


def run_keys(argv: list[str], environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    """Run one ``keys`` subcommand; returns the process exit code."""
    try:
        args = parser(out, err).parse_args(argv)
        if args.command is None:
            err.write(f"{PROG}: a subcommand is required ({', '.join(_COMMANDS)})\n")
            return 2
        token = environ.get("SIGNALGATE_ADMIN_TOKEN", "").strip()
        if not token:
            err.write(
                f"{PROG}: SIGNALGATE_ADMIN_TOKEN is not set; export the admin token to use the admin API\n"
            )
            return 2
        base = _base_url(environ.get("SIGNALGATE_ADMIN_URL", "").strip() or DEFAULT_URL, err)
        context = _tls(environ.get("SIGNALGATE_ADMIN_CA", "").strip(), err)
        body = _BODIES[args.command](args, err) if args.command in _BODIES else None
        return asyncio.run(_run(args, base, token, body, out, err, context))
    except Exit as exc:
        return exc.code


def _base_url(raw: str, err: TextIO) -> URL:
    url = URL(raw)
    if url.scheme not in ("http", "https") or not url.host:
        err.write(f"{PROG}: SIGNALGATE_ADMIN_URL must be an http(s) URL, got {raw!r}\n")
        raise Exit(2)
    return url


def _tls(ca_file: str, err: TextIO) -> ssl.SSLContext | None:
    """A client TLS context trusting ``ca_file`` too (SIGNALGATE_ADMIN_CA), or None for the defaults."""
    if not ca_file:
        return None
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        err.write(f"{PROG}: SIGNALGATE_ADMIN_CA={ca_file!r}: cannot load it: {exc}\n")
        raise Exit(2) from exc


# --- talking to the API -------------------------------------------------------------------------


async def _run(
    args: argparse.Namespace,
    base: URL,
    token: str,
    body: dict[str, Any] | None,
    out: TextIO,
    err: TextIO,
    context: ssl.SSLContext | None = None,
) -> int:
    try:
        async with admin_session(token, context) as session:
            api = _Api(session, base)
            await _COMMANDS[args.command](api, args, body, out, err)
    except _Failed as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return 1
    return 0


def admin_session(token: str, context: ssl.SSLContext | None) -> aiohttp.ClientSession:
    """A client session for the admin API: the token, JSON, ``TIMEOUT``, and ``context`` for https."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        connector=aiohttp.TCPConnector(ssl=context if context is not None else True),
    )


class _Api:
    """One narrow method per call; aiohttp's exceptions become ``_Failed`` here and nowhere else."""

    def __init__(self, session: aiohttp.ClientSession, base: URL) -> None:
        self.session = session
        self.base = base

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
            # The admin API's errors are {"error", "reason", "field"?}; the proxy's carry a request_id.
            if isinstance(data, dict) and "error" in data and "reason" in data and "request_id" not in data:
                raise _Failed(f"{data['error']} (HTTP {status})")
            raise self._not_admin(f"HTTP {status} {reason}".strip(), data)
        if status != 204 and not isinstance(data, dict):
            raise self._not_admin(f"HTTP {status}, not a JSON object", data)
        return data

    def _not_admin(self, answered: str, data: Any) -> _Failed:
        proxy = isinstance(data, dict) and "request_id" in data
        like = "the signalgate proxy" if proxy else "something else"
        return _Failed(
            f"this is not the signalgate admin API: {self.base} answered like {like} ({answered});"
            f" is {self.base} the proxy port? The admin API listens on admin_listen"
            f" (default {DEFAULT_URL}); set SIGNALGATE_ADMIN_URL to it"
        )


async def _create(api: _Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    created = await api.call("POST", api.url("v1", "keys"), json_body=body)
    warning = "This is the only time the key is shown: store it now. It cannot be retrieved again."
    if args.json:
        out.write(json.dumps(created, indent=2) + "\n")
        err.write(warning + "\n")
        return
    out.write(f"Created key {created['id']} (name {created['name']!r}, owner {created['owner']!r}).\n\n")
    out.write(f"    {created['key']}\n\n")
    out.write(f"WARNING: {warning}\n")


async def _list(api: _Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    params: dict[str, str] = {"limit": str(PAGE)}
    if args.owner is not None:
        params["owner"] = args.owner
    if args.status is not None:
        params["status"] = args.status
    items: list[dict[str, Any]] = []
    while True:
        page = await api.call("GET", api.url("v1", "keys"), params=params)
        items.extend(page["items"])
        if not page.get("next"):
            break
        params["after"] = page["next"]
    if args.json:
        out.write(json.dumps(items, indent=2) + "\n")
    elif not items:
        out.write("No keys.\n")
    else:
        out.write(_table(items))


def _table(items: Sequence[Mapping[str, Any]]) -> str:
    header = ("ID", "NAME", "OWNER", "STATUS", "EXPIRES")
    rows = [header] + [
        (
            item["id"],
            _clip(item["name"]),
            _clip(item["owner"]),
            item["status"],
            _when(item.get("expires_at"), "never"),
        )
        for item in items
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines) + "\n"


def _clip(text: str) -> str:
    return text if len(text) <= NAME_WIDTH else text[: NAME_WIDTH - 3] + "..."


def _when(value: str | None, empty: str) -> str:
    if not value:
        return empty
    try:
        return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return value


async def _show(api: _Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
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
        ("not_before", _when(key.get("not_before"), "-")),
        ("expires_at", _when(key.get("expires_at"), "never")),
        ("created_at", _when(key.get("created_at"), "-")),
        ("updated_at", _when(key.get("updated_at"), "-")),
        ("revision", str(key["revision"])),
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


async def _revoke(api: _Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    await api.call("POST", api.url("v1", "keys", args.id, "revoke"))
    out.write(f"Revoked key {args.id}.\n")


async def _suspend(api: _Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    await api.call("PATCH", api.url("v1", "keys", args.id), json_body={"status": "suspended"})
    out.write(f"Suspended key {args.id}.\n")


async def _resume(api: _Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    await api.call("PATCH", api.url("v1", "keys", args.id), json_body={"status": "active"})
    out.write(f"Resumed key {args.id}: it is active again.\n")


async def _update(api: _Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    url = api.url("v1", "keys", args.id)
    if args.label or args.remove_label:  # labels are replaced whole by PATCH: merge with the key's own
        merged = dict((await api.call("GET", url))["labels"])
        merged.update(labels(args.label, err))
        for name in args.remove_label:
            merged.pop(name, None)
        body = {**body, "labels": merged}
    key = await api.call("PATCH", url, json_body=body)
    if args.json:
        out.write(json.dumps(key, indent=2) + "\n")
        return
    out.write(f"Updated key {args.id}: {', '.join(sorted(body))}.\n")


async def _delete(api: _Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    await api.call("DELETE", api.url("v1", "keys", args.id))
    out.write(f"Deleted key {args.id}.\n")


_COMMANDS = {
    "create": _create,
    "update": _update,
    "list": _list,
    "show": _show,
    "revoke": _revoke,
    "suspend": _suspend,
    "resume": _resume,
    "delete": _delete,
}
_BODIES = {"create": create_body, "update": update_body}
