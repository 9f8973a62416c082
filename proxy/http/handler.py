"""The proxy's request handler, the hot path: ``proxy.http.listener`` hands it each parsed request.

One pipeline, read top to bottom in ``_handle``: read what is asked (method, target, client address,
presented key; or a path the proxy answers itself, ``special``, such as the health path), look the key
up, gather what its policy needs and authorize, run the admissions its parts ask for (``Part.admits``),
then forward or answer the refusal; ``__call__`` logs the decision and runs what the admissions asked
to release. On a cache hit: one target normalisation, one header walk,
one SHA-256, one cache lookup, the facts the policy's parts need, a few comparisons, then forwarding.
No query, no JSON parsing, no regex compilation, no log formatting unless the decision log is on.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

from proxy.core import keys
from proxy.core.attestation import VerifiedToken
from proxy.core.cache import Entry
from proxy.core.decide import authorize, check_key
from proxy.core.digest import BodyDigest
from proxy.core.errors import (
    AuthorizationUnavailable,
    ContentDigestMismatch,
    HeaderValueInvalid,
    KeyFormatError,
    RequestBodyInvalid,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.core.facts import UNAVAILABLE, Facts
from proxy.core.headers import upstream_headers
from proxy.core.keys import PresentedKey
from proxy.core.model import Decision, IPAddress, Reason
from proxy.core.part import Rule
from proxy.core.paths import Target, normalize
from proxy.core.policy import evaluate
from proxy.core.redact import logged_path
from proxy.core.signals import (
    PresentedCredential,
    TrustedProxies,
    client_address,
    presented_key,
)
from proxy.core.signed import VerifiedSignature
from proxy.core.upstreams import UpstreamTable
from proxy.http._aiohttp import HttpProcessingError, LineTooLong, parser_error_text
from proxy.http.answers import RequestIds, Trace, send_json, send_refusal
from proxy.http.forward import Forwarder
from proxy.http.own import CLOSE_JOB_PATH, OWN_PREFIX, JobCloser, close_own_job
from proxy.http.request import Request

__all__ = ["Admission", "DecisionLog", "Gatherer", "KeyLookup", "ProxyHandler", "Special", "Ticket"]

log = logging.getLogger("signalgate.proxy")

LOGGED_FACTS = ("country",)  # gathered for the decision line even when no part needed them
_UNAVAILABLE = Decision.deny(Reason.AUTHORIZATION_UNAVAILABLE, "authorization is temporarily unavailable")

Gatherer = Callable[
    [Facts], object
]  # one gathered fact (proxy.core.facts); UNAVAILABLE when it cannot be had


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
Admission = Callable[[Rule, Facts, Ticket], "Decision | Awaitable[Decision | None] | None"]


# A path the proxy answers itself, never forwarded (``special``, by normalised path: the health path,
# ...): ``(request, trace)`` -> the status it answered. It sets ``trace.decision`` if it decides.
Special = Callable[[Request, "Trace"], Awaitable[int]]


class DecisionLog(Protocol):
    """Where decision lines go (``proxy.logs.DecisionLines``)."""

    def enabled(self) -> bool: ...

    def write(self, line: str, /) -> None: ...


class Asked(NamedTuple):
    """What a request asks, read from it before any key is looked up."""

    target: Target
    client: IPAddress
    peer_trusted: bool
    credential: PresentedCredential
    presented: PresentedKey


class ProxyHandler:
    """Decides and forwards. Every dependency is handed in; the clock and the decision log too."""

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
        decisions: DecisionLog | None = None,
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
        self._decisions = decisions
        self._clock = clock
        self.ids = RequestIds()

    async def __call__(self, request: Request) -> None:
        started = time.perf_counter()
        trace = Trace(self.ids.next(), "")
        ticket = Ticket()
        status = 0
        try:
            status = await self._handle(request, trace, ticket)
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
        if self._logging() and not trace.quiet:
            self._decisions.write(trace.to_json(request.method, status, time.perf_counter() - started))  # type: ignore[union-attr]

    async def _handle(self, request: Request, trace: Trace, ticket: Ticket) -> int:
        # 1. What is asked, from where, with which key.
        asked = self._read(request, trace)
        if isinstance(asked, Decision):
            trace.decision = asked
            return self._deny(request, trace)
        if not isinstance(asked, Asked):  # a path the proxy answers itself, without a key
            return await asked(request, trace)
        if asked.target.path.startswith(OWN_PREFIX):  # the proxy's own endpoints, with a key
            return await self._own(request, asked, trace)
        # 2. The key.
        entry = await self._lookup(asked, trace)
        if isinstance(entry, Decision):
            trace.decision = entry
            return self._deny(request, trace)
        # 3. The facts its policy needs, and the decision.
        facts = Facts(
            asked.client,
            request.method,
            asked.target.path,
            self._clock(),
            asked.presented.key_id,
            request.headers,
            target=request.raw_path,
            scheme=self._scheme,
            peer_trusted=asked.peer_trusted,
        )
        trace.decision = self._authorize(facts, asked, entry, trace)
        if entry is None or not trace.decision.allowed:
            return self._deny(request, trace)
        # 4. Forward, taking what the policy's parts take from shared state just before.
        return await self._forward(request, asked, entry, facts, trace, ticket)

    def _read(self, request: Request, trace: Trace) -> Asked | Decision | Special:
        """The request's target, client address and key, or the refusal of a request that has none, or
        the answerer of a path the proxy answers itself."""
        if request.method == "CONNECT":  # a tunnel, not a request: nothing to judge or forward
            return Decision.deny(Reason.METHOD_UNSUPPORTED, "CONNECT is not supported")
        target = normalize(request.raw_path)
        if target.problem is not None:
            trace.path = logged_path(request.raw_path)
            return Decision.deny(Reason.PATH_INVALID, target.problem)
        trace.path = target.path
        special = self._special.get(target.path)
        if special is not None:
            return special
        headers = request.headers
        address = client_address(request.remote, headers.getall("X-Forwarded-For", ()), self._trusted)
        trace.client = address.ip
        if address.ip is None:
            return Decision.deny(Reason.REQUEST_INVALID, address.problem or "client address unknown")
        key_header = self._key_header
        credential = presented_key(
            headers.getall(key_header, ()), headers.getall("Authorization", ()), key_header
        )
        if credential.problem is not None:
            return Decision.deny(Reason.KEY_INVALID, credential.problem)
        if not credential.value:
            return Decision.deny(Reason.KEY_MISSING, "no API key presented")
        try:
            presented = keys.parse(credential.value)
        except KeyFormatError:
            return Decision.deny(Reason.KEY_INVALID, "not a signalgate key")
        trace.key_id = presented.key_id
        return Asked(target, address.ip, address.peer_trusted, credential, presented)

    async def _lookup(self, asked: Asked, trace: Trace) -> Entry | Decision | None:
        """The presented key's cache entry (None: no such key), or the refusal when it cannot be had."""
        try:
            return await self._keys.lookup(asked.presented.key_id)
        except AuthorizationUnavailable as exc:
            log.warning("request %s: %s", trace.request_id, exc)
            return _UNAVAILABLE

    def _authorize(self, facts: Facts, asked: Asked, entry: Entry | None, trace: Trace) -> Decision:
        if entry is None:
            decision = authorize(None, None, asked.presented, facts)
        else:  # the key itself first: nothing is gathered (no token verified) for a wrong secret
            trace.owner = entry.record.owner  # on every decision about a known key, not only allows
            decision = check_key(entry.record, asked.presented, facts.now) or self._judge(facts, entry)
        if self._logging():  # the decision line records these whether or not a part needed them
            self._gather(facts, LOGGED_FACTS)
            country = facts.gathered.get("country")
            trace.country = country if isinstance(country, str) else None
        return decision

    def _judge(self, facts: Facts, entry: Entry) -> Decision:
        policy = entry.policy
        if policy.needs:
            facts.policy = policy
            self._gather(facts, policy.needs)
        return evaluate(policy, facts)

    async def _admit(
        self, admissions: tuple[tuple[str, Rule], ...], facts: Facts, ticket: Ticket
    ) -> Decision | None:
        for name, rule in admissions:
            admit = self._admissions.get(name)
            if admit is None:  # a part asks for an admission this process cannot give: fail closed
                return Decision.deny(Reason.INTERNAL_ERROR, f"no {name} admission is configured")
            verdict = admit(rule, facts, ticket)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if verdict is not None:
                return verdict
        return None

    def _gather(self, facts: Facts, names: frozenset[str] | tuple[str, ...]) -> None:
        gathered = facts.gathered
        for name in names:
            if name not in gathered:
                gatherer = self._gatherers.get(name)
                gathered[name] = UNAVAILABLE if gatherer is None else gatherer(facts)

    async def _forward(
        self, request: Request, asked: Asked, entry: Entry, facts: Facts, trace: Trace, ticket: Ticket
    ) -> int:
        owner = entry.record.owner
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
                peer_trusted=asked.peer_trusted,
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
                trace.decision = refused
                return self._deny(request, trace)
        if request.withheld_body:
            await request.send_continue()
        try:
            return await self._forwarder.forward(
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
        status = send_refusal(request, decision, request_id, expose=True)
        if self._logging():
            trace = Trace(request_id, "")
            trace.decision = decision
            self._decisions.write(trace.to_json("", status, 0.0))  # type: ignore[union-attr]

    def _logging(self) -> bool:
        return self._decisions is not None and self._decisions.enabled()

    def _refuse(self, request: Request, trace: Trace, reason: Reason, detail: str) -> int:
        trace.decision = Decision.deny(reason, detail)
        return self._deny(request, trace)

    def _deny(self, request: Request, trace: Trace) -> int:
        return send_refusal(request, trace.decision, trace.request_id, expose=self._expose)
