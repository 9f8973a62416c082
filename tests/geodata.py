"""Tiny real MaxMind DB files for tests, written with the ``mmdb_writer`` package.

The files are IPv6 databases with IPv4 networks stored under ``::/96`` (``ipv4_compatible``), which is
where maxminddb starts an IPv4 lookup, so IPv4 and IPv6 test ranges live in one file. Loopback ranges
(127.0.2.0/24 ...) let the tests reach the proxy from "another country" over a real socket.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

__all__ = ["DEFAULT_TEST_NETWORKS", "write_country_mmdb", "write_mmdb"]

DEFAULT_TEST_NETWORKS: Mapping[str, str] = {
    "127.0.2.0/24": "US",
    "127.0.3.0/24": "DE",
    "127.0.4.0/24": "KP",
    "2001:db8:1::/48": "DE",
    "2001:db8:2::/48": "US",
}


def write_mmdb(
    path: Path,
    records: Mapping[str, Mapping[str, Any]],
    *,
    ip_version: int = 6,
    database_type: str = "GeoIP2-Country",
) -> Path:
    """Write ``records`` (CIDR -> record) to ``path`` as a MaxMind DB and return ``path``."""
    writer = MMDBWriter(
        ip_version=ip_version,
        database_type=database_type,
        languages=["en"],
        description="signalgate test data",
        ipv4_compatible=ip_version == 6,
    )
    for cidr, record in records.items():
        writer.insert_network(IPSet([cidr]), dict(record))
    writer.to_db_file(str(path))
    return path


def write_country_mmdb(path: Path, networks: Mapping[str, str] = DEFAULT_TEST_NETWORKS) -> Path:
    """Write a GeoIP2-Country-shaped database mapping each CIDR (IPv4 or IPv6) to a country code."""
    return write_mmdb(path, {cidr: {"country": {"iso_code": cc}} for cidr, cc in networks.items()})
