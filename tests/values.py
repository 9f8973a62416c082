"""Pure value factories for the core's table tests: a fixed time, a key record, a request's facts.

Built from literals only (no IO, no clock), so a table row reads the same on every run.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any

from proxy.core.facts import UNAVAILABLE, Facts
from proxy.core.model import KeyRecord, KeyStatus
from proxy.core.paths import normalize

__all__ = ["NOW", "record", "signals"]

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def record(key_hash: bytes, key_id: str, **fields: Any) -> KeyRecord:
    """An active key record created and updated at ``NOW``; ``fields`` override any field."""
    base: dict[str, Any] = dict(
        id=key_id,
        name="n",
        owner="o",
        status=KeyStatus.ACTIVE,
        secret_hash=key_hash,
        created_at=NOW,
        updated_at=NOW,
    )
    base.update(fields)
    return KeyRecord(**base)


def signals(
    ip: str = "10.20.1.1",
    country: str | None = "US",
    method: str = "GET",
    path: str = "/metrics",
    geo: bool = True,
) -> Facts:
    """A request's facts at ``NOW``: the path normalised as the listener would; ``geo=False`` leaves
    the country unavailable (no GeoIP answer)."""
    target = normalize(path)
    assert target.problem is None, target
    return Facts(
        ipaddress.ip_address(ip),
        method,
        target.path,
        NOW,
        gathered={"country": country if geo else UNAVAILABLE},
    )
