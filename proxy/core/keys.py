"""The API key format: ``sg_<id>_<secret>``.

``id`` is 16 lower-case hex digits (64 random bits) and finds the record without a scan; ``secret`` is
48 lower-case hex digits (192 random bits). The visible ``sg_`` prefix and fixed shape let secret
scanners recognise a leaked key. Only SHA-256 of the whole key is stored: with 192 random bits there is
nothing to brute-force, so a slow KDF or pepper would add cost per request and no safety.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import NamedTuple

from proxy.core.errors import KeyFormatError

__all__ = [
    "KEY_LENGTH",
    "PresentedKey",
    "generate",
    "hash_key",
    "is_key_id",
    "matches",
    "new_key_id",
    "parse",
]

PREFIX = "sg_"
ID_HEX = 16
SECRET_HEX = 48
KEY_LENGTH = len(PREFIX) + ID_HEX + 1 + SECRET_HEX
_HEX = frozenset("0123456789abcdef")
_SHAPE = re.compile(f"{PREFIX}[0-9a-f]{{{ID_HEX}}}_[0-9a-f]{{{SECRET_HEX}}}\\Z")


class PresentedKey(NamedTuple):  # per request: cheaper to build than a frozen dataclass
    key_id: str
    digest: bytes  # SHA-256 of the whole presented key


def new_key_id() -> str:
    return secrets.token_hex(ID_HEX // 2)


def generate(key_id: str | None = None) -> tuple[str, str, bytes]:
    """A fresh key: (key id, full key shown once, hash to store)."""
    key_id = key_id or new_key_id()
    key = f"{PREFIX}{key_id}_{secrets.token_hex(SECRET_HEX // 2)}"
    return key_id, key, hash_key(key)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("ascii")).digest()


def parse(raw: str) -> PresentedKey:
    """Check the shape of a presented key; the secret is only ever hashed, never kept."""
    if len(raw) != KEY_LENGTH or _SHAPE.match(raw) is None:
        raise KeyFormatError("not a signalgate key")
    return PresentedKey(raw[len(PREFIX) : len(PREFIX) + ID_HEX], hash_key(raw))


def matches(presented: PresentedKey, stored_hash: bytes) -> bool:
    return hmac.compare_digest(presented.digest, stored_hash)


def is_key_id(value: str) -> bool:
    return len(value) == ID_HEX and _HEX.issuperset(value)
