"""Revocations during load: how long until a revoked key is refused, while the gate is busy.

While the load runs against the ``hot`` gate, keys it has never been loaded with (the ``victims``) are
revoked one at a time. For each: one request with the key (allowed, so the gate has it cached), then
``POST /v1/keys/{id}/revoke``, while a probe sends requests with the key back to back on one
keep-alive connection. The revocations alternate between two routes:

- ``same``: through the loaded instance's own admin API, which answers once every one of its workers
  enforces the change: no probe sent after that answer may be allowed (``allowed_after_ack``).
- ``other``: through the admin API of another instance on the same database (when the run has one),
  so the change reaches the loaded gate through PostgreSQL's NOTIFY and its change feed, as across a
  fleet; its answer says nothing about the loaded gate, so probes allowed after it are expected.

Per revocation: ``propagation`` is the time from sending the revoke to sending the first probe that
was refused (so it is late by at most one probe's round trip, itself queued behind the load), ``ack``
the time the admin API took to answer.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from proxy.bench.loadgen import read_answer
from proxy.bench.report import Row
from proxy.bench.rounds import Meter, Target
from proxy.core import keys

__all__ = ["lines", "measure", "summarise"]

GIVE_UP = 10.0  # seconds of probing before a revocation counts as not propagated


class _Probe:
    def __init__(self, url: str, path: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.netloc, self.path = parts.netloc, path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, key: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.netloc}\r\nX-API-Key: {key}\r\n\r\n".encode()
        )
        status, keep = await read_answer(self.reader)
        if not keep:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def _revoke_each(
    url: str, path: str, admins: dict[str, str], token: str, victims: Sequence[str], stop: threading.Event
) -> list[dict[str, Any]]:
    probe = _Probe(url, path)
    out: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        try:
            routes = list(admins)
            for number, key in enumerate(victims):
                if stop.is_set():
                    break
                route = routes[number % len(routes)]
                admin = admins[route]
                if await probe.send(key) != 200:
                    out.append({"error": "the key was not allowed before its revocation"})
                    continue
                key_id = keys.parse(key).key_id
                acked: list[float] = []

                async def revoke(key_id: str = key_id, acked: list[float] = acked, admin: str = admin) -> int:
                    async with session.post(f"{admin}/v1/keys/{key_id}/revoke") as answer:
                        await answer.read()
                        acked.append(time.perf_counter())
                        return answer.status

                sent = time.perf_counter()
                task = asyncio.create_task(revoke())
                refused_at = None
                allowed_after_ack = probes = 0
                while time.perf_counter() - sent < GIVE_UP:
                    at = time.perf_counter()
                    status = await probe.send(key)
                    probes += 1
                    if status == 401:
                        refused_at = at
                        break
                    if acked and at > acked[0]:
                        allowed_after_ack += 1
                admin_status = await task
                out.append(
                    {
                        "route": route,
                        "key_id": key_id,
                        "admin_status": admin_status,
                        "propagation_ms": None
                        if refused_at is None
                        else round((refused_at - sent) * 1000, 3),
                        "ack_ms": round((acked[0] - sent) * 1000, 3),
                        "probes": probes,
                        "allowed_after_ack": allowed_after_ack,
                    }
                )
                await asyncio.sleep(0.05)
        finally:
            probe.close()
    return out


def measure(
    meter: Meter, hot: Target, other_admin: str | None, token: str, victims: Sequence[str]
) -> tuple[Row, dict[str, Any]]:
    """The load on ``hot`` during the revocations (its row, named ``revocation``) and their figures."""
    stop = threading.Event()
    found: dict[str, Any] = {}

    def load() -> None:
        try:
            found["row"] = meter.run(hot, label="[revocation] load")
        except BaseException as exc:  # reported below, in the caller's thread
            found["error"] = exc
        finally:
            stop.set()

    thread = threading.Thread(target=load, name="revocation-load")
    thread.start()
    try:
        admins = {"same": hot.server.admin}
        if other_admin:
            admins["other"] = other_admin
        events = asyncio.run(_revoke_each(hot.server.url, hot.plan.path, admins, token, victims, stop))
    finally:
        thread.join()
    if "error" in found:
        raise found["error"]
    row: Row = found["row"]
    row.scenario = "revocation"
    return row, {"revocations": len(events), "routes": {r: summarise(events, r) for r in admins}}


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def summarise(events: list[dict[str, Any]], route: str) -> dict[str, Any]:
    mine = [e for e in events if e.get("route") == route]
    done = [e for e in mine if e.get("propagation_ms") is not None]
    times = [e["propagation_ms"] for e in done]
    acks = [e["ack_ms"] for e in done]
    stats: dict[str, Any] = {
        "revocations": len(mine),
        "refused": len(done),
        "give_up_s": GIVE_UP,
        "allowed_after_ack": sum(e.get("allowed_after_ack", 0) for e in mine),
        "events": mine,
    }
    if times:
        stats["propagation_ms"] = {
            "p50": _pct(times, 50),
            "p90": _pct(times, 90),
            "p99": _pct(times, 99),
            "max": max(times),
            "mean": round(statistics.fmean(times), 3),
        }
        stats["ack_ms"] = {"p50": _pct(acks, 50), "max": max(acks)}
    return stats


ROUTES = {"same": "the loaded instance's admin API", "other": "another instance's admin API"}


def lines(found: dict[str, Any]) -> list[str]:
    out = [f"revocations during load ({found['revocations']}), time until the revoked key was refused:"]
    for route, stats in found["routes"].items():
        head = f"  through {ROUTES[route]}: {stats['refused']}/{stats['revocations']} refused"
        if not stats.get("propagation_ms"):
            out.append(head)
            continue
        p, a = stats["propagation_ms"], stats["ack_ms"]
        out.append(
            f"{head}; p50 {p['p50']:.1f} ms, p90 {p['p90']:.1f}, p99 {p['p99']:.1f}, max {p['max']:.1f}; "
            f"admin answer p50 {a['p50']:.1f} ms; allowed after the answer: {stats['allowed_after_ack']}"
            + (" (expected: the answer is the other instance's)" if route == "other" else "")
        )
    return out
