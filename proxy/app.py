"""Composition root: builds every shell from Settings, wires them to the core, owns their lifetimes.

Imported by the process level only (cli, supervisor, worker, demo) and by the tests; the gatherers of
facts and the admissions the policy parts ask for are registered here by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
from aiohttp import web

from proxy import version
from proxy.admin.api import ReadyCheck, make_admin_app
from proxy.admin.operations import Operations
from proxy.admin.serverlog import server_log
from proxy.attest import TokenVerifier, TrustStore
from proxy.config.settings import Listen, Settings
from proxy.core.cache import KeyCache
from proxy.core.errors import ConfigError, GeoIPError, StoreUnavailable
from proxy.core.facts import UNAVAILABLE, Facts
from proxy.core.jobs import closed_by_key
from proxy.core.judge import Gatherer, Judging
from proxy.core.model import Decision, Reason
from proxy.core.parts.signature import SignatureRule
from proxy.core.record import Recorder
from proxy.core.signals import TrustedProxies
from proxy.core.signed import VerifiedSignature
from proxy.core.upstreams import UpstreamRoute, UpstreamTable
from proxy.db.changelog import Change
from proxy.db.decisions import maintain_partitions
from proxy.db.embedded import EmbeddedPostgres
from proxy.db.feed import ChangeFeed
from proxy.db.issuers import IssuerRows, IssuerSource, RefreshAsker
from proxy.db.jobs import DeadlineSweeper, Jobs
from proxy.db.keysource import KeySource
from proxy.db.recorder import DecisionWriter
from proxy.db.store import Store, open_when_reachable
from proxy.db.usage import usage_admission
from proxy.demo_upstream import make_demo_upstream
from proxy.geoip import GeoIP
from proxy.http.forward import Forwarder
from proxy.http.handler import Admission, ProxyHandler, Special, Ticket
from proxy.http.health import Check, Readiness
from proxy.http.listener import Listener, serve
from proxy.http.own import JobCloser
from proxy.jwks import FetchedJwks, JwksRefresher, fetch_jwks
from proxy.limits import Limits
from proxy.metrics import CONTENT_TYPE, Metrics
from proxy.observe import control_snapshot, decision_writer, recorder_for, worker_snapshot
from proxy.ports import cannot_listen, why
from proxy.signatures import SignatureVerifier

__all__ = [
    "ADMIN_TOKEN_SETTING",
    "NONCE_DEADLINE",
    "ControlPlane",
    "DataPlane",
    "Runtime",
    "attestation_gatherers",
    "control_plane",
    "data_plane",
    "database",
    "ensure_admin_token",
    "nonce_admission",
    "running",
    "start_admin",
]


log = logging.getLogger("signalgate")

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


ADMIN_TOKEN_SETTING = "admin_token_sha256"
NONCE_DEADLINE = 2.0  # seconds the replay check may take before the request is refused (503)
NONCE_PRUNE_INTERVAL = 60.0  # seconds between deletions of expired signature nonces


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


def _server_ssl(cert: Path | None, key: Path | None, setting: str) -> ssl.SSLContext | None:
    """A server TLS context from a certificate chain and key (PEM), or None without them."""
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(setting, str(cert), f"cannot load certificate and key: {exc}") from exc
    return context


async def _start_site(
    runner: web.BaseRunner, listen: Listen, context: ssl.SSLContext | None = None, *, reuse_port: bool = False
) -> str:
    await runner.setup()
    site = web.TCPSite(
        runner,
        listen.host,
        listen.port,
        ssl_context=context,
        reuse_address=True,
        reuse_port=reuse_port or None,
    )
    await site.start()
    return _url(runner.addresses[-1], context)


def _url(address: tuple[str, int], context: ssl.SSLContext | None) -> str:
    host, port = address[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if context else 'http'}://{shown}:{port}"


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
async def control_plane(settings: Settings, *, clock: Clock = _utc_now) -> AsyncIterator[ControlPlane]:
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
    geoip = stack.enter_context(_geoip(settings))
    trust = TrustStore()
    issuers = IssuerSource(rows, trust.replace, trust.set_settled)
    stack.push_async_callback(issuers.close)
    asker = RefreshAsker(rows, settings.jwks_min_refresh, time.monotonic)
    return gatherers(settings, geoip, trust, asker), issuers.load


@contextlib.contextmanager
def _geoip(settings: Settings) -> Iterator[GeoIP | None]:
    """The GeoIP database, watched for replacement, closed on exit; None when none is configured."""
    if not settings.geoip_db:
        yield None
        return
    geoip = GeoIP.open(settings.geoip_db)
    watcher = asyncio.create_task(_watch_geoip(geoip), name="signalgate-geoip-watch")
    try:
        yield geoip
    finally:
        watcher.cancel()
        geoip.close()


def gatherers(
    settings: Settings, geoip: GeoIP | None, trust: TrustStore, on_unknown_kid: Callable[[str], None]
) -> dict[str, Gatherer]:
    """The gathered facts a policy part may need, by name (``proxy.core.facts``): the same in the
    workers and for explain."""
    return {
        **({"country": country_gatherer(geoip)} if geoip is not None else {}),
        **attestation_gatherers(settings, trust, on_unknown_kid),
    }


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
    tls = _server_ssl(settings.admin_tls_cert, settings.admin_tls_key, "SIGNALGATE_ADMIN_TLS_CERT")
    try:
        url = await _start_site(runner, settings.admin_listen, tls)
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


GEOIP_CHECK_INTERVAL = 5.0  # seconds between checks for a replaced .mmdb file (SIGHUP checks at once)


async def _watch_geoip(geoip: GeoIP, interval: float = GEOIP_CHECK_INTERVAL) -> None:
    """Reload the GeoIP database when its file changes, until cancelled; nothing ends the watching."""
    while True:
        await asyncio.sleep(interval)
        try:
            # In a thread: a reload copies the whole file and probes it.
            if await asyncio.to_thread(geoip.reload_if_changed):
                log.info("GeoIP database %s reloaded", geoip.path)
        except Exception:
            log.exception("GeoIP database %s: checking for a replacement failed; still watching", geoip.path)


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


def country_gatherer(geoip: GeoIP) -> Gatherer:
    """The ``country`` fact (``proxy.core.parts.regions``) from the GeoIP database; UNAVAILABLE when
    the lookup fails, so a region rule then denies: the database failed, not the client."""

    def country(facts: Facts) -> object:
        try:
            return geoip.country(facts.client_ip)
        except GeoIPError as exc:
            log.error("GeoIP lookup of %s failed: %s", facts.client_ip, exc)
            return UNAVAILABLE

    return country


def attestation_gatherers(
    settings: Settings, trust: TrustStore, on_unknown_kid: Callable[[str], None] = lambda name: None
) -> dict[str, Gatherer]:
    """The ``device``, ``workload`` and ``signature`` facts (``proxy.attest``, ``proxy.signatures``),
    for any process that judges requests (the proxy's workers, explain)."""
    skew = settings.clock_skew
    common = {"skew_s": skew, "cache_size": settings.attestation_cache_size, "on_unknown_kid": on_unknown_kid}
    return {
        "device": TokenVerifier(trust, "device", settings.device_header, **common),  # type: ignore[arg-type]
        "workload": TokenVerifier(trust, "workload", settings.workload_header, **common),  # type: ignore[arg-type]
        "signature": SignatureVerifier(
            key_header=settings.key_header,
            attestation_headers=(settings.device_header, settings.workload_header),
            skew_s=skew,
        ),
    }


def nonce_admission(rows: IssuerRows, deadline: float = NONCE_DEADLINE) -> Admission:
    """The ``nonce`` admission of the ``signature`` part: a (key, keyid, nonce) is accepted once
    within its window, by whichever worker or instance sees it first (PostgreSQL is the shared memory).
    A replay check that cannot be made refuses the request (503): never an allow on a failure."""

    async def admit(rule: object, facts: Facts, ticket: Ticket) -> Decision | None:
        signed = facts.gathered.get("signature")
        if not isinstance(rule, SignatureRule) or not isinstance(signed, VerifiedSignature):
            return Decision.deny(Reason.INTERNAL_ERROR, "nonce admission without a verified signature")
        assert signed.created is not None and signed.nonce  # the part checked both
        # Past this the signature is refused as too old anyway: the nonce need not be kept longer.
        expires = datetime.fromtimestamp(signed.created + rule.max_age_s + signed.skew_s, UTC)
        try:
            async with asyncio.timeout(deadline):
                fresh = await rows.record_nonce(facts.key_id, signed.keyid, signed.nonce, expires)
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("signature replay check failed: %s", exc or "timed out")
            return Decision.deny(Reason.AUTHORIZATION_UNAVAILABLE, "signature: replay check unavailable")
        if not fresh:
            return Decision.deny(
                Reason.SIGNATURE_REPLAYED,
                f"signature: nonce {signed.nonce[:64]!r} of keyid {signed.keyid!r} was seen before",
            )
        return None

    return admit


def job_closer(jobs: Jobs, feed: ChangeFeed) -> JobCloser:
    """Closing a job from the proxy port (``POST /.signalgate/jobs/close``): answered once this worker
    enforces it (its own later requests are refused; other workers follow within the bound)."""

    async def close(job_id: str, key_id: str) -> int:
        closed = await jobs.close_job(job_id, closed_by_key(key_id))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await feed.wait_applied(closed.revision)
        return len(closed.revoked)

    return close


def admissions(store: Store, limits: Limits) -> dict[str, Admission]:
    """The admissions parts ask for (``Part.admits``), by name. Each gets the rule of its own part, so
    the casts only narrow what the seam guarantees."""
    return {
        "usage": cast(Admission, usage_admission(store)),
        "rate": cast(Admission, limits.rate),
        "in_flight": cast(Admission, limits.in_flight),
    }


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
    clock: Clock = _utc_now,
    name: str = "worker-0",
) -> AsyncIterator[DataPlane]:
    """One worker's proxy listener and what it needs; ``shutdown_timeout`` is how long in-flight
    requests may run on once the listener has stopped accepting. ``workers``: how many share the port
    (each enforces its share of the rate and in-flight limits); ``name`` names its spool file.

    ``sockets``: the listening sockets the supervisor bound (``proxy.ports``), shared by every worker;
    without them (``running``: the demo, tests) the listener binds ``settings.listen`` itself."""
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

        geoip = stack.enter_context(_geoip(settings))
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
        tls = _server_ssl(settings.tls_cert, settings.tls_key, "SIGNALGATE_TLS_CERT")
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
        proxy_url = _url(servers[-1].sockets[-1].getsockname(), tls)
        yield DataPlane(store, feed, keysource, geoip, proxy_url, trust, recorder, writer)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, *, demo: bool = False, clock: Clock = _utc_now
) -> AsyncIterator[Runtime]:
    """Everything in this one process: the control plane and one data plane (tests, demo). ``clock`` is
    the time the proxy and the deadline sweep go by (tests move it instead of waiting)."""
    async with contextlib.AsyncExitStack() as stack:
        if demo:
            demo_runner = web.AppRunner(make_demo_upstream(), access_log=None)
            stack.push_async_callback(demo_runner.cleanup)
            demo_url = await _start_site(demo_runner, Listen("127.0.0.1", 0))
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
