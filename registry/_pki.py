"""A region's PKI folder: its CAs, the leaf keys they issue, their CRLs.

This is what the security teams' key lifecycle runs on (`tongban keys generate|rotate`,
`tongban registry publish`): a region's issuing CA signs each new leaf certificate under the
profiles of `registry._profiles`, and its CRL lists the revoked ones. A folder looks like this
(``<kid8>`` is the first 8 characters of the certificate's kid, the base64url SHA-256 of its
DER)::

    <out>/
      pki.json                              regions and agencies the PKI was made for
      roots.pem                             every region's root CA (a bootstrap trust bundle)
      authority/root.json                   the trusted root: authority keys, holders, threshold
      authority/root-<N>.json               later roots (`tongban registry rotate-root`)
      authority/*.key                       authority keys kept in the folder (dev: all), 0600
      regions/<code>/ca/root.pem, root.key  region root CA (P-256, 10 years, pathlen 1)
      regions/<code>/ca/intermediate.pem, intermediate.key
                                            issuing CA (P-256, 5 years, pathlen 0)
      regions/<code>/ca/intermediate.crl.pem   its CRL
      regions/<code>/keys/<usage>-<kid8>.pem   leaf then intermediate (no root)
      regions/<code>/keys/<usage>-<kid8>.key   leaf private key, PKCS#8, mode 0600
      agencies/<id>/keys/<usage>-<kid8>.pem|.key
      regions/<code>/ca/imported-*.pem, imported.crl.pem
                                            a CA made elsewhere, no key (`registry._import`)

The development federation's throwaway CAs, which create such a folder for tests and demos,
are not here: they are demo code (`gateway.demo.pki`, never for production keys).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from registry._checks import CLOCK_SKEW, check_issued
from registry._pki_files import (
    certificate_kid,
    imported_chain,
    pem,
    read_certificate,
    write_private,
    write_private_sm2,
    write_public,
)
from registry._profiles import (
    authority_key_identifier,
    check_name,
    crl_distribution_point,
    leaf_subject,
    profile_extensions,
)
from registry.errors import PkiError
from signer import is_sm2_key
from signer._keyfile import ALGORITHMS as _JWS_ALGORITHMS
from signer._keyfile import (
    PrivateKey,
    PublicKey,
    algorithm_for_key,
    generate_private_key,
    load_private_key,
)
from signer._sm2 import Sm2PrivateKey
from signer._sm2_x509 import issue_sm2_certificate, sm2_subject_key_identifier
from signer.errors import SignerError

__all__ = [
    "ALGORITHMS",
    "CLOCK_SKEW",
    "LEAF_VALIDITY_DAYS",
    "MANIFEST_NAME",
    "SM2_USAGES",
    "USAGES",
    "AgencySpec",
    "IssuedKey",
    "Issuer",
    "Manifest",
    "ModuleKey",
    "PkiError",
    "RegionSpec",
    "agency_keys_dir",
    "ca_dir",
    "certificate_kid",
    "crl_distribution_point",
    "issue_key",
    "issue_leaf",
    "load_region_issuer",
    "pem",
    "read_certificate",
    "region_ca_certificates",
    "region_keys_dir",
    "scan_keys",
    "utc_now",
    "write_private",
    "write_private_sm2",
    "write_public",
]

USAGES: Final = ("seal", "signature", "token", "tls", "audit")


# SM2 (GB/T 32918, with SM3) is for seals only: its certificate sits under the region's P-256 CA
# (a mixed chain), and a region's seal key in SM2 seals as GB/T 38540 rather than JAdES.
ALGORITHMS: Final = (*_JWS_ALGORITHMS, "SM2")


SM2_USAGES: Final = ("seal",)


LEAF_VALIDITY_DAYS: Final = 365


MANIFEST_NAME: Final = "pki.json"


MANIFEST_FORMAT: Final = "tongban-dev-pki/1"


_REGION_CODE: Final = re.compile(r"[0-9]{6}")  # GB/T 2260


_AGENCY_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")


_USCC: Final = re.compile(r"[0-9A-HJ-NPQRTUWXY]{18}")  # GB 32100-2015 alphabet, no I O S V Z


@dataclass(frozen=True)
class RegionSpec:
    """A region taking part in data sharing: GB/T 2260 code and name, e.g. 330000 浙江省;
    `ca` "imported" when its CA was made elsewhere (`registry._import`: no CA key here)."""

    code: str
    name: str
    ca: str = "dev"

    def __post_init__(self) -> None:
        if not _REGION_CODE.fullmatch(self.code):
            raise PkiError(f"region code {self.code!r} is not a 6-digit GB/T 2260 code")
        check_name(self.name, f"region {self.code} name")
        if self.ca not in ("dev", "imported"):
            raise PkiError(f"region {self.code}: ca {self.ca!r} is neither 'dev' nor 'imported'")


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
        check_name(self.name, f"agency {self.id} name")
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
    algorithm: str  # "ES256" | "EdDSA" | "PS256" | "SM2"
    certificate_path: Path  # PEM: leaf then intermediate (chain without root)
    key_path: Path
    not_before: datetime  # aware, UTC
    not_after: datetime  # aware, UTC
    key_uri: str = ""  # a PKCS#11 URI when the key is in a cryptographic module (no key file)

    def __post_init__(self) -> None:
        if self.usage not in USAGES:
            raise PkiError(f"unknown key usage {self.usage!r}")
        if self.algorithm not in ALGORITHMS:
            raise PkiError(f"unknown algorithm {self.algorithm!r}")
        if self.not_before.tzinfo is None or self.not_after.tzinfo is None:
            raise PkiError("IssuedKey validity must be timezone-aware")


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
    module_key: ModuleKey | None = None,
) -> IssuedKey:
    """Issue one more leaf key from `region`'s intermediate CA, e.g. to rotate a key.

    `owner` is the region code (gateway keys) or the id of an agency of that region.
    `subject_name` replaces the default common name (for "signature", the person's name).
    `tls_names` adds DNS names to a gateway TLS certificate. `passphrase` decrypts the CA
    key and encrypts the new one. TLS keys are always ES256 (P-256); asking for another
    algorithm for "tls" is refused. With `module_key` the key pair already exists in a
    cryptographic module: its public key is certified and no key file is written.
    """
    issued_at = utc_now(now)
    manifest = Manifest.read(pki_root)
    region_spec = manifest.region(region)
    if validity_days is None:
        validity_days = LEAF_VALIDITY_DAYS
    if validity_days <= 0:
        raise PkiError(f"validity_days must be positive, not {validity_days}")
    issuer = load_region_issuer(pki_root, region_spec, passphrase)
    return issue_leaf(
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
        module_key=module_key,
    )


def region_ca_certificates(pki_root: Path, region: str) -> tuple[x509.Certificate, ...]:
    """The region's CA certificates: root, then intermediate."""
    if not _REGION_CODE.fullmatch(region):
        raise PkiError(f"region code {region!r} is not a 6-digit GB/T 2260 code")
    folder = ca_dir(pki_root, region)
    imported = imported_chain(folder)  # a CA made elsewhere: root, then its intermediates
    if imported is not None:
        return imported
    return (read_certificate(folder / "root.pem"), read_certificate(folder / "intermediate.pem"))


@dataclass(frozen=True)
class Manifest:
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
            "regions": [
                {"code": r.code, "name": r.name} | ({} if r.ca == "dev" else {"ca": r.ca})
                for r in self.regions
            ],
            "agencies": [
                {"id": a.id, "name": a.name, "region": a.region, "uscc": a.uscc}
                for a in self.agencies
            ],
        }
        text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
        write_public(path, text.encode())

    @classmethod
    def read(cls, pki_root: Path) -> Manifest:
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


