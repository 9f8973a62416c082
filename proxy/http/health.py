"""The proxy port's own health answer, for load balancers: ready only while this worker can enforce.

A load balancer probes the port it sends traffic to, so the answer is there, on a fixed path
(``health_path``, default ``/.signalgate/ready``), unauthenticated, and never forwarded. It is 200
only while every check passes (the composition root, ``proxy.dataplane``, names them: the change feed
caught up within ``max_stale``, PostgreSQL answering, an upstream configured), else 503 with the checks
that failed. The probe costs no decision line. Plain checks are read on every probe; an awaited one
(a database round trip) runs at most once per ``REUSE_FOR`` seconds, shared by concurrent probes, so a
flood of unauthenticated probes costs the database nothing more.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from proxy.core.trace import Trace
from proxy.http.request import Request

__all__ = ["REUSE_FOR", "Check", "Readiness"]

log = logging.getLogger("signalgate.health")

REUSE_FOR = 1.0  # seconds one evaluation of the checks answers every probe
Check = Callable[[], "bool | Awaitable[bool]"]
_HEADERS = [("Content-Type", "application/json; charset=utf-8"), ("Cache-Control", "no-store")]


class Readiness:
    """Answers the health path; ``checks`` by name, each true when this worker can rely on it."""

    def __init__(self, checks: Mapping[str, Check], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._checks = dict(checks)
        self._clock = clock
        self._reused: dict[str, asyncio.Future[bool]] = {}  # an awaited check's evaluation, by name
        self._at: dict[str, float] = {}  # when it began

    async def __call__(self, request: Request, trace: Trace) -> int:
        trace.quiet = True  # a probe, not an authorization decision: no decision line
        headers = [*_HEADERS, ("X-Request-Id", trace.request_id)]
        if request.method not in ("GET", "HEAD"):
            refusal = {
                "error": f"method {request.method} is not allowed here",
                "reason": "method_not_allowed",
            }
            request.respond(405, "Method Not Allowed", [*headers, ("Allow", "GET, HEAD")], _json(refusal))
            return 405
        results = await self.results()
        if all(results.values()):
            request.respond(200, "OK", headers, _json({"status": "ready"}))
            return 200
        body: dict[str, object] = {"status": "not_ready", "checks": results}
        request.respond(503, "Service Unavailable", headers, _json(body))
        return 503

    async def results(self) -> dict[str, bool]:
        """Each check's outcome: a plain check's from now, an awaited one's (a database round trip) from
        an evaluation at most ``REUSE_FOR`` seconds old, shared with concurrent probes."""
        names = list(self._checks)
        outcomes = await asyncio.gather(*(self._one(name) for name in names))
        return dict(zip(names, outcomes, strict=True))

    async def _one(self, name: str) -> bool:
        reused = self._reused.get(name)
        if reused is not None:
            if reused.done() and self._clock() - self._at[name] >= REUSE_FOR:
                del self._reused[name]
            else:
                return await asyncio.shield(reused)
        try:
            result = self._checks[name]()
            if inspect.isawaitable(result):
                self._reused[name] = future = asyncio.ensure_future(self._awaited(name, result))
                self._at[name] = self._clock()
                return await asyncio.shield(future)
        except Exception as exc:
            return self._failed(name, exc)
        return bool(result)

    async def _awaited(self, name: str, result: Awaitable[bool]) -> bool:
        try:
            return bool(await result)
        except Exception as exc:
            return self._failed(name, exc)

    def _failed(self, name: str, exc: Exception) -> bool:
        log.warning("health check %s failed: %s: %s", name, type(exc).__name__, exc)
        return False


def _json(document: object) -> bytes:
    return json.dumps(document).encode()
