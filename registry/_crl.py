"""A region CA's certificate revocation list: reissued by `tongban registry publish` from the
key inventory's revocations, and read back into the registry snapshot."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from registry._pki import (
    CLOCK_SKEW,
    Manifest,
    ca_dir,
    load_region_issuer,
    read_certificate,
    write_public,
)
from registry._profiles import authority_key_identifier
from registry.errors import PkiError

__all__ = ["REVOCATION_REASONS", "RevokedCertificate", "issue_crl", "region_crls"]

REVOCATION_REASONS: Final = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}  # RFC 5280 reason codes a key revocation may give (by their ASN.1 names)


@dataclass(frozen=True)
class RevokedCertificate:
    certificate: Path  # PEM chain, leaf first
    revoked_at: datetime
    reason: str  # a key of REVOCATION_REASONS


def issue_crl(
    pki_root: Path,
    region: str,
    revoked: Sequence[RevokedCertificate],
    *,
    now: datetime,
    next_update: datetime,
    passphrase: bytes | None = None,
) -> x509.CertificateRevocationList:
    """Reissue the region intermediate's CRL listing exactly `revoked`; the CRL number grows."""
    manifest = Manifest.read(pki_root)
    issuer = load_region_issuer(pki_root, manifest.region(region), passphrase)
    path = ca_dir(pki_root, region) / "intermediate.crl.pem"
    number = 1
    with contextlib.suppress(OSError, ValueError, x509.ExtensionNotFound):
        previous = x509.load_pem_x509_crl(path.read_bytes())
        number = previous.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(authority_key_identifier(issuer.certificate), critical=False)
    )
    for item in revoked:
        if item.reason not in REVOCATION_REASONS:
            raise PkiError(f"{item.reason!r} is not an RFC 5280 revocation reason")
        certificate = read_certificate(item.certificate)
        if certificate.issuer != issuer.certificate.subject:
            continue  # not issued by this CA (e.g. imported): the registry key state still counts
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(certificate.serial_number)
            .revocation_date(item.revoked_at)
            .add_extension(x509.CRLReason(REVOCATION_REASONS[item.reason]), critical=False)
            .build()
        )
    crl = builder.sign(issuer.key, hashes.SHA256())
    write_public(path, crl.public_bytes(serialization.Encoding.PEM))
    return crl


def region_crls(pki_root: Path, region: str) -> tuple[x509.CertificateRevocationList, ...]:
    """The region CA's current CRLs (the intermediate's)."""
    path = ca_dir(pki_root, region) / "intermediate.crl.pem"
    try:
        return (x509.load_pem_x509_crl(path.read_bytes()),)
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as exc:
        raise PkiError(f"{path}: not a readable CRL") from exc
