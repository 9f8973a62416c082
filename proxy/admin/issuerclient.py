"""``signalgate issuers ...``: the operator's command line for attestation issuers, a client of the
admin API (``/v1/issuers``), built like ``signalgate keys`` (``proxy.admin.client``): same environment
(SIGNALGATE_ADMIN_URL, SIGNALGATE_ADMIN_TOKEN, SIGNALGATE_ADMIN_CA), same exit codes (0 done, 1 refused
or unreachable, 2 bad usage)."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, TextIO

from proxy.admin.client import DEFAULT_URL, _Api, _base_url, _Failed, _tls, _when, admin_session
from proxy.admin.keyargs import Exit as _Exit
from proxy.core.jwk import JOSE_ALGORITHMS

__all__ = ["run_issuers"]

PROG = "signalgate issuers"
COMMANDS = ("create", "list", "show", "update", "delete")


def run_issuers(argv: list[str], environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    try:
        args = _parser(out, err).parse_args(argv)
        if args.command is None:
            err.write(f"{PROG}: a subcommand is required ({', '.join(COMMANDS)})\n")
            return 2
        token = environ.get("SIGNALGATE_ADMIN_TOKEN", "").strip()
        if not token:
            err.write(
                f"{PROG}: SIGNALGATE_ADMIN_TOKEN is not set; export the admin token to use the admin API\n"
            )
            return 2
        base = _base_url(environ.get("SIGNALGATE_ADMIN_URL", "").strip() or DEFAULT_URL, err)
        context = _tls(environ.get("SIGNALGATE_ADMIN_CA", "").strip(), err)
        body = _body(args, err) if args.command in ("create", "update") else None
        return asyncio.run(_run(args, base, token, body, out, err, context))
    except _Exit as exc:
        return exc.code


def _parser(out: TextIO, err: TextIO) -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def _print_message(self, message: str, file: Any = None) -> None:
            if message:
                (out if file is None or file is sys.stdout else err).write(message)

        def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
            if message:
                err.write(message)
            raise _Exit(status)

    parser = Parser(prog=PROG, description="Manage the issuers whose attestations signalgate trusts.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command, text in (("create", "register an issuer"), ("update", "change an issuer")):
        each = sub.add_parser(command, help=text)
        if command == "create":
            each.add_argument(
                "--name", required=True, help="local handle policies refer to ([a-z0-9-]{1,64})"
            )
        else:
            each.add_argument("name")
        each.add_argument("--kind", choices=["device", "workload"], required=command == "create")
        each.add_argument("--issuer", required=command == "create", help="the exact iss of its tokens")
        each.add_argument("--audience", required=command == "create", help="what aud must contain")
        each.add_argument(
            "--algorithm",
            action="append",
            choices=JOSE_ALGORITHMS,
            required=command == "create",
            help="an allowed JWS algorithm (repeatable)",
        )
        each.add_argument("--max-lifetime", type=int, metavar="SECONDS", help="longest exp - iat accepted")
        source = each.add_mutually_exclusive_group(required=command == "create")
        source.add_argument("--jwks", metavar="JSON|@FILE", help="an inline JWK set")
        source.add_argument("--jwks-url", metavar="URL", help="fetched by signalgate, and refreshed")
        each.add_argument("--json", action="store_true")
    listing = sub.add_parser("list", help="list issuers")
    listing.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="show one issuer, its keys and its last fetch")
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    sub.add_parser("delete", help="delete an issuer: its tokens are refused at once").add_argument("name")
    return parser


def _body(args: argparse.Namespace, err: TextIO) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for option, field in (("name", "name"), ("kind", "kind"), ("issuer", "issuer"), ("audience", "audience")):
        if args.command == "create" or option != "name":
            value = getattr(args, option)
            if value is not None:
                body[field] = value
    if args.algorithm:
        body["algorithms"] = list(dict.fromkeys(args.algorithm))
    if args.max_lifetime is not None:
        body["max_lifetime_s"] = args.max_lifetime
    if args.jwks_url is not None:
        body["jwks_url"] = args.jwks_url
    if args.jwks is not None:
        body["jwks"] = _json_arg("--jwks", args.jwks, err)
    if args.command == "update" and not body:
        _usage(err, "update: give at least one field to change")
    return body


def _json_arg(option: str, raw: str, err: TextIO) -> object:
    text = raw
    if raw.startswith("@"):
        try:
            with open(raw[1:], encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            _usage(err, f"cannot read {option} file {raw[1:]!r}: {exc.strerror}")
    try:
        return json.loads(text)
    except ValueError as exc:
        _usage(err, f"{option} is not valid JSON: {exc}")


def _usage(err: TextIO, message: str) -> NoReturn:
    err.write(f"{PROG}: {message}\n")
    raise _Exit(2)


async def _run(
    args: argparse.Namespace,
    base: Any,
    token: str,
    body: dict[str, Any] | None,
    out: TextIO,
    err: TextIO,
    context: ssl.SSLContext | None = None,
) -> int:
    try:
        async with admin_session(token, context) as session:
            api = _Api(session, base)
            if args.command == "create":
                _print(out, args, await api.call("POST", api.url("v1", "issuers"), json_body=body), "Created")
            elif args.command == "update":
                url = api.url("v1", "issuers", args.name)
                _print(out, args, await api.call("PATCH", url, json_body=body), "Updated")
            elif args.command == "show":
                _print(out, args, await api.call("GET", api.url("v1", "issuers", args.name)), "")
            elif args.command == "delete":
                await api.call("DELETE", api.url("v1", "issuers", args.name))
                out.write(f"Deleted issuer {args.name}: tokens it signed are refused from now on.\n")
            else:
                items = (await api.call("GET", api.url("v1", "issuers")))["items"]
                out.write(json.dumps(items, indent=2) + "\n" if args.json else _table(items))
    except _Failed as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return 1
    return 0


def _print(out: TextIO, args: argparse.Namespace, issuer: Mapping[str, Any], verb: str) -> None:
    if args.json:
        out.write(json.dumps(issuer, indent=2) + "\n")
        return
    if verb:
        out.write(f"{verb} issuer {issuer['name']}.\n")
    fields = [
        ("name", issuer["name"]),
        ("kind", issuer["kind"]),
        ("issuer", issuer["issuer"]),
        ("audience", issuer["audience"]),
        ("algorithms", ", ".join(issuer["algorithms"])),
        ("max_lifetime_s", str(issuer["max_lifetime_s"])),
        ("keys", "; ".join(_key(key) for key in issuer["keys"]) or "-"),
    ]
    if "jwks_url" in issuer:
        fields += [
            ("jwks_url", issuer["jwks_url"]),
            ("last_fetched", _when(issuer.get("last_fetched_at"), "never")),
            ("last_error", issuer.get("last_fetch_error") or "-"),
            ("next_fetch", _when(issuer.get("next_fetch_at"), "-")),
        ]
    width = max(len(name) for name, _ in fields) + 1
    out.write("".join(f"{(name + ':').ljust(width)} {value}\n" for name, value in fields))


def _key(key: Mapping[str, Any]) -> str:
    return f"{key['kid'] or '(no kid)'} {key['kty']} {key['alg']}"


def _table(items: Sequence[Mapping[str, Any]]) -> str:
    if not items:
        return "No issuers.\n"
    header = ("NAME", "KIND", "ISSUER", "KEYS", "SOURCE")
    rows = [header] + [
        (
            item["name"],
            item["kind"],
            item["issuer"],
            str(len(item["keys"])),
            "url" + (" (last fetch failed)" if item.get("last_fetch_error") else "")
            if "jwks_url" in item
            else "inline",
        )
        for item in items
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows
    )
