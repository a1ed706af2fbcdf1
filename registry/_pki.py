"""Development PKI: per-region CAs and the leaf keys a Tongban test deployment needs.

Built with `cryptography` only, for tests and local clusters; never for production keys.
`init_dev_pki` lays out a folder like this (``<kid8>`` is the first 8 characters of the
certificate's kid, the base64url SHA-256 of its DER)::

    <out>/
      pki.json                              regions and agencies the PKI was made for
      roots.pem                             every region's root CA (a bootstrap trust bundle)
      authority/authority.key               registry authority key (Ed25519), mode 0600
      authority/authority.pub.pem           its SubjectPublicKeyInfo
      regions/<code>/ca/root.pem, root.key  region root CA (P-256, 10 years, pathlen 1)
      regions/<code>/ca/intermediate.pem, intermediate.key
                                            issuing CA (P-256, 5 years, pathlen 0)
      regions/<code>/ca/intermediate.crl.pem   empty CRL, next update in 7 days
      regions/<code>/keys/<usage>-<kid8>.pem   leaf then intermediate (no root)
      regions/<code>/keys/<usage>-<kid8>.key   leaf private key, PKCS#8, mode 0600
      agencies/<id>/keys/<usage>-<kid8>.pem|.key

Certificate profiles, so that a verifier can tell the usages apart by extensions alone:

    usage      KeyUsage (critical)                  ExtendedKeyUsage      policies
    seal       digitalSignature, contentCommitment  documentSigning       QCP-l, POLICY_SEAL
    signature  digitalSignature, contentCommitment  documentSigning       QCP-n, POLICY_SIGNATURE
    tls        digitalSignature                     serverAuth+clientAuth POLICY_TLS_GATEWAY
               (agency: clientAuth only)                                  (POLICY_TLS_AGENCY)
    token      digitalSignature                     EKU_TOKEN_SIGNING     POLICY_TOKEN
    audit      digitalSignature                     EKU_AUDIT_SIGNING     POLICY_AUDIT

Seals and signatures also carry a non-critical qcStatements extension whose ETSI QcType says
e-seal or e-signature. Every leaf has BasicConstraints(ca=False) critical, subject and
authority key identifiers, and an informational CRL distribution point.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from registry.errors import PkiError
from signer import _oids, x5t_s256_of_certificate
from signer._keyfile import (
    ALGORITHMS,
    PrivateKey,
    algorithm_for_key,
    generate_private_key,
    load_private_key,
    write_private_key,
)
from signer.errors import SignerError

__all__ = [
    "ALGORITHMS",
    "DEV_PSEUDONYM_KEY",
    "REVOCATION_REASONS",
    "USAGES",
    "AgencySpec",
    "DevPki",
    "IssuedKey",
    "PkiError",
    "RegionSpec",
    "RevokedCertificate",
    "certificate_kid",
    "init_dev_pki",
    "issue_crl",
    "issue_key",
    "load_dev_pki",
    "region_ca_certificates",
    "region_crls",
]

USAGES: Final = ("seal", "signature", "token", "tls", "audit")

ROOT_VALIDITY: Final = timedelta(days=3653)  # 10 years
INTERMEDIATE_VALIDITY: Final = timedelta(days=1827)  # 5 years
LEAF_VALIDITY_DAYS: Final = 365
CRL_VALIDITY: Final = timedelta(days=7)
CLOCK_SKEW: Final = timedelta(minutes=5)  # not_before is backdated by this much

MANIFEST_NAME: Final = "pki.json"
MANIFEST_FORMAT: Final = "tongban-dev-pki/1"
MAX_NAME_CHARS: Final = 64  # X.520 ub-organization-name and ub-common-name

# What init_dev_pki issues for each usage; issue_key takes an explicit algorithm instead.
_DEFAULT_ALGORITHM_FOR_USAGE: Final = {
    "tls": "ES256",  # gRPC (BoringSSL) deployments are tested with P-256 only
    "seal": "ES256",
    "signature": "ES256",
    "token": "ES256",
    "audit": "EdDSA",
}
_REGION_CODE: Final = re.compile(r"[0-9]{6}")  # GB/T 2260
_AGENCY_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")
_USCC: Final = re.compile(r"[0-9A-HJ-NPQRTUWXY]{18}")  # GB 32100-2015 alphabet, no I O S V Z
ROOTS_BUNDLE: Final = "roots.pem"  # every region's root CA, PEM
DEV_PSEUDONYM_KEY: Final = "audit-pseudonym.secret"  # dev only: the audit log's subject-hashing key
DEV_CACHE_KEY: Final = "cache.secret"  # dev only: the AES-256 key of the answer cache (hex)
_PKI_ENTRIES: Final = (MANIFEST_NAME, "authority", "regions", "agencies")


@dataclass(frozen=True)
class RegionSpec:
    """A region taking part in data sharing: GB/T 2260 code and name, e.g. 330000 浙江省."""

    code: str
    name: str

    def __post_init__(self) -> None:
        if not _REGION_CODE.fullmatch(self.code):
            raise PkiError(f"region code {self.code!r} is not a 6-digit GB/T 2260 code")
        _check_name(self.name, f"region {self.code} name")


@dataclass(frozen=True)
class AgencySpec:
    """An agency in a region; `uscc` is its 18-character unified social credit code."""

    id: str
    name: str
    region: str
    uscc: str

    def __post_init__(self) -> None:
        if not _AGENCY_ID.fullmatch(self.id):
            raise PkiError(
                f"agency id {self.id!r} must be 1 to 48 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        _check_name(self.name, f"agency {self.id} name")
        if not _REGION_CODE.fullmatch(self.region):
            raise PkiError(f"agency {self.id}: region {self.region!r} is not a 6-digit code")
        if not _USCC.fullmatch(self.uscc):
            raise PkiError(
                f"agency {self.id}: USCC {self.uscc!r} is not 18 characters of the "
                "GB 32100 alphabet (digits and capitals except I, O, S, V, Z)"
            )


@dataclass(frozen=True)
class IssuedKey:
    """A leaf key and its certificate, as written to the PKI folder."""

    kid: str  # base64url (no padding) SHA-256 of the certificate DER: JWS x5t#S256
    usage: str  # "seal" | "signature" | "token" | "tls" | "audit"
    owner: str  # region code or agency id
    region: str
    algorithm: str  # "ES256" | "EdDSA" | "PS256"
    certificate_path: Path  # PEM: leaf then intermediate (chain without root)
    key_path: Path
    not_before: datetime  # aware, UTC
    not_after: datetime  # aware, UTC

    def __post_init__(self) -> None:
        if self.usage not in USAGES:
            raise PkiError(f"unknown key usage {self.usage!r}")
        if self.algorithm not in ALGORITHMS:
            raise PkiError(f"unknown algorithm {self.algorithm!r}")
        if self.not_before.tzinfo is None or self.not_after.tzinfo is None:
            raise PkiError("IssuedKey validity must be timezone-aware")


@dataclass(frozen=True)
class DevPki:
    """The result of `init_dev_pki` (or `load_dev_pki`)."""

    root: Path
    authority_key_path: Path
    authority_public_key_path: Path
    keys: tuple[IssuedKey, ...]


# ---------------------------------------------------------------------------------------------
# Public functions


def init_dev_pki(
    out: Path,
    regions: Sequence[RegionSpec],
    agencies: Sequence[AgencySpec],
    *,
    passphrase: bytes | None = None,
    now: datetime | None = None,
) -> DevPki:
    """Create a complete dev PKI in `out` (see the module docstring for the layout).

    Every private key, the CA keys included, is encrypted with `passphrase` when one is given.
    Refuses with `PkiError`, before writing anything, when `out` already holds a PKI, when a
    region or agency is given twice, or when an agency's region is not among `regions`.
    """
    issued_at = _utc_now(now)
    manifest = _Manifest(tuple(regions), tuple(agencies))
    manifest.check()
    if out.exists() and not out.is_dir():
        raise PkiError(f"{out} exists and is not a directory")
    existing = [name for name in _PKI_ENTRIES if (out / name).exists()]
    if existing:
        raise PkiError(
            f"{out} already contains a PKI ({', '.join(existing)}); refusing to overwrite it"
        )
    out.mkdir(parents=True, exist_ok=True)
    try:
        # Creating the folder claims `out` even against a concurrent run.
        (out / "authority").mkdir()
    except FileExistsError as exc:
        raise PkiError(f"{out} already contains a PKI; refusing to overwrite it") from exc

    authority_key = generate_private_key("EdDSA")
    authority_key_path = out / "authority" / "authority.key"
    authority_public_key_path = out / "authority" / "authority.pub.pem"
    _write_private(authority_key_path, authority_key, passphrase)
    _write_public(
        authority_public_key_path,
        authority_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )

    keys: list[IssuedKey] = []
    for region in manifest.regions:
        issuer = _create_region_ca(out, region, passphrase, issued_at)
        for usage in ("tls", "seal", "signature", "token", "audit"):
            keys.append(
                _issue(
                    out,
                    manifest,
                    issuer,
                    owner=region.code,
                    usage=usage,
                    algorithm=_DEFAULT_ALGORITHM_FOR_USAGE[usage],
                    subject_name=None,
                    passphrase=passphrase,
                    now=issued_at,
                    validity=timedelta(days=LEAF_VALIDITY_DAYS),
                    tls_names=(),
                )
            )
        for agency in manifest.agencies:
            if agency.region != region.code:
                continue
            for usage in ("tls", "seal"):
                keys.append(
                    _issue(
                        out,
                        manifest,
                        issuer,
                        owner=agency.id,
                        usage=usage,
                        algorithm="ES256",
                        subject_name=None,
                        passphrase=passphrase,
                        now=issued_at,
                        validity=timedelta(days=LEAF_VALIDITY_DAYS),
                        tls_names=(),
                    )
                )
    # Written last: its presence tells `issue_key` and `load_dev_pki` the PKI is complete.
    # Every region's root, for a gateway that must reach a peer before it holds a registry.
    _write_public(
        out / ROOTS_BUNDLE,
        b"".join(
            _read_certificate(_ca_dir(out, r.code) / "root.pem").public_bytes(
                serialization.Encoding.PEM
            )
            for r in manifest.regions
        ),
    )
    # Development only: a deployment keeps this secret apart from its PKI.
    for name in (DEV_PSEUDONYM_KEY, DEV_CACHE_KEY):
        fd = os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
    manifest.write(out / MANIFEST_NAME, issued_at)
    return DevPki(
        root=out,
        authority_key_path=authority_key_path,
        authority_public_key_path=authority_public_key_path,
        keys=tuple(keys),
    )


def issue_key(
    pki_root: Path,
    *,
    region: str,
    owner: str,
    usage: str,
    algorithm: str = "ES256",
    subject_name: str | None = None,
    passphrase: bytes | None = None,
    now: datetime | None = None,
    validity_days: int | None = None,
    tls_names: Sequence[str] = (),
) -> IssuedKey:
    """Issue one more leaf key from `region`'s intermediate CA, e.g. to rotate a key.

    `owner` is the region code (gateway keys) or the id of an agency of that region.
    `subject_name` replaces the default common name (for "signature", the person's name).
    `tls_names` adds DNS names to a gateway TLS certificate. `passphrase` decrypts the CA
    key and encrypts the new one. TLS keys are always ES256 (P-256); asking for another
    algorithm for "tls" is refused.
    """
    issued_at = _utc_now(now)
    manifest = _Manifest.read(pki_root)
    region_spec = manifest.region(region)
    if validity_days is None:
        validity_days = LEAF_VALIDITY_DAYS
    if validity_days <= 0:
        raise PkiError(f"validity_days must be positive, not {validity_days}")
    issuer = _load_region_issuer(pki_root, region_spec, passphrase)
    return _issue(
        pki_root,
        manifest,
        issuer,
        owner=owner,
        usage=usage,
        algorithm=algorithm,
        subject_name=subject_name,
        passphrase=passphrase,
        now=issued_at,
        validity=timedelta(days=validity_days),
        tls_names=tuple(tls_names),
    )


def load_dev_pki(pki_root: Path) -> DevPki:
    """Describe an existing dev PKI: every leaf certificate found under `pki_root`."""
    manifest = _Manifest.read(pki_root)
    keys: list[IssuedKey] = []
    for region in manifest.regions:
        keys.extend(_scan_keys(_region_keys_dir(pki_root, region.code), region.code, region.code))
        for agency in manifest.agencies:
            if agency.region == region.code:
                keys.extend(
                    _scan_keys(_agency_keys_dir(pki_root, agency.id), agency.id, region.code)
                )
    return DevPki(
        root=pki_root,
        authority_key_path=pki_root / "authority" / "authority.key",
        authority_public_key_path=pki_root / "authority" / "authority.pub.pem",
        keys=tuple(keys),
    )


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
    manifest = _Manifest.read(pki_root)
    issuer = _load_region_issuer(pki_root, manifest.region(region), passphrase)
    path = _ca_dir(pki_root, region) / "intermediate.crl.pem"
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
        .add_extension(_authority_key_identifier(issuer.certificate), critical=False)
    )
    for item in revoked:
        if item.reason not in REVOCATION_REASONS:
            raise PkiError(f"{item.reason!r} is not an RFC 5280 revocation reason")
        certificate = _read_certificate(item.certificate)
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
    _write_public(path, crl.public_bytes(serialization.Encoding.PEM))
    return crl


def region_crls(pki_root: Path, region: str) -> tuple[x509.CertificateRevocationList, ...]:
    """The region CA's current CRLs (the intermediate's)."""
    path = _ca_dir(pki_root, region) / "intermediate.crl.pem"
    try:
        return (x509.load_pem_x509_crl(path.read_bytes()),)
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as exc:
        raise PkiError(f"{path}: not a readable CRL") from exc


def region_ca_certificates(pki_root: Path, region: str) -> tuple[x509.Certificate, ...]:
    """The region's CA certificates: root, then intermediate."""
    if not _REGION_CODE.fullmatch(region):
        raise PkiError(f"region code {region!r} is not a 6-digit GB/T 2260 code")
    ca_dir = _ca_dir(pki_root, region)
    return (_read_certificate(ca_dir / "root.pem"), _read_certificate(ca_dir / "intermediate.pem"))


