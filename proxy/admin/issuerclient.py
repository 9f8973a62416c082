"""``signalgate issuers ...``: the operator's command line for attestation issuers, a client of the
admin API (``/v1/issuers``) built on ``proxy.admin.client`` like ``signalgate keys``: same environment
and exit codes."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from proxy.admin.client import Api, Command, aligned, command_parser, json_argument, run_command, usage, when
from proxy.core.jwk import JOSE_ALGORITHMS

__all__ = ["run_issuers"]

PROG = "signalgate issuers"


def run_issuers(argv: list[str], environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    """Run one ``issuers`` subcommand; returns the process exit code."""
    return run_command(PROG, _parser, _COMMANDS, argv, environ, out, err, bodies=_BODIES)


def _parser(out: TextIO, err: TextIO) -> argparse.ArgumentParser:
    parser = command_parser(PROG, "Manage the issuers whose attestations signalgate trusts.", out, err)
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
        body["jwks"] = json_argument(PROG, "--jwks", args.jwks, err)
    if args.command == "update" and not body:
        usage(PROG, err, "update: give at least one field to change")
    return body


async def _create(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    _print(out, args, await api.call("POST", api.url("v1", "issuers"), json_body=body), "Created")


async def _update(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    _print(out, args, await api.call("PATCH", api.url("v1", "issuers", args.name), json_body=body), "Updated")


async def _show(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    _print(out, args, await api.call("GET", api.url("v1", "issuers", args.name)), "")


async def _delete(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    await api.call("DELETE", api.url("v1", "issuers", args.name))
    out.write(f"Deleted issuer {args.name}: tokens it signed are refused from now on.\n")


async def _list(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    items = (await api.call("GET", api.url("v1", "issuers")))["items"]
    out.write(json.dumps(items, indent=2) + "\n" if args.json else _table(items))


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
            ("last_fetched", when(issuer.get("last_fetched_at"), "never")),
            ("last_error", issuer.get("last_fetch_error") or "-"),
            ("next_fetch", when(issuer.get("next_fetch_at"), "-")),
        ]
    width = max(len(name) for name, _ in fields) + 1
    out.write("".join(f"{(name + ':').ljust(width)} {value}\n" for name, value in fields))


def _key(key: Mapping[str, Any]) -> str:
    return f"{key['kid'] or '(no kid)'} {key['kty']} {key['alg']}"


def _table(items: Sequence[Mapping[str, Any]]) -> str:
    if not items:
        return "No issuers.\n"
    rows = [
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
    return aligned(("NAME", "KIND", "ISSUER", "KEYS", "SOURCE"), rows)


_COMMANDS: dict[str, Command] = {
    "create": _create,
    "list": _list,
    "show": _show,
    "update": _update,
    "delete": _delete,
}
_BODIES = {"create": _body, "update": _body}
