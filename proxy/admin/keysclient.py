"""``signalgate keys ...``: the operator's command line for keys (``proxy.admin.client`` does the talking,
``proxy.admin.keyargs`` the parsing). The full key is printed once, on create and rotate."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from proxy.admin.client import Api, aligned, clip, print_secret, run_command, when
from proxy.admin.keyargs import PROG, create_body, labels, parser, update_body

__all__ = ["run_keys"]


def run_keys(argv: list[str], environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    """Run one ``keys`` subcommand; returns the process exit code."""
    return run_command(PROG, parser, _COMMANDS, argv, environ, out, err, bodies=_BODIES)


async def _create(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    created = await api.call("POST", api.url("v1", "keys"), json_body=body)
    what = f"Created key {created['id']} (name {created['name']!r}, owner {created['owner']!r})."
    print_secret(created, what, args.json, out, err)


async def _rotate(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    rotated = await api.call(
        "POST", api.url("v1", "keys", args.id, "rotate"), json_body={"grace_s": args.grace_s}
    )
    until = rotated.get("previous_valid_until")
    old = f"the old secret works until {when(until, '-')}" if until else "the old secret no longer works"
    print_secret(rotated, f"Rotated key {rotated['id']}: {old}.", args.json, out, err)


async def _update(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
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


async def _show(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    key = await api.call("GET", api.url("v1", "keys", args.id))
    if args.json:
        out.write(json.dumps(key, indent=2) + "\n")
        return
    labels_shown = ", ".join(f"{k}={v}" for k, v in sorted(key["labels"].items())) or "-"
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
        ("labels", labels_shown),
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
    "update": _update,
    "list": _list,
    "show": _show,
    "revoke": _revoke,
    "suspend": _suspend,
    "resume": _resume,
    "delete": _delete,
    "rotate": _rotate,
}
_BODIES = {"create": create_body, "update": update_body}
