"""In-memory worlds for the query path's flows (`gateway.flows`): a published demo registry,
the in-memory audit store, cache, replay window and quota counter, and the other gateway and
the data system as plain objects. No network, no server.

Importable as `flow_support` (tests/ is on the path)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from support import Federation, make_federation

from gateway.audit import AuditLog, AuditRecord, MemoryAuditStore
from gateway.cache import AnswerCache, MemoryBackend
from gateway.cases import CaseBinding, MemoryCaseStore
from gateway.errors import Refusal
from gateway.flows import (
    AuditTrail,
    ForwardCall,
    Forwarded,
    Gatekeeper,
    OwnerFlow,
    RequesterFlow,
    SealedAnswer,
)
from gateway.forward_signing import ForwardDocument, sign_forward
from gateway.identity import Caller, CallerKind
from gateway.policy import DataRequest
from gateway.provider import ProviderAnswer
from gateway.quota import MemoryQuotaCounter
from gateway.replay import MemoryReplayGuard
from gateway.sealing import RegionSealer
from gateway.tokens import TokenVerifier, issue_token
from registry import (
    TRUSTED_ROOT,
    KeyState,
    KeyUsage,
    Registry,
    RegistryStale,
    RegistryTrust,
    SnapshotVerifier,
    load_trusted_root,
)
from signer import (
    FileKeyProvider,
    GmVerifier,
    KeyProvider,
    SealVerifier,
    load_private_key,
    x5t_s256_of_certificate,
)

NOW = datetime(2026, 11, 21, 9, 30, 15, tzinfo=UTC)  # inside the demo agreements' windows
OWNER = "330000"
REQUESTER = "510000"
CITIZEN = "11010519491231002X"  # GB 11643's own example: a valid citizen id
SI_FIELDS = (
    "citizen_id",
    "contribution_months",
    "employer_name",
    "insurance_types",
    "insured_since",
    "name",
    "status",
)


def make_fed(root: Any) -> Federation:
    fed = make_federation(root, now=NOW - timedelta(days=1))
    fed.publish(now=NOW - timedelta(hours=1))
    return fed


def load_registry(fed: Federation) -> Registry:
    verifier = SnapshotVerifier(load_trusted_root(fed.pki / TRUSTED_ROOT))
    return verifier.verify(fed.current.read_bytes(), held_version=None, now=None).registry


def seal_key(fed: Federation, owner: str = OWNER) -> KeyProvider:
    (record,) = fed.inventory().find(owner, KeyUsage.SEAL, KeyState.ACTIVE)
    return FileKeyProvider(fed.pki / record.private_key, fed.pki / record.certificate)


def thumbprint(fed: Federation, agency: str) -> str:
    chain, _ = fed.tls_files(agency)
    return x5t_s256_of_certificate(x509.load_pem_x509_certificates(chain.read_bytes())[0])


def token(fed: Federation, agency: str, region: str = REQUESTER, **changes: Any) -> str:
    (record,) = fed.inventory().find(region, KeyUsage.TOKEN, KeyState.ACTIVE)
    made: dict[str, Any] = {
        "region": region,
        "operator": "经办人 张三",
        "agency": agency,
        "thumbprint": thumbprint(fed, agency) if agency in _AGENCIES else "t" * 43,
        "lifetime_seconds": 300,
        "now": NOW,
    }
    made.update(changes)
    return issue_token(load_private_key(fed.pki / record.private_key), record.kid, **made)


_AGENCIES = ("sc.hrss", "sc.hsa", "sc.psb", "sc.amr", "sc.mca", "cq.hrss")


def agency_caller(fed: Federation, agency: str = "sc.hrss", region: str = REQUESTER) -> Caller:
    mark = thumbprint(fed, agency) if agency in _AGENCIES else "t" * 43
    return Caller(CallerKind.AGENCY, region, agency, mark, f"CN={agency}")


def gateway_caller(region: str = REQUESTER) -> Caller:
    return Caller(CallerKind.GATEWAY, region, "", "g" * 43, f"CN=gateway {region}")


def audit_key(fed: Federation, region: str = REQUESTER) -> tuple[ed25519.Ed25519PrivateKey, str]:
    """(private key, registry kid) of `region`'s active audit key."""
    (record,) = fed.inventory().find(region, KeyUsage.AUDIT, KeyState.ACTIVE)
    key = load_private_key(fed.pki / record.private_key)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key, record.kid


