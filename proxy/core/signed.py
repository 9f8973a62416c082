"""The ``signature`` gathered fact: what a request's RFC 9421 signature proved, or why it proved nothing.

The shell ``proxy.signatures`` verifies the request's ``Signature-Input`` / ``Signature`` against the
signing keys of the key's policy (``proxy.core.parts.signature``) and gathers one of these values under
``facts.gathered["signature"]``:

- ``VerifiedSignature``: the signature verified cryptographically over the components it names. Its
  freshness (``created``, ``expires``), its nonce and whether it covers what it must are checked by the
  ``signature`` part, against the policy, on every request.
- ``SignatureFailure``: no signature, one that does not verify, or a ``Content-Digest`` that is wrong
  for a request without a body; with the reason code and the failing check.

Other parts may read it: a context header marked ``"signed": true`` must be in ``covered`` (issue 13).
A ``VerifiedSignature`` is only ever made by the shell after the signature verified, and only for a
policy that has signing keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.core.model import Reason

__all__ = ["TARGET_COMPONENTS", "SignatureFailure", "VerifiedSignature", "covers_target"]

# What "the request's target is covered" means: @target-uri, or its three parts together.
TARGET_COMPONENTS = frozenset({"@authority", "@path", "@query"})


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    keyid: str  # the policy key (``keys[].kid``) it verified with
    alg: str  # RFC 9421 algorithm: ed25519, ecdsa-p256-sha256, rsa-pss-sha512
    # Lower-cased component identifiers the signature covers whole: "@method", "@target-uri",
    # "x-api-key", "content-digest"... (a field covered only by a dictionary member, ;key=, is not)
    covered: frozenset[str]
    created: int | None  # signature parameters, as signed (Unix seconds)
    expires: int | None
    nonce: str | None
    # Fields of this request that a signature must cover when present: the API key's header, the
    # attestation headers it carries, and content-digest when it has a body.
    must_cover: frozenset[str] = frozenset()
    has_body: bool = False
    # The Content-Digest the request claims, (algorithm, digest) pairs the proxy checks the body
    # against as it streams (proxy.core.digest); empty without a body.
    digests: tuple[tuple[str, bytes], ...] = ()
    skew_s: int = 30  # tolerated clock skew (setting clock_skew)

    def __repr__(self) -> str:  # never the digests in a log line
        return f"VerifiedSignature(keyid={self.keyid!r}, alg={self.alg!r}, covered={sorted(self.covered)})"


@dataclass(frozen=True, slots=True)
class SignatureFailure:
    reason: Reason  # SIGNATURE_MISSING, SIGNATURE_INVALID or CONTENT_DIGEST_MISMATCH
    detail: str  # the failing check, for the decision log


def covers_target(covered: frozenset[str]) -> bool:
    """Whether ``covered`` binds the request's method-independent target."""
    return "@target-uri" in covered or covered >= TARGET_COMPONENTS
