"""Building and publishing snapshots: source + PKI inventory -> a signed, versioned registry.

`build_registry` makes the unsigned registry a reviewer can read and diff. `publish` makes the
next version: it reads the last published snapshot (verifying it) to learn the version to
exceed, applies the key lifecycle moves of a publish, signs with the authority keys given (by
default every key file in the folder's `authority/`), carries the folder's later roots, and
writes `registry-<version>.jws`; and `current.jws` too once a threshold of the newest root's keys
has signed (else the other holders add theirs with `tongban registry sign`, which installs it).
Versions only grow, even if `current.jws` is removed: every `registry-<n>.jws` counts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from registry._authority import pki_authority_keys, pki_trusted_root_path, root_chain
from registry._crl import RevokedCertificate, issue_crl, region_crls
from registry._envelope import (
    SignedSnapshot,
    SnapshotVerifier,
    add_signature,
    unsigned_snapshot,
)
from registry._files import write_atomically
from registry._import import has_imported_ca, imported_crl
from registry._inventory import Inventory
from registry._model import Region, Registry
from registry._pki import region_ca_certificates
from registry._root import Root, SignatureTally
from registry._snapshot import authority_key_id
from registry._source import RegistrySource, load_source
from registry.errors import PkiError, SnapshotError
from signer import KeyReference, open_signing_key

__all__ = [
    "CURRENT_SNAPSHOT",
    "PublishResult",
    "build_registry",
    "install_if_complete",
    "publish",
    "read_published",
]

CURRENT_SNAPSHOT = "current.jws"
CRL_MARGIN = timedelta(days=1)  # a published CRL stays current this long after its snapshot expires
_VERSIONED = re.compile(r"registry-([0-9]+)\.jws")


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
        matters=source.matters,
    )


def read_published(out_dir: Path, trusted: Root) -> tuple[SignedSnapshot | None, int]:
    """The current published snapshot (verified, expired or not) and the highest version seen."""
    highest = max(
        (
            int(m.group(1))
            for p in out_dir.glob("registry-*.jws")
            if (m := _VERSIONED.fullmatch(p.name))
        ),
        default=0,
    )
    current = out_dir / CURRENT_SNAPSHOT
    if not current.exists():
        return None, highest
    verifier = SnapshotVerifier(trusted)
    try:
        snapshot = verifier.verify(current.read_bytes(), held_version=None, now=None)
    except SnapshotError as exc:
        raise SnapshotError(f"{current}: the published snapshot does not verify: {exc}") from exc
    return snapshot, max(highest, snapshot.registry.version)


@dataclass(frozen=True, slots=True)
class PublishResult:
    registry: Registry
    path: Path
    changes: tuple[str, ...]  # lifecycle moves, for the operator
    tally: SignatureTally  # the signatures made, counted against the newest root
    installed: bool  # written to current.jws too: the threshold was met

    @property
    def snapshot(self) -> SignedSnapshot:
        """The snapshot as written (verified against the root once `installed`)."""
        text = self.path.read_text().strip()
        first = self.tally.valid[0] if self.tally.valid else ""
        return SignedSnapshot(text, self.registry, first, self.tally.valid)


def publish(
    source_dir: Path,
    pki_root: Path,
    out_dir: Path,
    *,
    now: datetime,
    passphrase: bytes | None = None,
    lifetime_seconds: int | None = None,
    authority_keys: Sequence[KeyReference] | None = None,
    trusted_root: Path | None = None,
) -> PublishResult:
    """Sign and write the next registry version; see the module docstring. The authority keys
    are `authority_keys` (key files or PKCS#11 URIs; none: an unsigned snapshot for a signing
    ceremony), else every key file in the PKI folder's `authority/`. The root the snapshot is
    checked against, with the later roots beside it, is `trusted_root` (a root.json or one key's
    PEM), else the folder's `authority/root.json`."""
    source = load_source(source_dir)
    inventory = Inventory.load(pki_root)
    trusted, chain = root_chain(trusted_root or pki_trusted_root_path(pki_root))
    newest = chain[-1].root if chain else trusted
    references = pki_authority_keys(pki_root) if authority_keys is None else authority_keys
    signing_keys = [_authority_signing_key(r, passphrase) for r in references]
    if authority_keys is None:  # the folder's keys that the newest root still names
        signing_keys = [k for k in signing_keys if newest.key(authority_key_id(k.public_key()))]
    out_dir.mkdir(parents=True, exist_ok=True)
    _, highest = read_published(out_dir, trusted)
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
    text = unsigned_snapshot(registry, chain)
    for key in signing_keys:
        text = add_signature(text, key, newest)
    path = out_dir / f"registry-{version}.jws"
    write_atomically(path, text.encode() + b"\n")
    tally = install_if_complete(path, trusted)
    inventory.save()  # after the snapshot is safely written
    return PublishResult(registry, path, tuple(changes), tally, tally.met)


def _authority_signing_key(
    reference: KeyReference, passphrase: bytes | None
) -> ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
    key = open_signing_key(reference, passphrase)
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise PkiError(f"{reference}: a registry authority key must be Ed25519 or P-256")
    return key


def install_if_complete(path: Path, trusted: Root) -> SignatureTally:
    """Count the signatures of the snapshot at `path` (`registry-<n>.jws`); once they meet the
    newest root's threshold, make it the folder's `current.jws` unless a newer one is there
    (the same version with one more signature replaces it)."""
    text = path.read_text()
    verifier = SnapshotVerifier(trusted)
    _, tally = verifier.tally(text)
    if not tally.met or not _VERSIONED.fullmatch(path.name):  # only a publish folder's own files
        return tally
    snapshot = verifier.verify(text, held_version=None, now=None)
    current, _ = read_published(path.parent, trusted)
    if current is None or current.registry.version <= snapshot.registry.version:
        write_atomically(path.parent / CURRENT_SNAPSHOT, text.strip().encode() + b"\n")
    return tally


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
