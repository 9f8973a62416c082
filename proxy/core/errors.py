"""The exception tree of signalgate.

A denial is never an exception: it is a ``Decision`` value (see ``proxy.core.model``). Exceptions are for
things that went wrong: bad settings, bad input at write time, an unreachable dependency.

    SignalgateError
    ├── ConfigError            a setting is missing or malformed (names the setting and the value)
    ├── ValidationError        input rejected at write time (names the field path and the reason)
    │   └── PolicyError        a policy document is invalid
    ├── KeyFormatError         a presented string is not a well-formed signalgate key
    ├── NotFound               a record the caller asked for does not exist
    ├── Conflict               a write conflicts with the current state
    ├── StoreUnavailable       PostgreSQL cannot be reached or answered with a server error
    ├── StartupTimeout         a dependency stayed unreachable for its start-up wait (names the setting)
    ├── AuthorizationUnavailable  a key could not be checked against the source of truth (503)
    ├── GeoIPError             the GeoIP database cannot be opened or read
    ├── JwksFetchError         an issuer's JWK set could not be fetched from its jwks_url
    ├── EmbeddedPostgresError  the embedded PostgreSQL could not be initialised or started
    ├── RequestInvalid         a request cannot be forwarded as received (400)
    │   ├── HeaderValueInvalid a request header value is not UTF-8
    │   ├── RequestBodyInvalid the request body turned malformed before the upstream answered
    │   └── ContentDigestMismatch  the request body does not match its Content-Digest (403)
    └── UpstreamError          the upstream failed before anything was sent to the client
        ├── UpstreamUnavailable  refused, reset, TLS failure, an answer that cannot be relayed (502)
        └── UpstreamTimeout      no connection, no answer, or no room in the pool in time (504)

Each shell translates its library's exceptions into these at its edge, in one place
(``proxy.db.errors.translate_errors``, ``proxy.http.forward.translate_client_error``).
"""

from __future__ import annotations

__all__ = [
    "AuthorizationUnavailable",
    "ConfigError",
    "Conflict",
    "ContentDigestMismatch",
    "EmbeddedPostgresError",
    "GeoIPError",
    "HeaderValueInvalid",
    "JwksFetchError",
    "KeyFormatError",
    "NotFound",
    "PolicyError",
    "RequestBodyInvalid",
    "RequestInvalid",
    "SignalgateError",
    "StartupTimeout",
    "StoreUnavailable",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
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


class StartupTimeout(SignalgateError):
    """A dependency stayed unreachable for as long as start-up waits for it (exit status 2)."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        super().__init__(message)


class GeoIPError(SignalgateError):
    pass


class JwksFetchError(SignalgateError):
    """An issuer's JWK set could not be fetched from its ``jwks_url`` (the message says why)."""


class EmbeddedPostgresError(SignalgateError):
    pass


class AuthorizationUnavailable(SignalgateError):
    """A key could not be checked against the source of truth: the request gets 503, never an allow."""


class RequestInvalid(SignalgateError):
    """The request cannot be forwarded as it was received (400 ``request_invalid``)."""


class HeaderValueInvalid(RequestInvalid, ValueError):
    """A request header value held bytes that are not UTF-8 (the parser kept them as surrogates)."""


class RequestBodyInvalid(RequestInvalid):
    """The client's request body turned out malformed before the upstream answered (400); the upstream
    request was abandoned. (A body that ends short because the client left is a client gone, 499.)"""


class ContentDigestMismatch(RequestInvalid):
    """The request body streamed to the upstream does not match its Content-Digest (RFC 9530): the
    upstream request was cut before the body's last byte (403 ``content_digest_mismatch``)."""


class UpstreamError(SignalgateError):
    """The upstream failed before anything was sent to the client."""


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached or broke the exchange before answering (502)."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not accept the connection or answer in time (504)."""
