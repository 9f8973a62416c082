"""What the proxy says itself: refusal bodies and request ids.

Every answer the proxy makes itself is JSON ``{"error", "reason", "request_id"}``; with reasons not
exposed, 401 and 403 say only ``unauthorized``/``forbidden`` (the specific reason is in the log under
the same request id).
"""

from __future__ import annotations

import itertools
import json
import secrets
from http import HTTPStatus

from proxy.core.model import GENERIC_REASON, STATUS_OF, Decision, Reason
from proxy.http.request import Request

__all__ = ["RequestIds", "error_answer", "send_json", "send_refusal"]

_UNAUTHORIZED_CHALLENGE = 'Bearer realm="signalgate"'
_INVALID_CHALLENGE = 'Bearer realm="signalgate", error="invalid_token"'
# 401s that are not about the key: what is missing is named in the challenge.
_CHALLENGES = {
    Reason.KEY_MISSING: _UNAUTHORIZED_CHALLENGE,
    Reason.DEVICE_ATTESTATION_MISSING: 'Attestation realm="signalgate", kind="device"',
    Reason.WORKLOAD_ATTESTATION_MISSING: 'Attestation realm="signalgate", kind="workload"',
    Reason.SIGNATURE_MISSING: 'Signature realm="signalgate"',
}
_MESSAGES = {
    401: "a valid API key is required (and what its policy asks for: an attestation, a signature)",
    403: "this key may not do this request from here",
    400: "bad request",
    404: "no upstream serves this path",
    429: "too many requests",
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
        headers.append(("WWW-Authenticate", _CHALLENGES.get(decision.reason, _INVALID_CHALLENGE)))
    if decision.headers:  # Retry-After, RateLimit-Policy, RateLimit... as the refusing part set them
        headers.extend(decision.headers)
    body = json.dumps({"error": message, "reason": reason, "request_id": request_id}).encode()
    return status, headers, body


def send_refusal(request: Request, decision: Decision, request_id: str, *, expose: bool) -> int:
    status, headers, body = error_answer(decision, request_id, expose=expose)
    request.respond(status, HTTPStatus(status).phrase, headers, body)
    return status


def send_json(request: Request, status: int, document: object, request_id: str) -> int:
    """An answer of the proxy's own endpoints (``/.signalgate/...``)."""
    headers = [
        ("Content-Type", "application/json; charset=utf-8"),
        ("X-Request-Id", request_id),
        ("Cache-Control", "no-store"),
    ]
    request.respond(status, HTTPStatus(status).phrase, headers, json.dumps(document).encode())
    return status
