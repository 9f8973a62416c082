"""Settings: read once at start-up from a TOML file and SIGNALGATE_* variables, then frozen.

Every value is checked here so the rest of the proxy can trust ``Settings``. A bad value raises
``ConfigError`` naming where it came from (``SIGNALGATE_LISTEN`` or ``listen (in /etc/sg.toml)``) and
quoting it, except secrets: the admin token is shown as ``***`` and a DSN's password is masked, in error
messages and in ``repr(settings)`` alike. Stdlib only; the environment is passed in, never read here.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxy.errors import ConfigError

__all__ = ["ENV_PREFIX", "Listen", "RouteSetting", "Settings", "load", "redact_dsn"]

log = logging.getLogger("signalgate.config")

ENV_PREFIX = "SIGNALGATE_"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Listen:
    host: str  # IPv6 hosts without brackets
    port: int  # 0 asks the OS for a free port

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RouteSetting:
    prefix: str  # path prefix, starts with "/"
    upstream: str  # http(s) URL, no trailing "/"
    host: str | None = None  # only requests whose Host header is this name (lower case); None = any
    preserve_host: bool = True  # forward the client's Host header (False: the upstream's host)


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
    tls_cert: Path | None = None
    tls_key: Path | None = None
    upstream_ca: Path | None = None
    upstream_tls_verify: bool = True
    max_header_size: int = 8190
    cache_size: int = 10000
    negative_cache_size: int = 10000
    max_stale: float = 10.0
    admin_max_body: int = 65536
    log_level: str = "info"

    def __repr__(self) -> str:
        shown = (f"{f.name}={_shown(f.name, getattr(self, f.name))!r}" for f in fields(self))
        return f"Settings({', '.join(shown)})"


_WHOLE = object()  # _Invalid.value default: the whole raw value is at fault


class _Invalid(Exception):
    """A parser's complaint; ``load`` turns it into ConfigError with the setting's name."""

    def __init__(self, reason: str, value: object = _WHOLE, suffix: str = "") -> None:
        self.reason = reason
        self.value = value  # the offending part of the input, when narrower than the whole
        self.suffix = suffix  # e.g. "[2].prefix" inside routes


# ---------------------------------------------------------------------------------------------- redaction

_PASSWORD_PARAM = re.compile(r"(?i)(\bpassword\s*=\s*)('[^']*'|[^&\s]*)")


def redact_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***`` (URL userinfo and ``password=`` parameters)."""
    head, sep, rest = dsn.partition("://")
    if sep:
        query = rest.find("?")
        at = rest.rfind("@", 0, query if query >= 0 else len(rest))
        if at >= 0:
            user, colon, _password = rest[:at].partition(":")
            if colon:
                rest = f"{user}:***{rest[at:]}"
        dsn = head + sep + rest
    return _PASSWORD_PARAM.sub(r"\1***", dsn)


def _shown(name: str, value: object) -> object:
    """``value`` as it may appear in an error or a repr."""
    if name == "admin_token" and value is not None:
        return "***"
    if name == "database_url" and isinstance(value, str):
        return redact_dsn(value)
    return value


# ---------------------------------------------------------------------------------------------- parsers

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
# Headers that frame or route the request; an API key cannot live in them.
_RESERVED_HEADERS = {
    "host", "content-length", "content-type", "transfer-encoding", "connection", "keep-alive",
    "upgrade", "te", "trailer", "proxy-connection", "expect",
}  # fmt: skip
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _text(raw: object) -> str:
    if not isinstance(raw, str):
        raise _Invalid(f"expected a string, got {type(raw).__name__}")
    return raw.strip()


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise _Invalid("port must be 1-65535, or 0 for a free port")
    return int(text)


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return bool(_HOSTNAME.match(text))
    return True


def _listen(raw: object) -> Listen:
    text = _text(raw)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        try:
            ok = sep and ipaddress.ip_address(host).version == 6
        except ValueError:
            ok = False
        if not ok:
            raise _Invalid("expected [IPv6]:port, e.g. [::1]:8080")
        return Listen(host, _port(port))
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise _Invalid("expected host:port, e.g. 127.0.0.1:8080")
    if ":" in host:
        raise _Invalid("IPv6 hosts need brackets, e.g. [::1]:8080")
    if not _is_host(host):
        raise _Invalid(f"{host!r} is not an IP address or host name")
    return Listen(host, _port(port))


