"""The shells wired to the core's seams: the gathered facts and the admissions the policy parts ask for,
registered here by name, and the clock requests are judged by.

Part of the composition root: the data plane (``proxy.dataplane``) hands these to each worker's
handler, the control plane (``proxy.controlplane``) the same gatherers to explain. A new part that needs
a fact no basic fact covers, or an admission, is registered here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import cast

from proxy.attest import TokenVerifier, TrustStore
from proxy.config.settings import Settings
from proxy.core.errors import GeoIPError, StoreUnavailable
from proxy.core.facts import UNAVAILABLE, Facts
from proxy.core.jobs import closed_by_key
from proxy.core.judge import Gatherer
from proxy.core.model import Decision, Reason
from proxy.core.parts.signature import SignatureRule
from proxy.core.signed import VerifiedSignature
from proxy.db.feed import ChangeFeed
from proxy.db.issuers import IssuerRows
from proxy.db.jobs import Jobs
from proxy.db.store import Store
from proxy.db.usage import usage_admission
from proxy.geoip import GeoIP
from proxy.http.handler import Admission, Ticket
from proxy.http.own import JobCloser
from proxy.limits import Limits
from proxy.signatures import SignatureVerifier

__all__ = [
    "NONCE_DEADLINE",
    "Clock",
    "admissions",
    "attestation_gatherers",
    "gatherers",
    "job_closer",
    "nonce_admission",
    "utc_now",
    "watched_geoip",
]

log = logging.getLogger("signalgate")

Clock = Callable[[], datetime]

NONCE_DEADLINE = 2.0  # seconds the replay check may take before the request is refused (503)
GEOIP_CHECK_INTERVAL = 5.0  # seconds between checks for a replaced .mmdb file (SIGHUP checks at once)


def utc_now() -> datetime:
    return datetime.now(UTC)


def gatherers(
    settings: Settings, geoip: GeoIP | None, trust: TrustStore, on_unknown_kid: Callable[[str], None]
) -> dict[str, Gatherer]:
    """The gathered facts a policy part may need, by name (``proxy.core.facts``): the same in the
    workers and for explain."""
    return {
        **({"country": country_gatherer(geoip)} if geoip is not None else {}),
        **attestation_gatherers(settings, trust, on_unknown_kid),
    }


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


@contextlib.contextmanager
def watched_geoip(settings: Settings) -> Iterator[GeoIP | None]:
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


def admissions(store: Store, limits: Limits) -> dict[str, Admission]:
    """The admissions parts ask for (``Part.admits``), by name. Each gets the rule of its own part, so
    the casts only narrow what the seam guarantees."""
    return {
        "usage": cast(Admission, usage_admission(store)),
        "rate": cast(Admission, limits.rate),
        "in_flight": cast(Admission, limits.in_flight),
    }


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
