"""Validation of admin request bodies for attestation issuers, kept apart from HTTP for table tests.

Every rejection is a ``ValidationError`` naming the field (``algorithms[1]``, ``jwks.keys[0]``) and
what was expected; a JWK that does not fit the issuer's algorithms is named by its position and kid.
The JWK set at a ``jwks_url`` is fetched by the caller and checked with ``check_jwks`` the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proxy.core.attestation import ISSUER_NAME
from proxy.core.errors import ValidationError
from proxy.core.issuers import ISSUER_KINDS
from proxy.core.jwk import JOSE_ALGORITHMS, PublicJwk, parse_jwks

__all__ = ["CREATE_FIELDS", "MAX_LIFETIME", "PATCH_FIELDS", "IssuerSpec", "check_jwks", "parse_issuer"]

CREATE_FIELDS = ("name", "kind", "issuer", "audience", "algorithms", "max_lifetime_s", "jwks", "jwks_url")
PATCH_FIELDS = CREATE_FIELDS[1:]
MAX_LIFETIME = 7 * 86400
MAX_TEXT = 1000


@dataclass(frozen=True, slots=True)
class IssuerSpec:
    """The validated fields of a create (all) or a patch (those given)."""

    fields: Mapping[str, Any]


def parse_issuer(body: object, *, create: bool) -> IssuerSpec:
    allowed = CREATE_FIELDS if create else PATCH_FIELDS
    if not isinstance(body, dict):
        raise ValidationError("$", "request body must be a JSON object")
    for name in body:
        if name not in allowed:
            raise ValidationError(name, f"unknown field (expected some of: {', '.join(allowed)})")
    if not body:
        raise ValidationError("$", f"names no field to change (expected some of: {', '.join(allowed)})")
    if create:
        for required in ("name", "kind", "issuer", "audience", "algorithms"):
            if required not in body:
                raise ValidationError(required, "is required")
        if ("jwks" in body) == ("jwks_url" in body):
            raise ValidationError("jwks", "give exactly one of jwks (a JWK set) or jwks_url (fetched)")
    elif "jwks" in body and "jwks_url" in body:
        raise ValidationError("jwks", "give at most one of jwks or jwks_url")
    fields: dict[str, Any] = {}
    if "name" in body:
        name = body["name"]
        if not isinstance(name, str) or ISSUER_NAME.fullmatch(name) is None:
            raise ValidationError("name", f"must be 1 to 64 of a-z 0-9 -, got {name!r}")
        fields["name"] = name
    if "kind" in body:
        if body["kind"] not in ISSUER_KINDS:
            raise ValidationError("kind", f"must be 'device' or 'workload', got {body['kind']!r}")
        fields["kind"] = body["kind"]
    for text in ("issuer", "audience"):
        if text in body:
            fields[text] = _text(body[text], text)
    if "algorithms" in body:
        fields["algorithms"] = _algorithms(body["algorithms"])
    if "max_lifetime_s" in body:
        value = body["max_lifetime_s"]
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIFETIME:
            raise ValidationError(
                "max_lifetime_s", f"must be whole seconds from 1 to {MAX_LIFETIME}, got {value!r}"
            )
        fields["max_lifetime_s"] = value
    if "jwks_url" in body:
        fields["jwks_url"] = _url(body["jwks_url"])
    if "jwks" in body:
        fields["jwks"] = body["jwks"]  # checked against the algorithms by the caller (check_jwks)
    return IssuerSpec(fields)


def check_jwks(jwks: object, algorithms: tuple[str, ...], path: str = "jwks") -> tuple[PublicJwk, ...]:
    """Every key public, strong enough and fitting one of ``algorithms``; else a 422 naming the key."""
    return parse_jwks(jwks, path, algorithms=algorithms)


def _text(value: object, path: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT:
        raise ValidationError(path, f"must be a string of 1 to {MAX_TEXT} characters")
    if not value.isprintable():
        raise ValidationError(path, "must not contain control characters")
    return value


def _algorithms(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValidationError("algorithms", f"must be a non-empty list of {', '.join(JOSE_ALGORITHMS)}")
    for i, item in enumerate(value):
        if item not in JOSE_ALGORITHMS:
            why = "symmetric and unsigned algorithms are never allowed" if isinstance(item, str) else "a name"
            raise ValidationError(
                f"algorithms[{i}]", f"{item!r} is not one of {', '.join(JOSE_ALGORITHMS)} ({why})"
            )
    if len(set(value)) != len(value):
        raise ValidationError("algorithms", "names an algorithm twice")
    return tuple(value)


def _url(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT:
        raise ValidationError("jwks_url", "must be an http:// or https:// URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.fragment:
        raise ValidationError(
            "jwks_url", f"must be an http:// or https:// URL without credentials, got {value!r}"
        )
    return value
