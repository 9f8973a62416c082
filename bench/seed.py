"""What the gate is configured with: a GeoIP file, a realistic policy and the keys.

The hot key is created through the admin API, as an operator would. The cold scenario's thousands of
keys are written straight into PostgreSQL in one transaction (a documented bench shortcut: one
``changes`` row for the batch and a COPY into ``api_keys``, with the same id format, hash and policy
the admin API would store), because creating them one by one through the API would take minutes and
measure nothing we care about. It must run before signalgate starts: the batch sends no change
notification, so only a gate that starts afterwards (and loads its key directory then) knows the keys.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg

from proxy.core import keys

__all__ = [
    "BENCH_PATH",
    "POLICY",
    "bulk_create_keys",
    "create_key_via_admin",
    "database_transactions",
    "delete_key_via_admin",
    "write_geoip",
]

# Requests go here: allowed by the last route pattern, so evaluation walks the whole list.
BENCH_PATH = "/v1/items/42"

POLICY: dict[str, Any] = {
    "networks": {
        "allow": ["10.0.0.0/8", "192.168.0.0/16", "127.0.0.0/8", "2001:db8::/32"],
        "deny": ["127.0.4.0/24", "10.66.0.0/16"],
    },
    "regions": {"allow": ["DE", "US", "FR", "GB", "NL"], "deny": ["KP"], "unknown": "deny"},
    "routes": [
        {"methods": ["GET"], "path": "/metrics"},
        {"methods": ["POST", "PUT"], "path": "/v1/orders/**"},
        {"methods": ["GET", "HEAD"], "path": "/v1/users/*/profile"},
        {"methods": ["GET", "HEAD"], "path": "/v1/items/*"},
    ],
}

# 127.0.0.1 (where wrk connects from) resolves to DE, so the region rule does real work.
GEO_NETWORKS = {
    "127.0.0.0/24": "DE",
    "127.0.2.0/24": "US",
    "127.0.4.0/24": "KP",
    "10.0.0.0/8": "US",
    "192.168.0.0/16": "FR",
    "2001:db8:1::/48": "DE",
}


def write_geoip(path: Path) -> Path:
    """A small country database, written with the test suite's helper (tests/geodata.py)."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.geodata import write_country_mmdb

    return write_country_mmdb(path, GEO_NETWORKS)


def create_key_via_admin(admin_url: str, token: str, policy: dict[str, Any]) -> str:
    """POST /v1/keys; the full key (shown once)."""
    body = json.dumps({"name": "bench hot key", "owner": "team-bench", "policy": policy}).encode()
    request = urllib.request.Request(
        f"{admin_url}/v1/keys",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        document = json.load(response)
    return str(document["key"])


def delete_key_via_admin(admin_url: str, token: str, key: str) -> None:
    """DELETE /v1/keys/{id}: leave a configured database as the bench found it."""
    request = urllib.request.Request(
        f"{admin_url}/v1/keys/{keys.parse(key).key_id}",
        method="DELETE",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


async def bulk_create_keys(dsn: str, count: int, policy: dict[str, Any]) -> list[str]:
    """``count`` active keys with ``policy``, in one transaction; the full keys, in insertion order."""
    made = [keys.generate() for _ in range(count)]
    policy_json = json.dumps(policy)
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            revision = await conn.fetchval(
                "INSERT INTO changes (entity, entity_id, action) VALUES ('key', 'bench-bulk', 'create') "
                "RETURNING revision"
            )
            await conn.copy_records_to_table(
                "api_keys",
                columns=["id", "name", "owner", "labels", "status", "secret_hash", "policy", "revision"],
                records=[
                    (key_id, f"bench cold {i}", "team-bench", "{}", "active", digest, policy_json, revision)
                    for i, (key_id, _full, digest) in enumerate(made)
                ],
            )
        await conn.execute("ANALYZE api_keys")
    finally:
        await conn.close()
    return [full for _key_id, full, _digest in made]


async def database_transactions(dsn: str) -> int:
    """Committed transactions of the database so far (PostgreSQL publishes them about once a second)."""
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
    finally:
        await conn.close()
    return int(value or 0)
