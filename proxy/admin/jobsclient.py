"""``signalgate jobs ...``: open, list, show and close jobs through the admin API (like ``keys``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any, TextIO

from proxy.admin.client import Api, Command, aligned, clip, command_parser, run_command, when
from proxy.core.keys import is_key_id

__all__ = ["run_jobs"]

PROG = "signalgate jobs"


def run_jobs(argv: list[str], environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    """Run one ``jobs`` subcommand; returns the process exit code."""
    return run_command(PROG, _parser, _COMMANDS, argv, environ, out, err)


def _job_id(value: str) -> str:
    if not is_key_id(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a job id (16 lower-case hex digits)")
    return value


def _parser(out: TextIO, err: TextIO) -> argparse.ArgumentParser:
    parser = command_parser(
        PROG, "Manage signalgate jobs (their keys live only while they are open).", out, err
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    opening = sub.add_parser(
        "open", help="open a job; create its keys with `signalgate keys create --job ID`"
    )
    opening.add_argument("--name", required=True)
    opening.add_argument("--owner", required=True)
    opening.add_argument(
        "--deadline", required=True, metavar="TS", help="RFC 3339; the job closes itself then"
    )
    opening.add_argument("--json", action="store_true")
    listing = sub.add_parser("list", help="list jobs")
    listing.add_argument("--owner")
    listing.add_argument("--status", choices=["open", "closed"])
    listing.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="show a job and its keys")
    show.add_argument("id", type=_job_id)
    show.add_argument("--json", action="store_true")
    close = sub.add_parser("close", help="close a job and revoke every key of it")
    close.add_argument("id", type=_job_id)
    return parser


async def _open(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    wanted = {"name": args.name, "owner": args.owner, "deadline": args.deadline}
    job = await api.call("POST", api.url("v1", "jobs"), json_body=wanted)
    if args.json:
        out.write(json.dumps(job, indent=2) + "\n")
        return
    out.write(
        f"Opened job {job['id']} (name {job['name']!r}, owner {job['owner']!r}),"
        f" deadline {when(job['deadline'], '-')}.\n"
    )
    out.write(f"Issue its keys with: signalgate keys create --job {job['id']} ...\n")


async def _list(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    items = await api.every("jobs", owner=args.owner, status=args.status)
    if args.json:
        out.write(json.dumps(items, indent=2) + "\n")
    elif not items:
        out.write("No jobs.\n")
    else:
        rows = [
            (j["id"], clip(j["name"]), clip(j["owner"]), j["status"], when(j["deadline"], "-")) for j in items
        ]
        out.write(aligned(("ID", "NAME", "OWNER", "STATUS", "DEADLINE"), rows))


async def _show(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    job = await api.call("GET", api.url("v1", "jobs", args.id))
    if args.json:
        out.write(json.dumps(job, indent=2) + "\n")
        return
    fields = [
        ("id", job["id"]),
        ("name", job["name"]),
        ("owner", job["owner"]),
        ("status", job["status"]),
        ("deadline", when(job["deadline"], "-")),
        ("created_at", when(job["created_at"], "-")),
        ("closed_at", when(job["closed_at"], "-")),
        ("closed_by", job["closed_by"] or "-"),
        ("keys", str(len(job["keys"]))),
    ]
    width = max(len(name) for name, _ in fields) + 1
    out.write("".join(f"{(name + ':').ljust(width)} {value}\n" for name, value in fields))
    if job["keys"]:
        rows = [(k["id"], clip(k["name"]), k["status"], when(k["expires_at"], "never")) for k in job["keys"]]
        out.write("\n" + aligned(("KEY", "NAME", "STATUS", "EXPIRES"), rows))


async def _close(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    closed = await api.call("POST", api.url("v1", "jobs", args.id, "close"))
    revoked = closed["keys_revoked"]
    if revoked:
        out.write(f"Closed job {args.id}: revoked {len(revoked)} keys ({', '.join(revoked)}).\n")
    else:
        out.write(f"Job {args.id} is closed (closed by {closed['closed_by']}); no key left to revoke.\n")


_COMMANDS: dict[str, Command] = {"open": _open, "list": _list, "show": _show, "close": _close}
