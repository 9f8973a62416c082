"""The maxminddb shell: client IP in, ISO country code out, with hot reload of the database file.

Lookups run on every request, so ``country`` is a dictionary walk around one C call. The reader and
what we know about its file live in one immutable ``_Loaded`` value that ``reload_if_changed`` replaces
with a single assignment: a lookup that already took the old value finishes on the old reader.
Everything maxminddb raises at open is translated into ``GeoIPError`` here, chaining the original.

The reader maps a private in-memory copy of the file, never the file itself: rewriting a mapped file in
place (``cp new.mmdb geo.mmdb``) would kill the process with SIGBUS on the next lookup that touches a
page which no longer exists. Before a database is used, at start-up as on reload, it must carry
countries and answer a few probe lookups; a reload must also not drop IPv6.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import maxminddb

from proxy.core.errors import GeoIPError

__all__ = ["GeoIP"]

log = logging.getLogger("signalgate.geoip")

# What maxminddb raises for a missing, unreadable or malformed file.
_OPEN_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, maxminddb.InvalidDatabaseError)

_warned_pure_python = False

# Stands for "the file could not even be stat()ed" in GeoIP._rejected.
_MISSING = (-1, -1, -1, -1)


def _extension_available() -> bool:
    try:
        from maxminddb import extension
    except ImportError:
        return False
    return hasattr(extension, "Reader")


def _warn_pure_python_once() -> None:
    global _warned_pure_python
    if not _warned_pure_python:
        _warned_pure_python = True
        log.warning(
            "maxminddb C extension is not available; GeoIP lookups will be ~20x slower "
            "(install libmaxminddb and reinstall the maxminddb package)"
        )


# Database types whose records carry a country (case-insensitive): GeoIP2/GeoLite2/DB-IP Country and City,
# GeoIP2 Enterprise, IPinfo's location bundles. An ASN or ISP database would answer "no country" for all.
_COUNTRY_TYPES = ("country", "city", "enterprise", "location")

# Looked up in every database before it is used, so a broken search tree is refused instead of failing
# every request: public resolvers and MaxMind's documented test address, IPv4 and IPv6.
_PROBES = tuple(
    ipaddress.ip_address(ip)
    for ip in ("1.1.1.1", "8.8.8.8", "81.2.69.142", "2001:4860:4860::8888", "2606:4700:4700::1111")
)

COUNTRY_CACHE_SIZE = 65536  # answers remembered per loaded file; a reload starts afresh


@dataclass(frozen=True, slots=True)
class _Loaded:
    reader: Any  # maxminddb.Reader or maxminddb.extension.Reader (same API)
    signature: tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns)
    extension: bool
    ipv4_only: bool
    # The same clients ask again and again; a dict hit is several times cheaper than a tree walk.
    countries: dict[object, str | None] = field(default_factory=dict)


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _load(path: Path) -> _Loaded:
    """Open a private copy of ``path`` and check it is a country database that answers lookups.

    The signature is that of the file as copying starts, so a file replaced meanwhile is reloaded later.
    """
    try:
        with open(path, "rb") as source:
            st = os.fstat(source.fileno())
            reader = _open_copy(source)
    except _OPEN_ERRORS as exc:
        raise GeoIPError(f"cannot open GeoIP database {str(path)!r}: {exc}") from exc
    try:
        ip_version = _check(path, reader)
    except BaseException:
        reader.close()
        raise
    extension = type(reader).__module__ == "maxminddb.extension"
    return _Loaded(reader, _signature(st), extension, ip_version == 4)


def _open_copy(source: Any) -> Any:
    """A reader on an anonymous in-memory copy of ``source``, which nothing else can truncate."""
    copy = os.memfd_create("signalgate-geoip", os.MFD_CLOEXEC)
    try:
        with open(copy, "wb", closefd=False) as target:
            shutil.copyfileobj(source, target)
        if _extension_available():
            return maxminddb.open_database(f"/proc/self/fd/{copy}", maxminddb.MODE_MMAP_EXT)
        _warn_pure_python_once()
        return maxminddb.open_database(f"/proc/self/fd/{copy}", maxminddb.MODE_AUTO)
    finally:
        os.close(copy)  # the reader's mapping keeps the copy alive until reader.close()


def _check(path: Path, reader: Any) -> int:
    """The IP version of ``reader``'s database; GeoIPError unless it carries countries and answers."""
    try:
        metadata = reader.metadata()
        kind = str(metadata.database_type)
        if not any(marker in kind.lower() for marker in _COUNTRY_TYPES):
            raise GeoIPError(
                f"GeoIP database {str(path)!r} has type {kind!r}, which carries no countries "
                "(use a Country or City database)"
            )
        for ip in _PROBES:
            if ip.version <= metadata.ip_version:
                reader.get(ip)
    except _OPEN_ERRORS as exc:
        raise GeoIPError(f"GeoIP database {str(path)!r} is corrupt: {exc}") from exc
    return int(metadata.ip_version)


