"""A region CA's certificate revocation list: reissued by `tongban registry publish` from the
key inventory's revocations, and read back into the registry snapshot.

A region whose issuing CA is SM2 gets an SM2-signed CRL (`signer.issue_sm2_crl`; its key file is
an unencrypted PKCS#8 SM2 key, so the PKI's passphrase does not apply to it)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from registry._import import has_imported_ca, imported_crl
from registry._pki import (
    CLOCK_SKEW,
    Manifest,
    RegionSpec,
    ca_dir,
    load_region_issuer,
    read_certificate,
    region_ca_certificates,
    write_public,
)
from registry._profiles import authority_key_identifier
from registry.errors import PkiError
from signer import (
    SignerError,
    is_sm2_key,
    issue_sm2_crl,
    load_sm2_private_key,
    sm2_public_key_of,
)

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
    spec = manifest.region(region)
    _, intermediate = region_ca_certificates(pki_root, region)
    sign = (
        _sm2_signer(pki_root, spec, intermediate)
        if is_sm2_key(intermediate)
        else _signer(pki_root, spec, passphrase)
    )
    path = ca_dir(pki_root, region) / "intermediate.crl.pem"
    number = 1
    with contextlib.suppress(OSError, ValueError, x509.ExtensionNotFound):
        previous = x509.load_pem_x509_crl(path.read_bytes())
        number = previous.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(intermediate.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(authority_key_identifier(intermediate), critical=False)
    )
    for item in revoked:
        if item.reason not in REVOCATION_REASONS:
            raise PkiError(f"{item.reason!r} is not an RFC 5280 revocation reason")
        certificate = read_certificate(item.certificate)
        if certificate.issuer != intermediate.subject:
            continue  # not issued by this CA (e.g. imported): the registry key state still counts
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(certificate.serial_number)
            .revocation_date(item.revoked_at)
            .add_extension(x509.CRLReason(REVOCATION_REASONS[item.reason]), critical=False)
            .build()
        )
    crl = sign(builder)
    write_public(path, crl.public_bytes(serialization.Encoding.PEM))
    return crl


_Sign = Callable[[x509.CertificateRevocationListBuilder], x509.CertificateRevocationList]


def _signer(pki_root: Path, region: RegionSpec, passphrase: bytes | None) -> _Sign:
    issuer = load_region_issuer(pki_root, region, passphrase)
    return lambda builder: builder.sign(issuer.key, hashes.SHA256())


def _sm2_signer(pki_root: Path, region: RegionSpec, intermediate: x509.Certificate) -> _Sign:
    key_path = ca_dir(pki_root, region.code) / "intermediate.key"
    try:
        key = load_sm2_private_key(key_path)
        matches = key.public_key() == sm2_public_key_of(intermediate)
    except SignerError as exc:
        raise PkiError(f"cannot load the region {region.code} SM2 issuing CA key: {exc}") from exc
    if not matches:
        raise PkiError(f"{key_path} is not the key of the region {region.code} issuing CA")
    return lambda builder: issue_sm2_crl(builder, key)


def region_crls(pki_root: Path, region: str) -> tuple[x509.CertificateRevocationList, ...]:
    """The region CA's current CRLs (the intermediate's; an imported CA's, as imported)."""
    if has_imported_ca(pki_root, region):
        crl = imported_crl(pki_root, region)
        return () if crl is None else (crl,)
    path = ca_dir(pki_root, region) / "intermediate.crl.pem"
    try:
        return (x509.load_pem_x509_crl(path.read_bytes()),)
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as exc:
        raise PkiError(f"{path}: not a readable CRL") from exc
