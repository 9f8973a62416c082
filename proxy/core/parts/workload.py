"""``workload``: a signed identity of the workload making the request (a CI job, a service), from an
issuer the operator trusts (GitHub Actions, GitLab, a SPIFFE JWT-SVID issuer...).

The token (a JWT in ``X-Workload-Attestation``, the header is a setting) is verified by ``proxy.attest``
against the registered issuers of kind ``workload``; the policy names which of them count, how fresh
the token must be, whether it must be bound to the key, and what its claims must say (repository,
branch, runner...). The rules are those of ``proxy.core.attestation``; reason codes
``workload_attestation_*``.
"""

from __future__ import annotations

from proxy.core.attestation import token_part

__all__ = ["PART"]

PART = token_part("workload", "X-Workload-Attestation")
