"""`tongban registry import-cert`: a leaf certificate issued by the owner's region CA elsewhere
(for a key the region holds in a file or a cryptographic module), added to the key inventory as
`tongban keys generate` adds the keys it issues: kid = x5t#S256 of the certificate.

Checked on import, by `registry._checks` (the checks every certificate the PKI folder issues
passes too): the certificate chains to the owner's region CA (imported or dev) now, and carries
the profile of its usage; an SM2 leaf is a seal or signature key only (TLS, tokens and audit
checkpoints use their standards' algorithms). The region's SESeal for an SM2 seal key stays with
its gateway (`[[seal.keys]] eseal`): the registry does not carry it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from registry._checks import check_leaf_certificate
from registry._import import read_pem_certificates
from registry._inventory import Inventory, KeyRecord
from registry._model import KeyState, KeyUsage
from registry._pki import (
    Manifest,
    agency_keys_dir,
    certificate_kid,
    region_ca_certificates,
    region_keys_dir,
    utc_now,
    write_public,
)
from registry._pki_files import pem
from registry.errors import KeyLifecycleError, PkiError
from signer import is_sm2_key, load_sm2_private_key
from signer._keyfile import algorithm_for_key, load_private_key
from signer._keys import same_public_key
from signer._sm2_x509 import sm2_public_key_of
from signer.errors import SignerError

__all__ = ["ImportedKey", "import_cert"]

_MAX_CHAIN_DEPTH = 4


@dataclass(frozen=True)
class ImportedKey:
    """Where the key is: a key file (its path), a PKCS#11 URI, or with its owner only
    (`held_by_owner`: the publisher records no location); exactly one.

    A key held by its owner is not proved here: the owner's CA certified it (for a CSR it
    checked), and the chain to that CA is what every verifier trusts; a certificate whose key
    nobody holds only lists a key that never signs."""

    key_file: Path | None = None
    key_uri: str = ""
    passphrase: bytes | None = None
    held_by_owner: bool = False

    def __post_init__(self) -> None:
        if [self.key_file is not None, bool(self.key_uri), self.held_by_owner].count(True) != 1:
            raise PkiError(
                "give the key as a key file, a pkcs11: URI, or say that its owner holds it "
                "(exactly one)"
            )
        if self.key_uri and not self.key_uri.startswith("pkcs11:"):
            raise PkiError("a key in a cryptographic module is named by a pkcs11: URI")

    @property
    def recorded(self) -> str:
        """What the inventory records as the key's location ("" when the owner holds it)."""
        if self.key_file is not None:
            return str(self.key_file.resolve())
        return self.key_uri


def import_cert(
    pki_root: Path,
    certificate_path: Path,
    *,
    owner: str,
    usage: KeyUsage,
    key: ImportedKey,
    now: datetime | None = None,
) -> KeyRecord:
    """Check and record the certificate (the inventory saved): active if `owner` has no active
    `usage` key, else pending (a rotation: the next publishes carry it, then make it active)."""
    at = utc_now(now)
    manifest = Manifest.read(pki_root)
    region, agency_id = _owner(manifest, owner)
    leaf, *extra = read_pem_certificates(certificate_path)
    chain = check_leaf_certificate(
        leaf,
        cas=region_ca_certificates(pki_root, region),
        extra=tuple(extra),
        region=region,
        usage=usage,
        gateway=agency_id is None,
        at=at,
        where=str(certificate_path),
    )
    algorithm = "SM2" if is_sm2_key(leaf) else _algorithm(leaf, certificate_path)
    if key.key_file is not None:
        _check_key_file(key.key_file, key.passphrase, leaf)
    inventory = Inventory.load(pki_root)
    kid = certificate_kid(leaf)
    if any(r.kid == kid for r in inventory.records()):
        raise KeyLifecycleError(f"key {kid} is already in the inventory")
    state = _state(inventory, owner, usage)
    folder = (
        region_keys_dir(pki_root, region)
        if agency_id is None
        else agency_keys_dir(pki_root, agency_id)
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{usage.value}-{kid[:8]}.pem"
    if path.exists():
        raise PkiError(f"{path} already exists: this certificate was imported before")
    write_public(path, b"".join(pem(c) for c in chain[:-1]))  # leaf and intermediates, no root
    record = KeyRecord(
        kid=kid,
        usage=usage,
        owner=owner,
        region=region,
        algorithm=algorithm,
        state=state,
        certificate=str(path.relative_to(pki_root)),
        private_key=key.recorded,
        created_at=at,
        activated_at=at if state is KeyState.ACTIVE else None,
    )
    inventory.add(record)
    inventory.save()
    return record


def _owner(manifest: Manifest, owner: str) -> tuple[str, str | None]:
    """The owner's region code and agency id (None for a region's own key)."""
    if any(r.code == owner for r in manifest.regions):
        return owner, None
    agency = manifest.agency(owner)
    if agency is None:
        raise PkiError(f"owner {owner!r} is neither a region nor an agency of this PKI")
    return agency.region, agency.id


def _state(inventory: Inventory, owner: str, usage: KeyUsage) -> KeyState:
    pending = inventory.find(owner, usage, KeyState.PENDING)
    if pending:
        raise KeyLifecycleError(
            f"a rotation of {owner}'s {usage.value} key is already under way "
            f"(pending {pending[0].kid})"
        )
    return KeyState.PENDING if inventory.find(owner, usage, KeyState.ACTIVE) else KeyState.ACTIVE


def _algorithm(leaf: x509.Certificate, where: Path) -> str:
    try:
        return algorithm_for_key(leaf.public_key())  # type: ignore[arg-type]
    except (SignerError, ValueError, TypeError) as exc:
        raise PkiError(f"{where}: a key Tongban does not sign with ({exc})") from exc


def _check_key_file(path: Path, passphrase: bytes | None, leaf: x509.Certificate) -> None:
    """The key file holds the certificate's key (an SM2 one: an unencrypted PKCS#8 file, as the
    gateway reads it)."""
    try:
        if is_sm2_key(leaf):
            same = load_sm2_private_key(path).public_key().point == sm2_public_key_of(leaf).point
        else:
            private = load_private_key(path, passphrase)
            same = same_public_key(private.public_key(), leaf.public_key())
    except SignerError as exc:
        raise PkiError(f"{path}: {exc}") from exc
    if not same:
        raise PkiError(f"{path} is not the key of the certificate")
