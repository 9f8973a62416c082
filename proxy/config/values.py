"""One parser per kind of setting value: raw text or TOML value in, a checked value out.

Each raises ``InvalidValue`` naming what is wrong; ``proxy.config.settings`` turns that into a ``ConfigError``
that says where the value came from. Stdlib only.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from proxy.core.paths import normalize

__all__ = [
    "WHOLE",
    "IPNetwork",
    "InvalidValue",
    "Listen",
    "masked",
    "parse_boolean",
    "parse_database_url",
    "parse_directory",
    "parse_existing_file",
    "parse_health_path",
    "parse_integer",
    "parse_key_header",
    "parse_listen",
    "parse_log_level",
    "parse_networks",
    "parse_path",
    "parse_seconds",
    "parse_text",
    "parse_token",
    "parse_url",
    "redact_dsn",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Listen:
    host: str  # IPv6 hosts without brackets
    port: int  # 0 asks the OS for a free port

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """Whether only this host can connect: a loopback address or ``localhost`` (a wildcard or any
        other address or name is reachable from elsewhere, as far as a setting can tell)."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def overlaps(self, other: Listen) -> bool:
        """Whether the two cannot both be bound: one port (not 0) on one address, or on the wildcard
        address of the same family (IPv6 sockets are bound v6-only, so "::" leaves 0.0.0.0 alone)."""
        if self.port != other.port or self.port == 0:
            return False
        if self.host == other.host:
            return True
        try:
            mine, theirs = ipaddress.ip_address(self.host), ipaddress.ip_address(other.host)
        except ValueError:
            return False  # a host name: only binding tells
        return mine.version == theirs.version and (mine.is_unspecified or theirs.is_unspecified)


WHOLE = object()  # InvalidValue.value default: the whole raw value is at fault


class InvalidValue(Exception):
    """A parser's complaint; ``load`` turns it into ConfigError with the setting's name."""

    def __init__(self, reason: str, value: object = WHOLE, suffix: str = "") -> None:
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


def masked(name: str, value: object) -> object:
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


def parse_text(raw: object) -> str:
    if not isinstance(raw, str):
        raise InvalidValue(f"expected a string, got {type(raw).__name__}")
    return raw.strip()


