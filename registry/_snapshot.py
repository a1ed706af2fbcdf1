"""The registry snapshot's payload: its canonical encoding and its strict reader.

A snapshot is a JWS (RFC 7515) signed by a threshold of authority keys (`registry._envelope`,
`registry._root`). Its payload is the canonical JSON of the registry: keys sorted, no insignificant white space, UTF-8,
lists in id order, times as RFC 3339 UTC seconds. The same registry always encodes to the same
bytes, so two builds can be compared byte for byte and the payload hash identifies a version.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
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
    MaterialKind,
    Matter,
    MatterMaterial,
    MatterPart,
    MatterQuery,
    PartRole,
    Purpose,
    PurposeDataset,
    Region,
    Registry,
    ShareClass,
)
from registry.errors import SnapshotFormatError

__all__ = [
    "FORMAT",
    "MAX_SNAPSHOT_BYTES",
    "SNAPSHOT_MEDIA_TYPE",
    "AuthorityPrivateKey",
    "AuthorityPublicKey",
    "algorithm_for_authority_key",
    "authority_key_id",
    "format_time",
    "registry_from_payload",
    "registry_to_payload",
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


def algorithm_for_authority_key(public_key: AuthorityPublicKey) -> str:
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
        "matters": [_matter_payload(m) for m in sorted(registry.matters, key=lambda m: m.code)],
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
        **({"requires_consent": True} if d.requires_consent else {}),
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


def _matter_payload(m: Matter) -> dict[str, Any]:
    """A matter; its parts keep their order (the order they complete in), the rest is sorted."""
    return {
        "code": m.code,
        "name": m.name,
        "category": m.category,
        "time_limit_days": m.time_limit_days,
        "parts": [
            {"region": p.region, "role": p.role.value, "description": p.description}
            for p in m.parts
        ],
        "materials": [
            {
                "id": x.id,
                "kind": x.kind.value,
                "credential_type": x.credential_type,
                "description": x.description,
                "required": x.required,
            }
            for x in sorted(m.materials, key=lambda x: x.id)
        ],
        "queries": [
            {"dataset": q.dataset, "purpose": q.purpose, "fields": sorted(q.fields)}
            for q in sorted(m.queries, key=lambda q: (q.dataset, q.purpose))
        ],
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


E = TypeVar(
    "E",
    KeyUsage,
    KeyState,
    ShareClass,
    CacheScope,
    FieldClassification,
    AgencyRole,
    PartRole,
    MaterialKind,
)


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

    def flag(self, key: str) -> bool:
        value = self.data.get(key)
        if not isinstance(value, bool):
            raise SnapshotFormatError(f"snapshot payload: {self.where}.{key} has the wrong type")
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
    datasets, purposes, agreements, keys, matters) an entry at a time, no id twice in a list, then the
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
    # absent from snapshots published before the matter catalogue: no matters
    matters = (
        tuple(_matter_from(m) for m in top.objects("matters")) if "matters" in top.data else ()
    )
    for label, ids in (
        ("region", [r.code for r in regions]),
        ("agency", [a.id for a in agencies]),
        ("dataset", [f"{d.region}/{d.id}" for d in datasets]),
        ("purpose", [p.id for p in purposes]),
        ("agreement", [a.id for a in agreements]),
        ("key", [k.kid for k in keys]),
        ("matter", [m.code for m in matters]),
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
        matters=matters,
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
        requires_consent="requires_consent" in d.data and d.flag("requires_consent"),
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


def _matter_from(m: _Payload) -> Matter:
    return Matter(
        code=m.text("code"),
        name=m.text("name"),
        category=m.text("category"),
        time_limit_days=m.integer("time_limit_days"),
        parts=tuple(
            MatterPart(p.text("region"), p.choice("role", PartRole), p.text("description"))
            for p in m.objects("parts")
        ),
        materials=tuple(
            MatterMaterial(
                x.text("id"),
                x.choice("kind", MaterialKind),
                x.text("credential_type"),
                x.text("description"),
                x.flag("required"),
            )
            for x in m.objects("materials")
        ),
        queries=tuple(
            MatterQuery(q.text("dataset"), q.text("purpose"), q.texts("fields"))
            for q in m.objects("queries")
        ),
    )
