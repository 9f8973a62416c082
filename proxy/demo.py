"""``signalgate demo``: fresh demo keys and the curl lines that show an allow and a deny, for a plain
key and for one whose policy asks for a signed device attestation.

The demo keys must not outlive the demo: a later ``serve`` on the same data dir forwards to a real
upstream, and a key printed on a screen is a leaked key. So they are created with ``expires_at`` (the
backstop when the demo is killed and cannot clean up), revoked when the demo stops (``retire``), and
any earlier demo key still active is revoked when the next demo starts.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from proxy.app import Runtime
from proxy.core import keys
from proxy.core.issuers import IssuerRecord
from proxy.db.issuers import IssuerRows

__all__ = ["DEMO_ISSUER", "DEMO_LIFETIME", "DEMO_POLICY", "announce", "attested_policy", "retire"]

DEMO_POLICY = {
    "networks": {"allow": ["127.0.0.0/8", "::1/128"]},
    "routes": [{"methods": ["GET", "HEAD"], "path": "/demo/**"}],
}
DEMO_ISSUER = "demo-mdm"
DEMO_ISS = "https://mdm.demo.invalid"
TOKEN_LIFETIME = 3600
DEMO_LIFETIME = timedelta(hours=8)  # the longest a demo key lives, should the demo be killed


def attested_policy() -> dict[str, object]:
    """GET /demo/posture only from a managed, encrypted device attested by the demo's own MDM."""
    return {
        "networks": {"allow": ["127.0.0.0/8", "::1/128"]},
        "routes": [{"methods": ["GET"], "path": "/demo/posture"}],
        "device": {
            "issuers": [DEMO_ISSUER],
            "max_age_s": TOKEN_LIFETIME,
            "bind_to_key": True,
            "claims": {"managed": True, "disk_encrypted": True, "os_version": {"min": "14.2"}},
        },
    }


async def retire(runtime: Runtime) -> list[str]:
    """Revoke every demo key still usable; their ids."""
    revoked = []
    for old in await runtime.store.list_keys(owner="demo", limit=1000):
        if old.status != "revoked":
            await runtime.store.revoke_key(old.id)
            revoked.append(old.id)
    return revoked


async def announce(runtime: Runtime) -> str:
    """Revoke earlier demo keys, create new ones, and say how to use them and how long they live."""
    await retire(runtime)
    expires_at = datetime.now(UTC) + DEMO_LIFETIME
    key = await _create(runtime, "demo key", DEMO_POLICY, expires_at)
    mdm, kid = await _demo_issuer(runtime)
    attested = await _create(runtime, "demo attested key", attested_policy(), expires_at)
    key_id = keys.parse(attested).key_id
    device = _token(mdm, kid, key_id, managed=True)
    unmanaged = _token(mdm, kid, key_id, managed=False)
    url = runtime.proxy_url
    until = expires_at.strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"\nThe demo keys below are revoked when this demo stops, and expire {until} at the latest.\n"
        f"\nDemo key (policy: GET/HEAD on /demo/** from loopback only):\n  {key}\n\n"
        f"Allowed (200):\n  curl -i -H 'X-API-Key: {key}' {url}/demo/hello\n"
        f"Denied, route (403):\n  curl -i -X DELETE -H 'X-API-Key: {key}' {url}/demo/hello\n"
        f"Denied, no key (401):\n  curl -i {url}/demo/hello\n\n"
        f"Attestation-protected key (policy: GET /demo/posture from a managed, encrypted device, its\n"
        f"posture signed by the demo's MDM issuer '{DEMO_ISSUER}' and bound to this key):\n  {attested}\n\n"
        f"Allowed, managed device (200):\n"
        f"  curl -i -H 'X-API-Key: {attested}' -H 'X-Device-Attestation: {device}' {url}/demo/posture\n"
        f"Denied, unmanaged device (403 device_attestation_claims):\n"
        f"  curl -i -H 'X-API-Key: {attested}' -H 'X-Device-Attestation: {unmanaged}' {url}/demo/posture\n"
        f"Denied, no attestation (401 device_attestation_missing):\n"
        f"  curl -i -H 'X-API-Key: {attested}' {url}/demo/posture\n\n"
    )


async def _create(runtime: Runtime, name: str, policy: Mapping[str, object], expires_at: datetime) -> str:
    key_id, key, digest = keys.generate()
    await runtime.store.create_key(
        key_id=key_id,
        name=name,
        owner="demo",
        secret_hash=digest,
        policy=policy,
        labels={"demo": "true"},
        not_before=None,
        expires_at=expires_at,
    )
    return key


async def _demo_issuer(runtime: Runtime) -> tuple[ed25519.Ed25519PrivateKey, str]:
    """The demo's MDM: a new Ed25519 key each run, registered as the device issuer ``demo-mdm``."""
    private = ed25519.Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    kid = f"demo-{int(time.time())}"
    jwks = {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": x}]}
    rows = IssuerRows(runtime.store)
    if await rows.get(DEMO_ISSUER) is None:
        await rows.create(IssuerRecord(DEMO_ISSUER, "device", DEMO_ISS, "signalgate", ("EdDSA",), jwks=jwks))
    else:
        await rows.update(DEMO_ISSUER, {"jwks": jwks, "jwks_url": None})
    await runtime.feed.wait_applied(await runtime.store.latest_revision())
    return private, kid


def _token(private: ed25519.Ed25519PrivateKey, kid: str, key_id: str, *, managed: bool) -> str:
    now = int(time.time())
    claims = {
        "iss": DEMO_ISS,
        "sub": "demo-laptop" if managed else "demo-byod-phone",
        "aud": f"signalgate:{key_id}",
        "iat": now,
        "exp": now + TOKEN_LIFETIME,
        "managed": managed,
        "disk_encrypted": True,
        "os": "macos",
        "os_version": "14.10",
    }
    return jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": kid})
