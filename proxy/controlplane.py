"""The control plane: what one instance has once, whether it runs one process or a supervisor and its
workers. The database (embedded or configured) and its migrations, the admin token, the admin API, the
issuers' JWKS fetcher, the periodic clean-ups (expired signature nonces, jobs past their deadline, the
decision log's partitions) and the gatherers explain judges with.

Part of the composition root: ``proxy.supervisor`` runs it beside its workers, ``proxy.app`` beside one
data plane in the same process; ``database`` is also what ``signalgate migrate`` migrates.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from proxy import version
from proxy.admin.api import ReadyCheck, make_admin_app
from proxy.admin.operations import Operations
from proxy.admin.serverlog import server_log
from proxy.attest import TrustStore
from proxy.config.settings import Settings
from proxy.core.errors import ConfigError, StoreUnavailable
from proxy.core.judge import Gatherer, Judging
from proxy.core.signals import TrustedProxies
from proxy.db.decisions import maintain_partitions
from proxy.db.embedded import EmbeddedPostgres
from proxy.db.issuers import IssuerRows, IssuerSource, RefreshAsker
from proxy.db.jobs import DeadlineSweeper, Jobs
from proxy.db.store import Store, open_when_reachable
from proxy.jwks import FetchedJwks, JwksRefresher, fetch_jwks
from proxy.metrics import CONTENT_TYPE
from proxy.ports import cannot_listen, why
from proxy.sites import server_ssl, start_site
from proxy.wiring import Clock, gatherers, utc_now, watched_geoip

__all__ = [
    "ADMIN_TOKEN_SETTING",
    "ControlPlane",
    "control_plane",
    "database",
    "ensure_admin_token",
    "start_admin",
]

log = logging.getLogger("signalgate")

ADMIN_TOKEN_SETTING = "admin_token_sha256"
NONCE_PRUNE_INTERVAL = 60.0  # seconds between deletions of expired signature nonces


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[str]:
    """The DSN to use: the configured URL, or an embedded PostgreSQL kept in the data dir.

    Commands on one data dir share its embedded server: it is stopped on exit only if no other command
    uses it any more (so `migrate` next to a running `serve` leaves it running, and the reverse).
    """
    if settings.database_url:
        yield settings.database_url
        return
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            "SIGNALGATE_DATA_DIR", str(settings.data_dir), f"cannot create it: {why(exc)}"
        ) from exc
    embedded = EmbeddedPostgres(settings.data_dir / "pg")
    # Shielded: cancelled meanwhile (SIGTERM during `migrate`), the start still finishes in its thread,
    # and the server it started is then stopped below rather than left running.
    starting = asyncio.ensure_future(asyncio.to_thread(embedded.start))
    try:
        dsn = await asyncio.shield(starting)
        log.info("embedded PostgreSQL running in %s", embedded.data_dir)
        yield dsn
    finally:
        await asyncio.wait([starting])
        await asyncio.to_thread(embedded.stop)


async def ensure_admin_token(store: Store, configured: str | None) -> tuple[bytes, str | None]:
    """The admin token's hash, and the token itself when it was just created (to print once)."""
    if configured:
        return hashlib.sha256(configured.encode()).digest(), None
    stored = await store.get_setting(ADMIN_TOKEN_SETTING)
    if stored is not None:
        return bytes.fromhex(stored), None
    token = "sga_" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).digest()
    if await store.set_setting(ADMIN_TOKEN_SETTING, digest.hex(), only_if_absent=True):
        return digest, token
    stored = await store.get_setting(ADMIN_TOKEN_SETTING)  # another instance created one first
    assert stored is not None
    return bytes.fromhex(stored), None


@dataclass
class ControlPlane:
    """What one instance has once: the database, the admin token, the admin API, the JWKS fetcher."""

    dsn: str
    store: Store
    token_hash: bytes
    generated_admin_token: str | None
    fetch_jwks: Callable[[str], Awaitable[FetchedJwks]] | None = None
    refresher: JwksRefresher | None = None
    judging: Judging | None = None  # what explain judges with: the proxy's settings and gatherers
    before_explain: Callable[[], Awaitable[None]] | None = None  # brings explain's issuers up to date