# ---------------------------------------------------------------------------------------------
# Manifest and layout


@dataclass(frozen=True)
class _Manifest:
    regions: tuple[RegionSpec, ...]
    agencies: tuple[AgencySpec, ...]

    def check(self) -> None:
        if not self.regions:
            raise PkiError("a dev PKI needs at least one region")
        codes = [region.code for region in self.regions]
        _refuse_duplicates(codes, "region code")
        _refuse_duplicates([agency.id for agency in self.agencies], "agency id")
        for agency in self.agencies:
            if agency.region not in codes:
                raise PkiError(
                    f"agency {agency.id} is in region {agency.region}, "
                    f"which is not among the regions given ({', '.join(codes)})"
                )
            if agency.id in codes:
                raise PkiError(f"agency id {agency.id} is also a region code")

    def region(self, code: str) -> RegionSpec:
        for region in self.regions:
            if region.code == code:
                return region
        raise PkiError(f"region {code!r} is not part of this PKI")

    def agency(self, agency_id: str) -> AgencySpec | None:
        for agency in self.agencies:
            if agency.id == agency_id:
                return agency
        return None

    def write(self, path: Path, created: datetime) -> None:
        document = {
            "format": MANIFEST_FORMAT,
            "created": created.isoformat(),
            "regions": [{"code": r.code, "name": r.name} for r in self.regions],
            "agencies": [
                {"id": a.id, "name": a.name, "region": a.region, "uscc": a.uscc}
                for a in self.agencies
            ],
        }
        text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
        _write_public(path, text.encode())

    @classmethod
    def read(cls, pki_root: Path) -> _Manifest:
        path = pki_root / MANIFEST_NAME
        try:
            document: Any = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise PkiError(f"{pki_root} is not a complete dev PKI: {path} is missing") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PkiError(f"{path} could not be read: {exc}") from exc
        try:
            if document["format"] != MANIFEST_FORMAT:
                raise PkiError(f"{path}: unknown format {document['format']!r}")
            manifest = cls(
                tuple(RegionSpec(**entry) for entry in document["regions"]),
                tuple(AgencySpec(**entry) for entry in document["agencies"]),
            )
        except (KeyError, TypeError) as exc:
            raise PkiError(f"{path} is malformed: {exc!r}") from exc
        manifest.check()
        return manifest