def _country_of(record: object) -> str | None:
    if not isinstance(record, dict):
        return None
    # GeoIP2/GeoLite2 Country and City, DB-IP lite: the country the IP is in, else where it is registered.
    for key in ("country", "registered_country"):
        section = record.get(key)
        if isinstance(section, dict):
            code = section.get("iso_code")
            if isinstance(code, str) and code:
                return code
    # Flat layouts (IPinfo lite and similar).
    code = record.get("country_code")
    if isinstance(code, str) and code:
        return code
    return None


_UNSEEN = object()


class GeoIP:
    """One open GeoIP database file. Create with ``GeoIP.open(path)``; ``close()`` when done."""

    __slots__ = ("_loaded", "_lock", "_path", "_rejected")

    def __init__(self, path: Path, loaded: _Loaded) -> None:
        self._path = path
        self._loaded: _Loaded | None = loaded
        self._lock = threading.Lock()
        # Signature of the last replacement that failed to open, so a bad file left in place is
        # reported once rather than on every poll.
        self._rejected: tuple[int, int, int, int] | None = None

    @classmethod
    def open(cls, path: str | Path) -> GeoIP:
        path = Path(path)
        return cls(path, _load(path))

    @property
    def path(self) -> Path:
        return self._path

    @property
    def extension(self) -> bool:
        """True when lookups go through the maxminddb C extension."""
        return self._current().extension

    def _current(self) -> _Loaded:
        loaded = self._loaded
        if loaded is None:
            raise GeoIPError(f"GeoIP database {str(self._path)!r} is closed")
        return loaded

    def country(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        """The ISO 3166-1 alpha-2 code for ``ip``, or None when the database has no country for it.

        Raises ``GeoIPError`` only when the database itself is unreadable (or closed).
        """
        loaded = self._current()
        countries = loaded.countries
        code = countries.get(ip, _UNSEEN)
        if code is not _UNSEEN:
            return code  # type: ignore[return-value]
        code = self._lookup(loaded, ip)
        if len(countries) >= COUNTRY_CACHE_SIZE:
            countries.clear()
        countries[ip] = code
        return code

    def _lookup(self, loaded: _Loaded, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        if isinstance(ip, ipaddress.IPv6Address):
            # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; the databases file them
            # under IPv4, and an IPv4-only database cannot answer for any other IPv6 address.
            mapped = ip.ipv4_mapped
            if mapped is not None:
                ip = mapped
            elif loaded.ipv4_only:
                return None
        try:
            record = loaded.reader.get(ip)
        except ValueError:
            current = self._loaded
            if current is None or current is loaded:
                # IPv6 in an IPv4-only database (filtered above; kept as a guard).
                return None
            # Another thread swapped and closed this reader mid-lookup: ask the new one.
            return self._lookup(self._current(), ip)
        except maxminddb.InvalidDatabaseError as exc:
            raise GeoIPError(f"GeoIP database {str(self._path)!r} is corrupt: {exc}") from exc
        return _country_of(record)

    def reload_if_changed(self) -> bool:
        """Reopen the file if it changed on disk; True when the new database is now in use.

        A file that cannot be opened, is not a country database, fails a probe lookup or drops IPv6
        leaves the current database in place (and is logged once).
        After ``close()`` this does nothing, so a periodic reload racing shutdown is harmless.
        """
        with self._lock:
            old = self._loaded
            if old is None:
                return False
            try:
                signature = _signature(os.stat(self._path))
            except OSError as exc:
                if self._rejected != _MISSING:
                    self._rejected = _MISSING
                    log.error("GeoIP database %s is unreadable, keeping the loaded one: %s", self._path, exc)
                return False
            if signature == old.signature or signature == self._rejected:
                return False
            try:
                new = _load(self._path)
                if new.ipv4_only and not old.ipv4_only:
                    new.reader.close()
                    raise GeoIPError(
                        f"GeoIP database {str(self._path)!r} is IPv4-only and would replace an IPv6 one "
                        "(every IPv6 client would have no country)"
                    )
            except GeoIPError as exc:
                self._rejected = signature
                log.error("%s; keeping the loaded one", exc)
                return False
            self._loaded = new
            self._rejected = None
            old.reader.close()
            log.info("GeoIP database %s reloaded", self._path)
            return True

    def close(self) -> None:
        with self._lock:
            loaded, self._loaded = self._loaded, None
            if loaded is not None:
                loaded.reader.close()

    def __enter__(self) -> GeoIP:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._loaded is None else ("C" if self._loaded.extension else "pure Python")
        return f"<GeoIP {str(self._path)!r} ({state})>"
