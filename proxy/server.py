"""The proxy's request handler, the hot path: ``proxy.listener`` hands it each parsed request.

Per request on a cache hit: one target normalisation, one header walk, one SHA-256, one cache lookup,
one GeoIP lookup, a few comparisons, then forwarding. No query, no JSON parsing, no regex compilation,
no log formatting unless the decision logger is enabled.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus

from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from proxy import keys
from proxy.decide import authorize
from proxy.decisionlog import emit_line
from proxy.errors import GeoIPError, KeyFormatError
from proxy.forward import Forwarder, RequestBodyInvalid, UpstreamTimeout, UpstreamUnavailable
from proxy.geoip import GeoIP
from proxy.headers import HeaderValueInvalid, upstream_headers
from proxy.keysource import AuthorizationUnavailable, KeySource
from proxy.model import GENERIC_REASON, STATUS_OF, Decision, IPAddress, Reason, RequestSignals
from proxy.paths import normalize
from proxy.request import Request
from proxy.signals import TrustedProxies, client_address, presented_key
from proxy.upstreams import UpstreamTable

__all__ = ["ProxyHandler", "RequestIds", "Trace", "error_answer", "send_refusal"]

decision_log = logging.getLogger("signalgate.decision")
log = logging.getLogger("signalgate.proxy")

UNDECIDED = Decision.deny(Reason.INTERNAL_ERROR, "no decision was reached")
_LOGGED_PATH = 256  # characters of a refused raw path kept for the decision log
# aiohttp's parser errors by class; their messages quote the refused bytes, so only these texts are used
_PARSER_ERRORS = {
    "BadHttpMessage": "the request is not valid HTTP/1.1",
    "BadHttpMethod": "invalid method",
    "BadStatusLine": "invalid request line",
    "InvalidHeader": "invalid header field",
    "InvalidURLError": "invalid request target",
    "ContentLengthError": "invalid or missing body length",
    "TransferEncodingError": "invalid transfer encoding",
    "ContentEncodingError": "invalid content encoding",
}
_UNAUTHORIZED_CHALLENGE = 'Bearer realm="signalgate"'
_INVALID_CHALLENGE = 'Bearer realm="signalgate", error="invalid_token"'
_MESSAGES = {
    401: "a valid API key is required",
    403: "this key may not do this request from here",
    400: "bad request",
    404: "no upstream serves this path",
    431: "request header fields too large",
    501: "this method is not supported",
    500: "internal error",
    502: "upstream unavailable",
    503: "authorization is temporarily unavailable",
    504: "upstream timed out",
}


class RequestIds:
    """Unique, cheap request ids: a random per-process prefix and a counter."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):010x}"


def error_answer(
    decision: Decision, request_id: str, *, expose: bool
) -> tuple[int, list[tuple[str, str]], bytes]:
    """The status, headers and JSON body of a refusal."""
    status = STATUS_OF[decision.reason]
    reason = str(decision.reason)
    message = decision.detail or _MESSAGES.get(status, "refused")
    if not expose and status in GENERIC_REASON:
        reason, message = GENERIC_REASON[status], _MESSAGES[status]
    headers = [
        ("Content-Type", "application/json; charset=utf-8"),
        ("X-Request-Id", request_id),
        ("Cache-Control", "no-store"),
    ]
    if status == 401:
        headers.append(
            (
                "WWW-Authenticate",
                _UNAUTHORIZED_CHALLENGE if decision.reason is Reason.KEY_MISSING else _INVALID_CHALLENGE,
            )
        )
    body = json.dumps({"error": message, "reason": reason, "request_id": request_id}).encode()
    return status, headers, body


def send_refusal(request: Request, decision: Decision, request_id: str, *, expose: bool) -> int:
    status, headers, body = error_answer(decision, request_id, expose=expose)
    request.respond(status, HTTPStatus(status).phrase, headers, body)
    return status


