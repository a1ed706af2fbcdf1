"""The trusted root: which authority keys may sign a snapshot, and how many must (TUF-style).

A root document is canonical JSON:

    {"signed": {"_type": "tongban-root", "version": N, "expires": "2027-01-01T00:00:00Z",
                "threshold": k,
                "keys": {keyid: {"alg": "EdDSA" | "ES256", "public_key": b64 SPKI DER,
                                 "holder": "national platform" | region code | name}}},
     "signatures": [{"keyid": ..., "sig": b64url}]}

The keyid is `authority_key_id` (base64url SHA-256 of the SubjectPublicKeyInfo) and is checked
against the key it names. A signature is over `canonical_json(signed)`, in the JWS form of its
algorithm (Ed25519, or ECDSA P-256 r||s), so one signing routine serves roots and snapshots.

Root N+1 is accepted only when it is version N+1 and signed by a threshold of root N's keys AND
by a threshold of its own (`advance_root`); a chain of roots is walked from the one a gateway
was installed with (`walk_roots`). Only the newest root reached must not have expired: the roots
before it are links, as in TUF. A gateway installed with one public key has the implicit root
`Root.single(key)`: version 1, threshold 1, no expiry.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from registry._snapshot import (
    AuthorityPrivateKey,
    AuthorityPublicKey,
    algorithm_for_authority_key,
    authority_key_id,
    format_time,
)
from registry.errors import (
    RootChainBroken,
    RootError,
    RootExpired,
    SnapshotBelowThreshold,
    SnapshotDuplicateSigner,
    SnapshotError,
    SnapshotSignatureInvalid,
    SnapshotUntrustedSigner,
)
from signer import b64url_decode as _b64url_decode
from signer import b64url_encode, canonical_json

__all__ = [
    "MAX_ROOT_BYTES",
    "AuthorityKey",
    "Root",
    "RootSignature",
    "SignatureItem",
    "SignatureTally",
    "SignedRoot",
    "advance_root",
    "b64url",
    "b64url_decode",
    "count_signatures",
    "require_threshold",
    "sign_bytes",
    "sign_root",
    "walk_roots",
]

ROOT_TYPE = "tongban-root"
MAX_ROOT_BYTES = 512_000  # bytes of one root document
MAX_ROOT_KEYS = 64  # authority keys one root may name


b64url = b64url_encode  # the name the root and the envelope write with


def b64url_decode(text: object) -> bytes:
    """Strict base64url without padding (signer's RFC 7515 reading); `ValueError` otherwise,
    also for a JSON value that is not a string."""
    if not isinstance(text, str):
        raise ValueError("not unpadded base64url")  # noqa: TRY004 -- callers read any malformed value as ValueError
    return _b64url_decode(text)


def sign_bytes(key: AuthorityPrivateKey, message: bytes) -> bytes:
    """A JWS signature over `message`: Ed25519, or ECDSA P-256 SHA-256 as r||s."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return OKPAlgorithm().sign(message, key)
    algorithm_for_authority_key(key.public_key())  # P-256 only
    return ECAlgorithm(ECAlgorithm.SHA256).sign(message, key)


def _verify_bytes(key: AuthorityPublicKey, message: bytes, signature: bytes) -> bool:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return OKPAlgorithm().verify(message, key, signature)
    return ECAlgorithm(ECAlgorithm.SHA256).verify(message, key, signature)


@dataclass(frozen=True, slots=True)
class AuthorityKey:
    """One authority key a root names: who holds it, and the public key that checks it."""

    keyid: str
    algorithm: str
    public_key: AuthorityPublicKey = field(compare=False, repr=False)
    holder: str

    def __post_init__(self) -> None:
        if self.keyid != authority_key_id(self.public_key):
            raise RootChainBroken(f"root key {self.keyid!r} is not the id of its public key")
        if self.algorithm != algorithm_for_authority_key(self.public_key):
            raise RootChainBroken(f"root key {self.keyid!r}: alg does not match its public key")
        if not self.holder.strip():
            raise RootChainBroken(f"root key {self.keyid!r} names no holder")

    @classmethod
    def of(cls, public_key: AuthorityPublicKey, holder: str) -> AuthorityKey:
        return cls(
            authority_key_id(public_key),
            algorithm_for_authority_key(public_key),
            public_key,
            holder,
        )


@dataclass(frozen=True, slots=True)
class Root:
    """Which authority keys sign, and how many must; refuses to exist inconsistent."""

    version: int
    expires: datetime | None  # None only for the implicit root of one installed key
    keys: tuple[AuthorityKey, ...]
    threshold: int

    def __post_init__(self) -> None:
        # One order, by keyid, so that equal roots compare equal however they were built.
        object.__setattr__(self, "keys", tuple(sorted(self.keys, key=lambda k: k.keyid)))
        ids = [k.keyid for k in self.keys]
        if self.version < 1:
            raise RootChainBroken(f"root version {self.version} is not a positive integer")
        if len(ids) != len(set(ids)):
            raise RootChainBroken(f"root version {self.version} names a key twice")
        if not 1 <= self.threshold <= len(ids) or len(ids) > MAX_ROOT_KEYS:
            raise RootChainBroken(
                f"root version {self.version}: threshold {self.threshold} of {len(ids)} keys is "
                "not possible (1 <= threshold <= keys)"
            )

    @classmethod
    def single(cls, public_key: AuthorityPublicKey) -> Root:
        """The root of a gateway installed with one authority public key: 1 of 1."""
        return cls(1, None, (AuthorityKey.of(public_key, "registry authority"),), 1)

    def key(self, keyid: str) -> AuthorityKey | None:
        return next((k for k in self.keys if k.keyid == keyid), None)

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires

    def to_signed(self) -> dict[str, Any]:
        if self.expires is None:
            raise RootError("the implicit root of one installed key has no document")
        return {
            "_type": ROOT_TYPE,
            "version": self.version,
            "expires": format_time(self.expires),
            "threshold": self.threshold,
            "keys": {
                k.keyid: {
                    "alg": k.algorithm,
                    "holder": k.holder,
                    "public_key": base64.b64encode(
                        k.public_key.public_bytes(
                            serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo,
                        )
                    ).decode("ascii"),
                }
                for k in self.keys
            },
        }

    @classmethod
    def from_signed(cls, data: Any) -> Root:
        """Parse the `signed` part; raise `RootChainBroken` on anything unexpected."""
        if not isinstance(data, dict) or data.get("_type") != ROOT_TYPE:
            raise RootChainBroken(f"not a root document (_type is not {ROOT_TYPE!r})")
        if set(data) != {"_type", "version", "expires", "threshold", "keys"}:
            raise RootChainBroken("root document: unexpected or missing members in 'signed'")
        version, threshold, keys = data["version"], data["threshold"], data["keys"]
        if not all(type(v) is int for v in (version, threshold)) or not isinstance(keys, dict):
            raise RootChainBroken("root document: version, threshold or keys has the wrong type")
        try:
            expires = datetime.fromisoformat(data["expires"])
        except (TypeError, ValueError):
            expires = None
        if expires is None or expires.tzinfo is None:
            raise RootChainBroken("root document: expires is not an RFC 3339 UTC time")
        return cls(
            version,
            expires.astimezone(UTC),
            tuple(_key_from(keyid, entry) for keyid, entry in sorted(keys.items())),
            threshold,
        )


def _key_from(keyid: str, entry: Any) -> AuthorityKey:
    if not isinstance(entry, dict) or set(entry) != {"alg", "holder", "public_key"}:
        raise RootChainBroken(f"root key {keyid!r}: expected alg, holder and public_key")
    try:
        public = serialization.load_der_public_key(
            base64.b64decode(entry["public_key"], validate=True)
        )
    except (TypeError, ValueError, binascii.Error) as exc:
        raise RootChainBroken(f"root key {keyid!r}: public_key is not base64 SPKI DER") from exc
    if not isinstance(public, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise RootChainBroken(f"root key {keyid!r} must be Ed25519 or ECDSA P-256")
    if not isinstance(entry["alg"], str) or not isinstance(entry["holder"], str):
        raise RootChainBroken(f"root key {keyid!r}: alg and holder must be strings")
    try:
        return AuthorityKey(keyid, entry["alg"], public, entry["holder"])
    except Exception as exc:  # a curve other than P-256: the snapshot module's own words
        if isinstance(exc, RootError):
            raise
        raise RootChainBroken(f"root key {keyid!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class SignatureItem:
    """One signature to count: the key it names, the algorithm it claims (None: the key's), the
    bytes it signs and the signature."""

    keyid: str
    algorithm: str | None
    message: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class SignatureTally:
    """What counting signatures against a root found (non-raising; `require_threshold` raises)."""

    threshold: int
    keys: int
    valid: tuple[str, ...]
    unknown: tuple[str, ...]  # keyids the root does not name
    duplicate: tuple[str, ...]  # keyids that signed more than once
    invalid: tuple[str, ...]  # root keys whose signature does not verify

    @property
    def met(self) -> bool:
        return len(self.valid) >= self.threshold and not (
            self.unknown or self.duplicate or self.invalid
        )

    def describe(self) -> str:
        return f"{len(self.valid)} valid of {self.keys} keys, {self.threshold} needed" + (
            f"; valid: {', '.join(self.valid)}" if self.valid else ""
        )


def count_signatures(root: Root, items: Iterable[SignatureItem]) -> SignatureTally:
    """Count `items` against `root`: each key at most once, each signature checked with the key
    the root holds (a keyid is only a hint), with the algorithm bound to that key."""
    valid: list[str] = []
    unknown: list[str] = []
    duplicate: list[str] = []
    invalid: list[str] = []
    seen: set[str] = set()
    for item in items:
        key = root.key(item.keyid)
        if key is None:
            unknown.append(item.keyid)
            continue
        if item.keyid in seen:
            duplicate.append(item.keyid)
            continue
        seen.add(item.keyid)
        claimed = item.algorithm if item.algorithm is not None else key.algorithm
        if claimed == key.algorithm and _verify_bytes(key.public_key, item.message, item.signature):
            valid.append(item.keyid)
        else:
            invalid.append(item.keyid)
    return SignatureTally(
        root.threshold,
        len(root.keys),
        tuple(valid),
        tuple(unknown),
        tuple(duplicate),
        tuple(invalid),
    )


def require_threshold(tally: SignatureTally, what: str) -> None:
    """Raise the refusal `tally` calls for: a key twice, a key outside the root, a signature
    that does not verify, or fewer valid signatures than the threshold."""
    if tally.duplicate:
        raise SnapshotDuplicateSigner(
            f"{what} is signed more than once by key {tally.duplicate[0]}: each key counts once"
        )
    if tally.unknown:
        raise SnapshotUntrustedSigner(
            f"{what} is signed by key {tally.unknown[0]!r}, which the trusted root does not name"
        )
    if tally.invalid:
        raise SnapshotSignatureInvalid(
            f"{what}: the signature by key {tally.invalid[0]} does not verify"
        )
    if len(tally.valid) < tally.threshold:
        raise SnapshotBelowThreshold(
            f"{what} has too few signatures: {tally.threshold} of {tally.keys} needed, "
            f"{len(tally.valid)} valid" + (f" ({', '.join(tally.valid)})" if tally.valid else "")
        )


@dataclass(frozen=True, slots=True)
class RootSignature:
    keyid: str
    sig: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SignedRoot:
    """A root document: the root and the signatures over its canonical `signed` part."""

    root: Root
    signatures: tuple[RootSignature, ...] = ()

    @property
    def message(self) -> bytes:
        return canonical_json(self.root.to_signed())

    def to_document(self) -> dict[str, Any]:
        return {
            "signed": self.root.to_signed(),
            "signatures": [{"keyid": s.keyid, "sig": b64url(s.sig)} for s in self.signatures],
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_document()) + b"\n"

    def items(self) -> list[SignatureItem]:
        message = self.message
        return [SignatureItem(s.keyid, None, message, s.sig) for s in self.signatures]

    @classmethod
    def from_document(cls, data: Any) -> SignedRoot:
        if not isinstance(data, dict) or set(data) != {"signed", "signatures"}:
            raise RootChainBroken("a root document has exactly 'signed' and 'signatures'")
        root = Root.from_signed(data["signed"])
        if canonical_json(root.to_signed()) != canonical_json(data["signed"]):
            raise RootChainBroken(f"root version {root.version} is not in canonical form")
        raw = data["signatures"]
        if not isinstance(raw, list) or len(raw) > 2 * MAX_ROOT_KEYS:
            raise RootChainBroken(f"root version {root.version}: signatures must be a list")
        signatures = []
        for entry in raw:
            if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
                raise RootChainBroken(f"root version {root.version}: a malformed signature")
            try:
                signatures.append(RootSignature(str(entry["keyid"]), b64url_decode(entry["sig"])))
            except ValueError as exc:
                raise RootChainBroken(
                    f"root version {root.version}: a signature is not base64url"
                ) from exc
        return cls(root, tuple(signatures))

    @classmethod
    def parse(cls, data: bytes, where: str) -> SignedRoot:
        if len(data) > MAX_ROOT_BYTES:
            raise RootChainBroken(f"{where}: larger than {MAX_ROOT_BYTES} bytes")
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RootChainBroken(f"{where}: not a JSON root document") from exc
        return cls.from_document(document)


def sign_root(
    signed: SignedRoot, key: AuthorityPrivateKey, *, previous: Root | None = None
) -> SignedRoot:
    """Add one signature; refused for a key in neither this root nor `previous`, or a key that
    has signed already."""
    keyid = authority_key_id(key.public_key())
    if signed.root.key(keyid) is None and (previous is None or previous.key(keyid) is None):
        raise SnapshotUntrustedSigner(
            f"key {keyid} is not named by root version {signed.root.version}"
            + (f" nor by root version {previous.version}" if previous else "")
        )
    if any(s.keyid == keyid for s in signed.signatures):
        raise SnapshotDuplicateSigner(
            f"key {keyid} has signed root version {signed.root.version} already"
        )
    return SignedRoot(
        signed.root, (*signed.signatures, RootSignature(keyid, sign_bytes(key, signed.message)))
    )


def advance_root(trusted: Root, candidate: SignedRoot) -> Root:
    """Accept `candidate` as the successor of `trusted`, or raise the `RootError` that says why.

    (1) its version is exactly trusted.version + 1
    (2) every signature is by a key of one of the two roots, each key once
    (3) a threshold of the trusted root's keys signed it, and (4) a threshold of its own
    """
    new = candidate.root
    # (1)
    if new.version != trusted.version + 1:
        raise RootChainBroken(
            f"root version {new.version} does not follow root version {trusted.version}"
        )
    items = candidate.items()
    # (2)
    strangers = [
        i.keyid for i in items if trusted.key(i.keyid) is None and new.key(i.keyid) is None
    ]
    if strangers:
        raise RootChainBroken(
            f"root version {new.version} is signed by key {strangers[0]}, named by neither "
            f"root {trusted.version} nor root {new.version}"
        )
    for label, root in ((f"root {trusted.version}", trusted), ("its own", new)):
        # (3), (4): signatures by the other root's keys are not this root's concern
        tally = count_signatures(root, [i for i in items if root.key(i.keyid) is not None])
        try:
            require_threshold(tally, f"root version {new.version}")
        except SnapshotError as exc:
            raise RootChainBroken(f"{exc} (counted against the keys of {label})") from exc
    return new


def walk_roots(trusted: Root, chain: Sequence[SignedRoot], now: datetime | None) -> Root:
    """The newest root reached from `trusted` along `chain` (oldest first). Roots the gateway
    has passed already are skipped; the one it holds must be the same root. `now=None` skips
    the expiry check (reading back what was published)."""
    current = trusted
    for signed in chain:
        if signed.root.version < current.version:
            continue
        if signed.root.version == current.version:
            if signed.root != current:
                raise RootChainBroken(
                    f"the chain carries a root version {current.version} other than the one held"
                )
            continue
        current = advance_root(current, signed)
    if now is not None and current.expired(now):
        raise RootExpired(
            f"root version {current.version} expired at {format_time(current.expires or now)}: "
            "a snapshot needs a newer root (`tongban registry rotate-root`)"
        )
    return current