def _ca_dir(pki_root: Path, region: str) -> Path:
    return pki_root / "regions" / region / "ca"


def _region_keys_dir(pki_root: Path, region: str) -> Path:
    return pki_root / "regions" / region / "keys"


def _agency_keys_dir(pki_root: Path, agency_id: str) -> Path:
    return pki_root / "agencies" / agency_id / "keys"


def _crl_url(region: str) -> str:
    return f"http://pki.{region}.tongban.test/intermediate.crl"


def _scan_keys(keys_dir: Path, owner: str, region: str) -> list[IssuedKey]:
    found: list[IssuedKey] = []
    if not keys_dir.is_dir():
        return found
    for certificate_path in sorted(keys_dir.glob("*.pem")):
        # "<usage>-<kid8>", where the kid prefix itself may contain "-".
        stem = certificate_path.stem
        usage, separator, kid_prefix = stem[:-9], stem[-9:-8], stem[-8:]
        if usage not in USAGES or separator != "-":
            continue
        leaf = _read_certificate(certificate_path)
        kid = certificate_kid(leaf)
        if not kid.startswith(kid_prefix):
            raise PkiError(f"{certificate_path}: file name does not match the kid {kid}")
        found.append(_issued_key(leaf, usage, owner, region, certificate_path))
    found.sort(key=lambda key: (key.usage, key.not_before, key.kid))
    return found