def ca_dir(pki_root: Path, region: str) -> Path:
    return pki_root / "regions" / region / "ca"


def region_keys_dir(pki_root: Path, region: str) -> Path:
    return pki_root / "regions" / region / "keys"


def agency_keys_dir(pki_root: Path, agency_id: str) -> Path:
    return pki_root / "agencies" / agency_id / "keys"


def scan_keys(keys_dir: Path, owner: str, region: str) -> list[IssuedKey]:
    found: list[IssuedKey] = []
    if not keys_dir.is_dir():
        return found
    for certificate_path in sorted(keys_dir.glob("*.pem")):
        # "<usage>-<kid8>", where the kid prefix itself may contain "-".
        stem = certificate_path.stem
        usage, separator, kid_prefix = stem[:-9], stem[-9:-8], stem[-8:]
        if usage not in USAGES or separator != "-":
            continue
        leaf = read_certificate(certificate_path)
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
        algorithm=_algorithm_of(leaf, certificate_path),
        certificate_path=certificate_path,
        key_path=certificate_path.with_suffix(".key"),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
    )


@dataclass(frozen=True)
class ModuleKey:
    """A key pair generated in a cryptographic module: its public key, to certify, and the
    PKCS#11 URI that names it (recorded in the inventory instead of a key file)."""

    public_key: PublicKey
    uri: str


