"""Values the decision core works on: keys, request signals, decisions and their reason codes.

Stdlib only. Everything here is frozen; per-request objects are slotted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "ALLOW",
    "GENERIC_REASON",
    "STATUS_OF",
    "Decision",
    "IPAddress",
    "KeyRecord",
    "KeyStatus",
    "Reason",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class KeyStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


class Reason(StrEnum):
    """Stable reason codes. Documented in the README; never renamed, only added to."""

    ALLOWED = "allowed"
    # 401: who
    KEY_MISSING = "key_missing"
    KEY_INVALID = "key_invalid"
    KEY_REVOKED = "key_revoked"
    KEY_SUSPENDED = "key_suspended"
    KEY_EXPIRED = "key_expired"
    KEY_NOT_YET_VALID = "key_not_yet_valid"
    # 403: the policy
    NETWORK_DENIED = "network_denied"
    REGION_DENIED = "region_denied"
    ROUTE_DENIED = "route_denied"
    # 401/403: attestations (proxy.core.parts.device, workload) and request signatures (signature)
    DEVICE_ATTESTATION_MISSING = "device_attestation_missing"
    DEVICE_ATTESTATION_INVALID = "device_attestation_invalid"
    DEVICE_ATTESTATION_UNTRUSTED = "device_attestation_untrusted"
    DEVICE_ATTESTATION_EXPIRED = "device_attestation_expired"
    DEVICE_ATTESTATION_AUDIENCE = "device_attestation_audience"
    DEVICE_ATTESTATION_CLAIMS = "device_attestation_claims"
    WORKLOAD_ATTESTATION_MISSING = "workload_attestation_missing"
    WORKLOAD_ATTESTATION_INVALID = "workload_attestation_invalid"
    WORKLOAD_ATTESTATION_UNTRUSTED = "workload_attestation_untrusted"
    WORKLOAD_ATTESTATION_EXPIRED = "workload_attestation_expired"
    WORKLOAD_ATTESTATION_AUDIENCE = "workload_attestation_audience"
    WORKLOAD_ATTESTATION_CLAIMS = "workload_attestation_claims"
    SIGNATURE_MISSING = "signature_missing"
    SIGNATURE_INVALID = "signature_invalid"
    SIGNATURE_EXPIRED = "signature_expired"
    SIGNATURE_REPLAYED = "signature_replayed"
    CONTENT_DIGEST_MISMATCH = "content_digest_mismatch"
    OUTSIDE_SCHEDULE = "outside_schedule"
    CONTEXT_MISSING = "context_missing"
    CONTEXT_DENIED = "context_denied"
    # 401: the key's job is closed (or past its deadline); 403: the key may not close its job
    JOB_CLOSED = "job_closed"
    JOB_CLOSE_DENIED = "job_close_denied"
    # 429: limits
    USES_EXHAUSTED = "uses_exhausted"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_IN_FLIGHT = "too_many_in_flight"
    # the request itself
    PATH_INVALID = "path_invalid"
    REQUEST_INVALID = "request_invalid"
    HEADERS_TOO_LARGE = "headers_too_large"
    NO_UPSTREAM = "no_upstream"
    METHOD_UNSUPPORTED = "method_unsupported"
    # the proxy's dependencies
    AUTHORIZATION_UNAVAILABLE = "authorization_unavailable"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    INTERNAL_ERROR = "internal_error"


STATUS_OF: Mapping[Reason, int] = {
    Reason.ALLOWED: 200,
    Reason.KEY_MISSING: 401,
    Reason.KEY_INVALID: 401,
    Reason.KEY_REVOKED: 401,
    Reason.KEY_SUSPENDED: 401,
    Reason.KEY_EXPIRED: 401,
    Reason.KEY_NOT_YET_VALID: 401,
    Reason.NETWORK_DENIED: 403,
    Reason.REGION_DENIED: 403,
    Reason.ROUTE_DENIED: 403,
    Reason.DEVICE_ATTESTATION_MISSING: 401,
    Reason.DEVICE_ATTESTATION_INVALID: 403,
    Reason.DEVICE_ATTESTATION_UNTRUSTED: 403,
    Reason.DEVICE_ATTESTATION_EXPIRED: 403,
    Reason.DEVICE_ATTESTATION_AUDIENCE: 403,
    Reason.DEVICE_ATTESTATION_CLAIMS: 403,
    Reason.WORKLOAD_ATTESTATION_MISSING: 401,
    Reason.WORKLOAD_ATTESTATION_INVALID: 403,
    Reason.WORKLOAD_ATTESTATION_UNTRUSTED: 403,
    Reason.WORKLOAD_ATTESTATION_EXPIRED: 403,
    Reason.WORKLOAD_ATTESTATION_AUDIENCE: 403,
    Reason.WORKLOAD_ATTESTATION_CLAIMS: 403,
    Reason.SIGNATURE_MISSING: 401,
    Reason.SIGNATURE_INVALID: 403,
    Reason.SIGNATURE_EXPIRED: 403,
    Reason.SIGNATURE_REPLAYED: 403,
    Reason.CONTENT_DIGEST_MISMATCH: 403,
    Reason.OUTSIDE_SCHEDULE: 403,
    Reason.CONTEXT_MISSING: 403,
    Reason.CONTEXT_DENIED: 403,
    Reason.JOB_CLOSED: 401,
    Reason.JOB_CLOSE_DENIED: 403,
    Reason.USES_EXHAUSTED: 429,
    Reason.RATE_LIMITED: 429,
    Reason.TOO_MANY_IN_FLIGHT: 429,
    Reason.PATH_INVALID: 400,
    Reason.REQUEST_INVALID: 400,
    Reason.HEADERS_TOO_LARGE: 431,
    Reason.METHOD_UNSUPPORTED: 501,
    Reason.NO_UPSTREAM: 404,
    Reason.AUTHORIZATION_UNAVAILABLE: 503,
    Reason.UPSTREAM_UNAVAILABLE: 502,
    Reason.UPSTREAM_TIMEOUT: 504,
    Reason.INTERNAL_ERROR: 500,
}

# What a client sees instead of the specific reason when reasons are not exposed.
GENERIC_REASON: Mapping[int, str] = {401: "unauthorized", 403: "forbidden"}


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: Reason
    detail: str = ""
    # Header fields a refusal's answer carries (Retry-After, RateLimit...), in order.
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def status(self) -> int:
        return STATUS_OF[self.reason]

    @staticmethod
    def deny(reason: Reason, detail: str = "", headers: tuple[tuple[str, str], ...] = ()) -> Decision:
        return Decision(False, reason, detail, headers)


ALLOW = Decision(True, Reason.ALLOWED)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key as stored. ``secret_hash`` is SHA-256 of the whole presented key; never the key.

    After a rotation, ``previous_hash`` is the replaced secret's hash, accepted until ``previous_until``
    (and, like the current one, only while the key is active and unexpired). ``job_*`` describe the job
    the key is bound to, read with the key. ``uses`` is the count when the row was read, for display:
    enforcement counts in PostgreSQL (``proxy.db.usage``), never from this value.
    """

    id: str
    name: str
    owner: str
    status: KeyStatus
    secret_hash: bytes
    created_at: datetime
    updated_at: datetime
    not_before: datetime | None = None
    expires_at: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    policy: Mapping[str, Any] = field(default_factory=dict)
    revision: int = 0
    previous_hash: bytes | None = None
    previous_until: datetime | None = None
    job_id: str | None = None
    job_deadline: datetime | None = None
    job_closed: bool = False
    can_close_job: bool = False
    uses: int = 0
    candidate_policy: Mapping[str, Any] | None = None  # evaluated beside ``policy``, never enforced
    candidate_since: datetime | None = None

    def public(self) -> dict[str, Any]:
        """The record as the admin API shows it: never a secret or its hash."""
        usage = self.policy.get("usage")
        max_uses = usage.get("max_uses") if isinstance(usage, Mapping) else None
        return {
            "id": self.id,
            "name": self.name,
            "owner": self.owner,
            "status": str(self.status),
            "labels": dict(self.labels),
            "policy": dict(self.policy),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "not_before": self.not_before.isoformat() if self.not_before else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revision": self.revision,
            "job_id": self.job_id,
            "can_close_job": self.can_close_job,
            "previous_valid_until": self.previous_until.isoformat() if self.previous_until else None,
            "uses": self.uses,
            "uses_left": max(max_uses - self.uses, 0) if isinstance(max_uses, int) else None,
            "candidate_policy": dict(self.candidate_policy) if self.candidate_policy is not None else None,
            "candidate_since": self.candidate_since.isoformat() if self.candidate_since else None,
        }