@contextlib.asynccontextmanager
async def control_plane(settings: Settings, *, clock: Clock = utc_now) -> AsyncIterator[ControlPlane]:
    """PostgreSQL (embedded or configured; waited for up to ``database_wait``), migrations applied, the
    admin token settled; the issuers' key sets kept fresh, expired signature nonces pruned, jobs past
    their deadline closed and the decision log's partitions kept, once per instance; and the gatherers
    explain judges with."""
    async with contextlib.AsyncExitStack() as stack:
        dsn = await stack.enter_async_context(database(settings))
        store = await open_when_reachable(
            dsn, settings.database_wait, operation_timeout=settings.admin_database_timeout
        )
        stack.push_async_callback(store.close)
        applied = await store.migrate()
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        token_hash, new_token = await ensure_admin_token(store, settings.admin_token)
        session = aiohttp.ClientSession(auto_decompress=True, trust_env=False)
        stack.push_async_callback(session.close)
        fetch = functools.partial(fetch_jwks, session, within=settings.jwks_fetch_timeout)
        rows = IssuerRows(store)
        refresher = JwksRefresher(
            rows, dsn, fetch, min_refresh=settings.jwks_min_refresh, max_refresh=settings.jwks_max_refresh
        )
        await refresher.start()
        stack.push_async_callback(refresher.stop)
        pruner = asyncio.create_task(_prune_nonces(rows), name="signalgate-nonce-prune")
        stack.callback(pruner.cancel)
        sweeper = asyncio.create_task(
            DeadlineSweeper(Jobs(store), clock).run(), name="signalgate-job-deadlines"
        )
        stack.push_async_callback(_cancelled, sweeper)
        keeper = asyncio.create_task(
            maintain_partitions(store.pool, settings.decision_log_retention_days),
            name="signalgate-decision-partitions",
        )
        stack.callback(keeper.cancel)
        explain_gatherers, reload_issuers = await _explain_gatherers(stack, settings, rows)
        judging = Judging(
            TrustedProxies(settings.trusted_proxies),
            settings.key_header,
            explain_gatherers,
            "https" if settings.tls_cert else "http",
        )
        yield ControlPlane(dsn, store, token_hash, new_token, fetch, refresher, judging, reload_issuers)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait([task])


async def _explain_gatherers(
    stack: contextlib.AsyncExitStack, settings: Settings, rows: IssuerRows
) -> tuple[dict[str, Gatherer], Callable[[], Awaitable[None]]]:
    """The workers' gatherers, for explain in this process, and what brings their issuers up to date:
    explain is an admin call, so the issuers are read again before each one (no change feed here)."""
    geoip = stack.enter_context(watched_geoip(settings))
    trust = TrustStore()
    issuers = IssuerSource(rows, trust.replace, trust.set_settled)
    stack.push_async_callback(issuers.close)
    asker = RefreshAsker(rows, settings.jwks_min_refresh, time.monotonic)
    return gatherers(settings, geoip, trust, asker), issuers.load


async def _prune_nonces(rows: IssuerRows, interval: float = NONCE_PRUNE_INTERVAL) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            pruned = await rows.prune_nonces()
            if pruned:
                log.debug("pruned %d expired signature nonces", pruned)
        except StoreUnavailable as exc:
            log.warning("cannot prune signature nonces: %s", exc)


async def start_admin(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    control: ControlPlane,
    ready_checks: list[ReadyCheck],
    wait_applied: Callable[[int], Awaitable[None]],
    metrics_page: Callable[[], Awaitable[bytes]],
) -> str:
    """The admin API on ``admin_listen`` (over TLS when configured), cleaned up with ``stack``; its URL."""
    runner = web.AppRunner(
        make_admin_app(
            store=control.store,
            token_hash=control.token_hash,
            max_body=settings.admin_max_body,
            ready_checks=ready_checks,
            wait_applied=wait_applied,
            fetch_jwks=control.fetch_jwks,
            jwks_bounds=(settings.jwks_min_refresh, settings.jwks_max_refresh),
            job_key_ttl=settings.job_key_ttl,
            version=version(),
            operations=Operations(
                judging=control.judging or Judging(),
                before_explain=control.before_explain,
                metrics=metrics_page,
                metrics_type=CONTENT_TYPE,
                decision_log=settings.decision_log,
            ),
        ),
        access_log=None,
        logger=server_log(),  # aiohttp's own log of a request it refused, without the request's bytes
    )
    stack.push_async_callback(runner.cleanup)
    tls = server_ssl(settings.admin_tls_cert, settings.admin_tls_key, "SIGNALGATE_ADMIN_TLS_CERT")
    try:
        url = await start_site(runner, settings.admin_listen, tls)
    except OSError as exc:  # in use, or an address this host does not have
        raise cannot_listen("SIGNALGATE_ADMIN_LISTEN", settings.admin_listen, exc) from exc
    if tls is None and not settings.admin_listen.loopback:
        log.warning(
            "the admin API listens on %s, which other hosts can reach, over plain HTTP: the admin token"
            " and every key it creates cross the network readable; set admin_tls_cert and admin_tls_key,"
            " or keep admin_listen on loopback",
            settings.admin_listen,
        )
    return url
