"""Public JSON Web Keys (RFC 7517) checked for shape and strength before anything trusts them.

Pure core: a JWK set from an issuer (inline or fetched) or from a policy's ``signature.keys`` is checked
here once, when it is written or fetched, so a bad key is refused with its name (``jwks.keys[1] (kid
'k2')``) and the reason: a symmetric ``oct`` key, a private key, an RSA key below 2048 bits, an EC key on
a curve the algorithms do not use, a key whose ``alg`` the issuer does not allow. Turning the checked
members into ``cryptography`` key objects is the shells' work (``proxy.attest``, ``proxy.signatures``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.errors import ValidationError

__all__ = [
    "JOSE_ALGORITHMS",
    "MAX_KEYS",
    "SIGNATURE_ALGORITHMS",
    "PublicJwk",
    "jose_algorithms_of",
    "parse_jwks",
    "signature_algorithm_of",
]

# JWS algorithms an issuer may allow (no "none", no HS*: a token is checked with a public key only).
JOSE_ALGORITHMS = ("EdDSA", "ES256", "ES384", "RS256", "PS256")
# RFC 9421 algorithms a request may be signed with, by key type.
SIGNATURE_ALGORITHMS = ("ed25519", "ecdsa-p256-sha256", "rsa-pss-sha512")
MAX_KEYS = 64
MIN_RSA_BITS = 2048
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_EC_SIZES = {"P-256": 32, "P-384": 48}


@dataclass(frozen=True, slots=True)
class PublicJwk:
    kid: str | None
    kty: str  # RSA, EC or OKP
    crv: str | None  # P-256, P-384, Ed25519
    alg: str | None  # the key's own "alg", when it names one
    bits: int | None  # RSA modulus size
    members: Mapping[str, Any] = field(compare=False, repr=False)  # the JWK as given
    canonical: str = field(default="", repr=False)  # sorted JSON of the members, to key caches by

    def describe(self) -> str:
        kind = f"{self.kty} {self.bits} bits" if self.bits else f"{self.kty} {self.crv}"
        return f"kid {self.kid!r} ({kind})" if self.kid is not None else f"({kind})"

    def shown(self) -> dict[str, Any]:
        """What the admin API shows of the key."""
        return {"kid": self.kid, "kty": self.kty, "crv": self.crv, "alg": self.alg, "bits": self.bits}


def jose_algorithms_of(key: PublicJwk) -> tuple[str, ...]:
    """The JWS algorithms a key of this type and size may verify."""
    if key.kty == "RSA":
        return ("RS256", "PS256")
    if key.kty == "EC":
        return {"P-256": ("ES256",), "P-384": ("ES384",)}.get(key.crv or "", ())
    if key.kty == "OKP" and key.crv == "Ed25519":
        return ("EdDSA",)
    return ()


def signature_algorithm_of(key: PublicJwk) -> str | None:
    """The RFC 9421 algorithm a key of this type verifies, or None."""
    if key.kty == "RSA":
        return "rsa-pss-sha512"
    if key.kty == "EC" and key.crv == "P-256":
        return "ecdsa-p256-sha256"
    if key.kty == "OKP" and key.crv == "Ed25519":
        return "ed25519"
    return None


def parse_jwks(
    value: object,
    path: str,
    *,
    algorithms: tuple[str, ...] = JOSE_ALGORITHMS,
    fits: Callable[[PublicJwk], tuple[str, ...]] = jose_algorithms_of,
    require_kid: bool = False,
) -> tuple[PublicJwk, ...]:
    """A JWK set (``{"keys": [...]}``) whose every key is public, strong enough and fits one of
    ``algorithms`` (``fits`` says which algorithms a key can verify); raises ValidationError naming
    the key."""
    if not isinstance(value, dict):
        raise ValidationError(path, f'must be a JWK set object {{"keys": [...]}}, not {_kind(value)}')
    unknown = sorted(set(value) - {"keys"})
    if unknown:
        raise ValidationError(f"{path}.{unknown[0]}", "unknown member of a JWK set; expected only 'keys'")
    members = value.get("keys")
    if not isinstance(members, list):
        raise ValidationError(f"{path}.keys", f"must be a list of JWKs, not {_kind(members)}")
    if not members:
        raise ValidationError(f"{path}.keys", "must hold at least one key")
    if len(members) > MAX_KEYS:
        raise ValidationError(f"{path}.keys", f"holds {len(members)} keys, at most {MAX_KEYS} allowed")
    keys: list[PublicJwk] = []
    seen: set[str] = set()
    for i, member in enumerate(members):
        key = parse_jwk(member, f"{path}.keys[{i}]", algorithms=algorithms, fits=fits)
        if require_kid and key.kid is None:
            raise ValidationError(f"{path}.keys[{i}]", f"key {key.describe()} needs a 'kid'")
        if key.kid is not None:
            if key.kid in seen:
                raise ValidationError(f"{path}.keys[{i}]", f"kid {key.kid!r} appears twice")
            seen.add(key.kid)
        keys.append(key)
    if len(keys) > 1 and any(key.kid is None for key in keys):
        raise ValidationError(f"{path}.keys", "every key needs a 'kid' when the set holds more than one")
    return tuple(keys)


def parse_jwk(
    value: object,
    path: str,
    *,
    algorithms: tuple[str, ...] = JOSE_ALGORITHMS,
    fits: Callable[[PublicJwk], tuple[str, ...]] = jose_algorithms_of,
) -> PublicJwk:
    if not isinstance(value, dict):
        raise ValidationError(path, f"must be a JWK object, not {_kind(value)}")
    kid = value.get("kid")
    if kid is not None and (not isinstance(kid, str) or not 1 <= len(kid) <= 200 or not kid.isprintable()):
        raise ValidationError(f"{path}.kid", "must be 1 to 200 printable characters")
    name = f"kid {kid!r}" if kid is not None else "the key"
    kty = value.get("kty")
    if kty == "oct":
        raise ValidationError(path, f"{name} is a symmetric (oct) key; only public keys can be trusted")
    if kty not in ("RSA", "EC", "OKP"):
        raise ValidationError(f"{path}.kty", f"{name}: kty must be RSA, EC or OKP, not {kty!r}")
    private = [member for member in _PRIVATE_MEMBERS if member in value]
    if private:
        raise ValidationError(
            path, f"{name} holds private key material ({private[0]!r}); give the public key"
        )
    use = value.get("use")
    if use is not None and use != "sig":
        raise ValidationError(f"{path}.use", f"{name}: use must be 'sig', not {use!r}")
    alg = value.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise ValidationError(f"{path}.alg", f"{name}: must be a string")
    crv: str | None = None
    bits: int | None = None
    if kty == "RSA":
        modulus = _b64(value, "n", path, name)
        _b64(value, "e", path, name)
        bits = len(modulus.lstrip(b"\0")) * 8
        if bits < MIN_RSA_BITS:
            raise ValidationError(
                path, f"{name} is an RSA key of {bits} bits; at least {MIN_RSA_BITS} needed"
            )
    elif kty == "EC":
        crv = value.get("crv")
        if crv not in _EC_SIZES:
            raise ValidationError(f"{path}.crv", f"{name}: EC curve must be P-256 or P-384, not {crv!r}")
        for coordinate in ("x", "y"):
            if len(_b64(value, coordinate, path, name)) != _EC_SIZES[crv]:
                raise ValidationError(f"{path}.{coordinate}", f"{name}: wrong length for {crv}")
    else:
        crv = value.get("crv")
        if crv != "Ed25519":
            raise ValidationError(f"{path}.crv", f"{name}: OKP curve must be Ed25519, not {crv!r}")
        if len(_b64(value, "x", path, name)) != 32:
            raise ValidationError(f"{path}.x", f"{name}: an Ed25519 key is 32 bytes")
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    key = PublicJwk(kid, kty, crv, alg, bits, dict(value), canonical)
    usable = [algorithm for algorithm in fits(key) if algorithm in algorithms]
    if alg is not None and alg not in usable:
        raise ValidationError(
            f"{path}.alg",
            f"{key.describe()}: alg {alg!r} does not fit the key or is not one of {list(algorithms)}",
        )
    if not usable:
        raise ValidationError(path, f"{key.describe()} fits none of the algorithms {list(algorithms)}")
    return key


def _b64(value: Mapping[str, Any], member: str, path: str, name: str) -> bytes:
    text = value.get(member)
    if not isinstance(text, str) or not text or _B64URL.fullmatch(text) is None:
        raise ValidationError(f"{path}.{member}", f"{name}: must be a base64url string without padding")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValidationError(f"{path}.{member}", f"{name}: not base64url ({exc})") from None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}.get(
        type(value), "an object" if isinstance(value, dict) else type(value).__name__
    )