def forward_document(call: ForwardCall, **changes: Any) -> ForwardDocument:
    """What the requesting gateway signs for `call` (with `changes`), issued at NOW."""
    made: dict[str, Any] = {
        "requesting_region": call.requesting_region,
        "owner_region": call.request.provider_region,
        "request": call.request,
        "caller_agency": call.agency_id,
        "caller_region": call.requesting_region,
        "caller_operator": call.operator,
        "caller_thumbprint": "t" * 43,
        "credential_type": call.credential_type,
        "requesting_gateway_audit_id": "",
        "issued_at": NOW,
    }
    made.update(changes)
    return ForwardDocument(**made)


def signed_call(fed: Federation, call: ForwardCall, **changes: Any) -> ForwardCall:
    """`call` with the signed request its requesting gateway's audit key makes of it."""
    key, kid = audit_key(fed, call.requesting_region)
    jws = sign_forward(forward_document(call, **changes), key, kid)
    return dataclasses.replace(call, signed_request=jws)


def si_request(**changes: Any) -> DataRequest:
    """Sichuan's social insurance bureau asks Zhejiang for a participation record."""
    made: dict[str, Any] = {
        "provider_region": OWNER,
        "dataset": "si.participation",
        "purpose": "SI-TRANSFER",
        "subject_id": CITIZEN,
        "fields": (),
        "case_id": "CASE-2026-0001",
        "request_id": "req-0001",
    }
    made.update(changes)
    return DataRequest(**made)


PSEUDONYM_KEY = b"p" * 32  # every Backends' pseudonym key


def case_binding(region: str) -> tuple[CaseBinding, MemoryCaseStore]:
    """A binding of queries to the cases of an in-memory case store of `region`'s gateway (its
    own audit log, apart from the query path's, so that the flows' records stand alone)."""
    audit = AuditLog(
        MemoryAuditStore(),
        origin=f"cases.tongban/{region}",
        key=ed25519.Ed25519PrivateKey.generate(),
        key_name=f"cases.tongban/{region}",
        clock=lambda: NOW,
    )
    store = MemoryCaseStore(audit)
    return CaseBinding(store, PSEUDONYM_KEY), store


class Store:
    """The registry store as the flows read it; `stale` makes it refuse."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.stale = False

    def current(self) -> Registry:
        if self.stale:
            raise RegistryStale("the last good snapshot has expired")
        return self.registry


@dataclass
class Metrics:
    """What the flows count, as they count it."""

    decisions: list[tuple[str, str]] = field(default_factory=list)
    quota_rejections: list[str] = field(default_factory=list)
    verifications: list[tuple[str, str]] = field(default_factory=list)

    def decision(self, outcome: str, reason: str) -> None:
        self.decisions.append((outcome, reason))

    def quota_rejected(self, agreement: str) -> None:
        self.quota_rejections.append(agreement)

    def verification(self, indication: str, sub_indication: str) -> None:
        self.verifications.append((indication, sub_indication))

    def peer_call(self, *_args: Any) -> None:
        return None


class Clock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Backends:
    """One gateway's in-memory collaborators."""

    region: str
    registry: Store
    audit_store: MemoryAuditStore = field(default_factory=MemoryAuditStore)
    cache: AnswerCache = field(
        default_factory=lambda: AnswerCache(MemoryBackend(), key=b"c" * 32, key_id="test")
    )
    replay: Any = None
    quota: Any = field(default_factory=MemoryQuotaCounter)
    metrics: Metrics = field(default_factory=Metrics)
    clock: Clock = field(default_factory=Clock)
    audit: AuditLog = field(init=False)
    trail: AuditTrail = field(init=False)
    gate: Gatekeeper = field(init=False)

    def __post_init__(self) -> None:
        if self.replay is None:
            self.replay = MemoryReplayGuard(300, self.clock)
        self.audit = AuditLog(
            self.audit_store,
            origin=f"audit.tongban/{self.region}",
            key=ed25519.Ed25519PrivateKey.generate(),
            key_name=f"audit.tongban/{self.region}",
            clock=self.clock,
        )
        self.trail = AuditTrail(
            audit=self.audit,
            gateway_name=f"gateway-{self.region}",
            region=self.region,
            pseudonym_key=PSEUDONYM_KEY,
            metrics=self.metrics,  # type: ignore[arg-type]
            clock=self.clock,
        )
        self.gate = Gatekeeper(self.registry)  # type: ignore[arg-type]

    def records(self) -> list[AuditRecord]:
        return [r for r in self.audit_store._records if r is not None]


