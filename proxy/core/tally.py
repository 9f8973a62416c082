"""One worker's counts for the metrics: plain integers and dicts, cheap enough for every request.

The supervisor asks each worker for a ``snapshot()`` (plain values, sent over the worker's pipe) and
renders the sum in the Prometheus text format (``proxy.metrics``). Counting here, rather than through
prometheus_client's multiprocess mode in every worker, costs a dict update per request instead of a
lock and a memory-mapped write per sample (measured: about 0.2 against 5 µs per request for the
same set).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from proxy.core.trace import Trace

__all__ = ["DECISION_BUCKETS", "UPSTREAM_BUCKETS", "Histogram", "Tally"]

# Seconds. Deciding takes tens of microseconds on a cache hit, a database round trip on a miss.
DECISION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """Observations per bucket (``counts[i]`` for values up to ``bounds[i]``, the last for the rest)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> tuple[tuple[float, ...], list[int], float]:
        return self.bounds, list(self.counts), self.sum


class Tally:
    """Requests by decision and reason (and by key, for keys marked for it), latencies, upstream
    status classes, candidate disagreements."""

    __slots__ = ("candidates", "decision", "keys", "requests", "upstream", "upstream_classes")

    def __init__(self) -> None:
        self.requests: dict[tuple[bool, str], int] = {}
        self.keys: dict[tuple[str, bool, str], int] = {}
        self.candidates: dict[tuple[str, str], int] = {}
        self.decision = Histogram(DECISION_BUCKETS)
        self.upstream = Histogram(UPSTREAM_BUCKETS)
        self.upstream_classes: dict[int, int] = {}

    def count(self, trace: Trace) -> None:
        decision = trace.decision
        key = (decision.allowed, decision.reason)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        if trace.key_metrics and trace.key_id is not None:
            per_key = (trace.key_id, decision.allowed, decision.reason)
            self.keys[per_key] = self.keys.get(per_key, 0) + 1
        self.decision.observe(trace.decision_seconds)
        if trace.upstream_seconds is not None:
            self.upstream.observe(trace.upstream_seconds)
        if trace.upstream_status is not None:
            group = trace.upstream_status // 100
            self.upstream_classes[group] = self.upstream_classes.get(group, 0) + 1
        if trace.candidate is not None and trace.disagrees:
            outcome = (trace.candidate_outcome or "", trace.candidate.reason)
            self.candidates[outcome] = self.candidates.get(outcome, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """Plain values (picklable): label tuples of strings, counts, histogram buckets."""
        return {
            "requests": {(_verdict(a), str(r)): n for (a, r), n in self.requests.items()},
            "key_requests": {(k, _verdict(a), str(r)): n for (k, a, r), n in self.keys.items()},
            "candidates": {(o, str(r)): n for (o, r), n in self.candidates.items()},
            "decision_seconds": self.decision.snapshot(),
            "upstream_seconds": self.upstream.snapshot(),
            "upstream_classes": {f"{group}xx": n for group, n in self.upstream_classes.items()},
        }


def _verdict(allowed: bool) -> str:
    return "allow" if allowed else "deny"