def _issued_key(
    leaf: x509.Certificate, usage: str, owner: str, region: str, certificate_path: Path
) -> IssuedKey:
    return IssuedKey(
        kid=certificate_kid(leaf),
        usage=usage,
        owner=owner,
        region=region,
        algorithm=_algorithm_of(leaf.public_key(), certificate_path),
        certificate_path=certificate_path,
        key_path=certificate_path.with_suffix(".key"),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
    )


# ---------------------------------------------------------------------------------------------
# Certificate authorities


@dataclass(frozen=True)
class _Issuer:
    region: RegionSpec
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _create_region_ca(
    out: Path, region: RegionSpec, passphrase: bytes | None, now: datetime
) -> _Issuer:
    ca_dir = _ca_dir(out, region.code)
    ca_dir.mkdir(parents=True)
    root_key = _ca_key()
    root_name = _name(region.name, f"Tongban Dev Root CA {region.code}")
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    intermediate_key = _ca_key()
    intermediate = (
        x509.CertificateBuilder()
        .subject_name(_name(region.name, f"Tongban Dev Issuing CA {region.code}"))
        .issuer_name(root_name)
        .public_key(intermediate_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + INTERMEDIATE_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(intermediate_key.public_key()),
            critical=False,
        )
        .add_extension(_authority_key_identifier(root), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(intermediate.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(_authority_key_identifier(intermediate), critical=False)
        .sign(intermediate_key, hashes.SHA256())
    )
    _write_private(ca_dir / "root.key", root_key, passphrase)
    _write_public(ca_dir / "root.pem", _pem(root))
    _write_private(ca_dir / "intermediate.key", intermediate_key, passphrase)
    _write_public(ca_dir / "intermediate.pem", _pem(intermediate))
    _write_public(ca_dir / "intermediate.crl.pem", crl.public_bytes(serialization.Encoding.PEM))
    return _Issuer(region, intermediate, intermediate_key)


_CA_KEY_USAGE: Final = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _ca_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _load_region_issuer(pki_root: Path, region: RegionSpec, passphrase: bytes | None) -> _Issuer:
    _, intermediate = region_ca_certificates(pki_root, region.code)
    key_path = _ca_dir(pki_root, region.code) / "intermediate.key"
    try:
        key = load_private_key(key_path, passphrase)
    except SignerError as exc:
        raise PkiError(f"cannot load the region {region.code} issuing CA key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or (
        key.public_key() != intermediate.public_key()
    ):
        raise PkiError(f"{key_path} is not the key of the region {region.code} issuing CA")
    return _Issuer(region, intermediate, key)


def _authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


# ---------------------------------------------------------------------------------------------
# Leaves


def _issue(
    pki_root: Path,
    manifest: _Manifest,
    issuer: _Issuer,
    *,
    owner: str,
    usage: str,
    algorithm: str,
    subject_name: str | None,
    passphrase: bytes | None,
    now: datetime,
    validity: timedelta,
    tls_names: tuple[str, ...],
) -> IssuedKey:
    region = issuer.region
    if usage not in USAGES:
        raise PkiError(f"unknown key usage {usage!r}; expected one of {', '.join(USAGES)}")
    if algorithm not in ALGORITHMS:
        raise PkiError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    if usage == "tls" and algorithm != "ES256":
        raise PkiError(f"TLS keys are always ES256 (P-256); {algorithm} was asked for")
    agency = None
    if owner != region.code:
        agency = manifest.agency(owner)
        if agency is None or agency.region != region.code:
            raise PkiError(
                f"owner {owner!r} is neither region {region.code} nor one of its agencies"
            )
    if tls_names and not (usage == "tls" and agency is None):
        raise PkiError("tls_names applies to gateway TLS certificates (usage 'tls', region owner)")
    not_after = now + validity
    if not_after > issuer.certificate.not_valid_after_utc:
        raise PkiError(
            f"a certificate valid until {not_after:%Y-%m-%d} would outlive the region "
            f"{region.code} issuing CA (valid until "
            f"{issuer.certificate.not_valid_after_utc:%Y-%m-%d})"
        )

    key = generate_private_key(algorithm)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_leaf_subject(region, agency, usage, subject_name))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(issuer.certificate), critical=False)
        .add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(_crl_url(region.code))],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            critical=False,
        )
    )
    for extension, critical in _profile_extensions(region.code, agency, usage, tls_names):
        builder = builder.add_extension(extension, critical=critical)
    leaf = builder.sign(issuer.key, hashes.SHA256())

    kid = certificate_kid(leaf)
    keys_dir = (
        _region_keys_dir(pki_root, region.code)
        if agency is None
        else _agency_keys_dir(pki_root, agency.id)
    )
    keys_dir.mkdir(parents=True, exist_ok=True)
    certificate_path = keys_dir / f"{usage}-{kid[:8]}.pem"
    key_path = certificate_path.with_suffix(".key")
    if certificate_path.exists() or key_path.exists():
        raise PkiError(f"{certificate_path} already exists; refusing to overwrite it")
    # Key first: a certificate on disk always has its key next to it.
    _write_private(key_path, key, passphrase)
    _write_public(certificate_path, _pem(leaf) + _pem(issuer.certificate))
    return _issued_key(leaf, usage, owner, region.code, certificate_path)


