"""Test material for attestations and request signatures: real keys made with ``cryptography``, JWKs,
tokens signed with them, RFC 9421 signed requests, and a JWKS server on loopback that counts fetches."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver
from http_message_signatures.algorithms import ECDSA_P256_SHA256, ED25519, RSA_PSS_SHA512

from tests.bounds import PROMPT
from tests.upstream_app import run_app

GITHUB_ISS = "https://token.actions.githubusercontent.com"
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(value: int) -> str:
    return b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass
class Signer:
    """A private key and its public JWK (with ``kid``)."""

    kid: str
    private: PrivateKey
    alg: str  # JOSE algorithm for tokens

    @property
    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            from cryptography.hazmat.primitives import serialization

            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return {"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "x": b64(raw)}
        if isinstance(public, ec.EllipticCurvePublicKey):
            numbers = public.public_numbers()
            size = (public.curve.key_size + 7) // 8
            crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[public.curve.name]
            return {
                "kty": "EC",
                "crv": crv,
                "kid": self.kid,
                "x": b64(numbers.x.to_bytes(size, "big")),
                "y": b64(numbers.y.to_bytes(size, "big")),
            }
        assert isinstance(public, rsa.RSAPublicKey)
        numbers = public.public_numbers()
        return {"kty": "RSA", "kid": self.kid, "n": _int(numbers.n), "e": _int(numbers.e)}

    def token(
        self, claims: Mapping[str, Any], *, headers: Mapping[str, Any] | None = None, alg: str = ""
    ) -> str:
        head = {"kid": self.kid, **(headers or {})}
        if head.get("kid") is None:
            head.pop("kid")
        return jwt.encode(dict(claims), self.private, algorithm=alg or self.alg, headers=head)


_RSA_CACHE: dict[int, rsa.RSAPrivateKey] = {}


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """RSA generation is slow: one key per size per test session is enough."""
    if bits not in _RSA_CACHE:
        _RSA_CACHE[bits] = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return _RSA_CACHE[bits]


def ed25519_signer(kid: str = "ed-1") -> Signer:
    return Signer(kid, ed25519.Ed25519PrivateKey.generate(), "EdDSA")


def es256_signer(kid: str = "es-1") -> Signer:
    return Signer(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")


def rs256_signer(kid: str = "rs-1", alg: str = "RS256") -> Signer:
    return Signer(kid, rsa_key(), alg)


def jwks(*signers: Signer) -> dict[str, Any]:
    return {"keys": [signer.jwk for signer in signers]}


def claims(
    iss: str,
    aud: str | list[str],
    *,
    sub: str = "subject",
    now: float | None = None,
    lifetime: float = 600,
    age: float = 0,
    **extra: Any,
) -> dict[str, Any]:
    issued = (time.time() if now is None else now) - age
    return {"iss": iss, "aud": aud, "sub": sub, "iat": int(issued), "exp": int(issued + lifetime), **extra}


def github_claims(key_id: str, **overrides: Any) -> dict[str, Any]:
    """A GitHub Actions OIDC token's claims (the shape GitHub documents), bound to ``key_id``."""
    base = claims(
        GITHUB_ISS,
        f"signalgate:{key_id}",
        sub="repo:acme/deployer:ref:refs/heads/release-2026.05",
        lifetime=300,
        repository="acme/deployer",
        repository_id="690541837",
        repository_owner="acme",
        ref="refs/heads/release-2026.05",
        ref_type="branch",
        event_name="push",
        runner_environment="self-hosted",
        workflow="deploy",
        job_workflow_ref="acme/deployer/.github/workflows/deploy.yml@refs/heads/release-2026.05",
    )
    base.update(overrides)
    return base


# --- RFC 9421 signed requests ----------------------------------------------------------------------

_SIG_ALGORITHMS = {"OKP": ED25519, "EC": ECDSA_P256_SHA256, "RSA": RSA_PSS_SHA512}


class _Resolver(HTTPSignatureKeyResolver):
    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    def resolve_private_key(self, key_id: str) -> Any:
        return self.signer.private


@dataclass
class _Message:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


def content_digest(body: bytes, algorithm: str = "sha-256") -> str:
    hasher = hashlib.sha256 if algorithm == "sha-256" else hashlib.sha512
    return f"{algorithm}=:{base64.b64encode(hasher(body).digest()).decode()}:"


def sign_request(
    signer: Signer,
    method: str,
    url: str,
    headers: Mapping[str, str],
    *,
    body: bytes | None = None,
    components: Sequence[str] = ("@method", "@target-uri"),
    created: datetime | None = None,
    expires: datetime | None = None,
    nonce: str | None = "",
    label: str = "sig1",
) -> dict[str, str]:
    """``headers`` plus Content-Digest (for a body), Signature-Input and Signature; every header of
    ``headers`` is covered besides ``components`` (lower-cased), as a careful client would."""
    signed = dict(headers)
    covered = list(components)
    if body is not None:
        signed["Content-Digest"] = content_digest(body)
    for name in signed:
        if name.lower() not in covered and name.lower() not in ("host",):
            covered.append(name.lower())
    message = _Message(method, url, signed)
    kty = signer.jwk["kty"]
    HTTPMessageSigner(signature_algorithm=_SIG_ALGORITHMS[kty], key_resolver=_Resolver(signer)).sign(
        message,
        key_id=signer.kid,
        covered_component_ids=covered,
        created=created or datetime.now(UTC),
        expires=expires,
        nonce=secrets.token_urlsafe(16) if nonce == "" else nonce,
        label=label,
        include_alg=True,
        use_existing_digest="Content-Digest" in signed,
    )
    return message.headers


# --- a JWKS server on loopback ---------------------------------------------------------------------


class JwksServer:
    """Serves a (changeable) JWK set; counts the fetches; can be made to fail."""

    def __init__(self, keys: dict[str, Any], max_age: int | None = 300) -> None:
        self.keys = keys
        self.max_age = max_age
        self.fetches = 0
        self.failing = False
        self.fetched = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        self.fetched.set()
        if self.failing:
            return web.Response(status=503, text="down")
        headers = {"Cache-Control": f"public, max-age={self.max_age}"} if self.max_age is not None else {}
        return web.Response(text=json.dumps(self.keys), content_type="application/json", headers=headers)

    async def next_fetch(self, within: float = PROMPT) -> None:
        self.fetched.clear()
        await asyncio.wait_for(self.fetched.wait(), within)


@asynccontextmanager
async def jwks_server(keys: dict[str, Any], max_age: int | None = 300) -> AsyncIterator[JwksServer]:
    server = JwksServer(keys, max_age)
    app = web.Application()
    app.router.add_get("/.well-known/jwks", server.handle)
    async with run_app(app) as url:
        server.url = f"{url}/.well-known/jwks"
        yield server
