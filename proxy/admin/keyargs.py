"""The ``signalgate keys`` command line: its parser, and the admin API request bodies built from it.

Kept apart from ``proxy.admin.keysclient`` (which talks to the API) so each stays small; nothing here
does IO except reading a ``--policy @FILE``. A usage error is written to ``err`` and ends the command
with exit status 2 (``proxy.admin.client.Exit``), before the API is called.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from proxy.admin.client import command_parser, json_argument
from proxy.admin.client import usage as client_usage
from proxy.core.keys import is_key_id

__all__ = ["PROG", "create_body", "labels", "parser", "update_body", "usage"]

PROG = "signalgate keys"


def parser(out: TextIO, err: TextIO) -> argparse.ArgumentParser:
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
    create.add_argument(
        "--allow-expired", action="store_true", help="create it even if --expires-at has passed (tests)"
    )
    create.add_argument("--json", action="store_true", help="print the created key as JSON")

    update = sub.add_parser("update", help="change a key's policy, expiry, start, name or labels")
    update.add_argument("id", type=_key_id)
    update.add_argument("--name")
    update.add_argument("--policy", help="the new policy document as JSON, or @FILE to read it from a file")
    update.add_argument("--expires-at", metavar="TS", help="RFC 3339, or 'never' to remove the expiry")
    update.add_argument("--not-before", metavar="TS", help="RFC 3339, or 'none' to remove it")
    update.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="set a label; others stay"
    )
    update.add_argument("--remove-label", action="append", default=[], metavar="KEY", help="repeatable")
    update.add_argument("--json", action="store_true", help="print the updated key as JSON")

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


def create_body(args: argparse.Namespace, err: TextIO) -> dict[str, Any]:
    body: dict[str, Any] = {"name": args.name, "owner": args.owner}
    if args.policy is not None:
        body["policy"] = _policy(args.policy, err)
    given = labels(args.label, err)
    if given:
        body["labels"] = given
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
    if args.allow_expired:
        body["allow_expired"] = True
    return body


def update_body(args: argparse.Namespace, err: TextIO) -> dict[str, Any]:
    """The PATCH body; labels are merged with the key's own once they are known (``_update``)."""
    body: dict[str, Any] = {}
    if args.name is not None:
        body["name"] = args.name
    if args.policy is not None:
        body["policy"] = _policy(args.policy, err)
    for option, field, clear in (("expires_at", "expires_at", "never"), ("not_before", "not_before", "none")):
        value = getattr(args, option)
        if value is not None:
            body[field] = None if value.strip().lower() == clear else value
    given, removed = labels(args.label, err), set(args.remove_label)
    if given.keys() & removed:
        usage(err, f"--label and --remove-label both name {sorted(given.keys() & removed)[0]!r}")
    if not body and not given and not removed:
        usage(err, "update: nothing to change (give --policy, --expires-at, --not-before, --name or labels)")
    return body


def labels(items: Sequence[str], err: TextIO) -> dict[str, str]:
    """``KEY=VALUE`` options as a mapping; a malformed or repeated one is a usage error."""
    found: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            usage(err, f"--label {item!r} must look like KEY=VALUE")
        if key in found:
            usage(err, f"--label {key!r} is given twice")
        found[key] = value
    return found


def _policy(raw: str, err: TextIO) -> object:
    return json_argument(PROG, "--policy", raw, err)


def usage(err: TextIO, message: str) -> NoReturn:
    client_usage(PROG, err, message)
