"""Counting a key's uses in PostgreSQL: the ``usage`` admission (``proxy.core.parts.usage``).

One statement per use, exact across workers and instances: an insert of the first use, or an update
that adds one only while the count is below the limit, returning the new count. PostgreSQL's row lock
serialises concurrent uses of one key, so 50 concurrent requests on a 10-use key get exactly 10 counts
and 40 empty answers, whichever process sends them. Counts live in their own narrow table (not on the
key row, which the cache loads and the change feed announces): a use is not a change to the key.

A use is counted when the request is about to be forwarded, after every check passed, and is not given
back when the upstream then fails or times out: the proxy cannot know whether the upstream acted on the
request, and the guarantee is that no more than ``max_uses`` requests ever reach it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from proxy.core.errors import StoreUnavailable
from proxy.core.facts import Facts
from proxy.core.model import Decision, Reason
from proxy.core.parts.usage import Usage
from proxy.db.store import Store

__all__ = ["take_use", "usage_admission"]

log = logging.getLogger("signalgate.usage")

_TAKE = """
INSERT INTO key_uses AS u (key_id, uses) VALUES ($1, 1)
ON CONFLICT (key_id) DO UPDATE SET uses = u.uses + 1 WHERE u.uses < $2
RETURNING uses"""


async def take_use(store: Store, key_id: str, max_uses: int) -> int | None:
    """Count one use of ``key_id``; the count with it, or None when ``max_uses`` were counted already.
    Within the store's deadline (the data plane's ``database_timeout``); then StoreUnavailable."""
    async with store.connection(f"count a use of key {key_id}") as conn:
        uses: int | None = await conn.fetchval(_TAKE, key_id, max_uses)
    return uses


def usage_admission(
    store: Store,
) -> Callable[[Usage, Facts, object], Awaitable[Decision | None]]:
    """The admission: a use counted, or the refusal (``uses_exhausted``; 503 when it cannot count)."""

    async def admit(rule: Usage, facts: Facts, ticket: object) -> Decision | None:
        try:
            uses = await take_use(store, facts.key_id, rule.max_uses)
        except StoreUnavailable as exc:
            log.warning("cannot count a use of key %s: %s", facts.key_id, exc)
            return Decision.deny(Reason.AUTHORIZATION_UNAVAILABLE, "uses cannot be counted now")
        if uses is None:
            return Decision.deny(Reason.USES_EXHAUSTED, f"all {rule.max_uses} uses of this key are spent")
        return None

    return admit
