"""The development PKI: throwaway per-region CAs and every key a Tongban test federation needs.

Built with `cryptography` only, for tests, demos and local clusters; never for production keys.
A region's real CA is its own; what runs on any PKI folder, this one or a region's (issuing a
leaf key, a CRL, reading the CA certificates), is `registry._pki`. `init_dev_pki` makes the folder
that module describes, with in one go, for every region: a root CA (P-256, 10 years, pathlen 1),
an issuing CA (P-256, 5 years, pathlen 0) with an empty CRL (next update in 7 days), and one key
of each usage; for every agency a TLS and a seal key; three registry authority keys and the
root naming them (2 of 3, `authority/root.json`); `roots.pem`;
and two development secrets a deployment keeps apart from its PKI (the audit log's pseudonym
key, the answer cache's key).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from registry import PROVINCES, Inventory, RegistrySource
from registry._authority import AUTHORITY_DIR, TRUSTED_ROOT
from registry._pki import (
    CLOCK_SKEW,
    LEAF_VALIDITY_DAYS,
    MANIFEST_NAME,
    AgencySpec,
    IssuedKey,
    Issuer,
    Manifest,
    RegionSpec,
    agency_keys_dir,
    ca_dir,
    issue_leaf,
    pem,
    read_certificate,
    region_keys_dir,
    scan_keys,
    utc_now,
    write_private,
    write_public,
)
from registry._pki_sm2 import write_region_eseal
from registry._profiles import CA_KEY_USAGE, authority_key_identifier, ca_name
from registry._root import AuthorityKey, Root, SignedRoot, sign_root
from registry.errors import PkiError
from signer import generate_private_key

__all__ = [
    "DEV_CACHE_KEY",
    "DEV_PSEUDONYM_KEY",
    "ROOTS_BUNDLE",
    "DevPki",
    "init_dev_federation",
    "init_dev_pki",
    "load_dev_pki",
]

ROOT_VALIDITY: Final = timedelta(days=3653)  # 10 years
INTERMEDIATE_VALIDITY: Final = timedelta(days=1827)  # 5 years
CRL_VALIDITY: Final = timedelta(days=7)

# What init_dev_pki issues for each usage; issue_key takes an explicit algorithm instead.
DEFAULT_ALGORITHM_FOR_USAGE: Final = {
    "tls": "ES256",  # gRPC (BoringSSL) deployments are tested with P-256 only
    "seal": "ES256",
    "signature": "ES256",
    "token": "ES256",
    "audit": "EdDSA",
}
REGION_USAGES: Final = ("tls", "seal", "signature", "token", "audit")
AGENCY_USAGES: Final = ("tls", "seal")
ROOTS_BUNDLE: Final = "roots.pem"  # every region's root CA, PEM
DEV_PSEUDONYM_KEY: Final = "audit-pseudonym.secret"  # dev only: the audit log's subject-hashing key
DEV_CACHE_KEY: Final = "cache.secret"  # dev only: the AES-256 key of the answer cache (hex)
ROOT_VALIDITY_DAYS: Final = 365  # the dev root's; rotate-root makes the next
PKI_ENTRIES: Final = (MANIFEST_NAME, "authority", "regions", "agencies")


@dataclass(frozen=True)
class DevPki:
    """The result of `init_dev_pki` (or `load_dev_pki`)."""

    root: Path
    authority_key_paths: tuple[Path, ...]  # national platform first, then the two provinces'
    trusted_root_path: Path
    keys: tuple[IssuedKey, ...]

    @property
    def authority_key_path(self) -> Path:
        """The national platform's authority key."""
        return self.authority_key_paths[0]


def init_dev_federation(
    out: Path,
    source: RegistrySource,
    regions: Sequence[str],
    *,
    now: datetime,
    passphrase: bytes | None = None,
    seal_algorithm: str = "ES256",
) -> DevPki:
    """A development PKI for `regions` (named as the source names them) and the source's
    agencies of those regions, with its key inventory saved: what `tongban pki init` does."""
    names = {r.code: r.name for r in source.regions}
    specs = [RegionSpec(code, names.get(code) or PROVINCES[code]) for code in regions]
    agencies = [
        AgencySpec(a.id, a.name, a.region, a.uscc) for a in source.agencies if a.region in regions
    ]
    created = init_dev_pki(
        out, specs, agencies, passphrase=passphrase, now=now, seal_algorithm=seal_algorithm
    )
    Inventory.for_new_pki(created, now).save()
    return created


