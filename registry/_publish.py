"""Building and publishing snapshots: source + PKI inventory -> a signed, versioned registry.

`build_registry` makes the unsigned registry a reviewer can read and diff. `publish` makes the
next version: it reads the last published snapshot (verifying it) to learn the version to
exceed, applies the key lifecycle moves of a publish, signs with the authority key, and writes
`registry-<version>.jws` and `current.jws` in the publish folder. Versions only grow, even if
`current.jws` is removed: every `registry-<n>.jws` in the folder counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from registry._crl import RevokedCertificate, issue_crl, region_crls
from registry._files import write_atomically
from registry._import import has_imported_ca, imported_crl
from registry._inventory import Inventory
from registry._model import Region, Registry
from registry._pki import region_ca_certificates
from registry._snapshot import (
    AuthorityPublicKey,
    SignedSnapshot,
    SnapshotVerifier,
    sign_snapshot,
)
from registry._source import RegistrySource, load_source
from registry.errors import PkiError, SnapshotError
from signer import KeyReference, open_signing_key

__all__ = [
    "AUTHORITY_KEY",
    "AUTHORITY_PUBLIC_KEY",
    "CURRENT_SNAPSHOT",
    "PublishResult",
    "build_registry",
    "load_authority_public_key",
    "publish",
    "read_published",
]

AUTHORITY_KEY = Path("authority/authority.key")
AUTHORITY_PUBLIC_KEY = Path("authority/authority.pub.pem")
CURRENT_SNAPSHOT = "current.jws"
CRL_MARGIN = timedelta(days=1)  # a published CRL stays current this long after its snapshot expires
_VERSIONED = re.compile(r"^registry-(\d+)\.jws$")


def load_authority_public_key(path: Path) -> AuthorityPublicKey:
    """The authority public key a gateway is installed with (PEM SubjectPublicKeyInfo)."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"{path}: not a readable PEM public key ({exc.__class__.__name__})") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise PkiError(f"{path}: the registry authority key must be Ed25519 or ECDSA P-256")
    return key


def build_registry(
    source: RegistrySource,
    pki_root: Path,
    *,
    version: int = 0,
    issued_at: datetime,
    inventory: Inventory | None = None,
) -> Registry:
    """The registry from a source and a PKI folder; version 0 means an unpublished draft."""
    inventory = inventory if inventory is not None else Inventory.load(pki_root)
    regions = []
    for region in source.regions:
        try:
            cas = region_ca_certificates(pki_root, region.code)
        except Exception as exc:  # the PKI module's own errors, or a missing folder
            raise PkiError(
                f"{pki_root}: no certificate authority for region {region.code} ({exc})"
            ) from exc
        regions.append(
            Region(
                code=region.code,
                name=region.name,
                endpoint=region.endpoint,
                ca_certificates=tuple(c.public_bytes(serialization.Encoding.DER) for c in cas),
                crls=tuple(
                    c.public_bytes(serialization.Encoding.DER)
                    for c in region_crls(pki_root, region.code)
                ),
            )
        )
    known_owners = {r.code for r in source.regions} | {a.id for a in source.agencies}
    keys = tuple(k for k in inventory.entries(issued_at) if k.owner in known_owners)
    return Registry(
        name=source.name,
        version=version,
        issued_at=issued_at,
        expires_at=issued_at + timedelta(seconds=source.snapshot_lifetime_seconds),
        refresh_seconds=source.refresh_seconds,
        regions=tuple(regions),
        agencies=source.agencies,
        datasets=source.datasets,
        purposes=source.purposes,
        agreements=source.agreements,
        keys=keys,
        witness_threshold=source.witness_threshold,
    )


