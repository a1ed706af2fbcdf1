"""The signed registry snapshot: canonical encoding, signing and verification.

A snapshot is a compact JWS (RFC 7515) made with PyJWT by the registry authority's key. Its
payload is the canonical JSON of the registry: keys sorted, no insignificant white space, UTF-8,
lists in id order, times as RFC 3339 UTC seconds. The same registry always encodes to the same
bytes, so two builds can be compared byte for byte and the payload hash identifies a version.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from registry._model import (
    Agency,
    AgencyRole,
    Agreement,
    CacheScope,
    Dataset,
    DatasetField,
    FieldClassification,
    KeyEntry,
    KeyState,
    KeyUsage,
    Purpose,
    PurposeDataset,
    Region,
    Registry,
    ShareClass,
)
from registry.errors import (
    SnapshotExpired,
    SnapshotFormatError,
    SnapshotRollback,
    SnapshotSignatureInvalid,
    SnapshotSignatureMissing,
    SnapshotUntrustedSigner,
)
from signer import (
    SignedJsonAlgorithmRefused,
    SignedJsonRefused,
    SignedJsonSignatureInvalid,
    SignedJsonUnsigned,
    canonical_json,
    sign_json,
    verify_json,
)

__all__ = [
    "FORMAT",
    "MAX_SNAPSHOT_BYTES",
    "SNAPSHOT_MEDIA_TYPE",
    "AuthorityPublicKey",
    "SignedSnapshot",
    "SnapshotVerifier",
    "authority_key_id",
    "format_time",
    "registry_from_payload",
    "registry_to_payload",
    "sign_snapshot",
]

FORMAT = "tongban.registry/v1"
SNAPSHOT_MEDIA_TYPE = "tongban-registry+jws"
MAX_SNAPSHOT_BYTES = 16 * 1024 * 1024  # bytes of compact JWS accepted from a file or a peer
CLOCK_SKEW = timedelta(minutes=5)  # an issued_at this far in the future is still accepted

AuthorityPrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
AuthorityPublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
_AUTHORITY_ALGORITHMS = ("EdDSA", "ES256")


def authority_key_id(public_key: AuthorityPublicKey) -> str:
    """base64url SHA-256 of the authority key's SubjectPublicKeyInfo: the snapshot's `kid`."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(spki).digest()).rstrip(b"=").decode()


def _algorithm_for(public_key: AuthorityPublicKey) -> str:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(public_key.curve, ec.SECP256R1):
        return "ES256"
    raise SnapshotFormatError("the authority key must be Ed25519 or ECDSA P-256")


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _opt_time(value: datetime | None) -> str:
    return format_time(value) if value is not None else ""


def registry_to_payload(registry: Registry) -> dict[str, Any]:
    """The JSON form of a registry (the schema is `tongban.v1.RegistrySnapshot`): each list in
    id order, each entry as its own function writes it."""
    return {
        "format": FORMAT,
        "name": registry.name,
        "version": registry.version,
        "issued_at": format_time(registry.issued_at),
        "expires_at": format_time(registry.expires_at),
        "refresh_seconds": registry.refresh_seconds,
        "witness_threshold": registry.witness_threshold,
        "regions": [_region_payload(r) for r in sorted(registry.regions, key=lambda r: r.code)],
        "agencies": [_agency_payload(a) for a in sorted(registry.agencies, key=lambda a: a.id)],
        "datasets": [
            _dataset_payload(d) for d in sorted(registry.datasets, key=lambda d: (d.region, d.id))
        ],
        "purposes": [_purpose_payload(p) for p in sorted(registry.purposes, key=lambda p: p.id)],
        "agreements": [
            _agreement_payload(a) for a in sorted(registry.agreements, key=lambda a: a.id)
        ],
        "keys": [
            _key_payload(k)
            for k in sorted(registry.keys, key=lambda k: (k.owner, k.usage.value, k.kid))
        ],
    }


def _region_payload(r: Region) -> dict[str, Any]:
    return {
        "code": r.code,
        "name": r.name,
        "endpoint": r.endpoint,
        "ca_certificates": [_b64(c) for c in r.ca_certificates],
        "crls": [_b64(c) for c in r.crls],
    }


def _agency_payload(a: Agency) -> dict[str, Any]:
    return {
        "id": a.id,
        "name": a.name,
        "region": a.region,
        "uscc": a.uscc,
        "roles": sorted(r.value for r in a.roles),
    }


