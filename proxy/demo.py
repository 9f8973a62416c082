"""``signalgate demo``: a fresh demo key and the curl lines that show an allow and a deny."""

from __future__ import annotations

from proxy.app import Runtime
from proxy.core import keys

__all__ = ["DEMO_POLICY", "announce"]

DEMO_POLICY = {
    "networks": {"allow": ["127.0.0.0/8", "::1/128"]},
    "routes": [{"methods": ["GET", "HEAD"], "path": "/demo/**"}],
}


async def announce(runtime: Runtime) -> str:
    """Revoke earlier demo keys, create a new one, and say how to use it."""
    for old in await runtime.store.list_keys(owner="demo", limit=1000):
        if old.status != "revoked":
            await runtime.store.revoke_key(old.id)
    key_id, key, digest = keys.generate()
    await runtime.store.create_key(
        key_id=key_id,
        name="demo key",
        owner="demo",
        secret_hash=digest,
        policy=DEMO_POLICY,
        labels={"demo": "true"},
        not_before=None,
        expires_at=None,
    )
    url = runtime.proxy_url
    return (
        f"\nDemo key (policy: GET/HEAD on /demo/** from loopback only):\n  {key}\n\n"
        f"Allowed (200):\n  curl -i -H 'X-API-Key: {key}' {url}/demo/hello\n"
        f"Denied, route (403):\n  curl -i -X DELETE -H 'X-API-Key: {key}' {url}/demo/hello\n"
        f"Denied, no key (401):\n  curl -i {url}/demo/hello\n\n"
    )
