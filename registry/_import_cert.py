"""`tongban registry import-cert`: a leaf certificate issued by the owner's region CA elsewhere
(for a key the region holds in a file or a cryptographic module), added to the key inventory as
`tongban keys generate` adds the keys it issues: kid = x5t#S256 of the certificate.

Checked on import: the certificate chains to the owner's region CA (imported or dev) now, and
carries the profile of its usage (`registry._profiles`): seal and signature keys keyUsage
digitalSignature or nonRepudiation and the document-signing EKU (RFC 9336) without TLS EKUs, as
the seal verifier's `EE_POLICY` asks; TLS keys serverAuth and clientAuth (a gateway's) or
clientAuth (an agency's); token and audit keys Tongban's own EKUs. An SM2 leaf (a GB/T 38540
seal or signature key) is checked by `signer._sm2_path.check_sm2_path` instead of pyca, which
cannot check SM2 signatures; SM2 is for seals and signatures only (TLS, tokens and audit
checkpoints use their standards' algorithms). The region's SESeal for an SM2 seal key stays with
its gateway (`[[seal.keys]] eseal`): the registry does not carry it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

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
from signer import _oids, is_sm2_key, load_sm2_private_key
from signer._keyfile import algorithm_for_key, load_private_key
from signer._keys import same_public_key
from signer._report import SignatureKind
from signer._sm2_path import Sm2PathFailure, check_sm2_path
from signer._sm2_x509 import sm2_public_key_of
from signer._verify_helpers import EE_POLICY, document_signing, kind_of
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
    if is_sm2_key(leaf):
        chain = _verified_sm2_chain(pki_root, region, leaf, extra=tuple(extra), usage=usage, at=at)
        algorithm = "SM2"
    else:
        chain = _verified_chain(
            pki_root,
            region,
            leaf,
            extra=tuple(extra),
            usage=usage,
            gateway=agency_id is None,
            at=at,
        )
        algorithm = _algorithm(leaf, certificate_path)
    _check_kind(leaf, usage, certificate_path)
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


def _verified_chain(
    pki_root: Path,
    region: str,
    leaf: x509.Certificate,
    *,
    extra: tuple[x509.Certificate, ...],
    usage: KeyUsage,
    gateway: bool,
    at: datetime,
) -> tuple[x509.Certificate, ...]:
    """The leaf's chain (leaf first, root last) to the region's root at `at`, under the usage's
    profile; refused with pyca's reason otherwise."""
    cas = region_ca_certificates(pki_root, region)
    verifier = (
        PolicyBuilder()
        .store(Store([cas[0]]))
        .time(at)
        .max_chain_depth(_MAX_CHAIN_DEPTH)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ee_policy(usage, gateway)
        )
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, [*cas[1:], *extra])
    except VerificationError as exc:
        raise PkiError(
            f"the certificate is not a valid {usage.value} certificate of region {region}'s CA "
            f"now: {exc}"
        ) from None
    return tuple(verified.chain)


def _verified_sm2_chain(
    pki_root: Path,
    region: str,
    leaf: x509.Certificate,
    *,
    extra: tuple[x509.Certificate, ...],
    usage: KeyUsage,
    at: datetime,
) -> tuple[x509.Certificate, ...]:
    """An SM2 leaf's chain (leaf first, root last) to the region's root at `at`, with the
    seal verifier's checks: keyUsage for signing, documentSigning and no TLS EKU."""
    if usage not in (KeyUsage.SEAL, KeyUsage.SIGNATURE):
        raise PkiError(f"an SM2 key seals and signs only: it cannot be a {usage.value} key")
    cas = region_ca_certificates(pki_root, region)
    refused = (
        f"the certificate is not a valid {usage.value} certificate of region {region}'s CA now"
    )
    try:
        path = check_sm2_path(leaf, roots=[cas[0]], intermediates=[*cas[1:], *extra], at=at)
    except Sm2PathFailure as exc:
        raise PkiError(f"{refused}: {exc.message}") from None
    try:
        extended = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        extended = None
    except ValueError as exc:
        raise PkiError(f"{refused}: its extendedKeyUsage cannot be read ({exc})") from None
    try:
        document_signing(None, leaf, extended)
    except ValueError as exc:
        raise PkiError(f"{refused}: {exc}") from None
    return path.certificates


def _ee_policy(usage: KeyUsage, gateway: bool) -> ExtensionPolicy:
    if usage in (KeyUsage.SEAL, KeyUsage.SIGNATURE):
        return EE_POLICY
    if usage is KeyUsage.TLS:
        wanted = (
            [_oids.EKU_SERVER_AUTH, _oids.EKU_CLIENT_AUTH] if gateway else [_oids.EKU_CLIENT_AUTH]
        )
    else:
        wanted = [_oids.EKU_TOKEN_SIGNING if usage is KeyUsage.TOKEN else _oids.EKU_AUDIT_SIGNING]

    def key_usage(policy: object, cert: x509.Certificate, ext: x509.KeyUsage | None) -> None:
        if ext is None or not ext.digital_signature:
            raise ValueError(f"a {usage.value} key's keyUsage must allow digitalSignature")

    def extended(policy: object, cert: x509.Certificate, ext: x509.ExtendedKeyUsage | None) -> None:
        missing = [oid.dotted_string for oid in wanted if ext is None or oid not in ext]
        if missing:
            raise ValueError(f"a {usage.value} key's extendedKeyUsage lacks {', '.join(missing)}")

    return (
        ExtensionPolicy.permit_all()
        .require_present(x509.KeyUsage, Criticality.AGNOSTIC, key_usage)
        .require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, extended)
    )


def _check_kind(leaf: x509.Certificate, usage: KeyUsage, where: Path) -> None:
    """A seal certificate names a legal person's policy, a signature one a natural person's
    (QCP-l / QCP-n or Tongban's own), as the seal verifier tells them apart."""
    wanted = {KeyUsage.SEAL: SignatureKind.SEAL, KeyUsage.SIGNATURE: SignatureKind.SIGNATURE}
    if usage in wanted and kind_of(leaf) is not wanted[usage]:
        policies = "QCP-l 0.4.0.194112.1.1" if usage is KeyUsage.SEAL else "QCP-n 0.4.0.194112.1.0"
        raise PkiError(
            f"{where}: a {usage.value} certificate's certificatePolicies must name {policies}"
        )


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
