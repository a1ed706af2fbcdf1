"""The registry's domain model: frozen value objects, validated where they are made.

A `Registry` is one complete, versioned picture of who trusts whom for what: regions and their
certificate authorities, agencies and their roles, datasets with their field classifications,
purposes (service items) with the fields each may see, agreements between regions, and every
key and certificate with its lifecycle state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property

from registry.errors import KeyRefused

__all__ = [
    "Agency",
    "AgencyRole",
    "Agreement",
    "CacheScope",
    "Dataset",
    "DatasetField",
    "FieldClassification",
    "KeyEntry",
    "KeyState",
    "KeyUsage",
    "MaterialKind",
    "Matter",
    "MatterMaterial",
    "MatterPart",
    "MatterQuery",
    "PartRole",
    "Purpose",
    "PurposeDataset",
    "Region",
    "Registry",
    "ShareClass",
]


class KeyUsage(StrEnum):
    SEAL = "seal"
    SIGNATURE = "signature"
    TOKEN = "token"  # noqa: S105 - a key usage, not a secret
    TLS = "tls"
    AUDIT = "audit"


class KeyState(StrEnum):
    PENDING = "pending"  # published, not yet used to sign
    ACTIVE = "active"  # signs and verifies
    RETIRING = "retiring"  # verifies, no longer signs
    REVOKED = "revoked"  # refused for anything dated after `revoked_at`


class AgencyRole(StrEnum):
    REQUESTER = "requester"
    PROVIDER = "provider"
    OVERSIGHT = "oversight"
    SECURITY = "security"


class ShareClass(StrEnum):
    """共享类型 of a dataset (国务院《政务信息资源共享管理暂行办法》)."""

    UNCONDITIONAL = "无条件共享"
    CONDITIONAL = "有条件共享"
    NOT_SHARED = "不予共享"


class CacheScope(StrEnum):
    PROVIDER = "provider"  # only the owner's gateway caches
    REQUESTER = "requester"  # requesting gateways may keep the sealed answer for the TTL


class FieldClassification(StrEnum):
    PUBLIC = "public"
    INTERNAL = "internal"
    PERSONAL = "personal"
    SENSITIVE_PERSONAL = "sensitive_personal"


@dataclass(frozen=True, slots=True)
class Region:
    code: str  # GB/T 2260 province-level code
    name: str
    endpoint: str  # host:port of the region's gateway
    ca_certificates: tuple[bytes, ...] = ()  # DER, root first
    crls: tuple[bytes, ...] = ()  # DER: the region CA's current revocation lists


@dataclass(frozen=True, slots=True)
class Agency:
    id: str
    name: str
    region: str
    uscc: str
    roles: frozenset[AgencyRole]

    def has_role(self, role: AgencyRole) -> bool:
        return role in self.roles


@dataclass(frozen=True, slots=True)
class DatasetField:
    name: str
    classification: FieldClassification
    description: str = ""


@dataclass(frozen=True, slots=True)
class Dataset:
    """One region's dataset; `id` is the catalogue id, unique within the region."""

    id: str
    region: str
    name: str
    owner: str  # agency id
    share_class: ShareClass
    cache_ttl_seconds: int
    cache_scope: CacheScope
    fields: tuple[DatasetField, ...]
    description: str = ""
    # A query needs the citizen's consent artefact (gateway.consent); absent in older snapshots.
    requires_consent: bool = False

    @property
    def field_names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields)


@dataclass(frozen=True, slots=True)
class PurposeDataset:
    dataset: str  # catalogue id
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Purpose:
    """A service item (政务服务事项) and the fields of each dataset it may see."""

    id: str
    unified_code: str
    name: str
    legal_basis: str
    datasets: tuple[PurposeDataset, ...]

    def allowed_fields(self, dataset: str) -> frozenset[str] | None:
        for entry in self.datasets:
            if entry.dataset == dataset:
                return frozenset(entry.fields)
        return None