def is_digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts "²" and other digits int() refuses."""
    return text.isascii() and text.isdigit()


def parse_port(text: str) -> int:
    if not is_digits(text) or not 0 <= int(text) <= 65535:
        raise InvalidValue("port must be 1-65535, or 0 for a free port")
    return int(text)


def is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return bool(_HOSTNAME.match(text))
    return True


def parse_listen(raw: object) -> Listen:
    text = parse_text(raw)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        try:
            ok = sep and ipaddress.ip_address(host).version == 6
        except ValueError:
            ok = False
        if not ok:
            raise InvalidValue("expected [IPv6]:port, e.g. [::1]:8080")
        return Listen(host, parse_port(port))
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise InvalidValue("expected host:port, e.g. 127.0.0.1:8080")
    if ":" in host:
        raise InvalidValue("IPv6 hosts need brackets, e.g. [::1]:8080")
    if not is_host(host):
        raise InvalidValue(f"{host!r} is not an IP address or host name")
    return Listen(host, parse_port(port))


def parse_url(raw: object) -> str:
    text = parse_text(raw)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError when the port is not a number in range
    except ValueError as exc:
        raise InvalidValue(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidValue("must be an http:// or https:// URL")
    if not parts.hostname:
        raise InvalidValue("URL has no host")
    if "@" in parts.netloc:
        raise InvalidValue("credentials in the URL are not supported")
    if any(ch.isspace() for ch in text):
        raise InvalidValue("URL must not contain whitespace")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise InvalidValue("URL must not have a query or fragment")
    return text.rstrip("/")


def parse_database_url(raw: object) -> str | None:
    text = parse_text(raw)
    if not text:
        return None  # "" means the embedded PostgreSQL
    if not text.startswith(("postgresql://", "postgres://")):
        raise InvalidValue("must be a postgresql:// URL")
    try:
        urlsplit(text).port  # noqa: B018
    except ValueError as exc:
        raise InvalidValue(f"not a valid URL ({exc})") from None
    return text


def parse_path(raw: object) -> Path:
    text = parse_text(raw)
    if not text:
        raise InvalidValue("must not be empty")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # "~name" of no user, or "~" without HOME or a passwd entry
        raise InvalidValue(
            f"cannot expand {text.split('/')[0]!r}: no such user or no home directory"
        ) from None


def parse_directory(raw: object) -> Path:
    """A directory, or one that can be created: what exists of the path is directories."""
    path = parse_path(raw)
    for step in (path, *path.parents):
        try:
            if not step.exists():
                continue
        except OSError:  # not ours to look into: creating it will say why
            break
        if not step.is_dir():
            raise InvalidValue("not a directory" if step == path else f"{step} is not a directory")
        break
    return path


def parse_existing_file(raw: object) -> Path | None:
    if not parse_text(raw):
        return None
    path = parse_path(raw)
    if not path.exists():
        raise InvalidValue("file not found")
    if not path.is_file():
        raise InvalidValue("not a regular file")
    return path


def parse_token(raw: object) -> str:
    if not isinstance(raw, str):
        raise InvalidValue(f"expected a string, got {type(raw).__name__}")
    text = raw  # not stripped: whitespace is rejected below rather than silently dropped
    if len(text) < 16:
        raise InvalidValue("must be at least 16 characters")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise InvalidValue("must not contain whitespace or control characters")
    return text


def parse_network(item: object) -> IPNetwork:
    if not isinstance(item, str):
        raise InvalidValue("expected a CIDR string", value=item)
    text = item.strip()
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise InvalidValue("not an IP network (CIDR)", value=text) from None
        raise InvalidValue(f"host bits set; did you mean {loose}?", value=text) from None


def parse_networks(raw: object) -> tuple[IPNetwork, ...]:
    if isinstance(raw, list):
        items: list[object] = raw
    else:
        items = [part for part in parse_text(raw).split(",") if part.strip()]
    return tuple(dict.fromkeys(parse_network(item) for item in items))


def parse_boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = parse_text(raw).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidValue("expected true/false, 1/0, yes/no or on/off")


def parse_integer(low: int, high: int | None = None) -> Callable[[object], int]:
    def parse(raw: object) -> int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and _INTEGER.match(raw.strip()):
            value = int(raw)
        else:
            raise InvalidValue("expected an integer")
        if value < low or (high is not None and value > high):
            raise InvalidValue(f"must be {low}-{high}" if high is not None else f"must be at least {low}")
        return value

    return parse


def _number(raw: object, expected: str) -> float:
    """A TOML number, or the text of one (environment variables); ``expected`` names it in errors."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    try:
        return float(parse_text(raw))
    except ValueError:
        raise InvalidValue(f"expected {expected}") from None


def parse_seconds(raw: object) -> float:
    value = _number(raw, "a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise InvalidValue("must be a positive number of seconds")
    return value


def parse_health_path(raw: object) -> str | None:
    """The proxy port's health path: a normalised path (the form requests are matched in), or "" for none."""
    text = parse_text(raw)
    if not text:
        return None
    target = normalize(text)
    if target.problem is not None:
        raise InvalidValue(f"not a valid path: {target.problem}")
    if target.query is not None or target.path != text:
        raise InvalidValue(f"must be a normalised path without a query (did you mean {target.path!r}?)")
    if text == "/":
        raise InvalidValue("must not be /: it would hide the upstream's root")
    return text


def parse_key_header(raw: object) -> str:
    text = parse_text(raw)
    if not _TOKEN.match(text):
        raise InvalidValue("not a valid HTTP header name")
    if text.lower() in _RESERVED_HEADERS:
        raise InvalidValue("this header frames or routes the request and cannot carry the key")
    return text


def parse_log_level(raw: object) -> str:
    text = parse_text(raw).lower()
    if text not in _LOG_LEVELS:
        raise InvalidValue(f"must be one of {', '.join(_LOG_LEVELS)}")
    return text


def parse_fraction(raw: object) -> float:
    """A probability: a number from 0 to 1 (a sampling rate)."""
    value = _number(raw, "a number from 0 to 1")
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise InvalidValue("must be a number from 0 to 1")
    return value


DECISION_LINE_LEVELS = ("info", "debug", "off")


def parse_decision_line_level(raw: object) -> str:
    text = parse_text(raw).lower()
    if text not in DECISION_LINE_LEVELS:
        raise InvalidValue(f"must be one of {', '.join(DECISION_LINE_LEVELS)}")
    return text
