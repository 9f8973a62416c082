"""Composition root: builds every shell from Settings, wires them to the core, owns their lifetimes.

``running`` is everything in one process: the control plane (``proxy.controlplane``) and one data
plane (``proxy.dataplane``), with the demo's upstream when asked; the demo and the tests run it, and
``Runtime`` is what they get. ``signalgate serve`` runs the same planes apart, the control plane in the
supervisor and a data plane in each worker. The rest of the root: the shells wired to the core's seams
(``proxy.wiring``), where the servers listen (``proxy.sites``), and what records each worker's requests
(``proxy.observe``). Imported by the process level only (cli, supervisor, worker, demo) and by the
tests.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from aiohttp import web

from proxy.config.settings import Listen, Settings
from proxy.controlplane import control_plane, start_admin
from proxy.dataplane import data_plane
from proxy.db.feed import ChangeFeed
from proxy.db.keysource import KeySource
from proxy.db.recorder import DecisionWriter
from proxy.db.store import Store
from proxy.demo_upstream import make_demo_upstream
from proxy.geoip import GeoIP
from proxy.jwks import JwksRefresher
from proxy.metrics import Metrics
from proxy.observe import control_snapshot
from proxy.sites import start_site
from proxy.wiring import Clock, utc_now

__all__ = ["Runtime", "running"]


log = logging.getLogger("signalgate")


@dataclass
class Runtime:
    """What a running signalgate exposes to the CLI and to tests."""

    settings: Settings
    store: Store
    feed: ChangeFeed
    keysource: KeySource
    proxy_url: str
    admin_url: str
    generated_admin_token: str | None = None
    geoip: GeoIP | None = None
    refresher: JwksRefresher | None = None
    proxy_store: Store | None = None  # the data plane's own pool (``store`` is the control plane's)
    writer: DecisionWriter | None = None  # the decision log's writer, when it is on


@contextlib.asynccontextmanager
async def running(
    settings: Settings, *, demo: bool = False, clock: Clock = utc_now
) -> AsyncIterator[Runtime]:
    """Everything in this one process: the control plane and one data plane (tests, demo). ``clock`` is
    the time the proxy and the deadline sweep go by (tests move it instead of waiting)."""
    async with contextlib.AsyncExitStack() as stack:
        if demo:
            demo_runner = web.AppRunner(make_demo_upstream(), access_log=None)
            stack.push_async_callback(demo_runner.cleanup)
            demo_url = await start_site(demo_runner, Listen("127.0.0.1", 0))
            settings = replace(settings, upstream=demo_url, expose_reasons=True)
        control = await stack.enter_async_context(control_plane(settings, clock=clock))
        data = await stack.enter_async_context(data_plane(settings, control.dsn, clock=clock))

        async def change_feed() -> bool:
            return data.feed.connected

        metrics = Metrics()

        async def metrics_page() -> bytes:
            metrics.update("0", data.snapshot())
            metrics.update("control", control_snapshot(control.refresher))
            return metrics.render()

        admin_url = await start_admin(
            stack, settings, control, [change_feed], data.feed.wait_applied, metrics_page
        )
        log.info("proxy listening on %s, admin API on %s", data.proxy_url, admin_url)
        yield Runtime(
            settings,
            control.store,
            data.feed,
            data.keysource,
            data.proxy_url,
            admin_url,
            control.generated_admin_token,
            data.geoip,
            control.refresher,
            data.store,
            data.writer,
        )
