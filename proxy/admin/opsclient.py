"""The operators' commands, clients of the admin API like ``signalgate keys`` (``proxy.admin.client``):

- ``signalgate decisions tail [--follow] [filters]``: the latest decisions, oldest first, then (with
  ``--follow``) new ones as they are recorded;
- ``signalgate explain (--key-id ID | --policy JSON) --client-ip IP --path P ...``: ``POST /v1/evaluate``;
- ``signalgate candidate show|set|clear|promote ID``: a key's candidate (dry-run) policy.

Same environment (SIGNALGATE_ADMIN_URL, SIGNALGATE_ADMIN_TOKEN) and exit codes: 0 success, 1 the API
refused or could not be reached, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TextIO

from proxy.admin.client import Api, Body, Command, Failed, command_parser, json_argument, run_command, usage
from proxy.core.keys import is_key_id

__all__ = ["FOLLOW_INTERVAL", "run_candidate", "run_decisions", "run_explain"]

FOLLOW_INTERVAL = 1.0  # seconds between two polls of --follow
# --follow asks again for decisions this far back: workers write in batches, so a decision can land
# after a later one from another worker. Ids already printed are not printed again.
LOOKBACK = timedelta(seconds=30)


def _runner(
    prog: str,
    parser: Callable[[TextIO, TextIO], argparse.ArgumentParser],
    commands: Mapping[str, Command],
    argv: Sequence[str],
    environ: Mapping[str, str],
    out: TextIO,
    err: TextIO,
    bodies: Mapping[str, Body] | None = None,
) -> int:
    try:
        return run_command(prog, parser, commands, list(argv), environ, out, err, bodies)
    except KeyboardInterrupt:  # tail --follow ends with Ctrl-C
        return 130


def _key_id(value: str) -> str:
    if not is_key_id(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a key id (16 lower-case hex digits)")
    return value


# --- decisions ----------------------------------------------------------------------------------

FILTERS = ("key_id", "owner", "decision", "reason", "candidate", "since", "until", "request_id")


def run_decisions(argv: Sequence[str], environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    return _runner("signalgate decisions", _decisions_parser, {"tail": _tail}, argv, environ, out, err)


def _decisions_parser(out: TextIO, err: TextIO) -> argparse.ArgumentParser:
    parser = command_parser("signalgate decisions", "Read the decision log through the admin API.", out, err)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    tail = sub.add_parser("tail", help="the latest decisions, oldest first; --follow for new ones")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new decisions")
    tail.add_argument("-n", "--lines", type=int, default=20, metavar="N", help="how many to show first")
    tail.add_argument("--key-id", type=_key_id)
    tail.add_argument("--owner")
    tail.add_argument("--decision", choices=["allow", "deny"])
    tail.add_argument("--reason")
    tail.add_argument("--candidate", choices=["agree", "would_allow", "would_deny"])
    tail.add_argument("--since", metavar="TS", help="RFC 3339")
    tail.add_argument("--until", metavar="TS", help="RFC 3339")
    tail.add_argument("--request-id")
    tail.add_argument("--interval", type=float, default=FOLLOW_INTERVAL, help=argparse.SUPPRESS)
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def _line(item: Mapping[str, Any]) -> str:
    at = datetime.fromisoformat(item["at"]).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    who = f"{item['key_id'] or '-'} {item['owner'] or '-'}"
    fields = [at, item["decision"], item["reason"], str(item["status"]), who]
    fields.append(f"{item['client_ip'] or '-'}{'/' + item['country'] if item['country'] else ''}")
    fields.append(f"{item['method'] or '-'} {item['path']}")
    fields.append(f"id={item['request_id']}")
    if item.get("candidate") in ("would_allow", "would_deny"):
        fields.append(f"candidate={item['candidate']}:{item['candidate_reason']}")
    if item.get("detail"):
        fields.append(f"({item['detail']})")
    return "  ".join(fields)


async def _tail(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    params = {name: str(getattr(args, name)) for name in FILTERS if getattr(args, name) is not None}
    if not 1 <= args.lines <= 1000:
        raise Failed("-n must be from 1 to 1000")
    url = api.url("v1", "decisions")
    page = await api.call("GET", url, params={**params, "limit": str(args.lines)})
    shown: dict[str, datetime] = {}

    def show(item: Mapping[str, Any]) -> None:
        shown[item["request_id"]] = datetime.fromisoformat(item["at"])
        out.write((json.dumps(item) if args.json else _line(item)) + "\n")

    for item in reversed(page["items"]):
        show(item)
    out.flush()
    while args.follow:
        await asyncio.sleep(args.interval)
        newest = max(shown.values(), default=None)
        query = {**params, "order": "asc", "limit": "1000"}
        if newest is not None:
            query["since"] = (newest - LOOKBACK).isoformat()
            for request_id, at in list(shown.items()):  # forget what the look-back no longer reaches
                if at < newest - 2 * LOOKBACK:
                    del shown[request_id]
        while True:
            page = await api.call("GET", url, params=query)
            for item in page["items"]:
                if item["request_id"] not in shown:
                    show(item)
            if not page["next"]:
                break
            query["cursor"] = page["next"]
        out.flush()


# --- explain ------------------------------------------------------------------------------------


def run_explain(argv: Sequence[str], environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    bodies: dict[str, Body] = {"explain": _evaluate_body}
    return _runner(
        "signalgate explain", _explain_parser, {"explain": _explain}, argv, environ, out, err, bodies
    )


def _explain_parser(out: TextIO, err: TextIO) -> argparse.ArgumentParser:
    description = "Explain the decision on a described request (POST /v1/evaluate)."
    parser = command_parser("signalgate explain", description, out, err)
    whom = parser.add_mutually_exclusive_group(required=True)
    whom.add_argument("--key-id", type=_key_id, help="judge with this key (its state and policies)")
    whom.add_argument("--policy", help="judge with this policy document: JSON, or @FILE")
    parser.add_argument("--client-ip", required=True, help="the address the request comes from")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", required=True, help="the request target, query included")
    parser.add_argument("--header", "-H", action="append", default=[], metavar="'NAME: VALUE'")
    parser.add_argument("--time", metavar="TS", help="RFC 3339; default now")
    parser.add_argument("--json", action="store_true", help="print the API's answer")
    parser.set_defaults(command="explain")
    return parser


def _evaluate_body(args: argparse.Namespace, err: TextIO) -> dict[str, Any]:
    prog = "signalgate explain"
    headers: dict[str, list[str]] = {}
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            usage(prog, err, f"--header {raw!r} must look like 'Name: value'")
        headers.setdefault(name.strip(), []).append(value.strip())
    request: dict[str, Any] = {"method": args.method, "path": args.path, "client_ip": args.client_ip}
    if headers:
        request["headers"] = headers
    if args.time:
        request["time"] = args.time
    body: dict[str, Any] = {"request": request}
    if args.key_id:
        body["key_id"] = args.key_id
    else:
        body["policy"] = json_argument(prog, "--policy", args.policy, err)
    return body


def _verdict(decision: Mapping[str, Any]) -> str:
    word = "allow" if decision["allowed"] else "deny"
    detail = f" ({decision['detail']})" if decision.get("detail") else ""
    return f"{word} {decision['reason']} {decision['status']}{detail}"


async def _explain(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    answer = await api.call("POST", api.url("v1", "evaluate"), json_body=body)
    if args.json:
        out.write(json.dumps(answer, indent=2) + "\n")
        return
    request = answer["request"]
    lines = [f"decision:  {_verdict(answer['decision'])}  (decided at: {answer['stage']})"]
    lines.append(
        f"request:   {request['method']} {request['path'] or '-'} from {request['client_ip'] or '-'}"
    )
    for name, value in request["facts"].items():
        lines.append(f"fact:      {name} = {value}")
    if answer["key"] is not None:
        key = answer["key"]
        lines.append(f"key:       {key['id']} ({key['owner']}, {key['status']}): {_verdict(key['outcome'])}")
    for part in answer["parts"]:
        lines.append(f"part:      {part['part']:<10} {_verdict(part)}")
    candidate = answer.get("candidate")
    if candidate is not None:
        outcome = candidate["outcome"] or "not compared (the key itself was refused)"
        lines.append(f"candidate: {_verdict(candidate['decision'])}  [{outcome}]")
        for part in candidate["parts"]:
            lines.append(f"  part:    {part['part']:<10} {_verdict(part)}")
    out.write("\n".join(lines) + "\n")


# --- candidate policies -------------------------------------------------------------------------


def run_candidate(argv: Sequence[str], environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    commands: dict[str, Command] = {
        "show": _candidate_show,
        "set": _candidate_set,
        "clear": _candidate_clear,
        "promote": _promote,
    }
    prog = "signalgate candidate"
    bodies: dict[str, Body] = {"set": _candidate_body}
    return _runner(prog, _candidate_parser, commands, argv, environ, out, err, bodies)


def _candidate_body(args: argparse.Namespace, err: TextIO) -> dict[str, Any]:
    return {"candidate_policy": json_argument("signalgate candidate", "--policy", args.policy, err)}


def _candidate_parser(out: TextIO, err: TextIO) -> argparse.ArgumentParser:
    description = "A key's candidate (dry-run) policy, through the admin API."
    parser = command_parser("signalgate candidate", description, out, err)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    show = sub.add_parser("show", help="what the candidate would have changed since it was set")
    show.add_argument("id", type=_key_id)
    show.add_argument("--json", action="store_true")
    put = sub.add_parser("set", help="set (or replace) the key's candidate policy")
    put.add_argument("id", type=_key_id)
    put.add_argument("--policy", required=True, help="policy document as JSON, or @FILE")
    sub.add_parser("clear", help="remove the key's candidate policy").add_argument("id", type=_key_id)
    sub.add_parser("promote", help="make the candidate the key's policy").add_argument("id", type=_key_id)
    return parser


async def _candidate_show(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    summary = await api.call("GET", api.url("v1", "keys", args.id, "candidate"))
    if args.json:
        out.write(json.dumps(summary, indent=2) + "\n")
        return
    lines = [
        f"key:         {summary['key_id']}",
        f"since:       {summary['since']}",
        f"policy:      {json.dumps(summary['policy'], sort_keys=True)}",
        f"candidate:   {json.dumps(summary['candidate_policy'], sort_keys=True)}",
        f"evaluated:   {summary['evaluated']}",
        f"agree:       {summary['agree']}",
        f"would_deny:  {summary['would_deny']}  (allowed now, refused by the candidate)",
        f"would_allow: {summary['would_allow']}  (refused now, allowed by the candidate)",
    ]
    for row in summary["by_reason"]:
        ids = ", ".join(row["request_ids"])
        lines.append(f"  {row['outcome']:<12} {row['reason']:<26} {row['count']:>6}  e.g. {ids}")
    if not summary.get("decision_log", True):
        lines.append("note: this instance does not record decisions (decision_log = false)")
    out.write("\n".join(lines) + "\n")


async def _candidate_set(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    await api.call("PATCH", api.url("v1", "keys", args.id), json_body=body)
    out.write(f"Key {args.id} has a candidate policy now: evaluated on every request, never enforced.\n")


async def _candidate_clear(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    await api.call("PATCH", api.url("v1", "keys", args.id), json_body={"candidate_policy": None})
    out.write(f"Key {args.id} has no candidate policy now.\n")


async def _promote(api: Api, args: argparse.Namespace, body: Any, out: TextIO, err: TextIO) -> None:
    key = await api.call("POST", api.url("v1", "keys", args.id, "candidate", "promote"))
    out.write(
        f"Key {args.id} enforces its former candidate now: {json.dumps(key['policy'], sort_keys=True)}\n"
    )
