"""Settings: read once at start-up from a TOML file and SIGNALGATE_* variables, then frozen.

Every value is checked here so the rest of the proxy can trust ``Settings``. A bad value raises
``ConfigError`` naming where it came from (``SIGNALGATE_LISTEN`` or ``listen (in /etc/sg.toml)``) and
quoting it, except secrets: the admin token is shown as ``***`` and a DSN's password is masked, in error
messages and in ``repr(settings)`` alike. Stdlib only; the environment is passed in, never read here.
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from proxy.config.routes import RouteSetting, parse_routes
from proxy.config.values import (
    WHOLE,
    InvalidValue,
    IPNetwork,
    Listen,
    masked,
    parse_boolean,
    parse_database_url,
    parse_decision_line_level,
    parse_directory,
    parse_existing_file,
    parse_fraction,
    parse_health_path,
    parse_integer,
    parse_key_header,
    parse_listen,
    parse_log_level,
    parse_networks,
    parse_seconds,
    parse_text,
    parse_token,
    parse_url,
    redact_dsn,
)
from proxy.core.errors import ConfigError

__all__ = ["ENV_PREFIX", "Listen", "RouteSetting", "Settings", "load", "redact_dsn"]

log = logging.getLogger("signalgate.config")

ENV_PREFIX = "SIGNALGATE_"


@dataclass(frozen=True, repr=False)
class Settings:
    listen: Listen = Listen("127.0.0.1", 8080)
    admin_listen: Listen = Listen("127.0.0.1", 8081)
    upstream: str | None = None
    routes: tuple[RouteSetting, ...] = ()
    database_url: str | None = None
    data_dir: Path = Path(".signalgate")
    geoip_db: Path | None = None
    admin_token: str | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    expose_reasons: bool = False
    workers: int = 1  # load() defaults to the CPU count
    key_header: str = "X-API-Key"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    upstream_max_connections: int = 1000
    upstream_idle_timeout: float = 15.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    upstream_ca: Path | None = None
    upstream_tls_verify: bool = True
    max_header_size: int = 8190
    cache_size: int = 10000
    negative_cache_size: int = 10000
    max_stale: float = 10.0
    database_wait: float = 60.0
    health_path: str | None = "/.signalgate/ready"
    admin_tls_cert: Path | None = None
    admin_tls_key: Path | None = None
    database_timeout: float = 2.0
    admin_database_timeout: float = 5.0
    admin_max_body: int = 65536
    job_key_ttl: float = 3600.0
    log_level: str = "info"
    # attestations and request signatures (proxy.attest, proxy.signatures, proxy.jwks)
    device_header: str = "X-Device-Attestation"
    workload_header: str = "X-Workload-Attestation"
    clock_skew: int = 30
    attestation_cache_size: int = 10000
    jwks_min_refresh: float = 60.0
    jwks_max_refresh: float = 3600.0
    jwks_fetch_timeout: float = 10.0
    decision_line_level: str = "info"  # info, debug or off
    decision_line_sample: float = 1.0  # fraction of allowed decisions with a line; refusals always
    decision_log: bool = True  # decisions into PostgreSQL (proxy.db.recorder)
    decision_log_sample: float = 1.0  # fraction of allowed decisions recorded; refusals always
    decision_log_retention_days: int = 30
    decision_spool_max_bytes: int = 256 * 1024 * 1024
    decision_flush_interval: float = 0.5

    def __repr__(self) -> str:
        shown = (f"{f.name}={masked(f.name, getattr(self, f.name))!r}" for f in fields(self))
        return f"Settings({', '.join(shown)})"


_PARSERS: dict[str, Callable[[object], Any]] = {
    "listen": parse_listen,
    "admin_listen": parse_listen,
    "upstream": lambda raw: parse_url(raw) if parse_text(raw) else None,
    "routes": parse_routes,
    "database_url": parse_database_url,
    "data_dir": parse_directory,
    "geoip_db": parse_existing_file,
    "admin_token": parse_token,
    "trusted_proxies": parse_networks,
    "expose_reasons": parse_boolean,
    "workers": parse_integer(1, 256),
    "key_header": parse_key_header,
    "connect_timeout": parse_seconds,
    "read_timeout": parse_seconds,
    "upstream_max_connections": parse_integer(1, 100_000),
    "upstream_idle_timeout": parse_seconds,
    "tls_cert": parse_existing_file,
    "tls_key": parse_existing_file,
    "upstream_ca": parse_existing_file,
    "upstream_tls_verify": parse_boolean,
    "max_header_size": parse_integer(1024, 65536),
    "cache_size": parse_integer(1),
    "negative_cache_size": parse_integer(0),
    "max_stale": parse_seconds,
    "database_wait": parse_seconds,
    "health_path": parse_health_path,
    "admin_tls_cert": parse_existing_file,
    "admin_tls_key": parse_existing_file,
    "database_timeout": parse_seconds,
    "admin_database_timeout": parse_seconds,
    "admin_max_body": parse_integer(1024, 16 * 1024 * 1024),
    "job_key_ttl": parse_seconds,
    "log_level": parse_log_level,
    "device_header": parse_key_header,
    "workload_header": parse_key_header,
    "clock_skew": parse_integer(0, 600),
    "attestation_cache_size": parse_integer(0, 10_000_000),
    "jwks_min_refresh": parse_seconds,
    "jwks_max_refresh": parse_seconds,
    "jwks_fetch_timeout": parse_seconds,
    "decision_line_level": parse_decision_line_level,
    "decision_line_sample": parse_fraction,
    "decision_log": parse_boolean,
    "decision_log_sample": parse_fraction,
    "decision_log_retention_days": parse_integer(1, 3650),
    "decision_spool_max_bytes": parse_integer(1024 * 1024),
    "decision_flush_interval": parse_seconds,
}
_FILE_ONLY = {"routes"}
_ENV_ONLY = {"SIGNALGATE_CONFIG"}


# ---------------------------------------------------------------------------------------------- loading


def _read_file(path: Path, setting: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(setting, str(path), "config file not found") from None
    except OSError as exc:
        raise ConfigError(setting, str(path), f"cannot read config file: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(setting, str(path), f"invalid TOML: {exc}") from exc


def _unknown_key(setting: str, key: str, raw: object) -> ConfigError:
    close = difflib.get_close_matches(key, list(_PARSERS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    # A misspelt secret is still a secret.
    looks_secret = any(word in key.lower() for word in ("token", "secret", "password", "dsn", "database"))
    shown = "***" if looks_secret else masked(close[0], raw) if close else raw
    return ConfigError(setting, shown, f"unknown setting{hint}")


def load(path: Path | None, environ: Mapping[str, str]) -> Settings:
    """Settings from the TOML file ``path`` (or $SIGNALGATE_CONFIG), then SIGNALGATE_* overrides."""
    file_setting = "config file"
    if path is None and environ.get("SIGNALGATE_CONFIG", "").strip():
        path, file_setting = Path(environ["SIGNALGATE_CONFIG"].strip()), "SIGNALGATE_CONFIG"

    def label(key: str, var: str | None, suffix: str = "") -> str:
        return var if var is not None else f"{key}{suffix} (in {path})"

    sources: list[tuple[str, object, str | None]] = []  # (setting, raw value, env var or None)
    if path is not None:
        for key, raw in _read_file(Path(path), file_setting).items():
            if key not in _PARSERS:
                raise _unknown_key(label(key, None), key, raw)
            sources.append((key, raw, None))
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX) or var in _ENV_ONLY:
            continue
        key = var[len(ENV_PREFIX) :].lower()
        if key in _FILE_ONLY:
            raise ConfigError(var, raw, f"{key} can only be set in the config file")
        if key not in _PARSERS:
            log.warning("ignoring unknown environment variable %s", var)
            continue
        sources.append((key, raw, var))

    values: dict[str, Any] = {"workers": min(os.cpu_count() or 1, 256)}
    origin: dict[str, str] = {}
    for key, raw, from_var in sources:
        try:
            values[key] = _PARSERS[key](raw)
        except InvalidValue as exc:
            shown = raw if exc.value is WHOLE else exc.value
            raise ConfigError(label(key, from_var, exc.suffix), masked(key, shown), exc.reason) from None
        origin[key] = label(key, from_var)

    for cert, key in (("tls_cert", "tls_key"), ("admin_tls_cert", "admin_tls_key")):
        if (values.get(cert) is None) != (values.get(key) is None):
            have, missing = (cert, key) if values.get(key) is None else (key, cert)
            raise ConfigError(origin[have], str(values[have]), f"{missing} must be set too (both or neither)")
    listen = values.get("listen", Settings.listen)
    admin_listen = values.get("admin_listen", Settings.admin_listen)
    if listen.overlaps(admin_listen):
        mine, other = ("admin_listen", "listen") if "admin_listen" in origin else ("listen", "admin_listen")
        where = {"listen": listen, "admin_listen": admin_listen}
        raise ConfigError(
            origin[mine], str(where[mine]), f"overlaps {other} {where[other]}: use another port"
        )
    _check_attestation_settings(values, origin)
    return Settings(**values)


def _check_attestation_settings(values: dict[str, Any], origin: dict[str, str]) -> None:
    """Settings that must agree with each other: three distinct credential headers, refresh bounds."""

    def value(name: str) -> Any:
        return values.get(name, getattr(Settings, name))

    seen: dict[str, str] = {}
    for name in ("key_header", "device_header", "workload_header"):
        lower = value(name).lower()
        if lower in seen:
            culprit = name if name in origin else seen[lower]
            raise ConfigError(
                origin.get(culprit, culprit), value(culprit), f"is the same header as {seen[lower]}"
            )
        seen[lower] = name
    if value("jwks_max_refresh") < value("jwks_min_refresh"):
        culprit = "jwks_max_refresh" if "jwks_max_refresh" in origin else "jwks_min_refresh"
        raise ConfigError(
            origin.get(culprit, culprit),
            value(culprit),
            "jwks_max_refresh must not be below jwks_min_refresh",
        )
