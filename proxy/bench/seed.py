"""What the local gates are configured with: the policy, a GeoIP file, the keys and the client addresses.

Every key is written straight into PostgreSQL in one transaction before any gate starts (a documented
bench shortcut: one ``changes`` row for the batch and a COPY into ``api_keys``, with the same id format,
hash and policy the admin API would store). Through the admin API, 120,000 keys would take many minutes
and measure nothing the bench is about. The batch sends no change notification, so only gates started
afterwards (which load their key directory then) know the keys.

Key sets (each key has ``POLICY``):

- ``hot``: 1,000 keys, used in turn by the hot scenarios; all fit the cache. The nginx and Caddy peers
  match the same 1,000 keys.
- ``victims``: keys the revocation scenario revokes one by one while the load runs.
- ``cold``: 20,000 keys against a 16-entry cache: every request misses.
- ``zipf``: 100,000 keys requested with Zipf popularity (exponent 1) against the default cache
  (10,000 entries): the popular keys hit, the long tail misses.
- ``usage`` and ``rate``: 1,000 keys each whose policy also has a usage or a rate limit (``LIMITS``).
"""

from __future__ import annotations

import bisect
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from proxy.core import keys

__all__ = [
    "ADDRESSES",
    "BENCH_PATH",
    "LIMITS",
    "POLICY",
    "SIZES",
    "KeySets",
    "database_transactions",
    "forget_keys",
    "policy_of",
    "store_keys",
    "write_addresses",
    "write_geoip",
    "zipf_sample",
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

# Countries of the client addresses the load sends as X-Forwarded-For, so the region rule does real work.
GEO_NETWORKS = {
    "127.0.0.0/24": "DE",
    "127.0.4.0/24": "KP",
    "10.0.0.0/8": "US",
    "192.168.0.0/16": "FR",
    "2001:db8:1::/48": "DE",
}

# 256 client addresses, all allowed by POLICY: US and FR IPv4, DE IPv6.
ADDRESSES = (
    [f"10.{1 + i // 250}.{i % 250}.{7 + i % 13}" for i in range(128)]
    + [f"192.168.{i % 250}.{1 + i // 250}" for i in range(96)]
    + [f"2001:db8:1::{i + 1:x}" for i in range(32)]
)

SIZES = {"hot": 1_000, "victims": 60, "cold": 20_000, "zipf": 100_000, "usage": 1_000, "rate": 1_000}

# Each set's policy: POLICY, plus for the limit scenarios a limit set too high to refuse anything, so
# what is measured is the cost of counting (a usage limit: one conditional upsert in PostgreSQL per
# request; a rate limit: a leaky-bucket take in the worker), not of refusing.
LIMITS: dict[str, dict[str, Any]] = {
    "usage": {"usage": {"max_uses": 2**62}},
    "rate": {"rate": {"per_second": 1_000_000, "burst": 1_000_000}},
}


def policy_of(name: str) -> dict[str, Any]:
    return {**POLICY, **LIMITS.get(name, {})}


@dataclass(frozen=True)
class KeySets:
    """Generated keys per set: (key id, full key, SHA-256 to store), in order."""

    made: dict[str, list[tuple[str, str, bytes]]]

    @classmethod
    def generate(cls, sizes: dict[str, int]) -> KeySets:
        return cls({name: [keys.generate() for _ in range(count)] for name, count in sizes.items()})

    @property
    def sets(self) -> dict[str, list[str]]:
        return {name: [full for _id, full, _digest in batch] for name, batch in self.made.items()}

    def write(self, name: str, path: Path, lines: list[str] | None = None) -> Path:
        path.write_text("\n".join(lines if lines is not None else self.sets[name]) + "\n")
        return path


def write_geoip(path: Path) -> Path:
    """A small GeoIP2-Country file (IPv6 with IPv4 under ::/96) written with mmdb-writer."""
    try:
        from mmdb_writer import MMDBWriter
        from netaddr import IPSet
    except ImportError as exc:
        raise SystemExit(
            f"signalgate bench: {exc.name} is missing; install the bench extra: "
            "pip install 'signalgate[bench]'"
        ) from None
    writer = MMDBWriter(
        ip_version=6,
        database_type="GeoIP2-Country",
        languages=["en"],
        description="signalgate bench",
        ipv4_compatible=True,
    )
    for cidr, country in GEO_NETWORKS.items():
        writer.insert_network(IPSet([cidr]), {"country": {"iso_code": country}})
    writer.to_db_file(str(path))
    return path


def write_addresses(path: Path) -> Path:
    path.write_text("\n".join(ADDRESSES) + "\n")
    return path


def zipf_sample(population: list[str], draws: int, exponent: float = 1.0, seed: int = 15) -> list[str]:
    """``draws`` picks from ``population`` where the k-th item has weight 1/k^exponent (fixed seed)."""
    cumulative: list[float] = []
    total = 0.0
    for rank in range(1, len(population) + 1):
        total += 1.0 / rank**exponent
        cumulative.append(total)
    rng = random.Random(seed)
    return [population[bisect.bisect_left(cumulative, rng.random() * total)] for _ in range(draws)]


async def store_keys(dsn: str, sets: KeySets) -> None:
    """Write every key of ``sets`` as active with its set's policy (``policy_of``), in one transaction."""
    policies = {name: json.dumps(policy_of(name)) for name in sets.made}
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
                    (
                        key_id,
                        f"bench {name} {i}",
                        "team-bench",
                        "{}",
                        "active",
                        digest,
                        policies[name],
                        revision,
                    )
                    for name, batch in sets.made.items()
                    for i, (key_id, _full, digest) in enumerate(batch)
                ],
            )
        await conn.execute("ANALYZE api_keys")
    finally:
        await conn.close()


async def forget_keys(dsn: str, sets: KeySets) -> None:
    """Delete the bench's keys from a database the user gave (``SIGNALGATE_DATABASE_URL``)."""
    ids = [key_id for batch in sets.made.values() for key_id, _full, _digest in batch]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM api_keys WHERE owner = 'team-bench' AND id = ANY($1)", ids)
    finally:
        await conn.close()


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
