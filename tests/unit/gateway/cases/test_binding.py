"""Cases bind data queries (`gateway.cases.CaseBinding`): a query for a conditional dataset is
allowed only for an open case held here, with a part the asking agency handles, the subject as
its applicant (this gateway's own pseudonym), and a matter that lists the query."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from case_support import AT, CASE_ID, PENSION, case_summary, keep_case
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit import AuditLog, AuditUnavailable, MemoryAuditStore
from gateway.cases import CaseBinding, CaseState, CaseSummary, MemoryCaseStore
from gateway.errors import Refusal
from registry import DEMO_SOURCE, Registry, load_source

KEY = b"k" * 32
CITIZEN = "11010519491231002X"
PENSION_FIELDS = (
    "citizen_id",
    "contribution_months",
    "insurance_types",
    "insured_since",
    "name",
    "status",
)


@pytest.fixture(scope="module")
def registry() -> Registry:
    """A registry with the demo's matter catalogue (the binding reads only the matters)."""
    return Registry(
        name="test",
        version=7,
        issued_at=AT,
        expires_at=AT + timedelta(days=1),
        refresh_seconds=60,
        matters=load_source(DEMO_SOURCE).matters,
    )


def store() -> MemoryCaseStore:
    audit = AuditLog(
        MemoryAuditStore(),
        origin="audit.tongban/500000",
        key=ed25519.Ed25519PrivateKey.generate(),
        key_name="audit.tongban/500000",
        clock=lambda: datetime.now(UTC),
    )
    return MemoryCaseStore(audit)


def query(**changes: Any) -> dict[str, Any]:
    """Chongqing's social insurance bureau, handling the pension transfer, asks Zhejiang (the
    assisting region) for the applicant's participation record."""
    made: dict[str, Any] = {
        "case_id": CASE_ID,
        "agency": "cq.hrss",
        "agency_region": "500000",
        "subject_id": CITIZEN,
        "provider_region": "330000",
        "dataset": "si.participation",
        "purpose": "SI-TRANSFER",
        "fields": PENSION_FIELDS,
    }
    made.update(changes)
    return made


async def bound(summary: CaseSummary | None, key: bytes = KEY) -> CaseBinding:
    cases = store()
    if summary is not None:
        await keep_case(cases, summary)
    return CaseBinding(cases, key)


async def test_a_query_the_open_case_allows_passes(registry: Registry) -> None:
    binding = await bound(case_summary(CITIZEN, KEY))
    await binding.check(registry, **query())
    await binding.check(registry, **query(fields=("name", "status")))  # fewer fields: fine
    # A part awaiting material is still being handled by the agency that accepted it.
    binding = await bound(
        case_summary(CITIZEN, KEY, handling=(("510000", "x"), ("500000", "cq.hrss")))
    )
    await binding.check(registry, **query())


def _summary(**changes: Any) -> Callable[[], CaseSummary | None]:
    return lambda: case_summary(CITIZEN, KEY, **changes)


# (summary held here, query changes, reason)
REFUSALS: dict[str, tuple[Callable[[], CaseSummary | None], dict[str, Any], str]] = {
    "no-case-held": (lambda: None, {}, "CASE_NOT_OPEN"),
    "another-case-id": (_summary(), {"case_id": "CASE-2026-0002"}, "CASE_NOT_OPEN"),
    "empty-case-id": (_summary(), {"case_id": ""}, "CASE_NOT_OPEN"),
    "completed": (_summary(state=CaseState.COMPLETED.value), {}, "CASE_NOT_OPEN"),
    "rejected": (_summary(state=CaseState.REJECTED.value), {}, "CASE_NOT_OPEN"),
    "no-part-handled": (_summary(handling=()), {}, "CASE_NOT_OPEN"),
    "part-of-another-agency": (_summary(), {"agency": "cq.psb"}, "CASE_NOT_OPEN"),
    "agency-of-another-region": (_summary(), {"agency_region": "510000"}, "CASE_NOT_OPEN"),
    "window-agency-only": (
        _summary(),
        {"agency": "sc.hrss", "agency_region": "510000"},
        "CASE_NOT_OPEN",
    ),
    "another-subject": (_summary(), {"subject_id": "110105194912310029"}, "CASE_NOT_OPEN"),
    "dataset-not-the-matters": (
        _summary(),
        {"dataset": "medical.insurance", "purpose": "MED-REG", "fields": ("name",)},
        "CASE_QUERY_NOT_ALLOWED",
    ),
    "purpose-not-the-matters": (_summary(), {"purpose": "MED-REG"}, "CASE_QUERY_NOT_ALLOWED"),
    "a-field-beyond-the-matters": (
        _summary(),
        {"fields": (*PENSION_FIELDS, "employer_name")},
        "CASE_QUERY_NOT_ALLOWED",
    ),
    "provider-without-a-part": (
        _summary(),
        {"provider_region": "440000"},
        "CASE_QUERY_NOT_ALLOWED",
    ),
    "matter-gone-from-the-registry": (
        _summary(matter_code="000000000000"),
        {},
        "CASE_QUERY_NOT_ALLOWED",
    ),
}


@pytest.mark.parametrize(("held", "changes", "reason"), REFUSALS.values(), ids=REFUSALS.keys())
async def test_each_refusal_says_its_reason_and_names_no_one(
    registry: Registry,
    held: Callable[[], CaseSummary | None],
    changes: dict[str, Any],
    reason: str,
) -> None:
    binding = await bound(held())
    asked = query(**changes)
    with pytest.raises(Refusal) as caught:
        await binding.check(registry, **asked)
    assert caught.value.reason == reason
    message = caught.value.message
    for value in (CITIZEN, asked["subject_id"], asked["agency"], asked["dataset"], PENSION):
        assert value not in message
    if asked["case_id"]:
        assert asked["case_id"] in message


async def test_the_applicant_is_this_gateways_own_pseudonym(registry: Registry) -> None:
    # The summary holds the applicant as the gateway that keeps it pseudonymised it: a binding
    # with another region's (or another deployment's) key does not recognise the applicant.
    binding = await bound(case_summary(CITIZEN, b"o" * 32))
    with pytest.raises(Refusal) as caught:
        await binding.check(registry, **query())
    assert caught.value.reason == "CASE_NOT_OPEN"
    binding = await bound(case_summary(CITIZEN, b"o" * 32), key=b"o" * 32)
    await binding.check(registry, **query())


async def test_the_latest_summary_decides(registry: Registry) -> None:
    cases = store()
    await keep_case(cases, case_summary(CITIZEN, KEY))
    binding = CaseBinding(cases, KEY)
    await binding.check(registry, **query())
    done = case_summary(CITIZEN, KEY, state=CaseState.COMPLETED.value, handling=())
    await keep_case(cases, dataclasses.replace(done, updated_at=AT + timedelta(hours=1)), seq=2)
    with pytest.raises(Refusal, match="CASE-2026-0001 is not open"):
        await binding.check(registry, **query())


async def test_a_case_store_that_cannot_answer_is_audit_unavailable(registry: Registry) -> None:
    class Down(MemoryCaseStore):
        async def summary(self, case_id: str) -> CaseSummary | None:
            raise AuditUnavailable("connection refused to 10.0.0.5:5432")

    binding = CaseBinding(Down(store().audit), KEY)
    with pytest.raises(Refusal) as caught:
        await binding.check(registry, **query())
    assert caught.value.reason == "AUDIT_UNAVAILABLE"
