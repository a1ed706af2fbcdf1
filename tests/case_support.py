"""Case books of three regions over memory stores, a dev federation's registry and keys, and
sealed materials, for the case book's and the Cases service's tests; and cases written straight
into a `MemoryCaseStore` (a summary, the way the case book writes one, with its audit record),
for the tests of what reads them (the query binding). No network.

Importable as `case_support` (tests/ is on the path)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from flow_support import NOW, audit_key, seal_key
from support import Federation

from gateway.audit import AuditLog, AuditRecord, MemoryAuditStore, Outcome, pseudonymize
from gateway.cases import (
    CaseBook,
    CaseCaller,
    CaseChange,
    CaseState,
    CaseSummary,
    EventSigner,
    MaterialInput,
    MaterialVerifier,
    MemoryCaseStore,
    StoredEvent,
)
from gateway.sealing import RegionSealer
from registry import Registry, RegistryTrust
from signer import DocumentVerifier, GmVerifier, SealVerifier

SC, CQ, ZJ = "510000", "500000", "330000"
APPLICANT = "11010519491231002X"  # GB 11643's own example
MEDICAL = "000125002100"  # 异地就医登记备案: 四川 receives, 重庆 handles
PENSION = "000112003100"  # 养老保险关系转移接续: 四川 receives, 浙江 assists, 重庆 handles


class Clock:
    """A clock the test moves on."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def tick(self, minutes: int = 1) -> None:
        self.now += timedelta(minutes=minutes)


class FixedRegistry:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def current(self) -> Registry:
        return self.registry


@dataclass
class Region:
    region: str
    book: CaseBook
    store: MemoryCaseStore
    audit_store: MemoryAuditStore
    woken: list[int] = field(default_factory=list)

    @property
    def records(self) -> list[AuditRecord]:
        return [r for r in self.audit_store._records if r is not None]


def documents(registry: Registry, clock: Clock) -> DocumentVerifier:
    trust = RegistryTrust(registry)
    return DocumentVerifier(SealVerifier(trust, clock=clock), GmVerifier(trust, clock=clock))


async def make_region(
    fed: Federation,
    registry: Registry,
    region: str,
    clock: Clock,
    *,
    max_material_bytes: int = 4 * 1024 * 1024,
) -> Region:
    audit_store = MemoryAuditStore()
    audit = AuditLog(
        audit_store,
        origin=f"audit.tongban/{region}",
        key=ed25519.Ed25519PrivateKey.generate(),
        key_name=f"audit-{region}",
        clock=clock,
    )
    await audit.open()
    store = MemoryCaseStore(audit)
    key, _ = audit_key(fed, region)
    book = CaseBook(
        region,
        store,
        registry=FixedRegistry(registry),
        signer=EventSigner(region, key),
        materials=MaterialVerifier(
            documents(registry, clock),
            region,
            max_material_bytes=max_material_bytes,
            max_call_bytes=3 * max_material_bytes,
        ),
        pseudonym_key=f"pseudonym key of {region}".encode(),
        audit=audit,
        clock=clock,
    )
    made = Region(region, book, store, audit_store)
    book.listeners.append(lambda: made.woken.append(1))
    return made


async def sealed(
    fed: Federation,
    registry: Registry,
    region: str,
    payload: dict[str, Any] | bytes,
    *,
    detached: bool = False,
    material_id: str = "",
) -> MaterialInput:
    """A material sealed with `region`'s seal key (a JWS; detached: its payload as signed_data)."""
    key = seal_key(fed, region)
    sealer = RegionSealer(region, {key.kid: key})
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    made = await sealer.seal(
        registry,
        data,
        content_type="application/json",
        now=NOW - timedelta(minutes=5),
        detached=detached,
    )
    return MaterialInput(material_id, made.jws.encode(), data if detached else b"")


def agency(region: str, name: str, operator: str = "经办人") -> CaseCaller:
    return CaseCaller(region=region, agency=name, operator=operator)


async def deliver(source: Region, target: Region) -> list[str]:
    """What `source` has for `target`, received there and acknowledged (the deliverer's job)."""
    out = await source.book.outgoing(target.region, 64)
    ids = await target.book.receive(source.region, [(o.jws, o.attachments) for o in out])
    assert ids == [o.event_id for o in out]
    await source.book.delivered(target.region, ids)
    return ids


# -- cases written straight into a store (the query binding's tests) --------------------------
AT = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
CASE_ID = "CASE-2026-0001"


def case_summary(applicant_id: str, pseudonym_key: bytes, **changes: Any) -> CaseSummary:
    """A pension transfer submitted at Sichuan's window for `applicant_id`, its handling part
    accepted by Chongqing's social insurance bureau; `changes` replace any field."""
    made = CaseSummary(
        case_id=CASE_ID,
        matter_code=PENSION,
        window_region="510000",
        window_agency="sc.hrss",
        applicant=pseudonymize(applicant_id, pseudonym_key),
        state=CaseState.OPEN.value,
        submitted_at=AT,
        due_at=AT + timedelta(days=45),
        updated_at=AT,
        agencies=("sc.hrss", "cq.hrss"),
        ready_regions=(),
        handling=(("500000", "cq.hrss"),),
    )
    return dataclasses.replace(made, **changes)


async def keep_case(store: MemoryCaseStore, summary: CaseSummary, seq: int = 1) -> None:
    """Write `summary` into `store` as a change of its case (an event of the window's region
    numbered `seq`), with the audit record the change is kept with."""
    event = StoredEvent(
        event_id=f"{summary.case_id}/{summary.window_region}/{seq}",
        case_id=summary.case_id,
        origin=summary.window_region,
        seq=seq,
        sealed_jws="sealed",
        attachments=(),
        received_at=summary.updated_at,
    )
    await store.write(_record(summary), CaseChange(event, (), summary))


def _record(summary: CaseSummary) -> AuditRecord:
    return AuditRecord(
        time=summary.updated_at,
        gateway=f"gateway-{summary.window_region}",
        region=summary.window_region,
        rpc="/tongban.v1.Cases/Submit",
        request_id=f"case-{summary.case_id}",
        caller_agency=summary.window_agency,
        caller_operator="经办人 张三",
        caller_region=summary.window_region,
        provider_region="",
        dataset="",
        purpose="",
        case_id=summary.case_id,
        subject=summary.applicant,
        fields=(),
        outcome=Outcome.ALLOWED,
        reason="",
        cache_hit=False,
        latency_us=0,
        sealed_digest="",
        registry_version=1,
        agreement_id="",
    )
