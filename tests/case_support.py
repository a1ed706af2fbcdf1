"""Cases held by a gateway, for tests of what reads them (the query binding): a summary written
into a `MemoryCaseStore` the way the case book writes one, with its audit record.

Importable as `case_support` (tests/ is on the path)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.audit import AuditRecord, Outcome, pseudonymize
from gateway.cases import CaseChange, CaseState, CaseSummary, MemoryCaseStore, StoredEvent

AT = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
PENSION = "000112003100"  # 养老保险关系转移接续: 510000 receives, 330000 assists, 500000 handles
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