@dataclass(frozen=True, slots=True)
class Agreement:
    id: str
    provider_region: str
    requester_agencies: frozenset[str]
    requester_regions: frozenset[str]
    purposes: tuple[str, ...]
    valid_from: datetime
    valid_until: datetime
    quota_per_minute: int
    description: str = ""

    def names_requester(self, agency: Agency) -> bool:
        return agency.id in self.requester_agencies or agency.region in self.requester_regions

    def in_force(self, at: datetime) -> bool:
        return self.valid_from <= at < self.valid_until


class PartRole(StrEnum):
    """What a region does for a matter (跨省通办): 收件 at a window, 办理, or 协办 a step."""

    RECEIVE = "receive"  # 收件地: takes the application and materials, delivers the result
    HANDLE = "handle"  # 办理地: decides the matter (may query data for it)
    ASSIST = "assist"  # 协办地: does one step of a 多地联办 matter (may query data for it)


class MaterialKind(StrEnum):
    CREDENTIAL = "credential"  # an electronic credential (电子证照) of a credential type
    DOCUMENT = "document"  # a document the applicant supplies


@dataclass(frozen=True, slots=True)
class MatterPart:
    """One region's part of a matter; parts complete in the order the matter lists them."""

    region: str
    role: PartRole
    description: str = ""


@dataclass(frozen=True, slots=True)
class MatterMaterial:
    id: str
    kind: MaterialKind
    credential_type: str = ""  # for a credential
    description: str = ""
    required: bool = True


@dataclass(frozen=True, slots=True)
class MatterQuery:
    """A data query a handling agency may make for the matter."""

    dataset: str  # catalogue id
    purpose: str  # purpose id
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Matter:
    """A 政务服务事项 of the 跨省通办 list: who does which part, what it needs, how long it takes."""

    code: str  # national matter code
    name: str
    parts: tuple[MatterPart, ...]  # in completion order
    materials: tuple[MatterMaterial, ...]
    queries: tuple[MatterQuery, ...]
    time_limit_days: int  # 承诺时限
    category: str = ""

    @property
    def handling_regions(self) -> frozenset[str]:
        """The regions that handle or assist: those whose agencies may query data for it."""
        return frozenset(p.region for p in self.parts if p.role is not PartRole.RECEIVE)


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """A published key: its certificate, who owns it, what it is for, and where it is in its life.

    "May this key sign now" and "may this key verify a signature made at t" are different
    questions: a retiring key verifies but no longer signs, and a revoked key still verifies
    what was signed before it was revoked.
    """

    kid: str  # base64url SHA-256 of the certificate DER (the JWS x5t#S256)
    usage: KeyUsage
    owner: str  # region code or agency id
    region: str
    algorithm: str
    state: KeyState
    certificate: bytes  # DER
    not_before: datetime
    not_after: datetime
    published_at: datetime
    activated_at: datetime | None = None
    retiring_at: datetime | None = None
    revoked_at: datetime | None = None
    revocation_reason: str = ""

    def check_may_sign(self, at: datetime) -> None:
        """Raise `KeyRefused` unless this key may make a new signature at `at`."""
        if self.state is not KeyState.ACTIVE:
            raise KeyRefused(f"key {self.kid} is {self.state.value}: only an active key signs")
        if not self.not_before <= at <= self.not_after:
            raise KeyRefused(
                f"key {self.kid} is outside its certificate's validity at {at:%Y-%m-%dT%H:%M:%SZ}"
            )

    def check_may_verify(self, signed_at: datetime) -> None:
        """Raise `KeyRefused` unless a signature made at `signed_at` may be accepted.

        Pending keys verify too: a signer that has already seen the snapshot activating the key
        may sign with it before this gateway has that snapshot, and rotation must not fail then.
        """
        if self.state is KeyState.REVOKED and (
            self.revoked_at is None or signed_at >= self.revoked_at
        ):
            when = f" at {self.revoked_at:%Y-%m-%dT%H:%M:%SZ}" if self.revoked_at else ""
            raise KeyRefused(
                f"key {self.kid} was revoked{when} ({self.revocation_reason or 'no reason given'})"
            )
        if not self.not_before <= signed_at <= self.not_after:
            raise KeyRefused(
                f"key {self.kid} was outside its certificate's validity when the signature was made"
            )