class Trace:
    """What one request's log line says; filled in as the handler learns it."""

    __slots__ = ("client", "country", "decision", "key_id", "owner", "path", "request_id")

    def __init__(self, request_id: str, path: str) -> None:
        self.request_id = request_id
        self.path = path
        self.client: IPAddress | None = None
        self.country: str | None = None
        self.key_id: str | None = None
        self.owner: str | None = None
        self.decision = UNDECIDED

    def to_json(self, method: str, status: int, seconds: float) -> str:
        decision = self.decision
        return json.dumps(
            {
                "request_id": self.request_id,
                "key_id": self.key_id,
                "owner": self.owner,
                "client_ip": str(self.client) if self.client is not None else None,
                "country": self.country,
                "method": method,
                "path": self.path,
                "decision": "allow" if decision.allowed else "deny",
                "reason": str(decision.reason),
                "detail": decision.detail or None,
                "status": status,
                "latency_ms": round(seconds * 1000, 3),
            }
        )


class ProxyHandler:
    """Decides and forwards. Every dependency is handed in; the clock too."""

    def __init__(
        self,
        *,
        keysource: KeySource,
        upstreams: UpstreamTable,
        forwarder: Forwarder,
        trusted: TrustedProxies,
        geoip: GeoIP | None,
        key_header: str,
        expose_reasons: bool,
        scheme: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._keys = keysource
        self._upstreams = upstreams
        self._forwarder = forwarder
        self._trusted = trusted
        self._geoip = geoip
        self._key_header = key_header
        self._expose = expose_reasons
        self._scheme = scheme
        self._clock = clock
        self.ids = RequestIds()

    async def __call__(self, request: Request) -> None:
        started = time.perf_counter()
        trace = Trace(self.ids.next(), "")
        try:
            status = await self._handle(request, trace)
        except Exception:
            log.exception("request %s failed", trace.request_id)
            trace.decision = Decision.deny(Reason.INTERNAL_ERROR, "internal error")
            if request.status:  # the answer had started: cut it so it cannot pass for complete
                request.abort()
                status = request.status
            else:
                status = self._deny(request, trace)
        if decision_log.isEnabledFor(logging.INFO):
            emit_line(decision_log, trace.to_json(request.method, status, time.perf_counter() - started))

    def refuse(self, request: Request, error: HttpProcessingError) -> None:
        """Answer a request aiohttp's parser refused; the listener closes the connection after it."""
        if isinstance(error, LineTooLong):
            decision = Decision.deny(Reason.HEADERS_TOO_LARGE, "request line or a header field is too large")
        else:  # a fixed text: the parser's message quotes the bytes it refused, which may hold a key
            what = _PARSER_ERRORS.get(type(error).__name__, "the request could not be parsed")
            decision = Decision.deny(Reason.REQUEST_INVALID, f"malformed request: {what}")
        self._answer_outside(request, decision)

    def fail(self, request: Request, error: BaseException) -> None:
        """Answer 500 for an exception that escaped the handler before its answer started."""
        request_id = self.ids.next()
        log.error("error handling request %s", request_id, exc_info=error)
        self._answer_outside(request, Decision.deny(Reason.INTERNAL_ERROR, "internal error"), request_id)

    def _answer_outside(self, request: Request, decision: Decision, request_id: str | None = None) -> None:
        request_id = request_id or self.ids.next()
        status = send_refusal(request, decision, request_id, expose=True)
        if decision_log.isEnabledFor(logging.INFO):
            trace = Trace(request_id, "")
            trace.decision = decision
            emit_line(decision_log, trace.to_json("", status, 0.0))

    async def _handle(self, request: Request, trace: Trace) -> int:
        if request.method == "CONNECT":  # a tunnel, not a request: nothing to judge or forward
            return self._refuse(request, trace, Reason.METHOD_UNSUPPORTED, "CONNECT is not supported")
        target = normalize(request.raw_path)
        if target.problem is not None:
            trace.path = request.raw_path.partition("?")[0][:_LOGGED_PATH]  # the query may hold secrets
            return self._refuse(request, trace, Reason.PATH_INVALID, target.problem)
        trace.path = target.path
        headers = request.headers
        address = client_address(request.remote, headers.getall("X-Forwarded-For", ()), self._trusted)
        client = trace.client = address.ip
        if client is None:
            problem = address.problem or "client address unknown"
            return self._refuse(request, trace, Reason.REQUEST_INVALID, problem)
        key_header = self._key_header
        credential = presented_key(
            headers.getall(key_header, ()), headers.getall("Authorization", ()), key_header
        )
        if credential.problem is not None:
            return self._refuse(request, trace, Reason.KEY_INVALID, credential.problem)
        if not credential.value:
            return self._refuse(request, trace, Reason.KEY_MISSING, "no API key presented")
        try:
            presented = keys.parse(credential.value)
        except KeyFormatError:
            return self._refuse(request, trace, Reason.KEY_INVALID, "not a signalgate key")
        trace.key_id = presented.key_id
        try:
            entry = await self._keys.lookup(presented.key_id)
        except AuthorizationUnavailable as exc:
            log.warning("request %s: %s", trace.request_id, exc)
            return self._refuse(
                request, trace, Reason.AUTHORIZATION_UNAVAILABLE, "authorization is temporarily unavailable"
            )
        geoip, geo_ok = self._geoip, self._geoip is not None
        if geoip is not None:
            try:
                trace.country = geoip.country(client)
            except GeoIPError as exc:  # region rules then deny: the database failed, not the client
                log.error("request %s: GeoIP lookup failed: %s", trace.request_id, exc)
                geo_ok = False
        signals = RequestSignals(client, trace.country, request.method, target.path, geo_ok)
        if entry is None:
            decision = authorize(None, None, presented, signals, self._clock())
        else:
            decision = authorize(entry.record, entry.policy, presented, signals, self._clock())
        trace.decision = decision
        if entry is None or not decision.allowed:
            return self._deny(request, trace)
        trace.owner = entry.record.owner
        upstream = self._upstreams.pick(target.path, request.host)
        if upstream is None:
            return self._refuse(request, trace, Reason.NO_UPSTREAM, f"no upstream route for {target.path}")
        try:
            forwarded = upstream_headers(
                headers.items(),
                peer=request.remote or "",
                peer_trusted=address.peer_trusted,
                scheme=self._scheme,
                host=request.host,
                key_headers=credential.strip,
                identity={
                    "X-Signalgate-Key-Id": presented.key_id,
                    "X-Signalgate-Owner": entry.record.owner,
                    "X-Request-Id": trace.request_id,
                },
            )
        except HeaderValueInvalid as exc:
            return self._refuse(request, trace, Reason.REQUEST_INVALID, str(exc)[:200])
        if request.withheld_body:
            await request.send_continue()
        try:
            return await self._forwarder.forward(
                request, upstream, target.path_qs, forwarded, {"X-Request-Id": trace.request_id}
            )
        except UpstreamTimeout as exc:
            log.warning("request %s: %s", trace.request_id, exc)
            return self._refuse(request, trace, Reason.UPSTREAM_TIMEOUT, "upstream timed out")
        except UpstreamUnavailable as exc:
            log.warning("request %s: %s", trace.request_id, exc)
            return self._refuse(request, trace, Reason.UPSTREAM_UNAVAILABLE, "upstream unavailable")
        except RequestBodyInvalid as exc:
            return self._refuse(request, trace, Reason.REQUEST_INVALID, f"request body: {exc}"[:200])

    def _refuse(self, request: Request, trace: Trace, reason: Reason, detail: str) -> int:
        trace.decision = Decision.deny(reason, detail)
        return self._deny(request, trace)

    def _deny(self, request: Request, trace: Trace) -> int:
        return send_refusal(request, trace.decision, trace.request_id, expose=self._expose)
