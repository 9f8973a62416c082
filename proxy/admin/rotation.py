"""``POST /v1/keys/{id}/rotate {"grace_s": 300}``: a new secret for a key, shown once.

The key keeps its id, policy, labels, counters and limits; only its secret changes. The replaced
secret stays valid ``grace_s`` seconds (default 0: not at all, for a secret that leaked), never past
the key's own expiry, and like the new one only while the key is active: a revocation or a suspension
ends it too. One replaced secret is kept: rotating again within the grace period drops the older one.
"""

from __future__ import annotations

import logging

from aiohttp import web

from proxy.admin.bodies import whole_number
from proxy.admin.common import APPLIED_HEADER, STORE, applied, expect_continue_only, path_key_id, read_json
from proxy.core import keys
from proxy.core.errors import ValidationError

__all__ = ["MAX_GRACE", "parse_rotation", "setup"]

log = logging.getLogger("signalgate.admin")

MAX_GRACE = 86400  # seconds: a day is enough to roll a secret out to every client


def parse_rotation(body: object) -> int:
    """The grace period of a ``rotate`` body (``{}`` or no body: 0)."""
    if not isinstance(body, dict):
        raise ValidationError("$", "request body must be a JSON object")
    for name in body:
        if name != "grace_s":
            raise ValidationError(name, "unknown field (expected: grace_s)")
    return whole_number(body.get("grace_s", 0), "grace_s", 0, MAX_GRACE)


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/keys/{id}/rotate", rotate_key, expect_handler=expect_continue_only)


async def rotate_key(request: web.Request) -> web.Response:
    key_id = path_key_id(request)
    grace_s = parse_rotation(await read_json(request) if request.body_exists else {})
    _, key, secret_hash = keys.generate(key_id)
    record = await request.app[STORE].rotate_key(key_id, secret_hash, grace_s)
    log.info("rotated the secret of key %s (grace %ds)", key_id, grace_s)
    enforced = await applied(request, record.revision)
    return web.json_response({**record.public(), "key": key}, headers={APPLIED_HEADER: enforced})
