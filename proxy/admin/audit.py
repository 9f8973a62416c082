"""Audit lines of the admin API: who changed which record, and how (old -> new), never a secret.

Who: the admin token's fingerprint, the first 8 hex digits of its SHA-256 (what the admin API keeps of
it anyway), so that after a rotation the lines say which token made a change. How: each changed field's
old and new value as JSON. Only the fields named here are shown: a key's secret hash is not among them,
and an issuer's key set holds public keys only. Long values are cut.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from aiohttp import web

__all__ = ["ISSUER_FIELDS", "KEY_FIELDS", "TOKEN_FINGERPRINT", "audit", "changes", "fingerprint"]

log = logging.getLogger("signalgate.audit")

TOKEN_FINGERPRINT = web.AppKey("token_fingerprint", str)  # set by make_admin_app
KEY_FIELDS = ("name", "owner", "status", "labels", "not_before", "expires_at", "policy")  # no secret_hash
ISSUER_FIELDS = ("kind", "issuer", "audience", "algorithms", "max_lifetime_s", "jwks_url", "jwks")
MAX_VALUE = 4096  # characters of one value in a line


def fingerprint(token_hash: bytes) -> str:
    return token_hash.hex()[:8]


def _json(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)
    return text if len(text) <= MAX_VALUE else f"{text[:MAX_VALUE]}...({len(text) - MAX_VALUE} more)"


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def changes(before: object | None, after: object | None, fields: tuple[str, ...] = KEY_FIELDS) -> str:
    """``field old -> new`` for each field that differs (null for a record that did not, or no longer,
    exists)."""
    old: dict[str, Any] = {} if before is None else {name: getattr(before, name) for name in fields}
    new: dict[str, Any] = {} if after is None else {name: getattr(after, name) for name in fields}
    shown = [
        f"{name} {_json(old.get(name))} -> {_json(new.get(name))}"
        for name in fields
        if old.get(name) != new.get(name)
    ]
    return "; ".join(shown) or "no change"


def audit(
    request: web.Request,
    what: str,
    action: str,
    before: object | None,
    after: object | None,
    fields: tuple[str, ...] = KEY_FIELDS,
) -> None:
    """One INFO line: ``key ID ACTION by admin token FP: field old -> new; ...`` (``what`` names it)."""
    token = request.app[TOKEN_FINGERPRINT]
    log.info("%s %s by admin token %s: %s", what, action, token, changes(before, after, fields))