@dataclass(frozen=True)
class Registry:
    """One complete registry. `version` 0 is a draft that has not been published."""

    name: str
    version: int
    issued_at: datetime
    expires_at: datetime
    refresh_seconds: int
    regions: tuple[Region, ...] = ()
    agencies: tuple[Agency, ...] = ()
    datasets: tuple[Dataset, ...] = ()
    purposes: tuple[Purpose, ...] = ()
    agreements: tuple[Agreement, ...] = ()
    keys: tuple[KeyEntry, ...] = field(default=())
    matters: tuple[Matter, ...] = ()  # the matter catalogue (absent before it: none)
    # Cosignatures from other regions' witnesses a region's audit checkpoint needs to count
    # (docs/audit.md "Witnessing"); 0: no witnessing required (registries from before it).
    witness_threshold: int = 0

    # Lookups, built once per registry (a registry is immutable).
    @cached_property
    def _regions(self) -> Mapping[str, Region]:
        return {r.code: r for r in self.regions}

    @cached_property
    def _agencies(self) -> Mapping[str, Agency]:
        return {a.id: a for a in self.agencies}

    @cached_property
    def _datasets(self) -> Mapping[tuple[str, str], Dataset]:
        return {(d.region, d.id): d for d in self.datasets}

    @cached_property
    def _purposes(self) -> Mapping[str, Purpose]:
        return {p.id: p for p in self.purposes}

    @cached_property
    def _matters(self) -> Mapping[str, Matter]:
        return {m.code: m for m in self.matters}

    @cached_property
    def _keys(self) -> Mapping[str, KeyEntry]:
        return {k.kid: k for k in self.keys}

    def region(self, code: str) -> Region | None:
        return self._regions.get(code)

    def agency(self, agency_id: str) -> Agency | None:
        return self._agencies.get(agency_id)

    def dataset(self, region: str, dataset_id: str) -> Dataset | None:
        return self._datasets.get((region, dataset_id))

    def purpose(self, purpose_id: str) -> Purpose | None:
        return self._purposes.get(purpose_id)

    def matter(self, code: str) -> Matter | None:
        return self._matters.get(code)

    def key(self, kid: str) -> KeyEntry | None:
        return self._keys.get(kid)

    def agreements_for(self, provider_region: str) -> Iterable[Agreement]:
        return (a for a in self.agreements if a.provider_region == provider_region)

    def keys_of(self, owner: str, usage: KeyUsage) -> tuple[KeyEntry, ...]:
        return tuple(k for k in self.keys if k.owner == owner and k.usage is usage)

    def signing_key(self, owner: str, usage: KeyUsage, at: datetime) -> KeyEntry:
        """The newest active key of `owner` for `usage` that may sign at `at`."""
        usable = [
            k
            for k in self.keys_of(owner, usage)
            if k.state is KeyState.ACTIVE and k.not_before <= at <= k.not_after
        ]
        if not usable:
            raise KeyRefused(
                f"{owner} has no active {usage.value} key valid at {at:%Y-%m-%dT%H:%M:%SZ}"
            )
        return max(usable, key=lambda k: (k.activated_at or k.published_at, k.not_before))

    def verification_key(self, kid: str, signed_at: datetime) -> KeyEntry:
        """The key with this kid, if a signature it made at `signed_at` may be accepted."""
        entry = self.key(kid)
        if entry is None:
            raise KeyRefused(f"key {kid} is not in registry version {self.version}")
        entry.check_may_verify(signed_at)
        return entry

    def expiring(self, at: datetime, within_seconds: float) -> tuple[KeyEntry, ...]:
        """Unrevoked keys whose certificate ends within `within_seconds` of `at`, soonest first."""
        soon = [
            k
            for k in self.keys
            if k.state is not KeyState.REVOKED
            and (k.not_after - at).total_seconds() <= within_seconds
        ]
        return tuple(sorted(soon, key=lambda k: k.not_after))
