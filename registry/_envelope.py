"""The multi-signed snapshot: a JWS in the general JSON serialisation (RFC 7515 §7.2.1).

    {"payload": b64url(canonical registry JSON),
     "signatures": [{"protected": b64url({"alg", "kid", "typ"}), "signature": b64url}, ...],
     "roots": [root document v2, v3, ...]}

Each signature is one authority key's, over `protected || "." || payload` as RFC 7515 says, so
any JWS library (or `openssl pkeyutl`) can check one. `roots` is an unprotected member (RFC 7515
lets a JWS carry members it does not define): the root documents after version 1, oldest first,
each proving itself by the chain rules of `registry._root`, so a gateway installed with an old
root can reach the newest. A compact JWS (the format before multi-signing) is read as the same
thing with one signature and no roots: it counts only against a root of threshold 1.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from registry._model import Registry
from registry._root import (
    Root,
    SignatureItem,
    SignatureTally,
    SignedRoot,
    b64url,
    b64url_decode,
    count_signatures,
    require_threshold,
    sign_bytes,
    walk_roots,
)
from registry._snapshot import (
    _AUTHORITY_ALGORITHMS,
    CLOCK_SKEW,
    MAX_SNAPSHOT_BYTES,
    SNAPSHOT_MEDIA_TYPE,
    AuthorityPrivateKey,
    AuthorityPublicKey,
    algorithm_for_authority_key,
    authority_key_id,
    format_time,
    registry_from_payload,
    registry_to_payload,
)
from registry.errors import (
    RootRollback,
    SnapshotDuplicateSigner,
    SnapshotExpired,
    SnapshotFormatError,
    SnapshotRollback,
    SnapshotSignatureMissing,
    SnapshotUntrustedSigner,
)
from signer import canonical_json

__all__ = [
    "Envelope",
    "JwsSignature",
    "SignedSnapshot",
    "SnapshotVerifier",
    "add_signature",
    "sign_snapshot",
    "unsigned_snapshot",
]

MAX_SIGNATURES = 64  # signatures one snapshot may carry
EXTENSION_HEADERS = frozenset({"crit", "b64"})  # Tongban understands no JWS extension


@dataclass(frozen=True, slots=True)
class JwsSignature:
    protected: str  # base64url, as received: the signing input is made from it
    signature: str
    header: dict[str, Any] = field(compare=False)

    @property
    def kid(self) -> str:
        return str(self.header.get("kid", ""))


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed, unverified snapshot: payload, signatures and the root chain it carries."""

    payload: str  # base64url
    signatures: tuple[JwsSignature, ...]
    roots: tuple[SignedRoot, ...]

    @classmethod
    def parse(cls, data: str | bytes) -> Envelope:
        """Read the general JSON form, or a compact JWS as one signature; the shape only."""
        if len(data) > MAX_SNAPSHOT_BYTES:
            raise SnapshotFormatError(f"snapshot is larger than {MAX_SNAPSHOT_BYTES} bytes")
        text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
        text = text.strip()
        if not text.startswith("{"):
            parts = text.split(".")
            if len(parts) != 3:
                raise SnapshotFormatError("snapshot is not a JWS (neither JSON nor compact)")
            return cls(parts[1], (_signature({"protected": parts[0], "signature": parts[2]}),), ())
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SnapshotFormatError("snapshot is not valid JSON") from exc
        if not isinstance(document, dict) or not {"payload", "signatures"} <= set(document):
            raise SnapshotFormatError("snapshot JSON must have 'payload' and 'signatures'")
        if set(document) - {"payload", "signatures", "roots"}:
            raise SnapshotFormatError(
                "snapshot JSON has members other than payload, signatures, roots"
            )
        signatures, roots = document["signatures"], document.get("roots", [])
        if not isinstance(document["payload"], str) or not isinstance(signatures, list):
            raise SnapshotFormatError("snapshot JSON: payload or signatures has the wrong type")
        if len(signatures) > MAX_SIGNATURES or not isinstance(roots, list):
            raise SnapshotFormatError(f"snapshot JSON: at most {MAX_SIGNATURES} signatures")
        return cls(
            document["payload"],
            tuple(_signature(s) for s in signatures),
            tuple(SignedRoot.from_document(r) for r in roots),
        )

    def to_text(self) -> str:
        return canonical_json(
            {
                "payload": self.payload,
                "signatures": [
                    {"protected": s.protected, "signature": s.signature} for s in self.signatures
                ],
                "roots": [r.to_document() for r in self.roots],
            }
        ).decode()

    def payload_bytes(self) -> bytes:
        try:
            return b64url_decode(self.payload)
        except ValueError as exc:
            raise SnapshotFormatError("snapshot payload is not base64url") from exc

    def registry(self) -> Registry:
        try:
            document = json.loads(self.payload_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SnapshotFormatError("snapshot payload is not JSON") from exc
        return registry_from_payload(document)

    def items(self) -> list[SignatureItem]:
        items = []
        for s in self.signatures:
            try:
                signature = b64url_decode(s.signature)
            except ValueError as exc:
                raise SnapshotFormatError("a snapshot signature is not base64url") from exc
            message = f"{s.protected}.{self.payload}".encode("ascii")
            items.append(SignatureItem(s.kid, str(s.header["alg"]), message, signature))
        return items

    def signers(self) -> tuple[str, ...]:
        return tuple(s.kid for s in self.signatures)


def _signature(entry: Any) -> JwsSignature:
    if not isinstance(entry, dict) or set(entry) != {"protected", "signature"}:
        raise SnapshotFormatError("a snapshot signature has exactly 'protected' and 'signature'")
    protected, signature = entry["protected"], entry["signature"]
    try:
        header = json.loads(b64url_decode(protected))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SnapshotFormatError("a snapshot signature's protected header does not parse") from exc
    if not isinstance(header, dict) or not isinstance(signature, str):
        raise SnapshotFormatError("a snapshot signature's protected header is not an object")
    if header.get("alg") in (None, "none") or not signature:
        raise SnapshotSignatureMissing("snapshot is not signed: refusing an unsigned registry")
    if header["alg"] not in _AUTHORITY_ALGORITHMS:
        raise SnapshotFormatError(
            f"snapshot signature uses algorithm {header['alg']!r}; authority keys sign with "
            f"{' or '.join(_AUTHORITY_ALGORITHMS)}"
        )
    if EXTENSION_HEADERS & set(header):
        raise SnapshotFormatError("snapshot signature asks for a JWS extension (crit, b64)")
    if not isinstance(header.get("kid"), str):
        raise SnapshotFormatError("a snapshot signature names no key (kid)")
    # `typ` is not checked (as before multi-signing): the kid and the root's key decide.
    return JwsSignature(protected, signature, header)


@dataclass(frozen=True, slots=True)
class SignedSnapshot:
    """A verified snapshot: the exact text received, the registry, and who signed it under
    which root."""

    jws: str
    registry: Registry
    authority_key_id: str  # the first valid signer (what `Registry.GetSnapshot` reports)
    signers: tuple[str, ...] = ()
    root: Root | None = None


def snapshot_payload(data: str | bytes) -> bytes:
    """The canonical registry JSON a snapshot (either form) carries, unverified: what its
    payload hash is taken over. `SnapshotFormatError` when it is not a snapshot."""
    return Envelope.parse(data).payload_bytes()


def unsigned_snapshot(registry: Registry, roots: Sequence[SignedRoot] = ()) -> str:
    """The envelope of `registry` with no signature yet: the start of a signing ceremony."""
    payload = b64url(canonical_json(registry_to_payload(registry)))
    return Envelope(payload, (), tuple(roots)).to_text()


def add_signature(text: str, key: AuthorityPrivateKey, root: Root | None = None) -> str:
    """Add one authority key's signature. Refused: a key `root` does not name (when given), a
    key that has signed already, an envelope whose payload is not a snapshot."""
    envelope = Envelope.parse(text)
    envelope.registry()  # a payload the signer cannot read is not signed
    public = key.public_key()
    kid = authority_key_id(public)
    if root is not None and root.key(kid) is None:
        raise SnapshotUntrustedSigner(
            f"key {kid} is not named by root version {root.version}: it may not sign"
        )
    if kid in envelope.signers():
        raise SnapshotDuplicateSigner(f"key {kid} has signed this snapshot already")
    header = {"alg": algorithm_for_authority_key(public), "kid": kid, "typ": SNAPSHOT_MEDIA_TYPE}
    protected = b64url(canonical_json(header))
    signature = sign_bytes(key, f"{protected}.{envelope.payload}".encode("ascii"))
    added = JwsSignature(protected, b64url(signature), header)
    return Envelope(envelope.payload, (*envelope.signatures, added), envelope.roots).to_text()


def sign_snapshot(
    registry: Registry, *keys: AuthorityPrivateKey, roots: Sequence[SignedRoot] = ()
) -> SignedSnapshot:
    """Sign a registry with each of `keys` (not checked against a root: the verifier does)."""
    text = unsigned_snapshot(registry, roots)
    for key in keys:
        text = add_signature(text, key)
    signers = Envelope.parse(text).signers()
    return SignedSnapshot(text, registry, signers[0] if signers else "", signers)


class SnapshotVerifier:
    """Verifies snapshots against the root a gateway was installed with (or one public key:
    the 1-of-1 root)."""

    def __init__(self, trusted: Root | AuthorityPublicKey) -> None:
        self.root = trusted if isinstance(trusted, Root) else Root.single(trusted)
        self.authority_key_id = self.root.keys[0].keyid

    def tally(self, jws: str | bytes, root: Root | None = None) -> tuple[Root, SignatureTally]:
        """The newest root the envelope's chain reaches and its signature count, not raising
        for the count (for `registry show` and a ceremony's progress)."""
        envelope = Envelope.parse(jws)
        newest = walk_roots(root or self.root, envelope.roots, None)
        return newest, count_signatures(newest, envelope.items())

    def verify(
        self,
        jws: str | bytes,
        *,
        held_version: int | None,
        now: datetime | None,
        root: Root | None = None,
    ) -> SignedSnapshot:
        """Return the verified snapshot, or raise the `SnapshotError` that says why it is refused.

        (0) size and shape: a JWS (general JSON or compact) of at most MAX_SNAPSHOT_BYTES; each
            protected header parses, is signed (no `alg: none`), names a kid, asks for no
            extension
        (1) the root chain it carries leads from the root held (`root`, else the installed
            one) by the rules of `registry._root.advance_root`
        (2) it is not signed under a root older than the one held (no root rollback)
        (3) the newest root reached has not expired (skipped when `now` is None)
        (4) each signature is by a key of that root, each key once, each verifies, and there
            are at least its threshold of them
        (5) the payload is a snapshot of this format
        (6) it has not expired (and was not issued in the future); `now=None` skips this, for
            reading back what was published, never for accepting a snapshot
        (7) its version is newer than the one held (no rollback, no replay)
        """
        # (0)
        envelope = Envelope.parse(jws)
        if not envelope.signatures:
            raise SnapshotSignatureMissing("snapshot is not signed: refusing an unsigned registry")
        held_root = root or self.root
        # (2) before (1): an old chain would otherwise be skipped silently
        reached = max((r.root.version for r in envelope.roots), default=1)
        if reached < held_root.version:
            raise RootRollback(
                f"snapshot is signed under root version {reached}; this gateway holds root "
                f"version {held_root.version}: refusing a root rollback"
            )
        # (1), (3)
        newest = walk_roots(held_root, envelope.roots, now)
        # (4)
        tally = count_signatures(newest, envelope.items())
        require_threshold(tally, "snapshot")
        # (5)
        registry = envelope.registry()
        # (6)
        if now is None:
            pass
        elif now >= registry.expires_at:
            raise SnapshotExpired(
                f"snapshot version {registry.version} expired at {format_time(registry.expires_at)}"
            )
        elif registry.issued_at - CLOCK_SKEW > now:
            raise SnapshotFormatError(
                f"snapshot version {registry.version} claims to be issued in the future "
                f"({format_time(registry.issued_at)})"
            )
        # (7)
        if held_version is not None and registry.version <= held_version:
            raise SnapshotRollback(
                f"snapshot version {registry.version} is not newer than the version held "
                f"({held_version}): refusing a rollback"
            )
        text = jws.decode("ascii", "replace") if isinstance(jws, bytes) else jws
        return SignedSnapshot(text.strip(), registry, tally.valid[0], tally.valid, newest)