def init_dev_pki(
    out: Path,
    regions: Sequence[RegionSpec],
    agencies: Sequence[AgencySpec],
    *,
    passphrase: bytes | None = None,
    now: datetime | None = None,
    seal_algorithm: str = "ES256",
) -> DevPki:
    """Create a complete dev PKI in `out` (the layout is `registry._pki`'s).

    Every private key, the CA keys included, is encrypted with `passphrase` when one is given.
    `seal_algorithm` is the regions' seal keys' ("SM2": each with the region's SESeal, made by
    the region's seal maker, `registry._pki_sm2`); agencies' seal keys are ES256.
    Refuses with `PkiError`, before writing anything, when `out` already holds a PKI, when a
    region or agency is given twice, or when an agency's region is not among `regions`.
    """
    issued_at = utc_now(now)
    manifest = Manifest(tuple(regions), tuple(agencies))
    manifest.check()
    if seal_algorithm == "SM2" and passphrase:
        raise PkiError(
            "SM2 seal keys are written unencrypted: a PKI with a passphrase cannot have them"
        )
    _claim(out)
    authority_key_paths = _authority_root(out, manifest, passphrase, issued_at)
    keys: list[IssuedKey] = []
    for region in manifest.regions:
        issuer = create_region_ca(out, region, passphrase, issued_at)
        owners: list[tuple[str, tuple[str, ...]]] = [(region.code, REGION_USAGES)]
        owners += [(a.id, AGENCY_USAGES) for a in manifest.agencies if a.region == region.code]
        for owner, usages in owners:
            for usage in usages:
                algorithm = DEFAULT_ALGORITHM_FOR_USAGE[usage] if owner == region.code else "ES256"
                if usage == "seal" and owner == region.code:
                    algorithm = seal_algorithm
                keys.append(
                    issue_leaf(
                        out,
                        manifest,
                        issuer,
                        owner=owner,
                        usage=usage,
                        algorithm=algorithm,
                        subject_name=None,
                        passphrase=passphrase,
                        now=issued_at,
                        validity=timedelta(days=LEAF_VALIDITY_DAYS),
                        tls_names=(),
                    )
                )
                if algorithm == "SM2":
                    write_region_eseal(out, issuer, keys[-1], now=issued_at)
    _finish(out, manifest, issued_at)
    return DevPki(
        root=out,
        authority_key_paths=authority_key_paths,
        trusted_root_path=out / TRUSTED_ROOT,
        keys=tuple(keys),
    )


def _authority_root(
    out: Path, manifest: Manifest, passphrase: bytes | None, now: datetime
) -> tuple[Path, ...]:
    """Three authority keys, as a federation would split them: the national platform's and
    two provinces' security teams' (standing for the first two regions); root version 1 names
    them with threshold 2, signed by all three."""
    codes = [r.code for r in manifest.regions][:2]
    holders = [("national", "national platform")] + [
        (f"province-{i}", f"{codes[i - 1]} security team" if len(codes) >= i else f"province {i}")
        for i in (1, 2)
    ]
    keys = []
    for name, holder in holders:
        key = generate_private_key("EdDSA")
        assert isinstance(key, ed25519.Ed25519PrivateKey)  # what EdDSA generates
        write_private(out / AUTHORITY_DIR / f"{name}.key", key, passphrase)
        keys.append((key, holder))
    root = Root(
        1,
        now + timedelta(days=ROOT_VALIDITY_DAYS),
        tuple(AuthorityKey.of(k.public_key(), holder) for k, holder in keys),
        2,
    )
    signed = SignedRoot(root)
    for key, _ in keys:
        signed = sign_root(signed, key)
    write_public(out / TRUSTED_ROOT, signed.to_bytes())
    return tuple(out / AUTHORITY_DIR / f"{name}.key" for name, _ in holders)


def _claim(out: Path) -> None:
    """Make `out` this run's, or refuse: it already holds (part of) a PKI, or is a file."""
    if out.exists() and not out.is_dir():
        raise PkiError(f"{out} exists and is not a directory")
    existing = [name for name in PKI_ENTRIES if (out / name).exists()]
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


def _finish(out: Path, manifest: Manifest, issued_at: datetime) -> None:
    """The roots bundle, the development secrets, then the manifest."""
    # Every region's root, for a gateway that must reach a peer before it holds a registry.
    write_public(
        out / ROOTS_BUNDLE,
        b"".join(
            read_certificate(ca_dir(out, r.code) / "root.pem").public_bytes(
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
    # Written last: its presence tells `issue_key` and `load_dev_pki` the PKI is complete.
    manifest.write(out / MANIFEST_NAME, issued_at)


def load_dev_pki(pki_root: Path) -> DevPki:
    """Describe an existing dev PKI: every leaf certificate found under `pki_root`."""
    manifest = Manifest.read(pki_root)
    keys: list[IssuedKey] = []
    for region in manifest.regions:
        keys.extend(scan_keys(region_keys_dir(pki_root, region.code), region.code, region.code))
        for agency in manifest.agencies:
            if agency.region == region.code:
                keys.extend(scan_keys(agency_keys_dir(pki_root, agency.id), agency.id, region.code))
    return DevPki(
        root=pki_root,
        authority_key_paths=tuple(
            pki_root / AUTHORITY_DIR / f"{n}.key" for n in ("national", "province-1", "province-2")
        ),
        trusted_root_path=pki_root / TRUSTED_ROOT,
        keys=tuple(keys),
    )


def create_region_ca(
    out: Path, region: RegionSpec, passphrase: bytes | None, now: datetime
) -> Issuer:
    """A throwaway root and issuing CA for `region`, with the issuing CA's empty CRL."""
    folder = ca_dir(out, region.code)
    folder.mkdir(parents=True)
    root_key = _ca_key()
    root_name = ca_name(region.name, f"Tongban Dev Root CA {region.code}")
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    intermediate_key = _ca_key()
    intermediate = (
        x509.CertificateBuilder()
        .subject_name(ca_name(region.name, f"Tongban Dev Issuing CA {region.code}"))
        .issuer_name(root_name)
        .public_key(intermediate_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + INTERMEDIATE_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(intermediate_key.public_key()),
            critical=False,
        )
        .add_extension(authority_key_identifier(root), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(intermediate.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(authority_key_identifier(intermediate), critical=False)
        .sign(intermediate_key, hashes.SHA256())
    )
    write_private(folder / "root.key", root_key, passphrase)
    write_public(folder / "root.pem", pem(root))
    write_private(folder / "intermediate.key", intermediate_key, passphrase)
    write_public(folder / "intermediate.pem", pem(intermediate))
    write_public(folder / "intermediate.crl.pem", crl.public_bytes(serialization.Encoding.PEM))
    return Issuer(region, intermediate, intermediate_key)


def _ca_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())
