"""`tongban registry import-crl`: a CRL signed by a region's imported issuing CA, checked and
recorded beside the CA (`registry._import`) so that `publish` carries it as signed; the inventory's
keys it lists are marked revoked, so that the registry and the region's own gateway agree with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from registry._crl import REVOCATION_REASONS
from registry._import import IMPORTED_CRL, has_imported_ca, imported_ca_certificates, imported_crl
from registry._inventory import Inventory, KeyRecord
from registry._model import KeyState
from registry._pki import CLOCK_SKEW, Manifest, ca_dir, utc_now, write_public
from registry.errors import PkiError
from signer._verify_helpers import crl_for

__all__ = ["ImportedCrl", "import_crl"]


@dataclass(frozen=True)
class ImportedCrl:
    crl: x509.CertificateRevocationList
    revoked: tuple[KeyRecord, ...]  # inventory keys this CRL revoked (not revoked before)


def import_crl(
    pki_root: Path, region: str, crl_path: Path, *, now: datetime | None = None
) -> ImportedCrl:
    """Check and record a CRL of `region`'s imported issuing CA: its issuer name and signature,
    a nextUpdate still ahead, and that it is newer than the CRL held (greater CRL number, or a
    later thisUpdate when either has none). The inventory's keys it lists are marked revoked
    (at the CRL's revocation date, for its reason), so that the registry says so too and the
    region's gateway stops sealing with them."""
    at = utc_now(now)
    Manifest.read(pki_root).region(region)
    if not has_imported_ca(pki_root, region):
        raise PkiError(
            f"region {region} has no imported CA: its dev CA's CRL is reissued by publish"
        )
    try:
        crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    except OSError as exc:
        raise PkiError(f"{crl_path}: cannot be read ({exc.strerror})") from exc
    except ValueError as exc:
        raise PkiError(f"{crl_path}: not a PEM CRL ({exc})") from exc
    issuer = imported_ca_certificates(pki_root, region)[-1]
    if crl.issuer != issuer.subject:
        raise PkiError(
            f"{crl_path}: issued by {crl.issuer.rfc4514_string()}, not by region {region}'s "
            f"issuing CA {issuer.subject.rfc4514_string()}"
        )
    if crl_for((crl,), issuer) is None:
        raise PkiError(f"{crl_path}: its signature is not region {region}'s issuing CA's")
    if crl.next_update_utc is None or crl.next_update_utc <= at:
        raise PkiError(f"{crl_path}: out of date (nextUpdate {crl.next_update_utc or 'absent'})")
    if crl.last_update_utc > at + CLOCK_SKEW:
        raise PkiError(f"{crl_path}: its thisUpdate {crl.last_update_utc} is in the future")
    held = imported_crl(pki_root, region)
    if held is not None and not _newer(crl, held):
        raise PkiError(f"{crl_path}: not newer than the CRL held (CRL number or thisUpdate)")
    write_public(
        ca_dir(pki_root, region) / IMPORTED_CRL, crl.public_bytes(serialization.Encoding.PEM)
    )
    return ImportedCrl(crl, _record_revocations(pki_root, region, crl))


_REASON_NAMES: Final = {flag: name for name, flag in REVOCATION_REASONS.items()}


def _record_revocations(
    pki_root: Path, region: str, crl: x509.CertificateRevocationList
) -> tuple[KeyRecord, ...]:
    """Mark revoked the region's inventory keys whose certificate `crl` lists. A revocation is
    final here: a later CRL without the entry (a hold released) does not undo it."""
    inventory = Inventory.load(pki_root)
    revoked = []
    for record in inventory.records():
        if record.region != region or record.state is KeyState.REVOKED:
            continue
        path = pki_root / record.certificate
        try:
            leaf = x509.load_pem_x509_certificates(path.read_bytes())[0]
        except (OSError, ValueError, IndexError) as exc:
            raise PkiError(f"{path}: certificate of key {record.kid} cannot be read") from exc
        entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
        if entry is None or leaf.issuer != crl.issuer:
            continue
        try:
            flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except (x509.ExtensionNotFound, ValueError):
            flag = x509.ReasonFlags.unspecified
        reason = _REASON_NAMES.get(flag, "unspecified")  # e.g. certificateHold, caCompromise
        revoked.append(inventory.revoke(record.kid, at=entry.revocation_date_utc, reason=reason))
    if revoked:
        inventory.save()
    return tuple(revoked)


def _newer(crl: x509.CertificateRevocationList, held: x509.CertificateRevocationList) -> bool:
    numbers = [_crl_number(c) for c in (crl, held)]
    if numbers[0] is not None and numbers[1] is not None:
        return numbers[0] > numbers[1]
    return crl.last_update_utc > held.last_update_utc


def _crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (x509.ExtensionNotFound, ValueError):
        return None
