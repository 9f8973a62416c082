"""Audit lines of the admin API: who changed which key, and how (old -> new), never a secret.

Who: the admin token's fingerprint, the first 8 hex digits of its SHA-256 (what the admin API keeps of
it anyway), so that after a rotation the lines say which token made a change. How: each changed field's
old and new value as JSON. A key record has no secret in it (the secret's hash is not a field the
admin API shows, and is never passed here), so every field may be shown; long values are cut.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from proxy.core.model import KeyRecord

__all__ = ["SHOWN", "audit", "changes", "fingerprint"]

log = logging.getLogger("signalgate.audit")

SHOWN = ("name", "owner", "status", "labels", "not_before", "expires_at", "policy")  # never secret_hash
MAX_VALUE = 4096  # characters of one value in a line


def fingerprint(token_hash: bytes) -> str:
    return token_hash.hex()[:8]


def _json(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)
    return text if len(text) <= MAX_VALUE else f"{text[:MAX_VALUE]}...({len(text) - MAX_VALUE} more)"


def _plain(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _fields(record: KeyRecord | None) -> dict[str, Any]:
    return {} if record is None else {name: getattr(record, name) for name in SHOWN}


def changes(before: KeyRecord | None, after: KeyRecord | None) -> str:
    """``field old -> new`` for each field that differs (null for a key that did not or no longer exists)."""
    old, new = _fields(before), _fields(after)
    shown = [
        f"{name} {_json(old.get(name))} -> {_json(new.get(name))}"
        for name in SHOWN
        if old.get(name) != new.get(name)
    ]
    return "; ".join(shown) or "no change"


def audit(action: str, key_id: str, token: str, before: KeyRecord | None, after: KeyRecord | None) -> None:
    """One INFO line: ``key ID ACTION by admin token FP: field old -> new; ...``."""
    log.info("key %s %s by admin token %s: %s", key_id, action, token, changes(before, after))