def _leaf_subject(
    region: RegionSpec, agency: AgencySpec | None, usage: str, subject_name: str | None
) -> x509.Name:
    owner = region.code if agency is None else agency.id
    organization = region.name if agency is None else agency.name
    if subject_name is not None:
        _check_name(subject_name, "subject_name")
        common_name = subject_name
    elif usage == "tls":
        common_name = f"gateway.{region.code}.tongban.test" if agency is None else agency.id
    elif usage == "seal":
        common_name = organization  # a seal is in the name of the legal person itself
    elif usage == "signature":
        common_name = f"测试签名人 {owner}"
    else:
        common_name = f"{owner} {usage} signing"
    attributes = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
    ]
    if agency is not None:
        # ETSI EN 319 412-1 §5.1.4: "NTR" + country + "-" + national trade register number.
        attributes.append(
            x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, f"NTRCN-{agency.uscc}")
        )
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    if usage == "signature":
        # Synthetic, so that it can never be a real resident identity card number.
        serial = f"TONGBAN-TEST-{owner}-{secrets.token_hex(4).upper()}"
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attributes)


def _profile_extensions(
    region: str, agency: AgencySpec | None, usage: str, tls_names: tuple[str, ...]
) -> list[tuple[x509.ExtensionType, bool]]:
    """(extension, critical) pairs that mark what a leaf certificate is for."""
    if usage in ("seal", "signature"):
        is_seal = usage == "seal"
        return [
            (_key_usage(content_commitment=True), True),
            (x509.ExtendedKeyUsage([_oids.EKU_DOCUMENT_SIGNING]), False),
            (
                _policies(
                    _oids.QCP_L if is_seal else _oids.QCP_N,
                    _oids.POLICY_FOR_USAGE[usage],
                ),
                False,
            ),
            (_qc_statements(_oids.QC_TYPE_ESEAL if is_seal else _oids.QC_TYPE_ESIGN), False),
        ]
    if usage == "tls":
        names: list[x509.GeneralName]
        if agency is None:
            names = [
                x509.DNSName(f"gateway.{region}.tongban.test"),
                *(x509.DNSName(name) for name in tls_names),
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                x509.IPAddress(ipaddress.IPv6Address("::1")),
                x509.UniformResourceIdentifier(f"urn:tongban:gateway:{region}"),
            ]
            purposes = [_oids.EKU_SERVER_AUTH, _oids.EKU_CLIENT_AUTH]
            policy = _oids.POLICY_FOR_USAGE["tls-gateway"]
        else:
            names = [x509.UniformResourceIdentifier(f"urn:tongban:agency:{agency.id}")]
            purposes = [_oids.EKU_CLIENT_AUTH]
            policy = _oids.POLICY_FOR_USAGE["tls-agency"]
        return [
            (_key_usage(content_commitment=False), True),
            (x509.ExtendedKeyUsage(purposes), False),
            (x509.SubjectAlternativeName(names), False),
            (_policies(policy), False),
        ]
    purpose = _oids.EKU_TOKEN_SIGNING if usage == "token" else _oids.EKU_AUDIT_SIGNING
    return [
        (_key_usage(content_commitment=False), True),
        (x509.ExtendedKeyUsage([purpose]), False),
        (_policies(_oids.POLICY_FOR_USAGE[usage]), False),
    ]