@dataclass(frozen=True)
class Issuer:
    region: RegionSpec
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def load_region_issuer(pki_root: Path, region: RegionSpec, passphrase: bytes | None) -> Issuer:
    if imported_chain(ca_dir(pki_root, region.code)) is not None:
        raise PkiError(
            f"region {region.code}'s CA is imported: its own CA issues its keys, which "
            "`tongban registry import-cert` adds"
        )
    _, intermediate = region_ca_certificates(pki_root, region.code)
    if is_sm2_key(intermediate):
        raise PkiError(
            f"region {region.code}'s issuing CA is an SM2 CA: Tongban issues ES256, EdDSA and "
            "PS256 keys from P-256 CAs only (SM2 keys come from the SM2 CA's own tools)"
        )
    key_path = ca_dir(pki_root, region.code) / "intermediate.key"
    try:
        key = load_private_key(key_path, passphrase)
    except SignerError as exc:
        raise PkiError(f"cannot load the region {region.code} issuing CA key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or (
        key.public_key() != intermediate.public_key()
    ):
        raise PkiError(f"{key_path} is not the key of the region {region.code} issuing CA")
    return Issuer(region, intermediate, key)


def issue_leaf(
    pki_root: Path,
    manifest: Manifest,
    issuer: Issuer,
    *,
    owner: str,
    usage: str,
    algorithm: str,
    subject_name: str | None,
    passphrase: bytes | None,
    now: datetime,
    validity: timedelta,
    tls_names: tuple[str, ...],
    module_key: ModuleKey | None = None,
) -> IssuedKey:
    """Issue one leaf key from `issuer` and write it (key first) under `pki_root`; with
    `module_key`, certify that key (which stays in its module) and write only the certificate."""
    region = issuer.region
    agency = _check_leaf(
        manifest,
        issuer,
        owner=owner,
        usage=usage,
        algorithm=algorithm,
        tls_names=tls_names,
        passphrase=passphrase,
    )
    not_after = now + validity
    if not_after > issuer.certificate.not_valid_after_utc:
        raise PkiError(
            f"a certificate valid until {not_after:%Y-%m-%d} would outlive the region "
            f"{region.code} issuing CA (valid until "
            f"{issuer.certificate.not_valid_after_utc:%Y-%m-%d})"
        )

    if module_key is not None and _jws_algorithm_of(
        module_key.public_key, Path(module_key.uri)
    ) != (algorithm):
        raise PkiError(f"the key in the module is not an {algorithm} key")
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf_subject(region, agency, usage, subject_name))
        .issuer_name(issuer.certificate.subject)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(authority_key_identifier(issuer.certificate), critical=False)
        .add_extension(crl_distribution_point(region.code), critical=False)
    )
    for extension, critical in profile_extensions(region.code, agency, usage, tls_names):
        builder = builder.add_extension(extension, critical=critical)
    key, leaf = _sign_leaf(builder, algorithm, issuer, module_key)
    cas = region_ca_certificates(pki_root, region.code)
    check_issued(leaf, cas=cas, region=region.code, usage=usage, gateway=agency is None, at=now)
    kid = certificate_kid(leaf)
    keys_dir = (
        region_keys_dir(pki_root, region.code)
        if agency is None
        else agency_keys_dir(pki_root, agency.id)
    )
    keys_dir.mkdir(parents=True, exist_ok=True)
    certificate_path = keys_dir / f"{usage}-{kid[:8]}.pem"
    key_path = certificate_path.with_suffix(".key")
    if certificate_path.exists() or key_path.exists():
        raise PkiError(f"{certificate_path} already exists; refusing to overwrite it")
    # Key first: a certificate on disk always has its key next to it (or in its module).
    if isinstance(key, Sm2PrivateKey):
        write_private_sm2(key_path, key)
    elif key is not None:
        write_private(key_path, key, passphrase)
    write_public(certificate_path, pem(leaf) + pem(issuer.certificate))
    issued = _issued_key(leaf, usage, owner, region.code, certificate_path)
    return issued if module_key is None else replace(issued, key_uri=module_key.uri)


