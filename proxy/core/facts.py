"""What is known about one request when a policy judges it: ``Facts``.

Every request has the basic facts (client address, method, normalised path, the time, the key id and
the request's headers). Anything else a policy part reads (the client's country, a verified
attestation...) is a *gathered* fact: the request handler gathers it only when a part of the key's
policy names it in ``Part.needs``, through the shell registered for that name, so a key whose policy
needs nothing costs nothing more. A fact that could not be gathered is ``UNAVAILABLE``, and a part that
needs it fails closed.

Some gatherers verify what the request carries against material in the key's own policy (a request
signature against the policy's signing keys): they read the compiled policy being judged from
``facts.policy`` (anything with ``rule(name)``, see ``Judged``), and the request as the client addressed
it from ``target``, ``scheme`` and ``peer_trusted``.

Never put a secret (a raw token, a key) into a fact a part memoises on (``Part.memo_on``): memo keys
live as long as the compiled policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol, TypeVar

from proxy.core.model import IPAddress

__all__ = ["BASIC", "NO_HEADERS", "UNAVAILABLE", "Facts", "Headers", "Judged"]

_T = TypeVar("_T")

BASIC = frozenset({"client_ip", "method", "path", "now", "key_id"})


class _Unavailable:
    """A gathered fact that could not be had (no database configured, a lookup failed)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNAVAILABLE"


UNAVAILABLE = _Unavailable()


class Headers(Protocol):
    """The request's header fields as parts read them (case-insensitive names): the first value of a
    field, or all of them (``default`` when there is none)."""

    def get(self, key: str, default: _T, /) -> str | _T: ...

    def getall(self, key: str, default: _T, /) -> list[str] | _T: ...


class Judged(Protocol):
    """The compiled policy a request is judged against (``proxy.core.policy.CompiledPolicy``), as the
    gatherers that depend on it see it: the compiled rule of a part, None when the policy lacks it."""

    def rule(self, name: str, /) -> object | None: ...


class _NoHeaders:
    __slots__ = ()

    def get(self, key: str, default: _T, /) -> str | _T:
        return default

    def getall(self, key: str, default: _T, /) -> list[str] | _T:
        return default


NO_HEADERS: Headers = _NoHeaders()


class Facts:
    """One request's facts; per request, so slotted (the hot path passes every argument positionally)."""

    __slots__ = (
        "client_ip",
        "gathered",
        "headers",
        "key_id",
        "method",
        "now",
        "path",
        "peer_trusted",
        "policy",
        "scheme",
        "target",
    )

    def __init__(
        self,
        client_ip: IPAddress,
        method: str,
        path: str,
        now: datetime,
        key_id: str = "",
        headers: Headers = NO_HEADERS,
        gathered: Mapping[str, object] | None = None,
        *,
        target: str = "",
        scheme: str = "http",
        peer_trusted: bool = False,
        policy: Judged | None = None,
    ) -> None:
        self.client_ip = client_ip
        self.method = method  # upper case
        self.path = path  # normalised (proxy.core.paths)
        self.now = now  # timezone-aware
        self.key_id = key_id
        self.headers = headers
        self.gathered: dict[str, object] = {} if gathered is None else dict(gathered)
        self.target = target  # the request target as received (origin form: raw path and query)
        self.scheme = scheme  # of the listener that received it ("http" or "https")
        self.peer_trusted = peer_trusted  # the peer is a trusted proxy: its X-Forwarded-* are believed
        self.policy = policy  # set by the handler before gathering

    def fact(self, name: str) -> object:
        """A basic or gathered fact by name; ``UNAVAILABLE`` when it was not gathered."""
        if name in BASIC:
            return getattr(self, name)
        return self.gathered.get(name, UNAVAILABLE)

    def __repr__(self) -> str:
        return (
            f"Facts({self.client_ip}, {self.method} {self.path}, {self.now.isoformat()}, "
            f"key_id={self.key_id!r}, gathered={self.gathered!r})"
        )
