"""The exception tree of signalgate.

A denial is never an exception: it is a ``Decision`` value (see ``proxy.model``). Exceptions are for
things that went wrong: bad settings, bad input at write time, an unreachable dependency.

    SignalgateError
    ├── ConfigError            a setting is missing or malformed (names the setting and the value)
    ├── ValidationError        input rejected at write time (names the field path and the reason)
    │   └── PolicyError        a policy document is invalid
    ├── KeyFormatError         a presented string is not a well-formed signalgate key
    ├── NotFound               a record the caller asked for does not exist
    ├── Conflict               a write conflicts with the current state
    ├── StoreUnavailable       PostgreSQL cannot be reached or answered with a server error
    ├── GeoIPError             the GeoIP database cannot be opened or read
    └── EmbeddedPostgresError  the embedded PostgreSQL could not be initialised or started
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "Conflict",
    "EmbeddedPostgresError",
    "GeoIPError",
    "KeyFormatError",
    "NotFound",
    "PolicyError",
    "SignalgateError",
    "StoreUnavailable",
    "ValidationError",
]


class SignalgateError(Exception):
    """Root of every exception signalgate raises on purpose."""


class ConfigError(SignalgateError):
    def __init__(self, setting: str, value: object, reason: str) -> None:
        self.setting = setting
        self.value = value
        self.reason = reason
        super().__init__(f"{setting}={value!r}: {reason}")


class ValidationError(SignalgateError):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class PolicyError(ValidationError):
    pass


class KeyFormatError(SignalgateError):
    pass


class NotFound(SignalgateError):
    pass


class Conflict(SignalgateError):
    pass


class StoreUnavailable(SignalgateError):
    pass


class GeoIPError(SignalgateError):
    pass


class EmbeddedPostgresError(SignalgateError):
    pass