class DataSystem:
    """A data system as a plain object: a record per subject id, with every field asked for;
    or `refusal` raised."""

    def __init__(
        self, subjects: Sequence[str] = (CITIZEN,), refusal: Refusal | None = None
    ) -> None:
        self.subjects = set(subjects)
        self.refusal = refusal
        self.fetched: list[tuple[str, tuple[str, ...]]] = []

    async def fetch(
        self, request: DataRequest, fields: Sequence[str], call: ForwardCall
    ) -> ProviderAnswer:
        self.fetched.append((request.subject_id, tuple(fields)))
        if self.refusal is not None:
            raise self.refusal
        if request.subject_id not in self.subjects:
            return ProviderAnswer(found=False, payload=b"", content_type="")
        record = {name: f"value of {name}" for name in fields}
        return ProviderAnswer(
            found=True,
            payload=json.dumps(record, sort_keys=True).encode(),
            content_type="application/json",
        )


class Codec:
    """The owner's cache codec, counting how often a kept record is read back."""

    def __init__(self) -> None:
        self.kept: dict[bytes, SealedAnswer] = {}
        self.decoded = 0

    def encode(self, record: SealedAnswer) -> bytes:
        raw = json.dumps([record.jws, len(self.kept)]).encode()
        self.kept[raw] = record
        return raw

    def decode(self, raw: bytes) -> SealedAnswer:
        self.decoded += 1
        return self.kept[raw]


class ForwardedCodec:
    """The requester's cache codec, in memory."""

    def __init__(self) -> None:
        self.kept: dict[bytes, Forwarded] = {}

    def encode(self, answer: Forwarded) -> bytes:
        raw = f"{len(self.kept)}".encode()
        self.kept[raw] = answer
        return raw

    def decode(self, raw: bytes) -> Forwarded | None:
        return self.kept.get(raw)


def owner_flow(
    fed: Federation,
    backends: Backends,
    *,
    data_system: DataSystem | None = None,
    seal_keys: dict[str, KeyProvider] | None = None,
    codec: Codec | None = None,
    cases: Any = None,
    checks: Any = None,
) -> OwnerFlow:
    if seal_keys is None:
        key = seal_key(fed, backends.region)
        seal_keys = {key.kid: key}
    return OwnerFlow(
        region=backends.region,
        gatekeeper=backends.gate,
        trail=backends.trail,
        quota=backends.quota,
        cache=backends.cache,
        codec=codec or Codec(),
        sealer=RegionSealer(backends.region, seal_keys),
        data_system=data_system,
        cases=cases,
        checks=checks,
        clock=backends.clock,
    )


class OwnerPeer:
    """The owner's gateway as the requester asks it: a plain object answering with `answer`
    (a function of the request), raising `refusal`, or hanging when `hang` is set."""

    def __init__(
        self,
        answer: Callable[[DataRequest, Caller, str], Any] | None = None,
        *,
        refusal: Refusal | None = None,
        hang: bool = False,
    ) -> None:
        self.answer = answer
        self.refusal = refusal
        self.hang = hang
        self.asked: list[DataRequest] = []
        self.started = asyncio.Event()

    async def forward(
        self,
        request: DataRequest,
        caller: Caller,
        operator: str,
        time_remaining: Any,
        *,
        credential_type: str = "",
    ) -> Forwarded:
        self.asked.append(request)
        self.started.set()
        if self.hang:
            await asyncio.sleep(3600)
        if self.refusal is not None:
            raise self.refusal
        assert self.answer is not None
        result = self.answer(request, caller, operator)
        return await result if asyncio.iscoroutine(result) else result  # type: ignore[no-any-return]


def verifier(registry: Registry) -> SealVerifier:
    return SealVerifier(RegistryTrust(registry), clock=lambda: NOW)


def requester_flow(
    backends: Backends,
    owners: OwnerPeer,
    registry: Registry,
    *,
    reporter: Any = None,
    cases: Any = None,
    checks: Any = None,
) -> RequesterFlow:
    return RequesterFlow(
        region=backends.region,
        gatekeeper=backends.gate,
        trail=backends.trail,
        tokens=TokenVerifier(region=backends.region, clock=backends.clock),
        replay=backends.replay,
        quota=backends.quota,
        owners=owners,
        verifier=verifier(registry),
        gm_verifier=GmVerifier(RegistryTrust(registry), clock=lambda: NOW),
        cache=backends.cache,
        codec=ForwardedCodec(),
        reporter=reporter,
        cases=cases,
        checks=checks,
        clock=backends.clock,
    )
