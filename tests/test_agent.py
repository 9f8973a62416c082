"""Context rules and schedules end to end: a real proxy, PostgreSQL and upstream, the proxy's clock
moved by the test instead of waiting.

The first test is the seed's AI-agent case, told as the story it is.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from tests.attestations import ed25519_signer, jwks, sign_request
from tests.harness import Gate, MovableClock

AGENT_POLICY = {
    "routes": [{"methods": ["POST"], "path": "/db/query"}],
    "context": {
        "headers": {
            "X-Task-Scope": {"in": ["reporting", "billing-read"]},
            "X-Data-Sensitivity": {"max": "low", "order": ["public", "low", "medium", "high"]},
        },
        "forward": False,
    },
}


async def ask(proxy: Gate, key: str, *headers: tuple[str, str], method: str = "POST") -> tuple[int, Any]:
    sent = [("X-API-Key", key), *headers]
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{proxy.url}/db/query", headers=sent, data=b"SELECT 1") as resp,
    ):
        return resp.status, await resp.json()


def reason(answer: tuple[int, Any]) -> tuple[int, str]:
    status, body = answer
    return status, body.get("reason", "forwarded") if status != 200 else "forwarded"


async def test_an_ai_agent_may_query_only_inside_its_task_scope_at_low_sensitivity(proxy: Gate) -> None:
    # The operator gives the agent a key that may POST /db/query only with a task scope and a
    # sensitivity label the policy accepts; the labels are for signalgate, not for the database.
    agent = await proxy.create_key(name="reporting agent", owner="ai-platform", policy=AGENT_POLICY)
    key = agent["key"]

    # A tool call inside its task, on low-sensitivity data: forwarded, without the labels.
    status, echoed = await ask(proxy, key, ("X-Task-Scope", "reporting"), ("X-Data-Sensitivity", "low"))
    assert status == 200
    upstream_saw = {name.lower() for name, _ in echoed["headers"]}
    assert not upstream_saw & {"x-task-scope", "x-data-sensitivity", "x-api-key"}

    # The next call reaches for medium-sensitivity data: refused on that very request.
    assert reason(await ask(proxy, key, ("X-Task-Scope", "reporting"), ("X-Data-Sensitivity", "medium"))) == (
        403,
        "context_denied",
    )
    # A task outside its scope, an unlabelled call, a made-up level: each refused.
    assert reason(await ask(proxy, key, ("X-Task-Scope", "admin"), ("X-Data-Sensitivity", "low"))) == (
        403,
        "context_denied",
    )
    assert reason(await ask(proxy, key, ("X-Data-Sensitivity", "public"))) == (403, "context_missing")
    assert reason(await ask(proxy, key, ("X-Task-Scope", "reporting"), ("X-Data-Sensitivity", "secret"))) == (
        403,
        "context_denied",
    )
    # Relabelling by adding a second, harmless-looking label does not work either.
    status, body = await ask(
        proxy,
        key,
        ("X-Task-Scope", "reporting"),
        ("X-Data-Sensitivity", "low"),
        ("X-Data-Sensitivity", "low"),
    )
    assert (status, body["reason"]) == (403, "context_denied") and "given 2 times" in body["error"]

    # The operator narrows the task scope: the very next call under the old scope is refused.
    narrowed = copy.deepcopy(AGENT_POLICY)
    narrowed["context"]["headers"]["X-Task-Scope"] = {"in": ["billing-read"]}  # type: ignore[index]
    status, body = await proxy.admin_call("PATCH", f"/v1/keys/{agent['id']}", json={"policy": narrowed})
    assert status == 200, body
    assert reason(await ask(proxy, key, ("X-Task-Scope", "reporting"), ("X-Data-Sensitivity", "low"))) == (
        403,
        "context_denied",
    )
    assert reason(await ask(proxy, key, ("X-Task-Scope", "billing-read"), ("X-Data-Sensitivity", "low"))) == (
        200,
        "forwarded",
    )


async def test_context_headers_pass_on_when_forward_is_true(proxy: Gate) -> None:
    policy = {"context": {"headers": {"X-Task-Scope": {"in": ["reporting"]}}}}
    key = (await proxy.create_key(policy=policy))["key"]
    status, echoed = await ask(proxy, key, ("X-Task-Scope", "reporting"))
    assert status == 200 and ["X-Task-Scope", "reporting"] in echoed["headers"]


async def test_a_signed_context_header_must_be_covered_by_the_request_signature(proxy: Gate) -> None:
    """The agent signs its task scope into its RFC 9421 signature: it cannot relabel a request after."""
    agent = ed25519_signer("agent-1")
    policy = {
        "context": {"headers": {"X-Task-Scope": {"in": ["reporting", "billing-read"], "signed": True}}},
        "signature": {"keys": jwks(agent)},
    }
    key = (await proxy.create_key(policy=policy))["key"]
    url = f"{proxy.url}/db/query"

    async def send(headers: dict[str, str]) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, headers=headers, data=b"SELECT 1") as resp,
        ):
            return resp.status, await resp.json()

    signed = sign_request(
        agent, "POST", url, {"X-API-Key": key, "X-Task-Scope": "reporting"}, body=b"SELECT 1"
    )
    status, echoed = await send(signed)
    assert status == 200, echoed
    # Unsigned: refused, whatever the label says.
    status, body = await send({"X-API-Key": key, "X-Task-Scope": "reporting"})
    assert (status, body["reason"]) == (403, "context_denied")
    assert "not covered by a valid request signature" in body["error"]
    # Signed, but the label added afterwards: the signature verifies, and does not cover it.
    later = sign_request(agent, "POST", url, {"X-API-Key": key}, body=b"SELECT 1")
    status, body = await send({**later, "X-Task-Scope": "reporting"})
    assert (status, body["reason"]) == (403, "context_denied")
    # Signed, then relabelled: the signature no longer verifies, so nothing is covered.
    relabelled = sign_request(
        agent, "POST", url, {"X-API-Key": key, "X-Task-Scope": "reporting"}, body=b"SELECT 1"
    )
    status, body = await send({**relabelled, "X-Task-Scope": "billing-read"})
    assert (status, body["reason"]) == (403, "context_denied")


def berlin(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Europe/Berlin"))


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("2026-12-02T10:00", (200, "forwarded")),  # Wednesday, office hours
        ("2026-12-02T18:00", (403, "outside_schedule")),  # end excluded
        ("2026-12-05T10:00", (403, "outside_schedule")),  # Saturday
        ("2026-03-30T08:00", (200, "forwarded")),  # the Monday after the clocks went forward
        ("2026-10-26T07:59", (403, "outside_schedule")),  # the Monday after they went back
    ],
)
async def test_a_schedule_is_judged_on_the_proxy_clock(
    proxy: Gate, clock: MovableClock, local: str, expected: tuple[int, str]
) -> None:
    policy = {"schedule": {"tz": "Europe/Berlin", "days": ["mon-fri"], "hours": ["08:00-18:00"]}}
    key = (await proxy.create_key(policy=policy))["key"]
    clock.offset = berlin(local) - datetime.now(UTC)
    assert reason(await ask(proxy, key)) == expected
