"""The registry as the signer's trust source: keys, region anchors and CRLs of one version."""

from __future__ import annotations

from functools import cached_property

from cryptography import x509

from registry._model import Registry
from signer import TrustedKey

__all__ = ["RegistryTrust"]


class RegistryTrust:
    """`signer.TrustSource` over one registry; certificates are parsed once, on first use."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @property
    def version(self) -> int:
        return self.registry.version

    @cached_property
    def _keys(self) -> dict[str, TrustedKey]:
        names = {a.id: a.name for a in self.registry.agencies} | {
            r.code: r.name for r in self.registry.regions
        }
        return {
            k.kid: TrustedKey(
                kid=k.kid,
                certificate=x509.load_der_x509_certificate(k.certificate),
                usage=k.usage.value,
                owner=k.owner,
                owner_name=names.get(k.owner, k.owner),
                region=k.region,
                state=k.state.value,
                revoked_at=k.revoked_at,
                revocation_reason=k.revocation_reason,
            )
            for k in self.registry.keys
        }

    @cached_property
    def _anchors(
        self,
    ) -> dict[str, tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]]:
        out = {}
        for region in self.registry.regions:
            certificates = [x509.load_der_x509_certificate(der) for der in region.ca_certificates]
            out[region.code] = (tuple(certificates[:1]), tuple(certificates[1:]))
        return out

    @cached_property
    def _crls(self) -> dict[str, tuple[x509.CertificateRevocationList, ...]]:
        return {
            r.code: tuple(x509.load_der_x509_crl(der) for der in r.crls)
            for r in self.registry.regions
        }

    def key(self, kid: str) -> TrustedKey | None:
        return self._keys.get(kid)

    def anchors(
        self, region: str
    ) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
        return self._anchors.get(region, ((), ()))

    def crls(self, region: str) -> tuple[x509.CertificateRevocationList, ...]:
        return self._crls.get(region, ())

    def regions(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.registry.regions)
