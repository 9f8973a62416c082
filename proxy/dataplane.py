"""The data plane: what every worker has for itself. Its own pool, key cache, issuers and change feed,
its forwarder and upstream table, and its proxy listener with the handler the shells are wired into.

Part of the composition root: ``proxy.worker`` runs one per worker process, ``proxy.app`` one beside
the control plane in the same process.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.attest import TrustStore
from proxy.config.settings import Settings
from proxy.core.cache import KeyCache
from proxy.core.record import Recorder
from proxy.core.signals import TrustedProxies
from proxy.core.upstreams import UpstreamRoute, UpstreamTable
from proxy.db.changelog import Change
from proxy.db.feed import ChangeFeed
from proxy.db.issuers import IssuerRows, IssuerSource, RefreshAsker
from proxy.db.jobs import Jobs
from proxy.db.keysource import KeySource
from proxy.db.recorder import DecisionWriter
from proxy.db.store import Store
from proxy.geoip import GeoIP
from proxy.http.forward import Forwarder
from proxy.http.handler import ProxyHandler, Special
from proxy.http.health import Check, Readiness
from proxy.http.listener import Listener, serve
from proxy.limits import Limits
from proxy.observe import decision_writer, recorder_for, worker_snapshot
from proxy.ports import cannot_listen
from proxy.sites import listener_url, server_ssl
from proxy.wiring import Clock, admissions, gatherers, job_closer, nonce_admission, utc_now, watched_geoip

__all__ = ["DataPlane", "data_plane"]


@dataclass
class DataPlane:
    """What every worker has for itself: its key cache, its change feed, its proxy listener."""

    store: Store
    feed: ChangeFeed
    keysource: KeySource
    geoip: GeoIP | None
    proxy_url: str
    trust: TrustStore | None = None
    recorder: Recorder | None = None
    writer: DecisionWriter | None = None

    def snapshot(self) -> dict[str, Any]:
        """This worker's counts and gauges for the metrics (``proxy.metrics``)."""
        recorder = self.recorder or Recorder()
        return worker_snapshot(recorder, self.keysource.cache, self.feed, self.store, self.writer)


def _special_paths(
    settings: Settings, store: Store, feed: ChangeFeed, upstreams: UpstreamTable
) -> dict[str, Special]:
    """The paths the proxy port answers itself: the health path for load balancers (``health_path``)."""
    if settings.health_path is None:
        return {}

    def change_feed() -> bool:  # caught up recently enough for the cache to be trusted
        return feed.connected and feed.stale_for() <= settings.max_stale

    def upstream() -> bool:
        return not upstreams.empty

    checks: dict[str, Check] = {"change_feed": change_feed, "database": store.ping, "upstream": upstream}
    return {settings.health_path: Readiness(checks)}


@contextlib.asynccontextmanager
async def data_plane(
    settings: Settings,
    dsn: str,
    *,
    sockets: Sequence[socket.socket] = (),
    shutdown_timeout: float = 60.0,
    workers: int = 1,
    clock: Clock = utc_now,
    name: str = "worker-0",
) -> AsyncIterator[DataPlane]:
    """One worker's proxy listener and what it needs; ``shutdown_timeout`` is how long in-flight
    requests may run on once the listener has stopped accepting. ``workers``: how many share the port
    (each enforces its share of the rate and in-flight limits); ``name`` names its spool file.

    ``sockets``: the listening sockets the supervisor bound (``proxy.ports``), shared by every worker;
    without them (``proxy.app.running``: the demo, tests) the listener binds ``settings.listen`` itself."""
    async with contextlib.AsyncExitStack() as stack:
        store = await Store.open(dsn, operation_timeout=settings.database_timeout)
        stack.push_async_callback(store.close)
        keysource = KeySource(
            store,
            KeyCache(settings.cache_size, settings.negative_cache_size),
            max_stale=settings.max_stale,
            deadline=settings.database_timeout,
        )
        revision = await keysource.load_directory()
        stack.push_async_callback(keysource.close)
        rows = IssuerRows(store)
        trust = TrustStore()
        issuers = IssuerSource(rows, trust.replace, trust.set_settled)
        await issuers.load()
        stack.push_async_callback(issuers.close)

        def on_change(change: Change) -> Awaitable[None] | None:
            if change.entity == "issuer":  # an issuer's keys: reloaded before the change counts
                return issuers.on_change(change)
            keysource.on_change(change)
            return None

        def on_reset() -> None:
            keysource.on_reset()
            issuers.on_reset()

        feed = ChangeFeed(
            dsn,
            on_change=on_change,
            on_reset=on_reset,
            load_revision=revision,
            probe_timeout=settings.database_timeout,
        )
        keysource.follow(feed)
        await feed.start()
        stack.push_async_callback(feed.stop)

        geoip = stack.enter_context(watched_geoip(settings))
        writer = await decision_writer(stack, settings, dsn, name)
        recorder = recorder_for(settings, writer)

        forwarder = Forwarder(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            limit=settings.upstream_max_connections,
            idle_timeout=settings.upstream_idle_timeout,
            verify_tls=settings.upstream_tls_verify,
            ca_file=str(settings.upstream_ca) if settings.upstream_ca else None,
        )
        await forwarder.start()
        stack.push_async_callback(forwarder.close)
        upstreams = UpstreamTable(
            [UpstreamRoute(r.prefix, r.upstream, r.host, r.preserve_host) for r in settings.routes],
            settings.upstream,
        )
        tls = server_ssl(settings.tls_cert, settings.tls_key, "SIGNALGATE_TLS_CERT")
        handler = ProxyHandler(
            keysource=keysource,
            upstreams=upstreams,
            forwarder=forwarder,
            trusted=TrustedProxies(settings.trusted_proxies),
            key_header=settings.key_header,
            expose_reasons=settings.expose_reasons,
            scheme="https" if tls else "http",
            gatherers=gatherers(
                settings, geoip, trust, RefreshAsker(rows, settings.jwks_min_refresh, time.monotonic)
            ),
            admissions={
                "nonce": nonce_admission(rows),
                **admissions(store, Limits(workers, max_keys=settings.cache_size)),
            },
            close_job=job_closer(Jobs(store), feed),
            attestation_headers=(settings.device_header, settings.workload_header),
            special=_special_paths(settings, store, feed, upstreams),
            recorder=recorder,
            clock=clock,
        )
        listener = Listener(
            handler, max_field_size=settings.max_header_size, max_line_size=settings.max_header_size
        )
        listen = settings.listen
        servers: list[asyncio.Server] = []

        async def close_listener() -> None:
            for server in servers:
                server.close()  # stop accepting; then let in-flight requests finish
            await listener.shutdown(shutdown_timeout)

        stack.push_async_callback(close_listener)
        try:
            if sockets:
                for sock in sockets:
                    servers.append(await serve(listener, ssl=tls, sock=sock))
            else:
                servers.append(await serve(listener, listen.host, listen.port, ssl=tls))
        except OSError as exc:
            raise cannot_listen("SIGNALGATE_LISTEN", listen, exc) from exc
        proxy_url = listener_url(servers[-1].sockets[-1].getsockname(), tls)
        yield DataPlane(store, feed, keysource, geoip, proxy_url, trust, recorder, writer)
