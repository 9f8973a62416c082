"""``device``: a signed posture attestation of the client's device, from an issuer the operator trusts.

The token (a JWT in ``X-Device-Attestation``, the header is a setting) is verified by ``proxy.attest``
against the registered issuers of kind ``device``; the policy names which of them count, how fresh the
attestation must be, whether it must be bound to the key, and what its claims must say. The rules are
those of ``proxy.core.attestation``; reason codes ``device_attestation_*``.
"""

from __future__ import annotations

from proxy.core.attestation import token_part

__all__ = ["PART"]

PART = token_part("device", "X-Device-Attestation")