def _sign_leaf(
    builder: x509.CertificateBuilder,
    algorithm: str,
    issuer: Issuer,
    module_key: ModuleKey | None = None,
) -> tuple[PrivateKey | Sm2PrivateKey | None, x509.Certificate]:
    """A fresh key of `algorithm` and its certificate from `builder`, signed by `issuer`; or,
    with `module_key`, the certificate of that key (None for the key: it stays in its module)."""
    if module_key is not None:
        public = module_key.public_key
        builder = builder.public_key(public).add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public), critical=False
        )
        return None, builder.sign(issuer.key, hashes.SHA256())
    if algorithm == "SM2":
        sm2_key = Sm2PrivateKey.generate()
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier(sm2_subject_key_identifier(sm2_key.public_key())),
            critical=False,
        )
        return sm2_key, issue_sm2_certificate(builder, sm2_key.public_key(), issuer.key)
    key = generate_private_key(algorithm)
    builder = builder.public_key(key.public_key()).add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
    )
    return key, builder.sign(issuer.key, hashes.SHA256())


def _check_leaf(
    manifest: Manifest,
    issuer: Issuer,
    *,
    owner: str,
    usage: str,
    algorithm: str,
    tls_names: tuple[str, ...],
    passphrase: bytes | None,
) -> AgencySpec | None:
    """Refuse what `issue_leaf` cannot issue; the owning agency (None for the region)."""
    region = issuer.region
    if usage not in USAGES:
        raise PkiError(f"unknown key usage {usage!r}; expected one of {', '.join(USAGES)}")
    if algorithm not in ALGORITHMS:
        raise PkiError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    if usage == "tls" and algorithm != "ES256":
        raise PkiError(f"TLS keys are always ES256 (P-256); {algorithm} was asked for")
    if algorithm == "SM2" and usage not in SM2_USAGES:
        raise PkiError(f"SM2 keys are for seals only; a {usage} key cannot be SM2")
    if algorithm == "SM2" and passphrase:
        raise PkiError(
            "SM2 key files are written unencrypted (PKCS#8 as OpenSSL writes them): "
            "protect them with file permissions or an HSM, not a passphrase"
        )
    agency = None
    if owner != region.code:
        agency = manifest.agency(owner)
        if agency is None or agency.region != region.code:
            raise PkiError(
                f"owner {owner!r} is neither region {region.code} nor one of its agencies"
            )
    if algorithm == "SM2" and agency is not None:
        raise PkiError(
            "SM2 seal keys are a region's (its gateway seals with them), not an agency's"
        )
    if tls_names and not (usage == "tls" and agency is None):
        raise PkiError("tls_names applies to gateway TLS certificates (usage 'tls', region owner)")
    return agency


def _refuse_duplicates(values: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise PkiError(f"{what} {value} is given twice")
        seen.add(value)


def utc_now(now: datetime | None) -> datetime:
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise PkiError("now must be a timezone-aware datetime")
    # X.509 times have whole seconds; dropping the rest keeps IssuedKey equal to its certificate.
    return now.astimezone(UTC).replace(microsecond=0)


def _algorithm_of(leaf: x509.Certificate, where: Path) -> str:
    if is_sm2_key(leaf):
        return "SM2"
    return _jws_algorithm_of(leaf.public_key(), where)


def _jws_algorithm_of(public_key: CertificatePublicKeyTypes, where: Path) -> str:
    if not isinstance(
        public_key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, rsa.RSAPublicKey)
    ):
        raise PkiError(f"{where}: unsupported key type {type(public_key).__name__}")
    try:
        return algorithm_for_key(public_key)
    except SignerError as exc:
        raise PkiError(f"{where}: {exc}") from exc
