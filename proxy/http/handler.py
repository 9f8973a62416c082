"""The proxy's request handler, the hot path: ``proxy.http.listener`` hands it each parsed request.

One pipeline, read top to bottom in ``_handle``: read what is asked (method, target, client address,
presented key), look the key up, gather what its policies need and authorize (the pure steps of
``proxy.core.judge``, which explain runs too), run the admissions its parts ask for (``Part.admits``),
then forward or answer the refusal; ``__call__`` runs what the admissions asked to release and hands
the trace to the recorder (metrics, decision line, decision log). On a cache hit: one target
normalisation, one header walk, one SHA-256, one cache lookup, the facts the policies' parts need, a
few comparisons, then forwarding. No query, no JSON parsing, no regex compilation; the decision line
is encoded only when it is written, and the decision log only appends the trace to a list.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

from proxy.core.attestation import VerifiedToken
from proxy.core.cache import Entry
from proxy.core.digest import BodyDigest
from proxy.core.errors import (
    AuthorizationUnavailable,
    ContentDigestMismatch,
    HeaderValueInvalid,
    RequestBodyInvalid,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.core.facts import Facts
from proxy.core.headers import upstream_headers
from proxy.core.judge import Asked, Gatherer, gather, judge, read_caller, read_target
from proxy.core.model import Decision, Reason
from proxy.core.part import Rule
from proxy.core.record import Recorder
from proxy.core.signals import TrustedProxies
from proxy.core.signed import VerifiedSignature
from proxy.core.trace import Trace
from proxy.core.upstreams import UpstreamTable
from proxy.http._aiohttp import HttpProcessingError, LineTooLong, parser_error_text
from proxy.http.answers import RequestIds, send_json, send_refusal
from proxy.http.forward import CLIENT_CLOSED_REQUEST, Forwarder
from proxy.http.own import CLOSE_JOB_PATH, OWN_PREFIX, JobCloser, close_own_job
from proxy.http.request import Request

__all__ = ["Admission", "Gatherer", "KeyLookup", "ProxyHandler", "Special", "Ticket"]

log = logging.getLogger("signalgate.proxy")

LOGGED_FACTS = ("country",)  # gathered for the decision record even when no part needed them
_UNAVAILABLE = Decision.deny(Reason.AUTHORIZATION_UNAVAILABLE, "authorization is temporarily unavailable")


class KeyLookup(Protocol):
    """The key cache in front of PostgreSQL (``proxy.db.keysource.KeySource``)."""

    async def lookup(self, key_id: str, /) -> Entry | None: ...


class Ticket:
    """One request's releases: what admissions took and must give back once the request is done
    (answered, refused, failed or abandoned by its client), each exactly once."""

    __slots__ = ("_releases",)

    def __init__(self) -> None:
        self._releases: list[Callable[[int], None]] = []

    def on_done(self, release: Callable[[int], None]) -> None:
        """Call ``release(status)`` when the request is done (status 0: no answer was sent)."""
        self._releases.append(release)

    def done(self, status: int) -> None:
        releases, self._releases = self._releases, []
        for release in releases:
            try:
                release(status)
            except Exception:
                log.exception("a release after the request failed")


# An admission (Part.admits): ``(rule, facts, ticket)`` -> None to admit, or the refusal; may be async.
# Only the enforced policy's admissions run: a candidate policy never takes anything (proxy.core.judge).
Admission = Callable[[Rule, Facts, Ticket], "Decision | Awaitable[Decision | None] | None"]


# A path the proxy answers itself, never forwarded (``special``, by normalised path: the health path,
# ...): ``(request, trace)`` -> the status it answered. It sets ``trace.decision`` if it decides, and
# ``trace.quiet`` when the request is no decision at all (a probe).
Special = Callable[[Request, Trace], Awaitable[int]]


def _shares(entry: Entry, admission: str) -> bool:
    """Whether the key's candidate policy has a part asking for ``admission`` too."""
    candidate = entry.candidate
    return candidate is not None and any(name == admission for name, _ in candidate.admissions)


