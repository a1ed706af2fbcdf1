"""A region CA made elsewhere (OpenSSL, a commercial CA, an HSM), imported into the PKI folder.

`tongban registry import-ca` records the region's root (and intermediates) after checking that
each is a CA and that they chain; `import-crl` (`registry._import_crl`) records a CRL its issuing
CA signed; both are checked on import so that `publish` can carry them as they are. Such a region's keys are issued by
its own CA and added with `import-cert` (`registry._import_cert`): the PKI folder never holds an
imported CA's private key, and publishing needs none. Files, beside a dev CA's::

    regions/<code>/ca/imported-root.pem            the region's root CA (self-signed)
    regions/<code>/ca/imported-intermediates.pem   its intermediates, root side first (optional)
    regions/<code>/ca/imported.crl.pem             the issuing CA's CRL, as signed by it

The issuing CA is the last certificate of the chain (the root when there is no intermediate).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from registry._checks import check_ca_certificate
from registry._pki import (
    MANIFEST_NAME,
    Manifest,
    RegionSpec,
    ca_dir,
    utc_now,
    write_public,
)
from registry._pki_files import (
    IMPORTED_INTERMEDIATES,
    IMPORTED_ROOT,
    imported_chain,
    read_pem_certificates,
)
from registry.errors import PkiError
from signer._sm2_x509 import is_sm2_key, sm2_public_key_of, sm2_signature_verifies
from signer.errors import Sm2KeyInvalid

__all__ = [
    "IMPORTED_CRL",
    "IMPORTED_INTERMEDIATES",
    "IMPORTED_ROOT",
    "has_imported_ca",
    "import_ca",
    "imported_ca_certificates",
    "imported_crl",
    "issued_by",
    "read_pem_certificates",
]

IMPORTED_CRL: Final = "imported.crl.pem"


def has_imported_ca(pki_root: Path, region: str) -> bool:
    return (ca_dir(pki_root, region) / IMPORTED_ROOT).is_file()


def imported_ca_certificates(pki_root: Path, region: str) -> tuple[x509.Certificate, ...]:
    """The imported root, then its intermediates (root side first)."""
    chain = imported_chain(ca_dir(pki_root, region))
    if chain is None:
        raise PkiError(f"region {region} has no imported CA")
    return chain


def imported_crl(pki_root: Path, region: str) -> x509.CertificateRevocationList | None:
    path = ca_dir(pki_root, region) / IMPORTED_CRL
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PkiError(f"{path}: not a readable CRL") from exc


def issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer` signed `certificate` (names and signature; SM2 with the default id)."""
    if certificate.issuer != issuer.subject:
        return False
    try:
        if is_sm2_key(issuer):
            return sm2_signature_verifies(certificate, sm2_public_key_of(issuer))
        certificate.verify_directly_issued_by(issuer)
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError, Sm2KeyInvalid):
        return False
    return True


def import_ca(
    pki_root: Path,
    region: str,
    root_path: Path,
    intermediate_paths: Sequence[Path] = (),
    *,
    name: str | None = None,
    now: datetime | None = None,
) -> tuple[x509.Certificate, ...]:
    """Check and record `region`'s CA made elsewhere; the chain, root first. Refused: a region
    not in pki.json (unless `name` is given: it is added), one that already has a CA (dev or
    imported: a CA is not replaced here), a certificate that is not a CA or not valid now, a
    root that is not self-signed, an intermediate not issued by the certificate before it."""
    at = utc_now(now)
    manifest = Manifest.read(pki_root)
    if name is not None and all(r.code != region for r in manifest.regions):
        manifest = replace(manifest, regions=(*manifest.regions, RegionSpec(region, name)))
    elif name is None and all(r.code != region for r in manifest.regions):
        raise PkiError(
            f"region {region!r} is not part of this PKI: give its name to add it with its CA"
        )
    spec = manifest.region(region)
    folder = ca_dir(pki_root, region)
    for existing in ("root.pem", IMPORTED_ROOT):
        if (folder / existing).exists():
            raise PkiError(
                f"region {region} already has a CA ({folder / existing}); importing does not "
                "replace a region's CA"
            )
    (root,) = _single(root_path)
    check_ca_certificate(root, f"{root_path}", at)
    if not issued_by(root, root):
        raise PkiError(
            f"{root_path}: not a self-signed root (its issuer or signature is not its own)"
        )
    chain = [root]
    for path in intermediate_paths:
        for certificate in read_pem_certificates(path):
            check_ca_certificate(certificate, f"{path}", at)
            if not issued_by(certificate, chain[-1]):
                raise PkiError(
                    f"{path}: {certificate.subject.rfc4514_string()} is not issued by "
                    f"{chain[-1].subject.rfc4514_string()} (give intermediates root side first)"
                )
            chain.append(certificate)
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    if len(chain) > 1:
        write_public(
            folder / IMPORTED_INTERMEDIATES, b"".join(c.public_bytes(pem) for c in chain[1:])
        )
    write_public(folder / IMPORTED_ROOT, root.public_bytes(pem))  # last: it marks the import done
    regions = tuple(replace(r, ca="imported") if r == spec else r for r in manifest.regions)
    replace(manifest, regions=regions).write(pki_root / MANIFEST_NAME, _created(pki_root, at))
    return tuple(chain)


def _created(pki_root: Path, default: datetime) -> datetime:
    """When pki.json says the PKI was made (kept when the manifest is rewritten)."""
    try:
        return datetime.fromisoformat(
            json.loads((pki_root / MANIFEST_NAME).read_bytes())["created"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return default


def _single(path: Path) -> tuple[x509.Certificate]:
    certificates = read_pem_certificates(path)
    if len(certificates) != 1:
        raise PkiError(f"{path}: holds {len(certificates)} certificates; give the root alone")
    return (certificates[0],)