def read_published(
    out_dir: Path, authority: AuthorityPublicKey
) -> tuple[SignedSnapshot | None, int]:
    """The current published snapshot (verified, expired or not) and the highest version seen."""
    highest = max(
        (
            int(m.group(1))
            for p in out_dir.glob("registry-*.jws")
            if (m := _VERSIONED.match(p.name))
        ),
        default=0,
    )
    current = out_dir / CURRENT_SNAPSHOT
    if not current.exists():
        return None, highest
    verifier = SnapshotVerifier(authority)
    try:
        snapshot = verifier.verify(current.read_bytes(), held_version=None, now=None)
    except SnapshotError as exc:
        raise SnapshotError(f"{current}: the published snapshot does not verify: {exc}") from exc
    return snapshot, max(highest, snapshot.registry.version)


@dataclass(frozen=True, slots=True)
class PublishResult:
    snapshot: SignedSnapshot
    path: Path
    changes: tuple[str, ...]  # lifecycle moves, for the operator


def publish(
    source_dir: Path,
    pki_root: Path,
    out_dir: Path,
    *,
    now: datetime,
    passphrase: bytes | None = None,
    lifetime_seconds: int | None = None,
    authority_key: KeyReference | None = None,
) -> PublishResult:
    """Sign and write the next registry version; see the module docstring. The authority key
    is `authority_key` (a key file or a PKCS#11 URI), else the PKI folder's key file."""
    source = load_source(source_dir)
    inventory = Inventory.load(pki_root)
    reference = pki_root / AUTHORITY_KEY if authority_key is None else authority_key
    signing_key = open_signing_key(reference, passphrase)
    if not isinstance(signing_key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise PkiError(f"{reference}: the registry authority key must be Ed25519 or P-256")
    out_dir.mkdir(parents=True, exist_ok=True)
    _, highest = read_published(out_dir, signing_key.public_key())
    version = highest + 1
    changes = inventory.advance_for_publish(version, now)
    lifetime = timedelta(seconds=lifetime_seconds or source.snapshot_lifetime_seconds)
    for region in source.regions:
        if has_imported_ca(pki_root, region.code):
            _check_imported_crl(pki_root, region.code, now)  # the region's own, as imported
            continue
        # Each CRL is reissued from the inventory and outlives the snapshot that carries it.
        revoked = [
            RevokedCertificate(pki_root / r.certificate, r.revoked_at, r.revocation_reason)
            for r in inventory.records()
            if r.region == region.code and r.revoked_at is not None
        ]
        issue_crl(
            pki_root,
            region.code,
            revoked,
            now=now,
            next_update=now + lifetime + CRL_MARGIN,
            passphrase=passphrase,
        )
    registry = build_registry(source, pki_root, version=version, issued_at=now, inventory=inventory)
    if lifetime_seconds is not None:
        registry = _with_lifetime(registry, lifetime_seconds)
    snapshot = sign_snapshot(registry, signing_key)
    path = out_dir / f"registry-{version}.jws"
    write_atomically(path, snapshot.jws.encode() + b"\n")
    write_atomically(out_dir / CURRENT_SNAPSHOT, snapshot.jws.encode() + b"\n")
    inventory.save()  # after the snapshot is safely written
    return PublishResult(snapshot=snapshot, path=path, changes=tuple(changes))


def _check_imported_crl(pki_root: Path, region: str, now: datetime) -> None:
    """A region with an imported CA publishes the CRL its CA signed; without a current one the
    publish is refused (a snapshot whose region has no CRL would leave its keys unrevocable)."""
    crl = imported_crl(pki_root, region)
    if crl is None:
        raise PkiError(
            f"region {region} uses an imported CA and has no CRL: import one signed by its "
            "issuing CA with `tongban registry import-crl` before publishing"
        )
    if crl.next_update_utc is None or crl.next_update_utc <= now:
        raise PkiError(
            f"region {region}'s imported CRL is out of date (nextUpdate "
            f"{crl.next_update_utc or 'absent'}): import a newer one with "
            "`tongban registry import-crl`"
        )


def _with_lifetime(registry: Registry, lifetime_seconds: int) -> Registry:
    return replace(registry, expires_at=registry.issued_at + timedelta(seconds=lifetime_seconds))
