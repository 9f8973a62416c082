"""What is known about one request once it is answered: ``Trace``, filled in as the handler learns it.

One slotted object per request; at the end the handler hands it to the recorder (``proxy.core.record``),
which counts it for the metrics, writes its decision line and queues it for the decision log in
PostgreSQL. Nothing is encoded on the hot path beyond what the decision line needs.

``candidate`` is the candidate (dry-run) policy's decision when the key has one and the key itself
passed; ``candidate_outcome`` names how it compares with the enforced decision.
"""

from __future__ import annotations

import time
from datetime import datetime

from proxy.core.model import Decision, IPAddress, Reason

__all__ = ["AGREE", "UNDECIDED", "WOULD_ALLOW", "WOULD_DENY", "Trace", "rfc3339"]

UNDECIDED = Decision.deny(Reason.INTERNAL_ERROR, "no decision was reached")

AGREE = "agree"
WOULD_ALLOW = "would_allow"  # the candidate would allow what the policy refused
WOULD_DENY = "would_deny"  # the candidate would refuse what the policy allowed


_second: list[object] = [-1, ""]  # the last whole second formatted, and its text: strftime costs ~3 µs


def rfc3339(seconds: float) -> str:
    """A wall-clock time as RFC 3339 in UTC with milliseconds: ``2026-12-04T17:32:27.123Z``."""
    whole = int(seconds)
    if _second[0] != whole:
        _second[:] = [whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))]
    return f"{_second[1]}.{int((seconds - whole) * 1000):03d}Z"


class Trace:
    """One request as the operators' view records it."""

    __slots__ = (
        "arrived",
        "at",
        "attested",
        "candidate",
        "client",
        "country",
        "decision",
        "decision_seconds",
        "key_id",
        "key_metrics",
        "method",
        "owner",
        "path",
        "policy_revision",
        "quiet",
        "request_id",
        "sample_rate",
        "seconds",
        "status",
        "upstream_seconds",
        "upstream_status",
    )

    def __init__(self, request_id: str, path: str = "", arrived: float = 0.0) -> None:
        self.arrived = arrived or time.time()  # wall clock, seconds since the epoch (the line's "time")
        self.request_id = request_id
        self.path = path
        self.at: datetime | None = None  # the request's time, as the policy saw it; else when recorded
        self.method = ""
        self.client: IPAddress | None = None
        self.country: str | None = None
        self.key_id: str | None = None
        self.owner: str | None = None
        self.policy_revision: int | None = None  # the key record's revision the decision was made under
        self.decision = UNDECIDED
        self.candidate: Decision | None = None
        # What the policy's parts verified, for the log: "device" and "workload" as "issuer:subject",
        # "signature" as the signing keyid (proxy.http.handler fills it for a forwarded request).
        self.attested: dict[str, str] = {}
        self.status = 0
        self.seconds = 0.0  # from the request's head to the end of its answer
        self.decision_seconds = 0.0  # from the request's head to its decision
        self.upstream_status: int | None = None
        self.upstream_seconds: float | None = None
        self.key_metrics = False  # the key has its own metric series (``proxy.core.cache.METRICS_LABEL``)
        self.sample_rate = 1.0  # < 1 when an allowed decision was kept by sampling
        self.quiet = False  # not a decision (a health probe): neither counted, logged nor recorded

    @property
    def candidate_outcome(self) -> str | None:
        candidate = self.candidate
        if candidate is None:
            return None
        if candidate.allowed is self.decision.allowed:
            return AGREE
        return WOULD_ALLOW if candidate.allowed else WOULD_DENY

    @property
    def disagrees(self) -> bool:
        """The candidate policy would have answered otherwise."""
        candidate = self.candidate
        return candidate is not None and candidate.allowed is not self.decision.allowed
