"""Content-Digest (RFC 9530) checked against a request body as it streams, before its end goes on.

``BodyDigest`` is fed the body chunk by chunk by the forwarder and hashes it with every algorithm the
request's ``Content-Digest`` names (sha-256, sha-512). It always holds back the last byte it was given:
``take(chunk)`` returns what may be sent upstream now, and ``finish()``, called at the end of the body,
returns the held byte only when every digest matched, and raises ``ContentDigestMismatch`` otherwise. So
an upstream never receives the complete body of a request whose digest is wrong: the request is cut
before its last byte.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable

from proxy.core.errors import ContentDigestMismatch

__all__ = ["ALGORITHMS", "BodyDigest", "digest_matches"]

ALGORITHMS: dict[str, Callable[[], hashlib._Hash]] = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}


class BodyDigest:
    __slots__ = ("_expected", "_hashes", "_held", "length")

    def __init__(self, expected: Iterable[tuple[str, bytes]]) -> None:
        self._expected = tuple(expected)
        if not self._expected:
            raise ValueError("a body digest needs at least one expected digest")
        for algorithm, _ in self._expected:
            if algorithm not in ALGORITHMS:
                raise ValueError(f"unsupported content digest algorithm {algorithm!r}")
        self._hashes = [ALGORITHMS[algorithm]() for algorithm, _ in self._expected]
        self._held = b""
        self.length = 0  # bytes of body seen

    def update(self, chunk: bytes) -> None:
        for hasher in self._hashes:
            hasher.update(chunk)
        self.length += len(chunk)

    def matches(self) -> bool:
        """Whether the body seen so far has every expected digest (compared in constant time)."""
        return all(
            hmac.compare_digest(hasher.digest(), expected)
            for hasher, (_, expected) in zip(self._hashes, self._expected, strict=True)
        )

    def take(self, chunk: bytes) -> bytes:
        """Feed ``chunk``; what may go upstream now (all it was given so far but the last byte)."""
        if not chunk:
            return b""
        self.update(chunk)
        out = self._held + chunk[:-1]
        self._held = chunk[-1:]
        return out

    def finish(self) -> bytes:
        """The end of the body was reached: the held-back byte if the digest matches, else raise."""
        if not self.matches():
            names = ", ".join(algorithm for algorithm, _ in self._expected)
            raise ContentDigestMismatch(
                f"the body ({self.length} bytes) does not match its Content-Digest ({names})"
            )
        held, self._held = self._held, b""
        return held


def digest_matches(expected: Iterable[tuple[str, bytes]], body: bytes) -> bool:
    """Whether a whole ``body`` has every expected digest."""
    check = BodyDigest(expected)
    check.update(body)
    return check.matches()