def _dataset_payload(d: Dataset) -> dict[str, Any]:
    return {
        "id": d.id,
        "region": d.region,
        "name": d.name,
        "owner": d.owner,
        "share_class": d.share_class.value,
        "cache_ttl_seconds": d.cache_ttl_seconds,
        "cache_scope": d.cache_scope.value,
        "description": d.description,
        "fields": [
            {
                "name": f.name,
                "classification": f.classification.value,
                "description": f.description,
            }
            for f in sorted(d.fields, key=lambda f: f.name)
        ],
    }


def _purpose_payload(p: Purpose) -> dict[str, Any]:
    return {
        "id": p.id,
        "unified_code": p.unified_code,
        "name": p.name,
        "legal_basis": p.legal_basis,
        "datasets": [
            {"dataset": e.dataset, "fields": sorted(e.fields)}
            for e in sorted(p.datasets, key=lambda e: e.dataset)
        ],
    }


def _agreement_payload(a: Agreement) -> dict[str, Any]:
    return {
        "id": a.id,
        "provider_region": a.provider_region,
        "requester_agencies": sorted(a.requester_agencies),
        "requester_regions": sorted(a.requester_regions),
        "purposes": sorted(a.purposes),
        "valid_from": format_time(a.valid_from),
        "valid_until": format_time(a.valid_until),
        "quota_per_minute": a.quota_per_minute,
        "description": a.description,
    }


def _key_payload(k: KeyEntry) -> dict[str, Any]:
    return {
        "kid": k.kid,
        "usage": k.usage.value,
        "owner": k.owner,
        "region": k.region,
        "algorithm": k.algorithm,
        "state": k.state.value,
        "certificate": _b64(k.certificate),
        "not_before": format_time(k.not_before),
        "not_after": format_time(k.not_after),
        "published_at": format_time(k.published_at),
        "activated_at": _opt_time(k.activated_at),
        "retiring_at": _opt_time(k.retiring_at),
        "revoked_at": _opt_time(k.revoked_at),
        "revocation_reason": k.revocation_reason,
    }


E = TypeVar("E", KeyUsage, KeyState, ShareClass, CacheScope, FieldClassification, AgencyRole)


class _Payload:
    """Strict reader of a snapshot payload: any deviation is a `SnapshotFormatError`."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise SnapshotFormatError(f"snapshot payload: {where} must be an object")
        self.data: dict[str, Any] = data
        self.where = where

    def _get(self, key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in self.data:
            raise SnapshotFormatError(f"snapshot payload: {self.where}.{key} is missing")
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise SnapshotFormatError(f"snapshot payload: {self.where}.{key} has the wrong type")
        return value

    def text(self, key: str) -> str:
        return str(self._get(key, str))

    def integer(self, key: str) -> int:
        value = int(self._get(key, int))
        if value < 0:
            raise SnapshotFormatError(f"snapshot payload: {self.where}.{key} is negative")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        values = self._get(key, list)
        if not all(isinstance(v, str) for v in values):
            raise SnapshotFormatError(f"snapshot payload: {self.where}.{key} must list strings")
        return tuple(values)

    def objects(self, key: str) -> list[_Payload]:
        return [_Payload(v, f"{self.where}.{key}[{i}]") for i, v in enumerate(self._get(key, list))]

    def time(self, key: str) -> datetime:
        value = self.text(key)
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise SnapshotFormatError(
                f"snapshot payload: {self.where}.{key} is not an RFC 3339 UTC time"
            )
        return parsed.astimezone(UTC)

    def opt_time(self, key: str) -> datetime | None:
        return self.time(key) if self.text(key) else None

    def der(self, value: str, key: str) -> bytes:
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SnapshotFormatError(
                f"snapshot payload: {self.where}.{key} is not base64"
            ) from exc

    def choice(self, key: str, enum: Callable[[str], E]) -> E:
        value = self.text(key)
        try:
            return enum(value)
        except ValueError as exc:
            raise SnapshotFormatError(
                f"snapshot payload: {self.where}.{key} has unknown value {value!r}"
            ) from exc


def registry_from_payload(data: Any) -> Registry:
    """Parse a snapshot payload; raise `SnapshotFormatError` on anything unexpected.

    Read in order, the first deviation reported: the format, each list (regions, agencies,
    datasets, purposes, agreements, keys) an entry at a time, no id twice in a list, then the
    registry's own name, version and times."""
    top = _Payload(data, "snapshot")
    if top.text("format") != FORMAT:
        raise SnapshotFormatError(f"snapshot payload: format is not {FORMAT!r}")
    regions = tuple(_region_from(r) for r in top.objects("regions"))
    agencies = tuple(_agency_from(a) for a in top.objects("agencies"))
    datasets = tuple(_dataset_from(d) for d in top.objects("datasets"))
    purposes = tuple(_purpose_from(p) for p in top.objects("purposes"))
    agreements = tuple(_agreement_from(a) for a in top.objects("agreements"))
    keys = tuple(_key_from(k) for k in top.objects("keys"))
    for label, ids in (
        ("region", [r.code for r in regions]),
        ("agency", [a.id for a in agencies]),
        ("dataset", [f"{d.region}/{d.id}" for d in datasets]),
        ("purpose", [p.id for p in purposes]),
        ("agreement", [a.id for a in agreements]),
        ("key", [k.kid for k in keys]),
    ):
        if len(ids) != len(set(ids)):
            raise SnapshotFormatError(f"snapshot payload: a {label} id appears twice")
    return Registry(
        name=top.text("name"),
        version=top.integer("version"),
        issued_at=top.time("issued_at"),
        expires_at=top.time("expires_at"),
        refresh_seconds=top.integer("refresh_seconds"),
        regions=regions,
        agencies=agencies,
        datasets=datasets,
        purposes=purposes,
        agreements=agreements,
        keys=keys,
        # absent from snapshots published before witnessing: no cosignature required
        witness_threshold=top.integer("witness_threshold")
        if "witness_threshold" in top.data
        else 0,
    )