def _key_usage(*, content_commitment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=content_commitment,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _policies(*oids: x509.ObjectIdentifier) -> x509.CertificatePolicies:
    return x509.CertificatePolicies(
        [x509.PolicyInformation(oid, policy_qualifiers=None) for oid in oids]
    )


def _qc_statements(qc_type: x509.ObjectIdentifier) -> x509.UnrecognizedExtension:
    # QCStatements ::= SEQUENCE OF SEQUENCE { statementId, statementInfo }, RFC 3739 §3.2.6;
    # QcType's statementInfo is SEQUENCE OF OBJECT IDENTIFIER (ETSI EN 319 412-5 §4.2.3).
    statement = _der(0x30, _der_oid(_oids.QCS_QC_TYPE) + _der(0x30, _der_oid(qc_type)))
    return x509.UnrecognizedExtension(_oids.QC_STATEMENTS, _der(0x30, statement))


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _der_oid(oid: x509.ObjectIdentifier) -> bytes:
    arcs = [int(arc) for arc in oid.dotted_string.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk, rest = [arc & 0x7F], arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body.extend(reversed(chunk))
    return _der(0x06, bytes(body))


# ---------------------------------------------------------------------------------------------
# Small helpers


def _name(organization: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _check_name(value: str, what: str) -> None:
    if not value or not value.strip():
        raise PkiError(f"{what} is empty")
    if len(value) > MAX_NAME_CHARS:
        raise PkiError(f"{what} is longer than {MAX_NAME_CHARS} characters")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise PkiError(f"{what} contains control characters")


def _refuse_duplicates(values: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise PkiError(f"{what} {value} is given twice")
        seen.add(value)


def _utc_now(now: datetime | None) -> datetime:
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise PkiError("now must be a timezone-aware datetime")
    # X.509 times have whole seconds; dropping the rest keeps IssuedKey equal to its certificate.
    return now.astimezone(UTC).replace(microsecond=0)


def _algorithm_of(public_key: CertificatePublicKeyTypes, where: Path) -> str:
    if not isinstance(
        public_key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, rsa.RSAPublicKey)
    ):
        raise PkiError(f"{where}: unsupported key type {type(public_key).__name__}")
    try:
        return algorithm_for_key(public_key)
    except SignerError as exc:
        raise PkiError(f"{where}: {exc}") from exc


def certificate_kid(cert: x509.Certificate) -> str:
    """Key id of a certificate: the JWS x5t#S256 of its DER."""
    return x5t_s256_of_certificate(cert)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as exc:
        raise PkiError(f"certificate file {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise PkiError(f"certificate file {path} could not be read: {exc}") from exc


def _write_private(path: Path, key: PrivateKey, passphrase: bytes | None) -> None:
    try:
        write_private_key(path, key, passphrase)
    except SignerError as exc:
        raise PkiError(str(exc)) from exc


def _write_public(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with temporary.open("xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise PkiError(f"cannot write {path}: {exc.strerror or exc}") from exc
