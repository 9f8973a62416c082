"""The GeoIP shell against real .mmdb files written by tests/geodata.py."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from ipaddress import ip_address
from pathlib import Path
from typing import cast

import maxminddb
import pytest

from proxy.core.errors import GeoIPError
from proxy.geoip import GeoIP
from proxy.wiring import _watch_geoip
from tests.bounds import COMMAND, PROMPT
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


def write_corrupt_tree_mmdb(path: Path) -> Path:
    """A country database whose search tree points past the file: it opens, and every lookup fails."""
    write_country_mmdb(path)
    with maxminddb.open_database(path) as reader:
        metadata = reader.metadata()
    tree = metadata.node_count * metadata.record_size // 4
    data = path.read_bytes()
    path.write_bytes(b"\xff" * tree + data[tree:])
    return path


def write_asn_mmdb(path: Path) -> Path:
    """A well-formed database of the wrong kind: every address has an ASN and no country."""
    asn = {"autonomous_system_number": 64496, "autonomous_system_organization": "Example"}
    return write_mmdb(path, {"127.0.2.0/24": asn, "2001:db8:2::/48": asn}, database_type="GeoLite2-ASN")


def write_ipv4_only_mmdb(path: Path) -> Path:
    return write_mmdb(path, {"127.0.2.0/24": {"country": {"iso_code": "FR"}}}, ip_version=4)


def private_copies() -> set[str]:
    """Inodes of the in-memory database copies this process has mapped."""
    with open("/proc/self/maps") as maps:
        return {line.split()[4] for line in maps if "memfd:signalgate-geoip" in line}


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


@pytest.mark.parametrize(
    ("write", "why"),
    [
        (lambda p: p.write_bytes(b"truncated download"), "cannot open"),
        (write_corrupt_tree_mmdb, "search tree is corrupt"),
        (write_asn_mmdb, "type 'GeoLite2-ASN', which carries no countries"),
        (write_ipv4_only_mmdb, "IPv4-only and would replace an IPv6 one"),
    ],
    ids=["truncated", "corrupt-tree", "asn-type", "ipv4-only"],
)
def test_reload_keeps_old_reader_when_replacement_is_unusable(
    geo: GeoIP, db_path: Path, caplog: pytest.LogCaptureFixture, write, why: str
) -> None:
    replace_file(db_path, write)

    with caplog.at_level(logging.ERROR, logger="signalgate.geoip"):
        assert geo.reload_if_changed() is False
        # The same bad file is reported once, not on every poll.
        assert geo.reload_if_changed() is False

    # Addresses not asked before: answered by the old reader, which is still open.
    assert geo.country(ip_address("127.0.2.1")) == "US"
    assert geo.country(ip_address("2001:db8:2::1")) == "US"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "country.mmdb" in errors[0].getMessage()
    assert why in errors[0].getMessage()

    # A good file arriving later is picked up.
    replace_file(db_path, lambda p: write_country_mmdb(p, {"127.0.2.0/24": "SE"}))
    assert geo.reload_if_changed() is True
    assert geo.country(ip_address("127.0.2.1")) == "SE"


@pytest.mark.parametrize(
    ("write", "why"),
    [
        (write_corrupt_tree_mmdb, "search tree is corrupt"),
        (write_asn_mmdb, "type 'GeoLite2-ASN', which carries no countries"),
    ],
    ids=["corrupt-tree", "asn-type"],
)
def test_open_refuses_a_database_that_cannot_answer_for_countries(tmp_path: Path, write, why: str) -> None:
    before = private_copies()
    with pytest.raises(GeoIPError, match=r"bad\.mmdb") as caught:
        GeoIP.open(write(tmp_path / "bad.mmdb"))
    assert why in str(caught.value)
    assert private_copies() == before  # the refused reader was closed


def test_overwriting_the_file_in_place_leaves_the_loaded_database_intact(
    db_path: Path, tmp_path: Path
) -> None:
    # In a fresh interpreter: a reader mapping the file itself dies of SIGBUS here, which must fail the
    # test, not kill pytest.
    replacement = write_country_mmdb(tmp_path / "next.mmdb", {"127.0.2.0/24": "FR"})
    script = textwrap.dedent(
        f"""
        import ipaddress, os, shutil
        from proxy.geoip import GeoIP
        ip = ipaddress.ip_address
        with GeoIP.open({str(db_path)!r}) as geo:
            os.truncate({str(db_path)!r}, 0)  # what cp and curl -o do first
            print(geo.reload_if_changed(), geo.country(ip("127.0.3.7")), geo.country(ip("2001:db8:2::1")))
            shutil.copyfile({str(replacement)!r}, {str(db_path)!r})  # new bytes, same inode
            print(geo.country(ip("127.0.4.1")))
            print(geo.reload_if_changed(), geo.country(ip("127.0.2.1")))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=COMMAND)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.splitlines() == ["False DE US", "KP", "True FR"]


def test_reloads_release_old_copies_and_never_map_the_file(db_path: Path) -> None:
    before = private_copies()
    with GeoIP.open(db_path) as geo:
        fds = len(os.listdir("/proc/self/fd"))
        for n in range(20):
            replace_file(db_path, lambda p, n=n: write_country_mmdb(p, {"127.0.2.0/24": f"A{n % 10}"}))
            assert geo.reload_if_changed() is True
        assert geo.country(ip_address("127.0.2.1")) == "A9"
        assert len(os.listdir("/proc/self/fd")) == fds
        assert len(private_copies() - before) == 1
        assert str(db_path.parent) not in Path("/proc/self/maps").read_text()
    assert private_copies() == before


async def test_watcher_logs_an_unexpected_error_and_keeps_watching(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    checked_again = asyncio.Event()
    calls = 0

    class Failing:
        path = Path("country.mmdb")

        def reload_if_changed(self) -> bool:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("unexpected")
            loop.call_soon_threadsafe(checked_again.set)
            return False

    with caplog.at_level(logging.ERROR, logger="signalgate"):
        watcher = asyncio.create_task(_watch_geoip(cast(GeoIP, Failing()), interval=0))
        again = asyncio.create_task(checked_again.wait())
        done, _ = await asyncio.wait({watcher, again}, timeout=PROMPT, return_when=asyncio.FIRST_COMPLETED)
        for task in (watcher, again):
            task.cancel()
        await asyncio.wait({watcher, again})
    assert done == {again}, watcher
    assert [r.getMessage() for r in caplog.records if r.exc_info] == [
        "GeoIP database country.mmdb: checking for a replacement failed; still watching"
    ]


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
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=COMMAND)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["extension False", "country DE", "country US"]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1
    assert "20x slower" in warnings[0]