def _region_from(r: _Payload) -> Region:
    return Region(
        code=r.text("code"),
        name=r.text("name"),
        endpoint=r.text("endpoint"),
        ca_certificates=tuple(r.der(c, "ca_certificates") for c in r.texts("ca_certificates")),
        crls=tuple(r.der(c, "crls") for c in r.texts("crls")),
    )


def _agency_from(a: _Payload) -> Agency:
    return Agency(
        id=a.text("id"),
        name=a.text("name"),
        region=a.text("region"),
        uscc=a.text("uscc"),
        roles=frozenset(
            _Payload({"role": x}, a.where).choice("role", AgencyRole) for x in a.texts("roles")
        ),
    )


def _dataset_from(d: _Payload) -> Dataset:
    return Dataset(
        id=d.text("id"),
        region=d.text("region"),
        name=d.text("name"),
        owner=d.text("owner"),
        share_class=d.choice("share_class", ShareClass),
        cache_ttl_seconds=d.integer("cache_ttl_seconds"),
        cache_scope=d.choice("cache_scope", CacheScope),
        description=d.text("description"),
        fields=tuple(
            DatasetField(
                f.text("name"),
                f.choice("classification", FieldClassification),
                f.text("description"),
            )
            for f in d.objects("fields")
        ),
    )


def _purpose_from(p: _Payload) -> Purpose:
    return Purpose(
        id=p.text("id"),
        unified_code=p.text("unified_code"),
        name=p.text("name"),
        legal_basis=p.text("legal_basis"),
        datasets=tuple(
            PurposeDataset(e.text("dataset"), e.texts("fields")) for e in p.objects("datasets")
        ),
    )


def _agreement_from(a: _Payload) -> Agreement:
    return Agreement(
        id=a.text("id"),
        provider_region=a.text("provider_region"),
        requester_agencies=frozenset(a.texts("requester_agencies")),
        requester_regions=frozenset(a.texts("requester_regions")),
        purposes=a.texts("purposes"),
        valid_from=a.time("valid_from"),
        valid_until=a.time("valid_until"),
        quota_per_minute=a.integer("quota_per_minute"),
        description=a.text("description"),
    )


