"""Rate and in-flight limits per key, kept in each worker process: the aiolimiter shell.

The admissions of the ``rate`` and ``max_in_flight`` parts (``proxy.core.parts.rate``, ``.in_flight``).
Both answer at once, never queue: a request over a limit is refused 429 with ``Retry-After`` (whole
seconds, rounded up) and the IETF ``RateLimit-Policy`` / ``RateLimit`` fields
(draft-ietf-httpapi-ratelimit-headers), describing what this worker enforces.

Shares. The state is per process, so with N workers each enforces its share of a key's limit:
``per_second / N``, and ``burst / N`` and ``max_in_flight / N`` rounded down, at least 1. The total
over the workers of one instance is then at most the limit, unless the limit is below N: each worker
still lets one through, so up to N. The kernel spreads connections over workers, not requests: a
client on one keep-alive connection meets one worker and gets that worker's share. Instances do not
share state either: M instances behind a load balancer allow up to M times the limit in all.

The rate limiter is aiolimiter's leaky bucket: ``burst`` requests of capacity, draining at
``per_second``. It is only ever asked for capacity it has, so it never makes anyone wait.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from aiolimiter import AsyncLimiter

from proxy.core.facts import Facts
from proxy.core.model import Decision, Reason
from proxy.core.parts.in_flight import InFlight
from proxy.core.parts.rate import Rate

__all__ = ["Limits", "retry_after"]


class Releases(Protocol):
    """The request's ticket (``proxy.http.handler.Ticket``): what to run once it is done."""

    def on_done(self, release: Callable[[int], None], /) -> None: ...


class _Bucket:
    """One key's limiter, for the rule it was made for, with the answer fields that do not change."""

    __slots__ = ("limiter", "policy", "rate", "rule")

    def __init__(self, rule: Rate, workers: int) -> None:
        self.rule = rule
        self.rate = rule.per_second / workers
        capacity = max(1, rule.burst // workers)
        self.limiter = AsyncLimiter(capacity, capacity / self.rate)
        self.policy = f'"rate";q={capacity};w={math.ceil(capacity / self.rate)}'

    def seconds_to_one(self) -> float:
        """How long until the bucket has room for one more request (it has none now)."""
        # aiolimiter keeps its fill level in ``_level`` (tests/test_limits.py pins this): room for one
        # comes back when it has drained to ``capacity - 1``.
        level: float = self.limiter._level
        return max(level + 1 - self.limiter.max_rate, 0.0) / self.rate


def retry_after(seconds: float) -> int:
    """Whole seconds to wait, rounded up, at least 1 (``Retry-After: 0`` would invite a retry storm)."""
    return max(1, math.ceil(seconds - 1e-9))


class Limits:
    """The ``rate`` and ``in_flight`` admissions of one worker, one of ``workers`` on the instance."""

    def __init__(self, workers: int = 1, max_keys: int = 10_000) -> None:
        self.workers = workers
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._held: dict[str, int] = {}  # key id -> requests under way; no entry at 0

    # -- rate ------------------------------------------------------------------------------------

    def rate(self, rule: Rate, facts: Facts, ticket: Releases) -> Decision | None:
        bucket = self._bucket(facts.key_id, rule)
        limiter = bucket.limiter
        if limiter.has_capacity():
            # Taken synchronously: aiolimiter's acquire only waits when there is no capacity. The
            # coroutine is run to its end here, so nothing else can take the room in between.
            step = limiter.acquire()
            try:
                step.send(None)
            except StopIteration:
                return None
            step.close()  # it would have waited: impossible right after has_capacity(); refuse
        wait = retry_after(bucket.seconds_to_one())
        return Decision.deny(
            Reason.RATE_LIMITED,
            f"over {rule.per_second:g} requests per second (burst {rule.burst}); this worker's share "
            f"is {bucket.rate:g}/s",
            (
                ("Retry-After", str(wait)),
                ("RateLimit-Policy", bucket.policy),
                ("RateLimit", f'"rate";r=0;t={wait}'),
            ),
        )

    def _bucket(self, key_id: str, rule: Rate) -> _Bucket:
        buckets = self._buckets
        bucket = buckets.get(key_id)
        if bucket is None or bucket.rule != rule:  # new, or the key's policy changed
            bucket = buckets[key_id] = _Bucket(rule, self.workers)
            if len(buckets) > self._max_keys:
                buckets.popitem(last=False)
        buckets.move_to_end(key_id)
        return bucket

    # -- in flight -------------------------------------------------------------------------------

    def share(self, limit: int) -> int:
        return max(1, limit // self.workers)

    def in_flight(self, rule: InFlight, facts: Facts, ticket: Releases) -> Decision | None:
        key_id = facts.key_id
        held = self._held.get(key_id, 0)
        share = self.share(rule.limit)
        if held >= share:
            return Decision.deny(
                Reason.TOO_MANY_IN_FLIGHT,
                f"{held} requests of this key under way here (limit {rule.limit}, this worker's {share})",
                (
                    ("Retry-After", "1"),
                    ("RateLimit-Policy", f'"in-flight";q={share};qu="concurrent-requests"'),
                    ("RateLimit", '"in-flight";r=0'),
                ),
            )
        self._held[key_id] = held + 1
        ticket.on_done(functools.partial(self._release, key_id))
        return None

    def _release(self, key_id: str, status: int) -> None:
        left = self._held[key_id] - 1
        if left:
            self._held[key_id] = left
        else:
            del self._held[key_id]

    def held(self, key_id: str) -> int:
        """Requests of ``key_id`` under way in this worker (for tests and diagnostics)."""
        return self._held.get(key_id, 0)