def _url(raw: object) -> str:
    text = _text(raw)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError when the port is not a number in range
    except ValueError as exc:
        raise _Invalid(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise _Invalid("must be an http:// or https:// URL")
    if not parts.hostname:
        raise _Invalid("URL has no host")
    if "@" in parts.netloc:
        raise _Invalid("credentials in the URL are not supported")
    if any(ch.isspace() for ch in text):
        raise _Invalid("URL must not contain whitespace")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise _Invalid("URL must not have a query or fragment")
    return text.rstrip("/")


def _database_url(raw: object) -> str | None:
    text = _text(raw)
    if not text:
        return None  # "" means the embedded PostgreSQL
    if not text.startswith(("postgresql://", "postgres://")):
        raise _Invalid("must be a postgresql:// URL")
    try:
        urlsplit(text).port  # noqa: B018
    except ValueError as exc:
        raise _Invalid(f"not a valid URL ({exc})") from None
    return text


def _path(raw: object) -> Path:
    text = _text(raw)
    if not text:
        raise _Invalid("must not be empty")
    return Path(text).expanduser()


def _existing_file(raw: object) -> Path | None:
    if not _text(raw):
        return None
    path = _path(raw)
    if not path.exists():
        raise _Invalid("file not found")
    if not path.is_file():
        raise _Invalid("not a regular file")
    return path


def _token(raw: object) -> str:
    if not isinstance(raw, str):
        raise _Invalid(f"expected a string, got {type(raw).__name__}")
    text = raw  # not stripped: whitespace is rejected below rather than silently dropped
    if len(text) < 16:
        raise _Invalid("must be at least 16 characters")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise _Invalid("must not contain whitespace or control characters")
    return text


def _network(item: object) -> IPNetwork:
    if not isinstance(item, str):
        raise _Invalid("expected a CIDR string", value=item)
    text = item.strip()
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise _Invalid("not an IP network (CIDR)", value=text) from None
        raise _Invalid(f"host bits set; did you mean {loose}?", value=text) from None


def _networks(raw: object) -> tuple[IPNetwork, ...]:
    if isinstance(raw, list):
        items: list[object] = raw
    else:
        items = [part for part in _text(raw).split(",") if part.strip()]
    return tuple(dict.fromkeys(_network(item) for item in items))


def _boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = _text(raw).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _Invalid("expected true/false, 1/0, yes/no or on/off")


def _integer(low: int, high: int | None = None) -> Callable[[object], int]:
    def parse(raw: object) -> int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and _INTEGER.match(raw.strip()):
            value = int(raw)
        else:
            raise _Invalid("expected an integer")
        if value < low or (high is not None and value > high):
            raise _Invalid(f"must be {low}-{high}" if high is not None else f"must be at least {low}")
        return value

    return parse


def _seconds(raw: object) -> float:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    else:
        try:
            value = float(_text(raw))
        except ValueError:
            raise _Invalid("expected a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise _Invalid("must be a positive number of seconds")
    return value


def _key_header(raw: object) -> str:
    text = _text(raw)
    if not _TOKEN.match(text):
        raise _Invalid("not a valid HTTP header name")
    if text.lower() in _RESERVED_HEADERS:
        raise _Invalid("this header frames or routes the request and cannot carry the key")
    return text


def _log_level(raw: object) -> str:
    text = _text(raw).lower()
    if text not in _LOG_LEVELS:
        raise _Invalid(f"must be one of {', '.join(_LOG_LEVELS)}")
    return text


_ROUTE_KEYS = ("prefix", "upstream", "host", "preserve_host")


def _prefix(raw: object) -> str:
    text = _text(raw)
    if not text.startswith("/") or any(ch in text for ch in "?# \t") or "/../" in f"{text}/":
        raise _Invalid('must start with "/" and contain no spaces, "?", "#" or ".." segments')
    return text


def _route_host(raw: object) -> str:
    text = _text(raw).lower()
    if text.startswith("["):
        name, _, port = text[1:].partition("]")
        ok = ":" in name and _is_host(name) and (not port or (port[0] == ":" and port[1:].isdigit()))
    else:
        name, colon, port = text.partition(":")
        ok = _is_host(name) and (not colon or port.isdigit())
    if not ok:
        raise _Invalid("expected a host name, optionally with :port")
    return text


def _route(raw: object) -> RouteSetting:
    if not isinstance(raw, dict):
        raise _Invalid("each route must be a table with prefix and upstream")
    for key in raw:
        if key not in _ROUTE_KEYS:
            raise _Invalid(f"unknown route key; expected {', '.join(_ROUTE_KEYS)}", raw[key], f".{key}")
    for key in ("prefix", "upstream"):
        if key not in raw:
            raise _Invalid(f"route has no {key}", None, f".{key}")

    def parse(key: str, parser: Callable[[object], Any]) -> Any:
        try:
            return parser(raw[key])
        except _Invalid as exc:
            raise _Invalid(exc.reason, raw[key], f".{key}") from None

    return RouteSetting(
        prefix=parse("prefix", _prefix),
        upstream=parse("upstream", _url),
        host=parse("host", _route_host) if "host" in raw else None,
        preserve_host=parse("preserve_host", _boolean) if "preserve_host" in raw else True,
    )


def _routes(raw: object) -> tuple[RouteSetting, ...]:
    if not isinstance(raw, list):
        raise _Invalid("expected [[routes]] tables")
    routes: list[RouteSetting] = []
    seen: dict[tuple[str | None, str], int] = {}
    for index, item in enumerate(raw):
        try:
            route = _route(item)
        except _Invalid as exc:
            raise _Invalid(exc.reason, exc.value, f"[{index}]{exc.suffix}") from None
        # Matching ignores a trailing "/" and the Host port, so "/api" and "/api/" are the same route.
        host = route.host
        if host is not None:
            host = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0].rstrip(".")
        first = seen.setdefault((host, route.prefix.rstrip("/") or "/"), index)
        if first != index:
            raise _Invalid(f"duplicates routes[{first}]", route.prefix, f"[{index}].prefix")
        routes.append(route)
    return tuple(routes)


_PARSERS: dict[str, Callable[[object], Any]] = {
    "listen": _listen,
    "admin_listen": _listen,
    "upstream": lambda raw: _url(raw) if _text(raw) else None,
    "routes": _routes,
    "database_url": _database_url,
    "data_dir": _path,
    "geoip_db": _existing_file,
    "admin_token": _token,
    "trusted_proxies": _networks,
    "expose_reasons": _boolean,
    "workers": _integer(1, 256),
    "key_header": _key_header,
    "connect_timeout": _seconds,
    "read_timeout": _seconds,
    "tls_cert": _existing_file,
    "tls_key": _existing_file,
    "upstream_ca": _existing_file,
    "upstream_tls_verify": _boolean,
    "max_header_size": _integer(1024, 65536),
    "cache_size": _integer(1),
    "negative_cache_size": _integer(0),
    "max_stale": _seconds,
    "admin_max_body": _integer(1024, 16 * 1024 * 1024),
    "log_level": _log_level,
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
    shown = "***" if looks_secret else _shown(close[0], raw) if close else raw
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
    for key, raw, var in sources:
        try:
            values[key] = _PARSERS[key](raw)
        except _Invalid as exc:
            shown = raw if exc.value is _WHOLE else exc.value
            raise ConfigError(label(key, var, exc.suffix), _shown(key, shown), exc.reason) from None
        origin[key] = label(key, var)

    if (values.get("tls_cert") is None) != (values.get("tls_key") is None):
        have, missing = ("tls_cert", "tls_key") if values.get("tls_key") is None else ("tls_key", "tls_cert")
        raise ConfigError(origin[have], str(values[have]), f"{missing} must be set too (both or neither)")
    listen = values.get("listen", Settings.listen)
    admin_listen = values.get("admin_listen", Settings.admin_listen)
    if listen == admin_listen and listen.port != 0:
        culprit = "admin_listen" if "admin_listen" in origin else "listen"
        raise ConfigError(origin[culprit], str(listen), "listen and admin_listen must differ")
    return Settings(**values)