def _key_from(k: _Payload) -> KeyEntry:
    return KeyEntry(
        kid=k.text("kid"),
        usage=k.choice("usage", KeyUsage),
        owner=k.text("owner"),
        region=k.text("region"),
        algorithm=k.text("algorithm"),
        state=k.choice("state", KeyState),
        certificate=k.der(k.text("certificate"), "certificate"),
        not_before=k.time("not_before"),
        not_after=k.time("not_after"),
        published_at=k.time("published_at"),
        activated_at=k.opt_time("activated_at"),
        retiring_at=k.opt_time("retiring_at"),
        revoked_at=k.opt_time("revoked_at"),
        revocation_reason=k.text("revocation_reason"),
    )


@dataclass(frozen=True, slots=True)
class SignedSnapshot:
    """A verified snapshot: the exact JWS received and the registry it carries."""

    jws: str
    registry: Registry
    authority_key_id: str


def sign_snapshot(registry: Registry, authority_key: AuthorityPrivateKey) -> SignedSnapshot:
    """Sign a registry with the authority key; the result is a compact JWS."""
    public = authority_key.public_key()
    kid = authority_key_id(public)
    _algorithm_for(public)  # an authority key of another type is refused in its own words
    token = sign_json(
        canonical_json(registry_to_payload(registry)),
        authority_key,
        typ=SNAPSHOT_MEDIA_TYPE,
        kid=kid,
        algorithms=_AUTHORITY_ALGORITHMS,
    )
    return SignedSnapshot(jws=token, registry=registry, authority_key_id=kid)


class SnapshotVerifier:
    """Verifies snapshots against the authority key a gateway was installed with."""

    def __init__(self, authority_key: AuthorityPublicKey) -> None:
        self._key = authority_key
        self._algorithm = _algorithm_for(authority_key)
        self.authority_key_id = authority_key_id(authority_key)

    def _authority_key_for(self, header: Mapping[str, Any]) -> AuthorityPublicKey:
        # (3)
        kid = header.get("kid")
        if kid != self.authority_key_id:
            raise SnapshotUntrustedSigner(
                f"snapshot is signed by key {kid!r}, not by the installed registry authority "
                f"{self.authority_key_id!r}"
            )
        return self._key

    def verify(
        self, jws: str | bytes, *, held_version: int | None, now: datetime | None
    ) -> SignedSnapshot:
        """Return the verified snapshot, or raise the `SnapshotError` that says why it is refused.

        (0) size and shape: a compact JWS of at most MAX_SNAPSHOT_BYTES
        (1) the protected header parses and asks for no JWS extension (`crit`, `b64`)
        (2) it is signed at all (no `alg: none`, no empty signature)
        (3) its `kid` names the installed authority key
        (4) the signature verifies with that key, with the algorithm bound to the key's type
        (steps 0 to 4 are `signer.verify_json`'s)
        (5) the payload is a snapshot of this format
        (6) it has not expired (and was not issued in the future); `now=None` skips this, for
            reading back what was published, never for accepting a snapshot
        (7) its version is newer than the one held (no rollback, no replay)
        """
        # (0)
        raw = jws.decode("ascii", "replace") if isinstance(jws, bytes) else jws
        raw = raw.strip()
        # (1)-(4): the signed-JSON checks; the kid is only a hint, the installed key verifies
        try:
            verified = verify_json(
                raw,
                key_for=self._authority_key_for,
                algorithms=_AUTHORITY_ALGORITHMS,
                typ=None,  # never checked: the kid and the authority key decide
                typ_required=False,
                max_bytes=MAX_SNAPSHOT_BYTES,
                what="snapshot",
            )
        except SignedJsonUnsigned as exc:
            raise SnapshotSignatureMissing(
                "snapshot is not signed: refusing an unsigned registry"
            ) from exc
        except SignedJsonAlgorithmRefused as exc:
            raise SnapshotSignatureInvalid(
                f"snapshot uses algorithm {exc.algorithm!r}; the authority key signs with "
                f"{self._algorithm}"
            ) from exc
        except SignedJsonSignatureInvalid as exc:
            raise SnapshotSignatureInvalid(
                "snapshot signature does not verify with the authority key"
            ) from exc
        except SignedJsonRefused as exc:  # malformed, a wrong typ, a JWS extension
            raise SnapshotFormatError(str(exc)) from exc
        payload = verified.payload
        # (5)
        try:
            document = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SnapshotFormatError("snapshot payload is not JSON") from exc
        registry = registry_from_payload(document)
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
        return SignedSnapshot(jws=raw, registry=registry, authority_key_id=self.authority_key_id)
