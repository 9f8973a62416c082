"""``signalgate keys ...`` and ``jobs ...`` driving a real admin app on loopback, backed by real
PostgreSQL; each command runs in a worker thread (``tests/clis.py``) while the app keeps serving."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.admin.api import make_admin_app
from proxy.admin.jobsclient import run_jobs
from proxy.admin.keysclient import run_keys
from proxy.core import keys
from proxy.core.jobs import JobStatus
from proxy.core.model import KeyStatus
from proxy.db.jobs import Jobs
from proxy.db.store import Store
from tests.clis import Result, environ_for, run_cli
from tests.harness import ADMIN_TOKEN, Gate
from tests.upstream_app import run_app

Run = Callable[..., Awaitable[Result]]


@pytest.fixture
async def admin_url(store: Store) -> AsyncIterator[str]:
    app = make_admin_app(store=store, token_hash=hashlib.sha256(ADMIN_TOKEN.encode()).digest())
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        yield str(client.make_url(""))


@pytest.fixture
def run(admin_url: str) -> Run:
    async def call(*argv: str, environ: dict[str, str] | None = None) -> Result:
        return await run_cli(run_keys, argv, environ if environ is not None else environ_for(admin_url))

    return call


def created_id(result: Result) -> str:
    assert result.code == 0, result
    match = re.search(r"Created key ([0-9a-f]{16})", result.out)
    assert match, result
    return match.group(1)


async def test_create_prints_the_key_once_with_a_warning(run: Run, store: Store) -> None:
    result = await run("create", "--name", "ci runner", "--owner", "team-a", "--label", "env=prod")
    key_id = created_id(result)
    printed = re.findall(r"sg_[0-9a-f]{16}_[0-9a-f]{48}", result.out)
    assert len(printed) == 1
    assert "only time" in result.out and "cannot be retrieved again" in result.out
    record = await store.get_key(key_id)
    assert record is not None
    assert keys.matches(keys.parse(printed[0]), record.secret_hash)
    assert record.name == "ci runner" and record.owner == "team-a" and dict(record.labels) == {"env": "prod"}

    shown = await run("show", key_id)
    assert shown.code == 0, shown
    assert printed[0] not in shown.out and printed[0].rsplit("_", 1)[1] not in shown.out
    listed = await run("list")
    assert printed[0] not in listed.out


async def test_create_reads_policy_from_a_file_and_passes_every_option(
    run: Run, store: Store, tmp_path: Path
) -> None:
    policy = {"networks": {"allow": ["10.0.0.0/8"]}, "routes": [{"path": "/v1/**"}]}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    result = await run(
        "create",
        "--name", "n",
        "--owner", "o",
        "--policy", f"@{path}",
        "--label", "a=1",
        "--label", "b=x=y",
        "--not-before", "2026-01-01T00:00:00Z",
        "--expires-at", "2031-01-01T00:00:00Z",
    )  # fmt: skip
    record = await store.get_key(created_id(result))
    assert record is not None
    assert dict(record.policy) == policy
    assert dict(record.labels) == {"a": "1", "b": "x=y"}
    assert record.not_before is not None and record.not_before.year == 2026
    assert record.expires_at is not None and record.expires_at.year == 2031

    inline = await run("create", "--name", "n2", "--owner", "o", "--policy", '{"regions": {"allow": ["DE"]}}')
    again = await store.get_key(created_id(inline))
    assert again is not None and dict(again.policy) == {"regions": {"allow": ["DE"]}}


async def test_server_rejections_print_the_servers_message(run: Run, store: Store) -> None:
    result = await run(
        "create", "--name", "n", "--owner", "o", "--policy", '{"networks": {"allow": ["10.0.0.300/8"]}}'
    )
    assert result.code == 1 and result.out == ""
    assert "policy.networks.allow[0]" in result.err and "HTTP 422" in result.err
    assert await store.list_keys() == []

    bad_time = await run("create", "--name", "n", "--owner", "o", "--expires-at", "next week")
    assert bad_time.code == 1 and "expires_at" in bad_time.err

    missing = await run("show", "0123456789abcdef")
    assert (
        missing.code == 1 and "no key with id '0123456789abcdef'" in missing.err and "HTTP 404" in missing.err
    )


async def test_list_prints_an_aligned_table_and_filters(run: Run) -> None:
    empty = await run("list")
    assert empty.code == 0 and empty.out == "No keys.\n"
    first = created_id(await run("create", "--name", "short", "--owner", "team-a"))
    second = created_id(
        await run(
            "create",
            "--name",
            "a much longer name",
            "--owner",
            "b",
            "--expires-at",
            "2031-05-01T12:00:00+02:00",
        )
    )
    assert (await run("suspend", second)).code == 0

    listed = await run("list")
    assert listed.code == 0, listed
    lines = listed.out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "OWNER", "STATUS", "EXPIRES"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {first, second}
    for column in ("NAME", "OWNER", "STATUS", "EXPIRES"):
        start = lines[0].index(column)
        for line in lines[1:]:
            assert line[start - 2 : start] == "  " and line[start] != " ", (column, lines)
    assert "suspended" in rows[second] and "2031-05-01T10:00:00Z" in rows[second]
    assert "active" in rows[first] and "never" in rows[first]

    by_owner = await run("list", "--owner", "team-a", "--json")
    assert [item["id"] for item in json.loads(by_owner.out)] == [first]
    by_status = await run("list", "--status", "suspended")
    assert [line.split()[0] for line in by_status.out.splitlines()[1:]] == [second]


async def test_show_suspend_resume_revoke_delete(run: Run, store: Store) -> None:
    key_id = created_id(await run("create", "--name", "life", "--owner", "o", "--label", "tier=gold"))
    shown = await run("show", key_id)
    assert shown.code == 0
    fields = dict(line.split(":", 1) for line in shown.out.splitlines())
    assert fields["id"].strip() == key_id and fields["status"].strip() == "active"
    assert fields["labels"].strip() == "tier=gold" and fields["expires_at"].strip() == "never"
    as_json = json.loads((await run("show", key_id, "--json")).out)
    assert as_json["id"] == key_id and "key" not in as_json and "secret_hash" not in as_json

    assert (await run("suspend", key_id)).out == f"Suspended key {key_id}.\n"
    assert (await store.get_key(key_id)).status == KeyStatus.SUSPENDED  # type: ignore[union-attr]
    assert (await run("resume", key_id)).code == 0
    assert (await store.get_key(key_id)).status == KeyStatus.ACTIVE  # type: ignore[union-attr]
    revoked = await run("revoke", key_id)
    assert revoked.code == 0 and revoked.out == f"Revoked key {key_id}.\n"
    assert (await store.get_key(key_id)).status == KeyStatus.REVOKED  # type: ignore[union-attr]
    refused = await run("resume", key_id)
    assert refused.code == 1 and "revoked" in refused.err and "HTTP 409" in refused.err

    assert (await run("delete", key_id)).code == 0
    assert await store.get_key(key_id) is None
    assert (await run("delete", key_id)).code == 1


async def test_missing_or_wrong_token(admin_url: str, run: Run) -> None:
    missing = await run("list", environ=environ_for(admin_url, token=None))
    assert missing.code == 2 and missing.out == ""
    assert "SIGNALGATE_ADMIN_TOKEN" in missing.err
    blank = await run("list", environ=environ_for(admin_url, token="  "))
    assert blank.code == 2
    wrong = await run("list", environ=environ_for(admin_url, token="not-the-token"))
    assert wrong.code == 1 and "invalid admin token" in wrong.err and "HTTP 401" in wrong.err
    assert "not-the-token" not in wrong.err


@pytest.fixture
def refusing_port() -> Iterator[int]:
    # Bound but not listening: connecting is refused, and no other process can take the port meanwhile.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_connection_refused_is_one_clear_line(refusing_port: int) -> None:
    url = f"http://127.0.0.1:{refusing_port}"
    result = await run_cli(run_keys, ["list"], environ_for(url))
    assert result.code == 1 and result.out == ""
    assert result.err.count("\n") == 1
    assert "cannot connect to the admin API" in result.err and "connection refused" in result.err
    assert url in result.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "subcommand is required"),
        (["show", "not-an-id"], "is not a key id"),
        (["revoke"], "required"),
        (["create", "--name", "n"], "--owner"),
        (["create", "--name", "n", "--owner", "o", "--label", "novalue"], "KEY=VALUE"),
        (["create", "--name", "n", "--owner", "o", "--label", "a=1", "--label", "a=2"], "twice"),
        (["create", "--name", "n", "--owner", "o", "--policy", "{nope"], "not valid JSON"),
        (["create", "--name", "n", "--owner", "o", "--policy", "@/nonexistent/policy.json"], "cannot read"),
        (["list", "--status", "gone"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
async def test_usage_errors_exit_2_without_calling_the_api(
    refusing_port: int, argv: list[str], message: str
) -> None:
    result = await run_cli(run_keys, argv, environ_for(f"http://127.0.0.1:{refusing_port}"))
    assert result.code == 2, result
    assert message in result.err, result
    assert "cannot connect" not in result.err


async def test_help_goes_to_out_and_exits_0() -> None:
    result = await run_cli(run_keys, ["--help"], {})
    assert result.code == 0 and "create" in result.out and "revoke" in result.out and result.err == ""
    bad_url = await run_cli(
        run_keys, ["list"], {"SIGNALGATE_ADMIN_URL": "ftp://x", "SIGNALGATE_ADMIN_TOKEN": "t"}
    )
    assert bad_url.code == 2 and "SIGNALGATE_ADMIN_URL" in bad_url.err


# --- jobs, and keys bound to them or rotated ------------------------------------------------------


async def jobs(admin_url: str, *argv: str) -> Result:
    return await run_cli(run_jobs, argv, environ_for(admin_url))


def opened_id(result: Result) -> str:
    assert result.code == 0, result
    match = re.search(r"Opened job ([0-9a-f]{16})", result.out)
    assert match, result
    return match.group(1)


async def test_open_issue_list_show_and_close_a_job(admin_url: str, run: Run, store: Store) -> None:
    deadline = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    job_id = opened_id(
        await jobs(admin_url, "open", "--name", "rotate creds", "--owner", "secops", "--deadline", deadline)
    )
    key_id = created_id(
        await run("create", "--name", "workflow", "--owner", "secops", "--job", job_id, "--can-close-job")
    )
    record = await store.get_key(key_id)
    assert record is not None and (record.job_id, record.can_close_job) == (job_id, True)

    listed = await jobs(admin_url, "list", "--status", "open")
    assert listed.code == 0 and re.search(
        rf"^{job_id}\s+rotate creds\s+secops\s+open\s+{deadline}$", listed.out, re.M
    )
    shown = await jobs(admin_url, "show", job_id)
    assert shown.code == 0 and "status:     open" in shown.out and key_id in shown.out

    closed = await jobs(admin_url, "close", job_id)
    assert closed.code == 0 and f"revoked 1 keys ({key_id})" in closed.out
    assert (await Jobs(store).get_job(job_id)).status is JobStatus.CLOSED  # type: ignore[union-attr]
    assert (await store.get_key(key_id)).status is KeyStatus.REVOKED  # type: ignore[union-attr]
    again = await jobs(admin_url, "close", job_id)
    assert again.code == 0 and "no key left to revoke" in again.out
    assert (await jobs(admin_url, "list", "--status", "open")).out == "No jobs.\n"


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["open", "--name", "n", "--owner", "o", "--deadline", "2020-01-01T00:00:00Z"],
            1,
            "deadline: must be in the future",
        ),
        (["show", "0123456789abcdef"], 1, "no job with id"),
        (["show", "nope"], 2, "is not a job id"),
        ([], 2, "a subcommand is required (open, list, show, close)"),
    ],
)
async def test_job_errors_are_one_clear_line(
    admin_url: str, argv: list[str], code: int, message: str
) -> None:
    result = await jobs(admin_url, *argv)
    assert result.code == code and message in result.err, result


async def test_keys_rotate_prints_the_new_secret_once(run: Run, store: Store) -> None:
    key_id = created_id(await run("create", "--name", "n", "--owner", "o", "--ttl-s", "600"))
    before = await store.get_key(key_id)
    rotated = await run("rotate", key_id, "--grace-s", "120")
    assert rotated.code == 0, rotated
    printed = re.findall(r"sg_[0-9a-f]{16}_[0-9a-f]{48}", rotated.out)
    assert len(printed) == 1 and "the old secret works until" in rotated.out and "only time" in rotated.out
    after = await store.get_key(key_id)
    assert after is not None and before is not None
    assert (
        keys.matches(keys.parse(printed[0]), after.secret_hash) and after.previous_hash == before.secret_hash
    )
    assert before.expires_at is not None
    assert abs(before.expires_at - before.created_at - timedelta(seconds=600)) < timedelta(seconds=1)
    refused = await run("rotate", key_id, "--grace-s", "-1")
    assert refused.code == 1 and "grace_s: must be from 0 to 86400" in refused.err


async def test_update_changes_policy_expiry_name_and_labels(run: Run, store: Store, tmp_path: Path) -> None:
    key_id = created_id(
        await run("create", "--name", "n", "--owner", "o", "--label", "env=dev", "--label", "tier=gold")
    )
    tighter = {"networks": {"allow": ["10.1.0.0/16"]}, "routes": [{"methods": ["GET"], "path": "/v1/**"}]}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(tighter))
    result = await run(
        "update", key_id,
        "--policy", f"@{path}",
        "--expires-at", "2031-02-03T04:05:06Z",
        "--name", "renamed",
        "--label", "env=prod",
        "--remove-label", "tier",
        "--label", "team=a",
    )  # fmt: skip
    assert result.code == 0, result
    assert result.out == f"Updated key {key_id}: expires_at, labels, name, policy.\n"
    record = await store.get_key(key_id)
    assert record is not None and dict(record.policy) == tighter and record.name == "renamed"
    assert dict(record.labels) == {"env": "prod", "team": "a"}  # merged, tier removed
    assert record.expires_at is not None and record.expires_at.year == 2031

    inline = await run(
        "update", key_id, "--policy", '{"regions": {"allow": ["DE"]}}', "--expires-at", "never"
    )
    assert inline.code == 0, inline
    record = await store.get_key(key_id)
    assert record is not None and dict(record.policy) == {"regions": {"allow": ["DE"]}}
    assert record.expires_at is None

    refused = await run("update", key_id, "--policy", '{"networks": {"allow": ["10.0.0.1/8"]}}')
    assert refused.code == 1 and "policy.networks.allow[0]" in refused.err and "HTTP 422" in refused.err


async def test_update_without_a_change_is_a_usage_error(refusing_port: int) -> None:
    result = await run_cli(
        run_keys, ["update", "0123456789abcdef"], environ_for(f"http://127.0.0.1:{refusing_port}")
    )
    assert result.code == 2 and "nothing to change" in result.err


async def test_a_key_created_expired_is_refused_unless_allowed(run: Run) -> None:
    refused = await run("create", "--name", "n", "--owner", "o", "--expires-at", "2020-01-01T00:00:00Z")
    assert refused.code == 1 and "could never be used" in refused.err and "HTTP 422" in refused.err
    allowed = await run(
        "create", "--name", "n", "--owner", "o", "--expires-at", "2020-01-01T00:00:00Z", "--allow-expired"
    )
    assert allowed.code == 0, allowed


async def test_pointed_at_the_proxy_port_it_says_this_is_not_the_admin_api(proxy: Gate) -> None:
    result = await run_cli(run_keys, ["list"], environ_for(proxy.url))
    assert result.code == 1 and result.out == ""
    assert result.err.startswith(
        f"signalgate keys: error: this is not the signalgate admin API: {proxy.url} answered like the"
        " signalgate proxy (HTTP 401 Unauthorized); is"
    ), result.err
    assert "SIGNALGATE_ADMIN_URL" in result.err


async def test_pointed_at_another_server_it_says_this_is_not_the_admin_api() -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    async with run_app(app) as url:
        listed = await run_cli(run_keys, ["list"], environ_for(url))
        shown = await run_cli(run_keys, ["show", "0123456789abcdef"], environ_for(url))
    assert listed.code == 1 and "this is not the signalgate admin API" in listed.err, listed
    assert "answered like something else (HTTP 200, not a JSON object)" in listed.err
    assert shown.code == 1 and "this is not the signalgate admin API" in shown.err, shown
