"""The local scenarios, the short fixed set ``bench check`` runs, and the ratios computed per round.

Every scenario sends the same request (``GET /v1/items/42``, keep-alive) with the same rotation of
keys and client addresses, so the peers, the Python floor and signalgate do the same work on the wire
and differ only in what they do with it. A scenario is one server; the revocation scenario is a phase
of its own (``proxy.bench.revocation``) on the ``hot`` gate.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proxy.bench.servers import Harness, Server

__all__ = ["CHECK", "LOCAL", "RATIOS", "Ratio", "Scenario", "by_name", "ratios"]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str  # what it is, for the table and the plots
    start: Callable[[Harness], Server]
    keys: str = "hot"  # which key file the load rotates through
    tools: tuple[str, ...] = ()  # installed programs it needs; skipped with a note when missing
    peer: bool = False  # a reference other than signalgate (plotted side by side)
    gate: bool = False  # a signalgate serve: needs PostgreSQL with the keys and the GeoIP file


def _workers_n() -> int:
    return max(2, os.cpu_count() or 2)


LOCAL: tuple[Scenario, ...] = (
    Scenario("upstream", "the upstream directly (no proxy)", lambda h: h.upstream_server(), peer=True),
    Scenario("nginx", "nginx proxy_pass", lambda h: h.nginx("proxy"), tools=("nginx",), peer=True),
    Scenario(
        "nginx-map", "nginx with a 1,000-key map", lambda h: h.nginx("map"), tools=("nginx",), peer=True
    ),
    Scenario(
        "caddy", "Caddy with a 1,000-key header matcher", lambda h: h.caddy(), tools=("caddy",), peer=True
    ),
    Scenario(
        "aiohttp",
        "minimal aiohttp pass-through (the Python floor)",
        lambda h: h.python("aiohttp", "proxy.bench.pyservers", "proxy"),
        peer=True,
    ),
    Scenario(
        "passthrough",
        "signalgate's data plane, enforcement off",
        lambda h: h.python("passthrough", "proxy.bench.passthrough", f"--workers={h.workers}"),
    ),
    Scenario("hot", "signalgate, full policy, 1,000 keys cached", lambda h: h.signalgate("hot"), gate=True),
    Scenario(
        "cold",
        "signalgate, 20,000 keys, 16-entry cache (every request misses)",
        lambda h: h.signalgate("cold", cache_size="16"),
        keys="cold",
        gate=True,
    ),
    Scenario(
        "zipf",
        "signalgate, 100,000 keys with Zipf popularity, default cache",
        lambda h: h.signalgate("zipf"),
        keys="zipf",
        gate=True,
    ),
    Scenario(
        "hot-log",
        "hot with decisions logged as by default (a JSON line each, and the decision log in PostgreSQL)",
        lambda h: h.signalgate("hot-log", log_level="info", decision_log="true"),
        gate=True,
    ),
    Scenario(
        "hot-usage",
        "the hot gate, 1,000 keys with a usage limit (an upsert in PostgreSQL per request)",
        lambda h: h.same_gate("hot", "hot-usage"),
        keys="usage",
        gate=True,
    ),
    Scenario(
        "hot-rate",
        "the hot gate, 1,000 keys with a rate limit (a leaky bucket in the worker)",
        lambda h: h.same_gate("hot", "hot-rate"),
        keys="rate",
        gate=True,
    ),
    Scenario(
        "hot-wN",
        "hot with N workers (N = CPU count)",
        lambda h: h.signalgate("hot-wN", workers=_workers_n()),
        gate=True,
    ),
)

# ``signalgate bench check``: Python only (no peer needed), small key sets, so it runs anywhere quickly.
CHECK_NAMES = ("aiohttp", "passthrough", "hot", "cold")


def by_name(names: tuple[str, ...] | list[str]) -> list[Scenario]:
    known = {s.name: s for s in LOCAL}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; choose from {', '.join(known)}")
    return [known[n] for n in names]


CHECK = tuple(by_name(list(CHECK_NAMES)))


@dataclass(frozen=True)
class Ratio:
    """``top`` over ``bottom`` of one figure (``rps`` or ``cpu``: CPU µs per request), within one round."""

    top: str
    bottom: str
    figure: str  # "rps" | "cpu"

    @property
    def name(self) -> str:
        return f"{self.top}/{self.bottom} {'req/s' if self.figure == 'rps' else 'CPU/req'}"


RATIOS: tuple[Ratio, ...] = (
    Ratio("hot", "passthrough", "rps"),
    Ratio("hot", "passthrough", "cpu"),
    Ratio("passthrough", "aiohttp", "rps"),
    Ratio("passthrough", "aiohttp", "cpu"),
    Ratio("hot", "aiohttp", "rps"),
    Ratio("hot", "nginx-map", "rps"),
    Ratio("hot", "nginx-map", "cpu"),
    Ratio("hot", "caddy", "rps"),
    Ratio("hot", "caddy", "cpu"),
    Ratio("hot", "nginx", "cpu"),
    Ratio("hot-log", "passthrough", "rps"),
    Ratio("cold", "hot", "rps"),
    Ratio("zipf", "hot", "rps"),
    Ratio("hot-usage", "hot", "rps"),
    Ratio("hot-usage", "hot", "cpu"),
    Ratio("hot-rate", "hot", "rps"),
    Ratio("hot-rate", "hot", "cpu"),
    Ratio("hot-log", "hot", "rps"),
    Ratio("hot-log", "hot", "cpu"),
    Ratio("hot-wN", "hot", "rps"),
)


def ratios(figures: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Every ratio whose two scenarios were measured: ``figures[scenario]["rps"|"cpu"]``."""
    out: dict[str, float] = {}
    for ratio in RATIOS:
        top, bottom = figures.get(ratio.top), figures.get(ratio.bottom)
        if top is None or bottom is None or not bottom[ratio.figure]:
            continue
        out[ratio.name] = round(top[ratio.figure] / bottom[ratio.figure], 3)
    return out
