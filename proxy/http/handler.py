"""The proxy's request handler, the hot path: ``proxy.http.listener`` hands it each parsed request.

One pipeline, read top to bottom from ``_handle``: read what is asked (method, target, client address,
presented key), look the key up, gather what its policies need and authorize (the pure steps of
``proxy.core.judge``, which explain runs too), run the admissions its parts ask for (``Part.admits``),
then forward or answer the refusal; ``_end`` runs what the admissions asked to release and hands the
trace to the recorder (metrics, decision line, decision log).

It runs synchronously, from the listener's ``data_received`` (``start``), as far as it goes: on a cache
hit with no admission doing IO, a request without a body is decided and its answer's relay started
(``proxy.http.relay``) without an await. Where a step must wait (a key not cached, an admission doing
IO, a body to stream, the proxy's own endpoints) it returns a coroutine that goes on from there, which
the listener's task awaits. On a cache hit: one target normalisation, one header walk, one SHA-256, one
cache lookup, the facts the policies' parts need, a few comparisons, then forwarding. No query, no
JSON parsing, no regex compilation; the decision line is encoded only when it is written, and the
decision log only appends the trace to a list.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol, TypeAlias

from proxy.core.attestation import VerifiedToken
from proxy.core.cache import MISSING, Entry, Missing
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
from proxy.core.upstreams import Upstream, UpstreamTable
from proxy.http._aiohttp import HttpProcessingError, LineTooLong, parser_error_text
from proxy.http.answers import RequestIds, send_json, send_refusal
from proxy.http.forward import CLIENT_CLOSED_REQUEST, SMALL_BODY, Forwarder
from proxy.http.own import CLOSE_JOB_PATH, OWN_PREFIX, JobCloser, close_own_job
from proxy.http.request import Request

__all__ = ["Admission", "Gatherer", "KeyLookup", "ProxyHandler", "Special", "Ticket"]

log = logging.getLogger("signalgate.proxy")

LOGGED_FACTS = ("country",)  # gathered for the decision record even when no part needed them
_UNAVAILABLE = Decision.deny(Reason.AUTHORIZATION_UNAVAILABLE, "authorization is temporarily unavailable")


class KeyLookup(Protocol):
    """The key cache in front of PostgreSQL (``proxy.db.keysource.KeySource``)."""

    def cached(self, key_id: str, /) -> Entry | Missing: ...

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


class _Relaying:
    """The answer is being relayed (``proxy.http.relay``): the relay finishes the request."""

    __slots__ = ()


RELAYING = _Relaying()
# What a step of the pipeline returns: the status sent, RELAYING, or a coroutine that goes on.
Outcome: TypeAlias = "int | _Relaying | Awaitable[Outcome]"


class _Job:
    """One request going through the pipeline."""

    __slots__ = ("request", "sent", "started", "ticket", "trace")

    def __init__(self, request: Request, trace: Trace) -> None:
        self.started = time.perf_counter()
        self.request = request
        self.trace = trace
        self.ticket = Ticket()
        self.sent = 0.0


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

    # --- the pipeline ------------------------------------------------------------------------------
    #
    # Each step runs synchronously as far as it can; where one must wait (a key not cached, an admission
    # doing IO, a request body to stream, the proxy's own endpoints) it returns a coroutine that goes on
    # from there. A step's result is the status sent, ``RELAYING`` (the answer is being relayed; the
    # relay finishes the request) or that coroutine.

    async def __call__(self, request: Request) -> None:
        """Handle ``request`` to its end (the listener's task path)."""
        rest = self.start(request)
        if rest is not None:
            await rest
        await request.finished()

    def start(self, request: Request) -> Awaitable[None] | None:
        """Handle ``request`` as far as it goes without waiting: None when it is answered or its answer
        is being relayed (``request.finish`` is called when it is over), else what is left to await."""
        job = _Job(request, Trace(self.ids.next()))
        try:
            outcome = self._handle(job)
        except Exception:
            self._crashed(job)
            return None
        if isinstance(outcome, int):
            self._end(job, outcome)
            return None
        if outcome is RELAYING:
            return None
        return self._rest(job, outcome)

    async def _rest(self, job: _Job, outcome: Outcome) -> None:
        try:
            while not isinstance(outcome, (int, _Relaying)):
                outcome = await outcome
        except Exception:
            self._crashed(job)
            return
        except BaseException:  # cancelled (shutdown's grace ran out): what was taken is given back
            job.ticket.done(job.request.status)
            raise
        if isinstance(outcome, int):
            self._end(job, outcome)

    def _crashed(self, job: _Job) -> None:
        request, trace = job.request, job.trace
        log.exception("request %s failed", trace.request_id)
        trace.decision = Decision.deny(Reason.INTERNAL_ERROR, "internal error")
        if request.status:  # the answer had started: cut it so it cannot pass for complete
            request.abort()
            status = request.status
        else:
            status = self._deny(request, trace)
        self._end(job, status)

    def _end(self, job: _Job, status: int) -> None:
        request, trace = job.request, job.trace
        job.ticket.done(status)
        trace.method = request.method
        trace.status = status
        trace.seconds = time.perf_counter() - job.started
        try:
            self.recorder.record(trace)
        finally:
            request.finish()

    def _handle(self, job: _Job) -> Outcome:
        request, trace = job.request, job.trace
        # 1. What is asked (or a path the proxy answers itself, without a key), from where, which key.
        target = read_target(request.method, request.raw_path, trace)
        if isinstance(target, Decision):
            return self._refused(job, target)
        special = self._special.get(target.path)
        if special is not None:
            return special(request, trace)
        asked = read_caller(target, request.remote, request.headers, self._trusted, self._key_header, trace)
        if isinstance(asked, Decision):
            return self._refused(job, asked)
        if asked.target.path.startswith(OWN_PREFIX):  # the proxy's own endpoints, with a key
            return self._own(request, asked, trace)
        # 2. The key: from the cache when it holds it, else (one round trip) from PostgreSQL.
        entry = self._keys.cached(asked.presented.key_id)
        if entry is MISSING:
            return self._looked_up(job, asked)
        return self._judged(job, asked, entry)  # type: ignore[arg-type]

    async def _looked_up(self, job: _Job, asked: Asked) -> Outcome:
        return self._judged(job, asked, await self._lookup(asked, job.trace))

    def _refused(self, job: _Job, decision: Decision) -> int:
        job.trace.decision = decision
        job.trace.decision_seconds = time.perf_counter() - job.started
        return self._deny(job.request, job.trace)

    def _judged(self, job: _Job, asked: Asked, entry: Entry | Decision | None) -> Outcome:
        if isinstance(entry, Decision):
            return self._refused(job, entry)
        request, trace = job.request, job.trace
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
        trace.decision_seconds = time.perf_counter() - job.started
        if self.recorder.facts:  # the record keeps these whether or not a part needed them
            gather(facts, LOGGED_FACTS, self._gatherers)
            country = facts.gathered.get("country")
            trace.country = country if isinstance(country, str) else None
        if entry is None or not decision.allowed:
            return self._deny(request, trace)
        # 4. Forward, taking what the policy's parts take from shared state just before.
        return self._forward(job, asked, entry, facts)

    async def _lookup(self, asked: Asked, trace: Trace) -> Entry | Decision | None:
        """The presented key's cache entry (None: no such key), or the refusal when it cannot be had."""
        try:
            return await self._keys.lookup(asked.presented.key_id)
        except AuthorizationUnavailable as exc:
            log.warning("request %s: %s", trace.request_id, exc)
            return _UNAVAILABLE

    def _admit(
        self, job: _Job, entry: Entry, facts: Facts, send: Callable[[], Outcome], index: int = 0
    ) -> Outcome:
        """Run the policy's admissions from ``index`` on, then ``send``; the first refusal is the answer."""
        admissions = entry.policy.admissions
        for at in range(index, len(admissions)):
            name, rule = admissions[at]
            admit = self._admissions.get(name)
            if admit is None:  # a part asks for an admission this process cannot give: fail closed
                verdict: object = Decision.deny(Reason.INTERNAL_ERROR, f"no {name} admission is configured")
            else:
                verdict = admit(rule, facts, job.ticket)
            if inspect.isawaitable(verdict):
                return self._admitted_later(job, entry, facts, send, at, verdict)
            if verdict is not None:
                return self._admission_refused(job, entry, name, verdict)  # type: ignore[arg-type]
        return send()

    async def _admitted_later(
        self,
        job: _Job,
        entry: Entry,
        facts: Facts,
        send: Callable[[], Outcome],
        at: int,
        verdict: Awaitable[Decision | None],
    ) -> Outcome:
        refusal = await verdict
        if refusal is not None:
            return self._admission_refused(job, entry, entry.policy.admissions[at][0], refusal)
        return self._admit(job, entry, facts, send, at + 1)

    def _admission_refused(self, job: _Job, entry: Entry, name: str, refusal: Decision) -> int:
        trace = job.trace
        trace.decision = refusal
        if trace.candidate is not None and _shares(entry, name):
            # The candidate runs no admission (it takes nothing); one it shares with the policy would
            # have refused it alike, from the same shared state.
            trace.candidate = refusal
        return self._deny(job.request, trace)

    def _forward(self, job: _Job, asked: Asked, entry: Entry, facts: Facts) -> Outcome:
        request, trace = job.request, job.trace
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
        extra = {"X-Request-Id": trace.request_id}
        path_qs = asked.target.path_qs

        def send() -> Outcome:
            body = request.whole_body(SMALL_BODY) if body_check is None else None
            if body is None:  # a body to stream up (proxy.http.forward)
                return self._exchange(job, upstream, path_qs, forwarded, extra, body_check)
            job.sent = time.perf_counter()
            self._forwarder.relay(
                request, upstream, path_qs, forwarded, extra, functools.partial(self._relayed, job), body
            )
            return RELAYING

        # What the policy's parts take from shared state (rate tokens, in-flight slots, uses, nonces),
        # taken last, so a request refused above spends none of them.
        if entry.policy.admissions:
            return self._admit(job, entry, facts, send)
        return send()

    def _relayed(self, job: _Job, status: int, error: UpstreamUnavailable | UpstreamTimeout | None) -> None:
        """A relay is over: ``status`` sent, or ``error`` to answer."""
        trace = job.trace
        trace.upstream_seconds = time.perf_counter() - job.sent
        try:
            if error is not None:
                status = self._upstream_failed(job, error)
            elif status != CLIENT_CLOSED_REQUEST:
                trace.upstream_status = status
        except Exception:
            self._crashed(job)
            return
        self._end(job, status)

    def _upstream_failed(self, job: _Job, error: UpstreamUnavailable | UpstreamTimeout) -> int:
        log.warning("request %s: %s", job.trace.request_id, error)
        if isinstance(error, UpstreamTimeout):
            return self._refuse(job.request, job.trace, Reason.UPSTREAM_TIMEOUT, "upstream timed out")
        return self._refuse(job.request, job.trace, Reason.UPSTREAM_UNAVAILABLE, "upstream unavailable")

    async def _exchange(
        self,
        job: _Job,
        upstream: Upstream,
        path_qs: str,
        forwarded: list[tuple[str, str]],
        extra: dict[str, str],
        body_check: BodyDigest | None,
    ) -> int:
        """A request with a body: streamed up and down by the forwarder's exchange."""
        request, trace = job.request, job.trace
        if request.withheld_body:
            await request.send_continue()
        sent = time.perf_counter()
        try:
            status = await self._forwarder.forward(
                request, upstream, path_qs, forwarded, extra, body_check=body_check
            )
        except (UpstreamTimeout, UpstreamUnavailable) as exc:
            return self._upstream_failed(job, exc)
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
