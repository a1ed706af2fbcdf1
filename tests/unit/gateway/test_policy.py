"""Purpose-based authorisation: one table row per decision, against the demo registry and
registries modified from it with dataclasses.replace."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.policy import (
    GRPC_CODES,
    MAX_CASE_ID_CHARS,
    MAX_FIELDS,
    MAX_SUBJECT_ID_CHARS,
    DataRequest,
    Decision,
    PolicyInputError,
    PurposePolicy,
    SubjectKind,
    check_request,
    grpc_code_for,
    subject_kind,
)
from registry import (
    Agency,
    AgencyRole,
    Agreement,
    Purpose,
    PurposeDataset,
    Registry,
    load_source,
)
from registry._codes import citizen_id_check_char

# Not from `support`: this pure module's tests need no gateway server.
DEMO_SOURCE = Path(__file__).resolve().parents[3] / "conf" / "registry"

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CITIZEN = "51010419900307123" + citizen_id_check_char("51010419900307123")
WRONG_CHECK = CITIZEN[:17] + ("0" if CITIZEN[17] != "0" else "1")
USCC = "11330000171521337R"  # a demo agency's code: valid GB 32100
BAD_USCC = "11330000171521337A"
CASE = "SC-2026-000123"
SI_ALLOWED = frozenset(
    {
        "name",
        "citizen_id",
        "insured_since",
        "insurance_types",
        "contribution_months",
        "employer_name",
        "status",
    }
)
LICENCE_ALLOWED = frozenset(
    {
        "uscc",
        "company_name",
        "legal_representative",
        "registered_capital",
        "established_on",
        "business_scope",
        "address",
        "status",
    }
)


def demo_registry(version: int = 7) -> Registry:
    source = load_source(DEMO_SOURCE)
    return Registry(
        name=source.name,
        version=version,
        issued_at=NOW - timedelta(hours=1),
        expires_at=NOW + timedelta(days=7),
        refresh_seconds=source.refresh_seconds,
        regions=source.regions,
        agencies=source.agencies,
        datasets=source.datasets,
        purposes=source.purposes,
        agreements=source.agreements,
    )


DEMO = demo_registry()


def _agreement(registry: Registry, agreement_id: str) -> Agreement:
    return next(a for a in registry.agreements if a.id == agreement_id)


def with_agreements(
    registry: Registry, *agreements: Agreement, drop: tuple[str, ...] = ()
) -> Registry:
    kept = tuple(a for a in registry.agreements if a.id not in drop)
    return dataclasses.replace(registry, agreements=kept + agreements)


def expired_registry() -> Registry:
    """ZJ-SC-SI-2026 ended before NOW."""
    old = _agreement(DEMO, "ZJ-SC-SI-2026")
    ended = dataclasses.replace(old, valid_until=datetime(2026, 6, 1, tzinfo=UTC))
    return with_agreements(DEMO, ended, drop=("ZJ-SC-SI-2026",))


def no_licence_registry() -> Registry:
    """Without the licence agreements, which link every pair of demo regions."""
    return with_agreements(DEMO, drop=("LICENCE-ZJ-2026", "LICENCE-SC-2026", "LICENCE-CQ-2026"))


REGION_WIDE = Agreement(
    id="ZJ-SC-REGION-2026",
    provider_region="330000",
    requester_agencies=frozenset(),
    requester_regions=frozenset({"510000"}),
    purposes=("SI-TRANSFER",),
    valid_from=datetime(2026, 1, 1, tzinfo=UTC),
    valid_until=datetime(2030, 1, 1, tzinfo=UTC),  # longer than ZJ-SC-SI-2026
    quota_per_minute=50,
)


def region_wide_registry() -> Registry:
    return with_agreements(DEMO, REGION_WIDE)


def two_region_wide_registry() -> Registry:
    """Two region-wide agreements in force: the one valid longest wins, then the smallest id."""
    same_end = dataclasses.replace(REGION_WIDE, id="AAA-SAME-END", quota_per_minute=7)
    shorter = dataclasses.replace(
        REGION_WIDE, id="AA-SHORTER", valid_until=datetime(2029, 6, 1, tzinfo=UTC)
    )
    return with_agreements(DEMO, REGION_WIDE, same_end, shorter)


def case_records_registry() -> Registry:
    """A purpose and an agreement that name police.case_records: the share class still wins."""
    purpose = Purpose(
        id="CASE-CHECK",
        unified_code="000199000000",
        name="案件记录核验",
        legal_basis="(test)",
        datasets=(PurposeDataset("police.case_records", ("name", "citizen_id", "records")),),
    )
    agreement = Agreement(
        id="CQ-CASES-2026",
        provider_region="500000",
        requester_agencies=frozenset({"sc.psb"}),
        requester_regions=frozenset(),
        purposes=("CASE-CHECK",),
        valid_from=datetime(2026, 1, 1, tzinfo=UTC),
        valid_until=datetime(2029, 1, 1, tzinfo=UTC),
        quota_per_minute=10,
    )
    return dataclasses.replace(
        DEMO, purposes=(*DEMO.purposes, purpose), agreements=(*DEMO.agreements, agreement)
    )


def demoted_registry() -> Registry:
    """sc.hrss lost its requester role in a newer snapshot."""
    agencies = tuple(
        dataclasses.replace(a, roles=frozenset({AgencyRole.PROVIDER})) if a.id == "sc.hrss" else a
        for a in DEMO.agencies
    )
    return dataclasses.replace(DEMO, agencies=agencies)


def _agency(agency_id: str) -> Agency:
    agency = DEMO.agency(agency_id)
    assert agency is not None
    return agency


@dataclass(frozen=True)
class Row:
    name: str
    requester: str
    region: str
    dataset: str
    purpose: str
    subject: str = CITIZEN
    fields: tuple[str, ...] = ()
    case_id: str = CASE
    registry: Registry = DEMO
    at: datetime = NOW
    reason: str = ""
    fragment: str = ""  # must appear in the message
    agreement_id: str = ""
    want_fields: frozenset[str] = field(default_factory=frozenset)
    quota: int = 0


ROWS = [
    Row(
        "allowed: SI-TRANSFER from sc.hrss to Zhejiang, agency-specific agreement",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        fields=("name", "citizen_id", "contribution_months"),
        agreement_id="ZJ-SC-SI-2026",
        want_fields=frozenset({"name", "citizen_id", "contribution_months"}),
        quota=300,
        fragment="ZJ-SC-SI-2026",
    ),
    Row(
        "allowed: no fields asked means the purpose's allowed set",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        agreement_id="ZJ-SC-SI-2026",
        want_fields=SI_ALLOWED,
        quota=300,
    ),
    Row(
        "allowed: region-wide agreement (CY-SI-2026 names all of Sichuan)",
        "sc.mca",
        "500000",
        "si.participation",
        "SI-TRANSFER",
        fields=("status",),
        agreement_id="CY-SI-2026",
        want_fields=frozenset({"status"}),
        quota=600,
    ),
    Row(
        "allowed: agency-specific agreement preferred over a longer region-wide one",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        registry=region_wide_registry(),
        agreement_id="ZJ-SC-SI-2026",
        want_fields=SI_ALLOWED,
        quota=300,
    ),
    Row(
        "allowed: an agency the specific agreement does not name uses the region-wide one",
        "sc.mca",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        registry=region_wide_registry(),
        agreement_id="ZJ-SC-REGION-2026",
        want_fields=SI_ALLOWED,
        quota=50,
    ),
    Row(
        "allowed: among region-wide agreements, valid longest then smallest id",
        "sc.mca",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        registry=two_region_wide_registry(),
        agreement_id="AAA-SAME-END",
        want_fields=SI_ALLOWED,
        quota=7,
    ),
    Row(
        "allowed: 无条件共享 licence data without a case id, keyed by USCC",
        "cq.amr",
        "330000",
        "market.business_licence",
        "LICENCE-VERIFY",
        subject=USCC,
        case_id="",
        agreement_id="LICENCE-ZJ-2026",
        want_fields=LICENCE_ALLOWED,
        quota=1200,
    ),
    Row(
        "UNKNOWN_REGION: Beijing is not in the registry",
        "sc.hrss",
        "110000",
        "si.participation",
        "SI-TRANSFER",
        reason="UNKNOWN_REGION",
        fragment="110000",
    ),
    Row(
        "UNKNOWN_DATASET",
        "sc.hrss",
        "330000",
        "si.pension",
        "SI-TRANSFER",
        reason="UNKNOWN_DATASET",
        fragment="si.pension",
    ),
    Row(
        "UNKNOWN_PURPOSE",
        "sc.hrss",
        "330000",
        "si.participation",
        "TAX-CHECK",
        reason="UNKNOWN_PURPOSE",
        fragment="TAX-CHECK",
    ),
    Row(
        "NOT_AUTHORISED_ROLE: a data bureau is oversight, not requester",
        "zj.data",
        "510000",
        "si.participation",
        "SI-TRANSFER",
        reason="NOT_AUTHORISED_ROLE",
        fragment="zj.data",
    ),
    Row(
        "NOT_AUTHORISED_ROLE: the role as this registry has it, not the caller's copy",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        registry=demoted_registry(),
        reason="NOT_AUTHORISED_ROLE",
        fragment="sc.hrss",
    ),
    Row(
        "NOT_AUTHORISED_ROLE: an agency this registry no longer has",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        registry=dataclasses.replace(
            DEMO, agencies=tuple(a for a in DEMO.agencies if a.id != "sc.hrss")
        ),
        reason="NOT_AUTHORISED_ROLE",
        fragment="requester role",
    ),
    Row(
        "SUBJECT_ID_INVALID: wrong GB 11643 check character",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        subject=WRONG_CHECK,
        reason="SUBJECT_ID_INVALID",
        fragment="GB 11643",
    ),
    Row(
        "SUBJECT_ID_INVALID: a citizen id and a newline (what `$` would let through)",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        subject=CITIZEN + "\n",
        reason="SUBJECT_ID_INVALID",
        fragment="citizen identity number",
    ),
    Row(
        "SUBJECT_ID_INVALID: full-width digits before an ASCII check character",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        subject=CITIZEN[:17].translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})
        + CITIZEN[17],
        reason="SUBJECT_ID_INVALID",
        fragment="citizen identity number",
    ),
    Row(
        "SUBJECT_ID_INVALID: lower-case x is not normalised",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        subject="11010519491231002x",
        reason="SUBJECT_ID_INVALID",
        fragment="citizen identity number",
    ),
    Row(
        "SUBJECT_ID_INVALID: licence data is keyed by USCC, not citizen id",
        "cq.amr",
        "330000",
        "market.business_licence",
        "LICENCE-VERIFY",
        subject=CITIZEN,
        case_id="",
        reason="SUBJECT_ID_INVALID",
        fragment="GB 32100",
    ),
    Row(
        "SUBJECT_ID_INVALID: USCC with a wrong check character",
        "cq.amr",
        "330000",
        "market.business_licence",
        "LICENCE-VERIFY",
        subject=BAD_USCC,
        case_id="",
        reason="SUBJECT_ID_INVALID",
        fragment="unified social credit code",
    ),
    Row(
        "DATASET_NOT_SHARED: 不予共享 with no purpose covering it",
        "sc.psb",
        "500000",
        "police.case_records",
        "HUKOU-TRANSFER",
        reason="DATASET_NOT_SHARED",
        fragment="不予共享",
    ),
    Row(
        "DATASET_NOT_SHARED: 不予共享 wins over a purpose and an agreement naming it",
        "sc.psb",
        "500000",
        "police.case_records",
        "CASE-CHECK",
        registry=case_records_registry(),
        reason="DATASET_NOT_SHARED",
        fragment="police.case_records",
    ),
    Row(
        "PURPOSE_NOT_APPROVED: the purpose does not cover the dataset",
        "sc.hrss",
        "330000",
        "medical.insurance",
        "SI-TRANSFER",
        reason="PURPOSE_NOT_APPROVED",
        fragment="does not cover dataset medical.insurance",
    ),
    Row(
        "PURPOSE_NOT_APPROVED: agreements link the regions, none for this purpose",
        "cq.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        reason="PURPOSE_NOT_APPROVED",
        fragment="approves purpose SI-TRANSFER",
    ),
    Row(
        "NO_AGREEMENT: nothing links the agency or its region with the provider",
        "sc.mca",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        registry=no_licence_registry(),
        reason="NO_AGREEMENT",
        fragment="No agreement links agency sc.mca",
    ),
    Row(
        "NO_AGREEMENT: a query to one's own region is out of scope",
        "sc.hrss",
        "510000",
        "si.participation",
        "SI-TRANSFER",
        reason="NO_AGREEMENT",
        fragment="own region",
    ),
    Row(
        "AGREEMENT_EXPIRED: the only matching agreement ended",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        registry=expired_registry(),
        reason="AGREEMENT_EXPIRED",
        fragment="ZJ-SC-SI-2026",
    ),
    Row(
        "AGREEMENT_EXPIRED: not yet in force",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        at=datetime(2025, 12, 31, 15, 59, 59, tzinfo=UTC),  # 23:59:59 +08:00
        reason="AGREEMENT_EXPIRED",
        fragment="outside its window",
    ),
    Row(
        "allowed: the first second of the window (+08:00)",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        at=datetime(2025, 12, 31, 16, 0, tzinfo=UTC),
        agreement_id="ZJ-SC-SI-2026",
        want_fields=SI_ALLOWED,
        quota=300,
    ),
    Row(
        "CASE_ID_REQUIRED: 有条件共享 without a case id",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        case_id="",
        reason="CASE_ID_REQUIRED",
        fragment="case id is required",
        agreement_id="ZJ-SC-SI-2026",
        quota=300,
    ),
    Row(
        "FIELD_NOT_ALLOWED: fields of the dataset the purpose may not see",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        fields=("name", "bank_account", "monthly_base"),
        reason="FIELD_NOT_ALLOWED",
        fragment="bank_account, monthly_base",
        agreement_id="ZJ-SC-SI-2026",
        quota=300,
    ),
    Row(
        "FIELD_NOT_ALLOWED: a field the dataset does not have",
        "cq.amr",
        "330000",
        "market.business_licence",
        "LICENCE-VERIFY",
        subject=USCC,
        case_id="",
        fields=("company_name", "contact_phone", "favourite_colour"),
        reason="FIELD_NOT_ALLOWED",
        fragment="contact_phone, favourite_colour",
        agreement_id="LICENCE-ZJ-2026",
        quota=1200,
    ),
    Row(
        "FIELD_NOT_ALLOWED: long lists are cut short",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        fields=tuple(f"x{i}" for i in range(8)),
        reason="FIELD_NOT_ALLOWED",
        fragment="x0, x1, x2, x3, x4 and 3 more",
        agreement_id="ZJ-SC-SI-2026",
        quota=300,
    ),
    Row(
        "INVALID_ARGUMENT_FORMAT: duplicate fields, through decide",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        fields=("name", "name"),
        reason="INVALID_ARGUMENT_FORMAT",
        fragment="more than once",
    ),
    Row(
        "REQUEST_TOO_LARGE: too many fields, through decide",
        "sc.hrss",
        "330000",
        "si.participation",
        "SI-TRANSFER",
        fields=tuple(f"f{i}" for i in range(MAX_FIELDS + 1)),
        reason="REQUEST_TOO_LARGE",
        fragment=str(MAX_FIELDS),
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_decision(row: Row) -> None:
    request = DataRequest(
        provider_region=row.region,
        dataset=row.dataset,
        purpose=row.purpose,
        subject_id=row.subject,
        fields=row.fields,
        case_id=row.case_id,
        request_id="req-0001",
    )
    decision = PurposePolicy().decide(
        row.registry, requester=_agency(row.requester), request=request, at=row.at
    )
    assert isinstance(decision, Decision)
    assert decision.allowed is (row.reason == ""), decision.message
    assert decision.reason == row.reason, decision.message
    assert decision.grpc_code == grpc_code_for(row.reason)
    assert row.fragment in decision.message
    assert decision.message
    assert row.subject not in decision.message
    assert CASE not in decision.message
    assert decision.registry_version == row.registry.version
    assert decision.agreement_id == row.agreement_id
    assert decision.fields == row.want_fields
    assert decision.quota_per_minute == row.quota


def test_every_reason_of_the_brief_has_a_row_and_a_code() -> None:
    covered = {r.reason for r in ROWS}
    wanted = {
        "UNKNOWN_REGION",
        "UNKNOWN_DATASET",
        "UNKNOWN_PURPOSE",
        "NOT_AUTHORISED_ROLE",
        "SUBJECT_ID_INVALID",
        "DATASET_NOT_SHARED",
        "PURPOSE_NOT_APPROVED",
        "NO_AGREEMENT",
        "AGREEMENT_EXPIRED",
        "CASE_ID_REQUIRED",
        "FIELD_NOT_ALLOWED",
        "INVALID_ARGUMENT_FORMAT",
        "REQUEST_TOO_LARGE",
    }
    assert wanted <= covered
    assert wanted | {"QUOTA_EXCEEDED"} == set(GRPC_CODES)
    assert {GRPC_CODES[r] for r in ("UNKNOWN_REGION", "SUBJECT_ID_INVALID")} == {"INVALID_ARGUMENT"}
    assert GRPC_CODES["CASE_ID_REQUIRED"] == "PERMISSION_DENIED"
    assert GRPC_CODES["QUOTA_EXCEEDED"] == "RESOURCE_EXHAUSTED"
    assert grpc_code_for("") == "OK"


def test_reasons_are_contract_names() -> None:
    from tongban.v1 import common_pb2

    for reason in GRPC_CODES:
        assert common_pb2.ErrorReason.Value(reason)


def test_subject_kind_follows_the_dataset_fields() -> None:
    licence = DEMO.dataset("330000", "market.business_licence")
    si = DEMO.dataset("330000", "si.participation")
    assert licence is not None
    assert si is not None
    assert subject_kind(licence) == SubjectKind.USCC
    assert subject_kind(si) == SubjectKind.CITIZEN_ID
    other = dataclasses.replace(si, fields=tuple(f for f in si.fields if f.name != "citizen_id"))
    assert subject_kind(other) == SubjectKind.OTHER


def test_decide_needs_an_aware_time() -> None:
    request = DataRequest("330000", "si.participation", "SI-TRANSFER", CITIZEN, (), CASE, "r1")
    with pytest.raises(ValueError, match="timezone-aware"):
        PurposePolicy().decide(
            DEMO, requester=_agency("sc.hrss"), request=request, at=datetime(2026, 11, 21)
        )


def _request(**changes: object) -> DataRequest:
    base = DataRequest(
        provider_region="330000",
        dataset="si.participation",
        purpose="SI-TRANSFER",
        subject_id=CITIZEN,
        fields=("name",),
        case_id=CASE,
        request_id="req-1",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


FOREIGN = "11010519491231002X"  # a valid citizen id, not the subject

SHAPES = [
    ("empty provider_region", {"provider_region": ""}, "INVALID_ARGUMENT_FORMAT", "required"),
    (
        "region not six digits",
        {"provider_region": "33000A"},
        "INVALID_ARGUMENT_FORMAT",
        "six-digit",
    ),
    ("region too long", {"provider_region": "3300000"}, "REQUEST_TOO_LARGE", "provider_region"),
    ("empty dataset", {"dataset": ""}, "INVALID_ARGUMENT_FORMAT", "dataset is required"),
    ("dataset too long", {"dataset": "d" * 65}, "REQUEST_TOO_LARGE", "64"),
    ("dataset with a space", {"dataset": "si participation"}, "INVALID_ARGUMENT_FORMAT", "dataset"),
    ("empty purpose", {"purpose": ""}, "INVALID_ARGUMENT_FORMAT", "purpose is required"),
    ("empty subject", {"subject_id": ""}, "INVALID_ARGUMENT_FORMAT", "subject_id"),
    (
        "subject too long",
        {"subject_id": "1" * (MAX_SUBJECT_ID_CHARS + 1)},
        "REQUEST_TOO_LARGE",
        "subject_id",
    ),
    ("empty request_id", {"request_id": ""}, "INVALID_ARGUMENT_FORMAT", "request_id"),
    ("request_id too long", {"request_id": "r" * 129}, "REQUEST_TOO_LARGE", "request_id"),
    ("request_id with a space", {"request_id": "r 1"}, "INVALID_ARGUMENT_FORMAT", "request_id"),
    (
        "case_id too long",
        {"case_id": "c" * (MAX_CASE_ID_CHARS + 1)},
        "REQUEST_TOO_LARGE",
        str(MAX_CASE_ID_CHARS),
    ),
    ("case_id with a newline", {"case_id": "C-1\n"}, "INVALID_ARGUMENT_FORMAT", "case_id"),
    (
        "too many fields",
        {"fields": tuple(f"f{i}" for i in range(MAX_FIELDS + 1))},
        "REQUEST_TOO_LARGE",
        "fields",
    ),
    ("empty field", {"fields": ("name", "")}, "INVALID_ARGUMENT_FORMAT", "fields[1]"),
    ("field too long", {"fields": ("f" * 65,)}, "REQUEST_TOO_LARGE", "fields[0]"),
    ("field with a quote", {"fields": ("na'me",)}, "INVALID_ARGUMENT_FORMAT", "fields[0]"),
    ("duplicate fields", {"fields": ("name", "status", "name")}, "INVALID_ARGUMENT_FORMAT", "name"),
    # T16: no citizen id outside subject_id; registry ids start with a letter
    ("purpose a citizen id", {"purpose": FOREIGN}, "INVALID_ARGUMENT_FORMAT", "purpose"),
    ("dataset a citizen id", {"dataset": FOREIGN}, "INVALID_ARGUMENT_FORMAT", "dataset"),
    ("field a citizen id", {"fields": (FOREIGN,)}, "INVALID_ARGUMENT_FORMAT", "fields[0]"),
    ("field a number", {"fields": ("1name",)}, "INVALID_ARGUMENT_FORMAT", "fields[0]"),
    ("case_id a citizen id", {"case_id": FOREIGN}, "INVALID_ARGUMENT_FORMAT", "case_id"),
    (
        "case_id holding a citizen id",
        {"case_id": f"办件-{FOREIGN.lower()}"},
        "INVALID_ARGUMENT_FORMAT",
        "case_id",
    ),
    ("request_id a citizen id", {"request_id": FOREIGN}, "INVALID_ARGUMENT_FORMAT", "request_id"),
    ("case_id a format char", {"case_id": "C-1\u200b"}, "INVALID_ARGUMENT_FORMAT", "case_id"),
]
FOREIGN_ARGUMENTS = {
    "purpose": "purpose",
    "dataset": "dataset",
    "fields": "fields",
    "case_id": "case_id",
    "request_id": "request_id",
    "provider_region": "provider_region",
}


@pytest.mark.parametrize(
    ("changes", "reason", "fragment"), [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES]
)
def test_check_request_refuses(changes: dict[str, object], reason: str, fragment: str) -> None:
    request = _request(**changes)
    with pytest.raises(PolicyInputError) as caught:
        check_request(request)
    assert caught.value.reason == reason
    assert caught.value.grpc_code == "INVALID_ARGUMENT"
    assert fragment in caught.value.message
    assert CITIZEN not in caught.value.message
    assert FOREIGN not in caught.value.message
    (changed,) = changes
    assert caught.value.field == FOREIGN_ARGUMENTS.get(changed, changed)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"fields": ()},
        {"case_id": ""},
        {"case_id": "浙人社办〔2026〕12号"},
        {"fields": tuple(f"f{i}" for i in range(MAX_FIELDS))},
        {"case_id": "c" * MAX_CASE_ID_CHARS},
    ],
)
def test_check_request_accepts(changes: dict[str, object]) -> None:
    check_request(_request(**changes))
