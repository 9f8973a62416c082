"""The operators' view of one worker, composed: what records its requests (metrics, decision lines,
the decision log's writer with its spool) and the snapshot of its counts the supervisor renders.

Part of the composition root (``proxy.dataplane`` builds each worker's data plane with it).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from proxy.config.settings import Settings
from proxy.core.cache import KeyCache
from proxy.core.errors import ConfigError
from proxy.core.record import Recorder
from proxy.core.tally import Tally
from proxy.db.feed import ChangeFeed
from proxy.db.recorder import DecisionWriter
from proxy.db.spool import Spool
from proxy.db.store import Store
from proxy.jwks import JwksRefresher
from proxy.logs import DecisionLines

__all__ = ["SPOOL_DIR", "control_snapshot", "decision_writer", "recorder_for", "worker_snapshot"]

SPOOL_DIR = "spool"  # under data_dir: the decision log's spool files, one per worker


def recorder_for(settings: Settings, writer: DecisionWriter | None) -> Recorder:
    """What records each answered request: metrics, decision lines, the decision log."""
    lines = None
    if settings.decision_line_level != "off":
        lines = DecisionLines(level=logging.getLevelName(settings.decision_line_level.upper()))
    return Recorder(
        Tally(),
        lines=lines,
        line_sample=settings.decision_line_sample,
        log=writer,
        log_sample=settings.decision_log_sample,
    )


async def decision_writer(
    stack: contextlib.AsyncExitStack, settings: Settings, dsn: str, name: str
) -> DecisionWriter | None:
    if not settings.decision_log:
        return None
    directory = settings.data_dir / SPOOL_DIR
    writer = DecisionWriter(
        dsn,
        Spool(directory, name, settings.decision_spool_max_bytes),
        interval=settings.decision_flush_interval,
    )
    try:
        await writer.start()
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError("SIGNALGATE_DATA_DIR", str(directory), f"cannot keep a spool there: {why}") from exc
    # Closed after the listener (exit stacks unwind in reverse): the drained requests are written too.
    stack.push_async_callback(writer.close)
    return writer


def worker_snapshot(
    recorder: Recorder, cache: KeyCache, feed: ChangeFeed, store: Store, writer: DecisionWriter | None
) -> dict[str, Any]:
    """One worker's counts and gauges, in the shape ``proxy.metrics.Metrics`` sums."""
    tally = recorder.tally.snapshot()
    counters: dict[str, dict[tuple[str, ...], float]] = {
        "requests": tally["requests"],
        "key_requests": tally["key_requests"],
        "candidate_disagreements": tally["candidates"],
        "upstream_responses": {(group,): n for group, n in tally["upstream_classes"].items()},
        "cache_hits": {(): cache.hits},
        "cache_misses": {(): cache.misses},
        "cache_evictions": {(): cache.evictions},
        "cache_invalidations": {(): cache.invalidations},
    }
    gauges: dict[str, dict[tuple[str, ...], float]] = {
        "change_feed_connected": {(): 1.0 if feed.connected else 0.0},
        "change_feed_lag_seconds": {(): feed.stale_for()},
    }
    pool = store.pool
    size, idle = pool.get_size(), pool.get_idle_size()
    gauges["db_pool_connections"] = {
        ("busy",): size - idle,
        ("idle",): idle,
        ("max",): pool.get_max_size(),
    }
    if writer is not None:
        counters["decisions_written"] = {(): writer.written}
        counters["decisions_spooled"] = {(): writer.spooled}
        counters["decisions_replayed"] = {(): writer.replayed}
        counters["decisions_dropped"] = {(kind,): n for kind, n in writer.dropped.items()}
        gauges["decision_log_pending"] = {(): writer.pending}
        gauges["decision_spool_bytes"] = {(): writer.spool.size - writer.spool.offset}
    return {
        "counters": counters,
        "histograms": {
            "decision_seconds": tally["decision_seconds"],
            "upstream_seconds": tally["upstream_seconds"],
        },
        "gauges": gauges,
    }


def control_snapshot(refresher: JwksRefresher | None) -> dict[str, Any]:
    """What the control plane counts itself: the JWKS fetches it made (one refresher per instance)."""
    counters: dict[str, dict[tuple[str, ...], float]] = {}
    if refresher is not None:
        counters["jwks_fetches"] = {(): refresher.fetches}
        counters["jwks_fetch_failures"] = {(): refresher.fetch_failures}
    return {"counters": counters, "histograms": {}, "gauges": {}}
