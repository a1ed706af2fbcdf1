"""The authority keys and roots of a PKI folder, and the trust a gateway is installed with.

    authority/root.json         root version 1: the keys, their holders, the threshold
    authority/root-<N>.json     each later root (N >= 2), made by `rotate-root`, signed by a
                                threshold of root N-1's keys and of its own
    authority/*.key             authority private keys kept in the folder (development: all of
                                them; a deployment keeps each with its holder, or in a token)
    authority/authority.key     (folders made before roots) the one authority key, and
    authority/authority.pub.pem its public key: a 1-of-1 root

A gateway is installed with `root.json` (or, as before, one public key PEM): `load_trusted_root`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from registry._root import (
    AuthorityKey,
    Root,
    SignedRoot,
    count_signatures,
    require_threshold,
    walk_roots,
)
from registry._snapshot import AuthorityPublicKey
from registry.errors import PkiError, RootChainBroken, SnapshotError

__all__ = [
    "AUTHORITY_DIR",
    "AUTHORITY_PUBLIC_KEY",
    "TRUSTED_ROOT",
    "load_authority_public_key",
    "load_trusted_root",
    "next_root",
    "pki_authority_keys",
    "pki_trusted_root_path",
    "read_root",
    "root_chain",
]

AUTHORITY_DIR = Path("authority")
AUTHORITY_PUBLIC_KEY = Path("authority/authority.pub.pem")  # folders made before roots
TRUSTED_ROOT = Path("authority/root.json")
_LATER_ROOT = re.compile(r"root-([0-9]+)\.json")


def load_authority_public_key(path: Path) -> AuthorityPublicKey:
    """One authority public key (PEM SubjectPublicKeyInfo)."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"{path}: not a readable PEM public key ({exc.__class__.__name__})") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise PkiError(f"{path}: the registry authority key must be Ed25519 or ECDSA P-256")
    return key


def read_root(path: Path) -> SignedRoot:
    """A root document from a file, its shape checked (not its signatures)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PkiError(f"{path}: cannot be read ({exc.strerror})") from exc
    try:
        return SignedRoot.parse(data, str(path))
    except SnapshotError as exc:
        raise RootChainBroken(f"{path}: {exc}") from exc


def load_trusted_root(path: Path) -> Root:
    """The root a gateway trusts: a root document signed by its own threshold, or one public
    key PEM (the 1-of-1 root of installations made before roots)."""
    try:
        head = path.read_bytes()[:64]
    except OSError as exc:
        raise PkiError(f"{path}: cannot be read ({exc.strerror})") from exc
    if head.lstrip().startswith(b"-----BEGIN"):
        return Root.single(load_authority_public_key(path))
    signed = read_root(path)
    try:
        require_threshold(count_signatures(signed.root, signed.items()), "the trusted root")
    except SnapshotError as exc:
        raise RootChainBroken(f"{path}: {exc}") from exc
    return signed.root


def root_chain(trusted_path: Path) -> tuple[Root, tuple[SignedRoot, ...]]:
    """The root in `trusted_path` and the later roots beside it (`root-<N>.json`), oldest
    first, checked to chain from it (a key's PEM has none)."""
    trusted = load_trusted_root(trusted_path)
    if trusted.expires is None:
        return trusted, ()
    found = {
        int(m.group(1)): path
        for path in trusted_path.parent.glob("root-*.json")
        if (m := _LATER_ROOT.fullmatch(path.name))
    }
    chain = tuple(read_root(found[v]) for v in sorted(found))
    walk_roots(trusted, chain, None)
    return trusted, chain


def pki_trusted_root_path(pki_root: Path) -> Path:
    """The folder's root.json, or the one key's PEM of a folder made before roots."""
    path = pki_root / TRUSTED_ROOT
    return path if path.exists() else pki_root / AUTHORITY_PUBLIC_KEY


def pki_authority_keys(pki_root: Path) -> tuple[Path, ...]:
    """Every authority key file in the folder (what a development publish signs with)."""
    return tuple(sorted((pki_root / AUTHORITY_DIR).glob("*.key")))


def next_root(
    current: Root,
    *,
    add: Iterable[tuple[AuthorityPublicKey, str]] = (),
    remove: Sequence[str] = (),
    threshold: int | None = None,
    expires: datetime | None = None,
    now: datetime,
    lifetime: timedelta = timedelta(days=365),
) -> SignedRoot:
    """Root N+1, unsigned: `current`'s keys less `remove` plus `add`, with a new threshold."""
    unknown = [k for k in remove if current.key(k) is None]
    if unknown:
        raise RootChainBroken(f"key {unknown[0]} is not in root version {current.version}")
    keys = [k for k in current.keys if k.keyid not in remove]
    for public, holder in add:
        added = AuthorityKey.of(public, holder)
        if any(k.keyid == added.keyid for k in keys):
            raise RootChainBroken(f"key {added.keyid} is in the root already")
        keys.append(added)
    root = Root(
        current.version + 1,
        expires or now + lifetime,
        tuple(keys),
        current.threshold if threshold is None else threshold,
    )
    return SignedRoot(root)
