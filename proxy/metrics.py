"""The instance's metrics in the Prometheus text format (prometheus_client shell).

Workers count in plain Python (``proxy.core.tally``, cache and writer counters) and hand a snapshot
to the supervisor when it asks, over the pipe it already has with each of them (``proxy.worker``);
``Metrics`` keeps the latest snapshot per worker slot and renders their sum. A worker that exits has
its last counts folded into the slot's retired totals, so counters never go backwards when a worker
is replaced (what it counted after its last snapshot is lost if it was killed; a worker stopping
cleanly sends a final one).

A snapshot is ``{"counters": {name: {labels: n}}, "histograms": {name: (bounds, counts, sum)},
"gauges": {name: {labels: value}}}``; names and label names are in ``METRICS``. Gauges are per worker
(label ``worker``) and disappear with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "METRICS", "Metrics", "empty_snapshot"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
PREFIX = "signalgate_"

# name -> (kind, help, label names)
METRICS: Mapping[str, tuple[str, str, tuple[str, ...]]] = {
    "requests": ("counter", "Requests answered, by decision and reason", ("decision", "reason")),
    "key_requests": (
        "counter",
        "Requests of keys labelled metrics=on, by key, decision and reason",
        ("key_id", "decision", "reason"),
    ),
    "candidate_disagreements": (
        "counter",
        "Decisions a candidate policy would have made otherwise (would_allow, would_deny), by the reason",
        ("outcome", "reason"),
    ),
    "upstream_responses": ("counter", "Upstream answers relayed, by status class", ("class",)),
    "decision_seconds": ("histogram", "Seconds from a request's head to its decision", ()),
    "upstream_seconds": ("histogram", "Seconds from forwarding a request to the end of its answer", ()),
    "cache_hits": ("counter", "Key lookups answered from a worker's cache", ()),
    "cache_misses": ("counter", "Key lookups the cache could not answer", ()),
    "cache_evictions": ("counter", "Cached keys pushed out by the cache's size", ()),
    "cache_invalidations": ("counter", "Cached keys dropped because the change feed announced a change", ()),
    "decisions_written": ("counter", "Decision records inserted into PostgreSQL from memory", ()),
    "decisions_spooled": ("counter", "Decision records written to the local spool", ()),
    "decisions_replayed": ("counter", "Decision records inserted into PostgreSQL from the spool", ()),
    "decisions_dropped": (
        "counter",
        "Decision records dropped, by kind (sampled, allowed, refused: spool bound; memory: buffer bound)",
        ("kind",),
    ),
    "jwks_fetches": ("counter", "JWKS documents fetched from attestation issuers", ()),
    "jwks_fetch_failures": ("counter", "JWKS fetches that failed", ()),
    "change_feed_connected": ("gauge", "1 while the worker's change feed is connected and caught up", ()),
    "change_feed_lag_seconds": (
        "gauge",
        "Seconds since the worker's change feed was last proven current (0 while it is)",
        (),
    ),
    "decision_log_pending": ("gauge", "Decision records in memory, waiting for the next batch", ()),
    "decision_spool_bytes": ("gauge", "Bytes of decision records in the spool waiting for PostgreSQL", ()),
    "db_pool_connections": ("gauge", "Connections of the process's PostgreSQL pool, by state", ("state",)),
}


def empty_snapshot() -> dict[str, Any]:
    return {"counters": {}, "histograms": {}, "gauges": {}}


def _add_counters(into: dict[str, dict[tuple[str, ...], float]], counters: Mapping[str, Any]) -> None:
    for name, series in counters.items():
        target = into.setdefault(name, {})
        for labels, value in series.items():
            target[labels] = target.get(labels, 0) + value


def _add_histograms(into: dict[str, Any], histograms: Mapping[str, Any]) -> None:
    for name, (bounds, counts, total) in histograms.items():
        if name in into and into[name][0] == bounds:
            _, have, have_sum = into[name]
            into[name] = (bounds, [a + b for a, b in zip(have, counts, strict=True)], have_sum + total)
        else:
            into[name] = (bounds, list(counts), total)


class Metrics:
    """The latest snapshot of each worker slot, and what the slots' earlier workers counted."""

    def __init__(self) -> None:
        self._live: dict[str, dict[str, Any]] = {}
        self._retired = empty_snapshot()

    def update(self, worker: str, snapshot: Mapping[str, Any]) -> None:
        self._live[worker] = dict(snapshot)

    def retire(self, worker: str) -> None:
        """The worker in this slot exited: keep its counts, forget its gauges."""
        last = self._live.pop(worker, None)
        if last is not None:
            _add_counters(self._retired["counters"], last.get("counters", {}))
            _add_histograms(self._retired["histograms"], last.get("histograms", {}))

    def render(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry)

    def families(self) -> Iterator[Metric]:
        counters: dict[str, dict[tuple[str, ...], float]] = {}
        histograms: dict[str, Any] = {}
        _add_counters(counters, self._retired["counters"])
        _add_histograms(histograms, self._retired["histograms"])
        for snapshot in self._live.values():
            _add_counters(counters, snapshot.get("counters", {}))
            _add_histograms(histograms, snapshot.get("histograms", {}))
        for name, (kind, text, labels) in METRICS.items():
            full = PREFIX + name
            if kind == "counter":
                counter = CounterMetricFamily(full, text, labels=labels)
                series = counters.get(name, {})
                if not labels and not series:
                    series = {(): 0}
                for values, value in sorted(series.items()):
                    counter.add_metric(list(values), value)
                yield counter
            elif kind == "histogram":
                histogram = HistogramMetricFamily(full, text, labels=labels)
                if name in histograms:
                    bounds, counts, total = histograms[name]
                    yield _with_buckets(histogram, bounds, counts, total)
                else:
                    yield histogram
            else:
                gauge = GaugeMetricFamily(full, text, labels=("worker", *labels))
                for worker, snapshot in sorted(self._live.items()):
                    for values, value in sorted(snapshot.get("gauges", {}).get(name, {}).items()):
                        gauge.add_metric([worker, *values], value)
                yield gauge


def _with_buckets(
    family: HistogramMetricFamily, bounds: Iterable[float], counts: list[int], total: float
) -> HistogramMetricFamily:
    cumulative, buckets = 0, []
    for bound, count in zip([*bounds, float("inf")], counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    family.add_metric([], buckets, total)
    return family


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics.families()
