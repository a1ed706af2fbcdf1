"""What a verifier needs to know from the outside world, without depending on who provides it.

`signer` depends on neither `registry` nor `gateway`; the registry implements `TrustSource`
(see `registry.trust_source`) from a verified snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography import x509

__all__ = ["TrustSource", "TrustedKey"]


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A key as the trust source publishes it: the certificate that proves signatures."""

    kid: str  # x5t#S256 of `certificate`
    certificate: x509.Certificate
    usage: str  # "seal" | "signature" | ...
    owner: str  # agency id or region code
    owner_name: str
    region: str  # the region whose CA must have issued the certificate
    state: str  # "pending" | "active" | "retiring" | "revoked"
    revoked_at: datetime | None = None
    revocation_reason: str = ""


class TrustSource(Protocol):
    """A consistent view of trusted keys, anchors and revocation lists (one registry version)."""

    @property
    def version(self) -> int: ...

    def key(self, kid: str) -> TrustedKey | None:
        """The published key with this x5t#S256, if any."""
        ...

    def anchors(
        self, region: str
    ) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
        """(root certificates, intermediate certificates) of a region's CA."""
        ...

    def crls(self, region: str) -> tuple[x509.CertificateRevocationList, ...]:
        """The region CA's current revocation lists."""
        ...

    def regions(self) -> tuple[str, ...]:
        """The codes of the regions whose anchors this source holds, in registry order: where a
        certificate that no published key names (a GB/T 38540 seal's, say) is looked for."""
        ...