class ProxyHandler:
    """Decides and forwards. Every dependency is handed in; the clock and the recorder too."""

    def __init__(
        self,
        *,
        keysource: KeyLookup,
        upstreams: UpstreamTable,
        forwarder: Forwarder,
        trusted: TrustedProxies,
        key_header: str,
        expose_reasons: bool,
        scheme: str,
        gatherers: Mapping[str, Gatherer] | None = None,
        admissions: Mapping[str, Admission] | None = None,
        attestation_headers: tuple[str, str] = ("X-Device-Attestation", "X-Workload-Attestation"),
        close_job: JobCloser | None = None,
        special: Mapping[str, Special] | None = None,
        recorder: Recorder | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._keys = keysource
        self._upstreams = upstreams
        self._forwarder = forwarder
        self._trusted = trusted
        self._key_header = key_header
        self._expose = expose_reasons
        self._scheme = scheme
        self._gatherers = dict(gatherers or {})
        self._admissions = dict(admissions or {})
        # Never sent upstream, whatever the key's policy: attestations are credentials too.
        self._attestations = frozenset(name.lower() for name in attestation_headers)
        self._strips: dict[frozenset[str], frozenset[str]] = {}
        self._close_job = close_job
        self._special = dict(special or {})
        self.recorder = recorder if recorder is not None else Recorder()
        self._clock = clock
        self.ids = RequestIds()

    async def __call__(self, request: Request) -> None:
        started = time.perf_counter()
        trace = Trace(self.ids.next())
        ticket = Ticket()
        status = 0
        try:
            status = await self._handle(request, trace, ticket, started)
        except Exception:
            log.exception("request %s failed", trace.request_id)
            trace.decision = Decision.deny(Reason.INTERNAL_ERROR, "internal error")
            if request.status:  # the answer had started: cut it so it cannot pass for complete
                request.abort()
                status = request.status
            else:
                status = self._deny(request, trace)
        finally:
            ticket.done(status)
        trace.method = request.method
        trace.status = status
        trace.seconds = time.perf_counter() - started
        self.recorder.record(trace)

    async def _handle(self, request: Request, trace: Trace, ticket: Ticket, started: float) -> int:
        # 1. What is asked (or a path the proxy answers itself, without a key), from where, which key.
        target = read_target(request.method, request.raw_path, trace)
        if isinstance(target, Decision):
            trace.decision = target
            trace.decision_seconds = time.perf_counter() - started
            return self._deny(request, trace)
        special = self._special.get(target.path)
        if special is not None:
            return await special(request, trace)
        asked = read_caller(target, request.remote, request.headers, self._trusted, self._key_header, trace)
        if isinstance(asked, Decision):
            trace.decision = asked
            trace.decision_seconds = time.perf_counter() - started
            return self._deny(request, trace)
        if asked.target.path.startswith(OWN_PREFIX):  # the proxy's own endpoints, with a key
            return await self._own(request, asked, trace)
        # 2. The key.
        entry = await self._lookup(asked, trace)
        if isinstance(entry, Decision):
            trace.decision = entry
            trace.decision_seconds = time.perf_counter() - started
            return self._deny(request, trace)
        # 3. The facts its policies need, and the decision (the candidate's beside it).
        assert asked.address.ip is not None
        now = trace.at = self._clock()
        facts = Facts(
            asked.address.ip,
            request.method,
            asked.target.path,
            now,
            asked.presented.key_id,
            request.headers,
            target=request.raw_path,
            scheme=self._scheme,
            peer_trusted=asked.address.peer_trusted,
        )
        trace.decision = decision = judge(entry, asked.presented, facts, self._gatherers, trace)
        trace.decision_seconds = time.perf_counter() - started
        if self.recorder.facts:  # the record keeps these whether or not a part needed them
            gather(facts, LOGGED_FACTS, self._gatherers)
            country = facts.gathered.get("country")
            trace.country = country if isinstance(country, str) else None
        if entry is None or not decision.allowed:
            return self._deny(request, trace)
        # 4. Forward, taking what the policy's parts take from shared state just before.
        return await self._forward(request, asked, entry, facts, trace, ticket)

    async def _lookup(self, asked: Asked, trace: Trace) -> Entry | Decision | None:
        """The presented key's cache entry (None: no such key), or the refusal when it cannot be had."""
        try:
            return await self._keys.lookup(asked.presented.key_id)
        except AuthorizationUnavailable as exc:
            log.warning("request %s: %s", trace.request_id, exc)
            return _UNAVAILABLE

    async def _admit(
        self, admissions: tuple[tuple[str, Rule], ...], facts: Facts, ticket: Ticket
    ) -> tuple[str, Decision] | None:
        """None when every admission admits; else the name of the one that refused, and its refusal."""
        for name, rule in admissions:
            admit = self._admissions.get(name)
            if admit is None:  # a part asks for an admission this process cannot give: fail closed
                return name, Decision.deny(Reason.INTERNAL_ERROR, f"no {name} admission is configured")
            verdict = admit(rule, facts, ticket)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if verdict is not None:
                return name, verdict
        return None

    async def _forward(
        self, request: Request, asked: Asked, entry: Entry, facts: Facts, trace: Trace, ticket: Ticket
    ) -> int:
        owner = trace.owner = entry.record.owner
        path = asked.target.path
        upstream = self._upstreams.pick(path, request.host)
        if upstream is None:
            return self._refuse(request, trace, Reason.NO_UPSTREAM, f"no upstream route for {path}")
        identity = {
            "X-Signalgate-Key-Id": asked.presented.key_id,
            "X-Signalgate-Owner": owner,
            "X-Request-Id": trace.request_id,
        }
        body_check = None
        if facts.gathered:  # what the policy's parts verified: attested subjects, a signed body digest
            body_check = self._attested(facts, identity, trace, request.body_exists)
        strip = asked.credential.strip
        dropped = self._strips.get(strip)
        if dropped is None:
            dropped = self._strips[strip] = strip | self._attestations
        try:
            forwarded = upstream_headers(
                request.headers.items(),
                peer=request.remote or "",
                peer_trusted=asked.address.peer_trusted,
                scheme=self._scheme,
                host=request.host,
                key_headers=dropped,
                identity=identity,
                strip=entry.policy.strip,
            )
        except HeaderValueInvalid as exc:
            return self._refuse(request, trace, Reason.REQUEST_INVALID, str(exc)[:200])
        # What the policy's parts take from shared state (rate tokens, in-flight slots, uses, nonces),
        # taken last, so a request refused above spends none of them.
        if entry.policy.admissions:
            refused = await self._admit(entry.policy.admissions, facts, ticket)
            if refused is not None:
                trace.decision = refused[1]
                if trace.candidate is not None and _shares(entry, refused[0]):
                    # The candidate runs no admission (it takes nothing); one it shares with the
                    # policy would have refused it alike, from the same shared state.
                    trace.candidate = refused[1]
                return self._deny(request, trace)
        if request.withheld_body:
            await request.send_continue()
        sent = time.perf_counter()
        try:
            status = await self._forwarder.forward(
                request,
                upstream,
                asked.target.path_qs,
                forwarded,
                {"X-Request-Id": trace.request_id},
                body_check=body_check,
            )
        except UpstreamTimeout as exc:
            log.warning("request %s: %s", trace.request_id, exc)
            return self._refuse(request, trace, Reason.UPSTREAM_TIMEOUT, "upstream timed out")
        except UpstreamUnavailable as exc:
            log.warning("request %s: %s", trace.request_id, exc)
            return self._refuse(request, trace, Reason.UPSTREAM_UNAVAILABLE, "upstream unavailable")
        except RequestBodyInvalid as exc:
            return self._refuse(request, trace, Reason.REQUEST_INVALID, f"request body: {exc}"[:200])
        except ContentDigestMismatch as exc:
            return self._refuse(request, trace, Reason.CONTENT_DIGEST_MISMATCH, f"signature: {exc}"[:200])
        finally:
            trace.upstream_seconds = time.perf_counter() - sent
        if status != CLIENT_CLOSED_REQUEST:
            trace.upstream_status = status
        return status

    @staticmethod
    def _attested(facts: Facts, identity: dict[str, str], trace: Trace, has_body: bool) -> BodyDigest | None:
        """The verified subjects for the upstream and the log; the body check a signed digest asks for."""
        gathered = facts.gathered
        for name, header in (("device", "X-Signalgate-Device"), ("workload", "X-Signalgate-Workload")):
            token = gathered.get(name)
            if isinstance(token, VerifiedToken) and token.subject.isprintable():
                identity[header] = token.subject[:256]
                trace.attested[name] = f"{token.issuer}:{token.subject[:256]}"
        signed = gathered.get("signature")
        if isinstance(signed, VerifiedSignature):
            trace.attested["signature"] = signed.keyid
            if signed.digests and has_body:
                return BodyDigest(signed.digests)
        return None

    # --- the proxy's own endpoints ------------------------------------------------------------------

    async def _own(self, request: Request, asked: Asked, trace: Trace) -> int:
        """A request to the proxy itself (``proxy.http.own``): answered here, never forwarded."""
        if asked.target.path != CLOSE_JOB_PATH or self._close_job is None:
            return self._refuse(
                request, trace, Reason.NO_UPSTREAM, f"no signalgate endpoint {asked.target.path}"
            )
        if request.method != "POST":
            return self._refuse(request, trace, Reason.REQUEST_INVALID, f"{CLOSE_JOB_PATH} takes POST only")
        entry = await self._lookup(asked, trace)
        if isinstance(entry, Decision):
            outcome: Decision | dict[str, object] = entry
        else:
            outcome = await close_own_job(entry, asked.presented, self._clock(), self._close_job)
        if isinstance(outcome, Decision):
            trace.decision = outcome
            return self._deny(request, trace)
        trace.decision = Decision(True, Reason.ALLOWED, f"closed job {outcome['job_id']}")
        return send_json(request, 200, {**outcome, "request_id": trace.request_id}, trace.request_id)

    # --- answers the handler makes itself ----------------------------------------------------------

    def refuse(self, request: Request, error: HttpProcessingError) -> None:
        """Answer a request aiohttp's parser refused; the listener closes the connection after it."""
        if isinstance(error, LineTooLong):
            decision = Decision.deny(Reason.HEADERS_TOO_LARGE, "request line or a header field is too large")
        else:
            decision = Decision.deny(Reason.REQUEST_INVALID, f"malformed request: {parser_error_text(error)}")
        self._answer_outside(request, decision)

    def fail(self, request: Request, error: BaseException) -> None:
        """Answer 500 for an exception that escaped the handler before its answer started."""
        request_id = self.ids.next()
        log.error("error handling request %s", request_id, exc_info=error)
        self._answer_outside(request, Decision.deny(Reason.INTERNAL_ERROR, "internal error"), request_id)

    def _answer_outside(self, request: Request, decision: Decision, request_id: str | None = None) -> None:
        request_id = request_id or self.ids.next()
        trace = Trace(request_id)
        trace.decision = decision
        trace.status = send_refusal(request, decision, request_id, expose=True)
        self.recorder.record(trace)

    def _refuse(self, request: Request, trace: Trace, reason: Reason, detail: str) -> int:
        trace.decision = Decision.deny(reason, detail)
        return self._deny(request, trace)

    def _deny(self, request: Request, trace: Trace) -> int:
        return send_refusal(request, trace.decision, trace.request_id, expose=self._expose)
