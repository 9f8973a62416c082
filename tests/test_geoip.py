"""The GeoIP shell against real .mmdb files written by tests/geodata.py."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from ipaddress import ip_address
from pathlib import Path

import pytest

from proxy.errors import GeoIPError
from proxy.geoip import GeoIP
from tests.geodata import DEFAULT_TEST_NETWORKS, write_country_mmdb, write_mmdb


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return write_country_mmdb(tmp_path / "country.mmdb", DEFAULT_TEST_NETWORKS)


@pytest.fixture
def geo(db_path: Path):
    geo = GeoIP.open(db_path)
    yield geo
    geo.close()


def replace_file(target: Path, write) -> None:
    """Write a new file next to ``target`` and rename it over ``target``, as a DB updater does."""
    staging = target.with_name(target.name + ".new")
    write(staging)
    os.replace(staging, target)


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("127.0.2.1", "US"),
        ("127.0.2.255", "US"),
        ("127.0.3.7", "DE"),
        ("127.0.4.200", "KP"),
        ("2001:db8:1::1", "DE"),
        ("2001:db8:1:ffff:ffff:ffff:ffff:ffff", "DE"),
        ("2001:db8:2::abcd", "US"),
        # A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6 addresses.
        ("::ffff:127.0.3.7", "DE"),
        # Unknown addresses: next to a known range, private, public, documentation v6.
        ("127.0.5.1", None),
        ("127.0.0.1", None),
        ("10.1.2.3", None),
        ("192.168.1.1", None),
        ("8.8.8.8", None),
        ("2001:db8:3::1", None),
        ("::1", None),
    ],
)
def test_country_lookup(geo: GeoIP, ip: str, expected: str | None) -> None:
    assert geo.country(ip_address(ip)) == expected


def test_c_extension_in_use(geo: GeoIP) -> None:
    assert geo.extension is True


def test_registered_country_and_flat_country_code_fallbacks(tmp_path: Path) -> None:
    path = write_mmdb(
        tmp_path / "layouts.mmdb",
        {
            "127.0.2.0/24": {"registered_country": {"iso_code": "FR"}},
            "127.0.3.0/24": {"country": {"iso_code": "JP"}, "registered_country": {"iso_code": "FR"}},
            "127.0.4.0/24": {"country_code": "BR", "country": "Brazil"},
            "127.0.5.0/24": {"continent": {"code": "EU"}},
        },
    )
    with GeoIP.open(path) as geo:
        assert geo.country(ip_address("127.0.2.1")) == "FR"
        assert geo.country(ip_address("127.0.3.1")) == "JP"
        assert geo.country(ip_address("127.0.4.1")) == "BR"
        assert geo.country(ip_address("127.0.5.1")) is None


def test_ipv6_lookup_in_ipv4_only_database_returns_none(tmp_path: Path) -> None:
    path = write_mmdb(tmp_path / "v4.mmdb", {"127.0.2.0/24": {"country": {"iso_code": "US"}}}, ip_version=4)
    with GeoIP.open(path) as geo:
        assert geo.country(ip_address("127.0.2.9")) == "US"
        assert geo.country(ip_address("::ffff:127.0.2.9")) == "US"
        assert geo.country(ip_address("2001:db8:1::1")) is None


@pytest.mark.parametrize("content", [b"", b"not a maxmind database", b"\x00" * 4096])
def test_corrupt_file_at_open_raises_geoip_error_naming_the_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corrupt.mmdb"
    path.write_bytes(content)
    with pytest.raises(GeoIPError, match=r"corrupt\.mmdb") as caught:
        GeoIP.open(path)
    assert caught.value.__cause__ is not None


def test_missing_file_at_open_raises_geoip_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.mmdb"
    with pytest.raises(GeoIPError, match=r"absent\.mmdb") as caught:
        GeoIP.open(str(path))
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_reload_unchanged_file_is_a_no_op(geo: GeoIP) -> None:
    assert geo.reload_if_changed() is False
    assert geo.country(ip_address("127.0.2.1")) == "US"


def test_reload_picks_up_replaced_file(geo: GeoIP, db_path: Path) -> None:
    assert geo.country(ip_address("127.0.2.1")) == "US"
    replace_file(
        db_path,
        lambda p: write_country_mmdb(
            p, {"127.0.2.0/24": "FR", "127.0.9.0/24": "CA", "2001:db8:1::/48": "JP"}
        ),
    )

    assert geo.reload_if_changed() is True

    assert geo.country(ip_address("127.0.2.1")) == "FR"
    assert geo.country(ip_address("127.0.9.1")) == "CA"
    assert geo.country(ip_address("2001:db8:1::1")) == "JP"
    assert geo.country(ip_address("127.0.3.1")) is None
    assert geo.extension is True
    assert geo.reload_if_changed() is False


def test_reload_keeps_old_reader_when_replacement_is_corrupt(
    geo: GeoIP, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    replace_file(db_path, lambda p: p.write_bytes(b"truncated download"))

    with caplog.at_level(logging.ERROR, logger="signalgate.geoip"):
        assert geo.reload_if_changed() is False
        # The same bad file is reported once, not on every poll.
        assert geo.reload_if_changed() is False

    assert geo.country(ip_address("127.0.2.1")) == "US"
    assert geo.country(ip_address("2001:db8:2::1")) == "US"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "country.mmdb" in errors[0].getMessage()

    # A good file arriving later is picked up.
    replace_file(db_path, lambda p: write_country_mmdb(p, {"127.0.2.0/24": "SE"}))
    assert geo.reload_if_changed() is True
    assert geo.country(ip_address("127.0.2.1")) == "SE"


def test_reload_keeps_old_reader_when_file_disappears(geo: GeoIP, db_path: Path) -> None:
    db_path.unlink()
    assert geo.reload_if_changed() is False
    assert geo.country(ip_address("127.0.4.1")) == "KP"


def test_close_makes_lookups_fail_loudly(db_path: Path) -> None:
    geo = GeoIP.open(db_path)
    geo.close()
    geo.close()  # idempotent
    assert geo.reload_if_changed() is False
    with pytest.raises(GeoIPError, match="closed"):
        geo.country(ip_address("127.0.2.1"))


def test_pure_python_fallback_when_c_extension_is_missing(db_path: Path) -> None:
    # A fresh interpreter where importing maxminddb.extension fails, as on a platform without a wheel.
    script = textwrap.dedent(
        f"""
        import ipaddress, logging, sys
        sys.modules["maxminddb.extension"] = None
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        from proxy.geoip import GeoIP
        for _ in range(2):
            with GeoIP.open({str(db_path)!r}) as geo:
                print("extension", geo.extension)
                print("country", geo.country(ipaddress.ip_address("127.0.3.1")))
                print("country", geo.country(ipaddress.ip_address("2001:db8:2::1")))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["extension False", "country DE", "country US"]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1
    assert "20x slower" in warnings[0]
