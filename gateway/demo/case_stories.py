"""The demo's case scenarios (跨省通办 办件, the `tongban.v1.Cases` service; docs/cases.md).

- `case_cy` (川渝异地代收, matter 000125002100 异地就医登记备案): a 四川 window agency submits a
  case for a 重庆 citizen with the matter's materials (an e-id card sealed by 重庆, a filing form
  sealed by 四川's seal); 重庆医保 accepts it, asks 四川 for the applicant's medical-insurance
  record for the case (allowed because it handles the case), approves it with a sealed result;
  the window watches the case complete.
- `case_multi` (多地联办, matter 000112003100 养老保险关系转移接续, parts 四川 receive → 浙江
  assist → 重庆 handle): 重庆's query naming the case before it handles a part is refused
  (CASE_NOT_OPEN); 浙江 asks for a corrected application, 四川's window supplements it, 浙江
  approves with its contribution proof; 重庆人社 accepts its part. The case stays open: the query
  scenarios that follow (`gateway.demo.stories`) are made for it, as its handling agency.
- `case_done`: 重庆 approves the transfer with a sealed result, the window watches the case
  complete, and a query naming the closed case is refused (CASE_NOT_OPEN).

Cases travel between the gateways in the background (each region's events are delivered to the
other regions of the case), so a step that needs another region's change waits until that
region's gateway shows it, as an agency's system polling or watching its gateway would.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import grpc
from rich.table import Table

from gateway.demo._story import CALL_TIMEOUT, Result, Story, mask, query, rpc_reason
from gateway.demo.federation import DemoError, Federation
from tongban.v1 import (
    cases_pb2,
    cases_pb2_grpc,
    credentials_pb2,
    credentials_pb2_grpc,
    exchange_pb2_grpc,
)

__all__ = [
    "MED_FIELDS",
    "SI_FIELDS",
    "case_cy",
    "case_done",
    "case_multi",
    "multi_applicant",
    "open_cy_case",
]

DELIVERY_TIMEOUT: Final = 20.0  # seconds for another region's change to reach a gateway
POLL_SECONDS: Final = 0.1
CY_MATTER: Final = "000125002100"  # 异地就医登记备案
PENSION_MATTER: Final = "000112003100"  # 养老保险关系转移接续
MED_FIELDS: Final = ("name", "citizen_id", "insured_region", "status", "filing_status")
# What the pension matter lets its handling agency ask 四川 for (conf/registry/matters.toml): a
# query for a case names its fields (the purpose alone would give employer_name too).
SI_FIELDS: Final = (
    "name",
    "citizen_id",
    "insured_since",
    "insurance_types",
    "contribution_months",
    "status",
)
OPEN, COMPLETED = cases_pb2.CASE_STATE_OPEN, cases_pb2.CASE_STATE_COMPLETED
READY, IN_PROGRESS = cases_pb2.PART_STATE_READY, cases_pb2.PART_STATE_IN_PROGRESS
AWAITING, DONE = cases_pb2.PART_STATE_AWAITING_MATERIAL, cases_pb2.PART_STATE_DONE


# helpers ----------------------------------------------------------------------------------------
class Steps:
    """The steps of a scenario, for its table: where, who, what, and what came of it."""

    def __init__(self, title: str) -> None:
        self.table = Table(title=title, title_justify="left")
        for column in ("#", "region", "agency", "step", "outcome"):
            self.table.add_column(column)

    def add(self, region: str, agency: str, step: str, outcome: str) -> None:
        self.table.add_row(str(self.table.row_count + 1), region, agency, step, outcome)


def applicant(fed: Federation, held: Sequence[tuple[str, str]], skip: int = 0) -> str:
    """A 重庆 citizen (born in a 重庆 district) of whom each (region, dataset) holds a record."""
    for subject in fed.data["500000"].population(skip + 400):
        if all(fed.data[region].record(dataset, subject) is not None for region, dataset in held):
            if skip == 0:
                return subject
            skip -= 1
    raise DemoError("no synthetic 重庆 citizen has the records the scenario needs")


def multi_applicant(fed: Federation) -> str:
    """The applicant of the 多地联办 case: a 重庆 citizen whom 四川 and 浙江 hold records of."""
    return applicant(fed, [("510000", "si.participation"), ("330000", "si.participation")])


async def seal(fed: Federation, agency: str, material_id: str, doc: dict[str, Any]) -> Any:
    """`doc` sealed by the region of `agency` (Credentials.Seal), as a case material: the JWS
    of a JAdES seal, or the SES_Signature of a GB/T 38540 seal with the bytes it signs."""
    payload = json.dumps(doc, ensure_ascii=False, sort_keys=True).encode()
    async with fed.channel(agency) as channel:
        answer = await credentials_pb2_grpc.CredentialsStub(channel).Seal(
            credentials_pb2.SealRequest(payload=payload, content_type="application/json"),
            metadata=fed.token(agency),
            timeout=CALL_TIMEOUT,
        )
    record = answer.record
    if record.format == credentials_pb2.SEAL_FORMAT_GBT38540:
        return cases_pb2.Material(
            material_id=material_id, content=record.ses_signature, signed_data=record.payload
        )
    if record.format == credentials_pb2.SEAL_FORMAT_OFD:
        return cases_pb2.Material(material_id=material_id, content=record.payload)
    return cases_pb2.Material(material_id=material_id, content=record.jws.encode())


async def submit(fed: Federation, agency: str, request: cases_pb2.SubmitCaseRequest) -> Any:
    async with fed.channel(agency) as channel:
        return await cases_pb2_grpc.CasesStub(channel).Submit(
            request, metadata=fed.token(agency), timeout=CALL_TIMEOUT
        )


async def act(
    fed: Federation,
    agency: str,
    case_id: str,
    part: int,
    action: cases_pb2.CaseAction.ValueType,
    **given: Any,
) -> Any:
    """One action on a part (Cases.Act) by `agency` at its own gateway."""
    request = cases_pb2.ActRequest(
        request_id=f"demo-{secrets.token_hex(8)}", case_id=case_id, part=part, action=action
    )
    for name, value in given.items():
        if name == "result":
            request.result.CopyFrom(value)
        elif name in ("material_ids", "materials"):
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    async with fed.channel(agency) as channel:
        return await cases_pb2_grpc.CasesStub(channel).Act(
            request, metadata=fed.token(agency), timeout=CALL_TIMEOUT
        )


async def wait_for(
    fed: Federation, agency: str, case_id: str, seen: Callable[[Any], bool], what: str
) -> Any:
    """The case at `agency`'s gateway once `seen(case)` holds (the other region's change has
    been delivered there), polling Cases.Get; a DemoError if it does not in time."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    async with fed.channel(agency) as channel:
        stub = cases_pb2_grpc.CasesStub(channel)
        while True:
            try:
                case = await stub.Get(
                    cases_pb2.GetCaseRequest(case_id=case_id),
                    metadata=fed.token(agency),
                    timeout=CALL_TIMEOUT,
                )
                if seen(case):
                    return case
            except grpc.aio.AioRpcError as exc:
                if rpc_reason(exc) != "CASE_NOT_FOUND":  # not delivered (or visible) yet
                    raise
            if time.monotonic() > deadline:
                region = fed.region_of(agency)
                raise DemoError(f"{what}: not seen at {region}'s gateway in {DELIVERY_TIMEOUT} s")
            await asyncio.sleep(POLL_SECONDS)


async def watch_until_closed(fed: Federation, agency: str, case_id: str) -> tuple[Any, list[str]]:
    """Cases.Watch of one case by `agency` until it is no longer open: the case as it then is,
    and the kinds of the changes the stream brought."""
    kinds: list[str] = []
    async with fed.channel(agency) as channel:
        call = cases_pb2_grpc.CasesStub(channel).Watch(
            cases_pb2.WatchCasesRequest(case_id=case_id),
            metadata=fed.token(agency),
            timeout=DELIVERY_TIMEOUT + CALL_TIMEOUT,
        )
        try:
            async for update in call:
                if update.HasField("event"):
                    kinds.append(update.event.kind)
                if update.case.state != OPEN:
                    return update.case, kinds
        finally:
            call.cancel()
    raise DemoError(f"the watch of case {case_id} ended while it was open")


def part_is(index: int, state: int) -> Callable[[Any], bool]:
    return lambda case: len(case.parts) > index and case.parts[index].state == state


def state_name(case: Any) -> str:
    return cases_pb2.CaseState.Name(case.state).removeprefix("CASE_STATE_").lower()


async def refused_query(fed: Federation, agency: str, request: Any) -> tuple[str, str]:
    """(status code, reason) of a query expected to be refused; ("OK", "") if answered."""
    async with fed.channel(agency) as channel:
        try:
            await exchange_pb2_grpc.DataExchangeStub(channel).Query(
                request, metadata=fed.token(agency), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, rpc_reason(exc)
    return "OK", ""


# 川渝异地代收 -------------------------------------------------------------------------------------
async def case_cy(fed: Federation, story: Story) -> Result:
    """四川 receives a 重庆 matter for a 重庆 citizen; 重庆 handles it; the result comes back."""
    citizen = applicant(fed, [("510000", "medical.insurance")], skip=1)
    steps = Steps(f"川渝异地代收: {CY_MATTER} 异地就医登记备案 for {mask(citizen)}")
    request = await cy_request(fed, citizen)
    steps.add("500000", "cq.psb", "e-id card sealed by 重庆 (the applicant's wallet)", "sealed")
    steps.add("510000", "sc.hsa", "filing form sealed by 四川's seal (Credentials.Seal)", "sealed")
    case = await submit(fed, "sc.hsa", request)
    again = await submit(fed, "sc.hsa", request)  # the same request id: the same case
    case_id = case.case_id
    verified = ", ".join(f"{m.material_id} ({m.signer_region})" for m in case.materials)
    steps.add(
        "510000",
        "sc.hsa",
        "Submit with 2 materials",
        f"{case_id} {state_name(case)}; "
        f"verified: {verified}; sent again: {'same case' if again.case_id == case_id else 'ANOTHER'}",
    )
    await wait_for(fed, "cq.hsa", case_id, part_is(1, READY), "the submitted case")
    accepted = await act(fed, "cq.hsa", case_id, 1, cases_pb2.CASE_ACTION_ACCEPT)
    steps.add("500000", "cq.hsa", "sees it ready; Accept part 1", _parts(accepted))
    await wait_for(fed, "sc.hsa", case_id, part_is(1, IN_PROGRESS), "重庆's acceptance")
    without, answer = await _medical_query(fed, citizen, case_id)
    steps.add("500000", "cq.hsa", "Query without the citizen's consent", " ".join(without))
    steps.add(
        "500000",
        "cq.hsa",
        f"Query 510000 medical.insurance for {case_id}, with a consent issued by 重庆",
        f"allowed under {answer.agreement_id}, sealed by {answer.record.sealer_region}",
    )
    watching = asyncio.create_task(watch_until_closed(fed, "sc.hsa", case_id))
    result = await seal(fed, "cq.hsa", "result", _filing_result(case_id, citizen))
    approved = await act(fed, "cq.hsa", case_id, 1, cases_pb2.CASE_ACTION_APPROVE, result=result)
    steps.add("500000", "cq.hsa", "Approve part 1 with a result sealed by 重庆", _parts(approved))
    closed, kinds = await watching
    back = closed.parts[1].result
    steps.add(
        "510000",
        "sc.hsa",
        "Watch",
        f"{state_name(closed)}; changes seen: "
        f"{', '.join(kinds) or 'none'}; result sealed by {back.signer_region}",
    )
    ok = (
        again.case_id == case_id
        and without == ("PERMISSION_DENIED", "CONSENT_REQUIRED")
        and len(case.materials) == 2
        and answer.record.sealer_region == "510000"
        and closed.state == COMPLETED
        and back.signer_region == "500000"
        and back.verified_by_region == "500000"  # when 重庆 took it; 四川 again on arrival
    )
    return Result(
        ok,
        f"case {case_id}: submitted at 四川's window, accepted by cq.hsa, its query to 510000 "
        f"allowed under {answer.agreement_id}, approved by 重庆 with a sealed result; the "
        f"window saw it {state_name(closed)}, the result sealed by {back.signer_region} "
        f"(verified by {back.verified_by_region} when it took it, again by 510000 on arrival)",
        steps.table,
    )


async def cy_request(fed: Federation, citizen: str) -> cases_pb2.SubmitCaseRequest:
    """四川's window's submission of a 异地就医登记备案 case for `citizen`, with its materials: an
    e-id card sealed by 重庆 (the applicant's wallet), a filing form sealed by 四川's seal."""
    person = fed.data["510000"].record("medical.insurance", citizen) or {}
    id_card = await seal(fed, "cq.psb", "id-card", _id_card(citizen, person))
    form = await seal(fed, "sc.hsa", "filing-form", _filing_form(citizen, person))
    return cases_pb2.SubmitCaseRequest(
        request_id=f"demo-{secrets.token_hex(8)}",
        matter_code=CY_MATTER,
        applicant_id=citizen,
        materials=[id_card, form],
        note="申请人在成都长期居住，申请异地就医备案",
    )


async def open_cy_case(fed: Federation, citizen: str) -> str:
    """A 异地就医登记备案 case of `citizen` submitted at 四川's window and accepted by 重庆医保
    (cq.hsa), left open: cq.hsa may ask 四川 for the citizen's medical insurance record for it
    once 四川's gateway has the acceptance too (each gateway checks the case it names)."""
    case = await submit(fed, "sc.hsa", await cy_request(fed, citizen))
    await wait_for(fed, "cq.hsa", case.case_id, part_is(1, READY), "the submitted case")
    await act(fed, "cq.hsa", case.case_id, 1, cases_pb2.CASE_ACTION_ACCEPT)
    await wait_for(fed, "sc.hsa", case.case_id, part_is(1, IN_PROGRESS), "重庆's acceptance")
    return str(case.case_id)


async def _medical_query(
    fed: Federation, citizen: str, case_id: str
) -> tuple[tuple[str, str], Any]:
    """四川's medical insurance needs the citizen's consent (requires_consent): the query without
    one (refused: its code and reason), then with one 重庆's identity service issued (the
    answer)."""
    medical = query(
        "510000", "medical.insurance", "MED-REG", citizen, fields=MED_FIELDS, case_id=case_id
    )
    without = await refused_query(fed, "cq.hsa", medical)
    medical.request_id = f"demo-{secrets.token_hex(8)}"
    medical.consent = fed.consent(
        "500000", citizen, "MED-REG", [("510000", "medical.insurance", list(MED_FIELDS))]
    )
    async with fed.channel("cq.hsa") as channel:
        answer = await exchange_pb2_grpc.DataExchangeStub(channel).Query(
            medical, metadata=fed.token("cq.hsa"), timeout=CALL_TIMEOUT
        )
    return without, answer


def _parts(case: Any) -> str:
    names = [
        f"{p.region} {cases_pb2.PartState.Name(p.state).removeprefix('PART_STATE_').lower()}"
        for p in case.parts
    ]
    return f"{state_name(case)}: " + ", ".join(names)


def _id_card(citizen: str, person: dict[str, Any]) -> dict[str, Any]:
    return {
        "credential_type": "id_card",
        "name": person.get("name", ""),
        "citizen_id": citizen,
        "issuer": "重庆市公安局",
        "valid_until": "2036-12-31",
    }


def _filing_form(citizen: str, person: dict[str, Any]) -> dict[str, Any]:
    return {
        "form": "跨省异地就医登记备案表",
        "name": person.get("name", ""),
        "citizen_id": citizen,
        "insured_region": "500000",
        "residence_region": "510000",
        "filing_kind": "异地长期居住人员",
    }


def _filing_result(case_id: str, citizen: str) -> dict[str, Any]:
    return {
        "document": "异地就医备案回执",
        "case_id": case_id,
        "citizen_id": citizen,
        "filed_region": "510000",
        "outcome": "备案成功",
    }


# 多地联办 -----------------------------------------------------------------------------------------
async def case_multi(fed: Federation, story: Story) -> Result:
    """养老保险关系转移接续 across 四川 (window), 浙江 (转出地) and 重庆 (转入地), to 重庆's part."""
    citizen = multi_applicant(fed)
    story.citizen, story.window, story.handler = citizen, "sc.hrss", "cq.hrss"
    steps = Steps(f"多地联办: {PENSION_MATTER} 养老保险关系转移接续 for {mask(citizen)}")
    person = fed.data["510000"].record("si.participation", citizen) or {}
    id_card = await seal(fed, "cq.psb", "id-card", _id_card(citizen, person))
    application = _application(citizen, person, complete=False)
    form = await seal(fed, "sc.hrss", "transfer-application", application)
    case = await submit(
        fed,
        "sc.hrss",
        cases_pb2.SubmitCaseRequest(
            request_id=f"demo-{secrets.token_hex(8)}",
            matter_code=PENSION_MATTER,
            applicant_id=citizen,
            materials=[id_card, form],
        ),
    )
    case_id = story.case_id = case.case_id
    steps.add("510000", "sc.hrss", "Submit with id-card, transfer-application", _parts(case))
    early = query(
        "510000", "si.participation", "SI-TRANSFER", citizen, fields=SI_FIELDS, case_id=case_id
    )
    code, reason = await refused_query(fed, "cq.hrss", early)
    story.denials_expected += 1
    steps.add(
        "500000",
        "cq.hrss",
        "Query 510000 si.participation naming the case, before handling a part of it",
        f"refused: {code} {reason}",
    )
    await _zhejiang_assists(fed, steps, case_id, citizen, person)
    await wait_for(fed, "cq.hrss", case_id, part_is(2, READY), "浙江's approval")
    taken = await act(fed, "cq.hrss", case_id, 2, cases_pb2.CASE_ACTION_ACCEPT)
    steps.add("500000", "cq.hrss", "Accept part 2 (转入地)", _parts(taken))
    # 四川 decides 重庆's queries about the applicant on its own copy of the case: wait for it.
    held = await wait_for(fed, "sc.hrss", case_id, part_is(2, IN_PROGRESS), "重庆's acceptance")
    kinds = [e.kind for e in held.history]
    ok = (
        reason == "CASE_NOT_OPEN"
        and held.state == OPEN
        and held.parts[1].state == DONE
        and held.parts[1].result.signer_region == "330000"
        and "material_requested" in kinds
        and "supplemented" in kinds
    )
    return Result(
        ok,
        f"case {case_id}: a query naming it before 重庆 handled a part refused {reason}; 浙江 "
        f"asked for material, 四川 supplemented it, 浙江 approved with its contribution proof; "
        f"重庆人社 handles part 2 and the case stays open ({len(kinds)} changes held by 四川)",
        steps.table,
    )


async def _zhejiang_assists(
    fed: Federation, steps: Steps, case_id: str, citizen: str, person: dict[str, Any]
) -> None:
    """浙江 (转出地) takes its part, asks for a corrected application, which 四川's window
    supplements, and approves with its contribution proof."""
    await wait_for(fed, "zj.hrss", case_id, part_is(1, READY), "the submitted case")
    await act(fed, "zj.hrss", case_id, 1, cases_pb2.CASE_ACTION_ACCEPT)
    asked = await act(
        fed,
        "zj.hrss",
        case_id,
        1,
        cases_pb2.CASE_ACTION_REQUEST_MATERIAL,
        material_ids=["transfer-application"],
        note="申请表未填写转出地社会保障号码，请补正",
    )
    steps.add(
        "330000", "zj.hrss", "Accept part 1; Request material transfer-application", _parts(asked)
    )
    await wait_for(fed, "sc.hrss", case_id, part_is(1, AWAITING), "浙江's request")
    fixed = await seal(
        fed, "sc.hrss", "transfer-application", _application(citizen, person, complete=True)
    )
    supplied = await act(
        fed, "sc.hrss", case_id, 1, cases_pb2.CASE_ACTION_SUPPLEMENT, materials=[fixed]
    )
    steps.add(
        "510000", "sc.hrss", "Supplement transfer-application (sealed by 四川)", _parts(supplied)
    )
    await wait_for(fed, "zj.hrss", case_id, part_is(1, IN_PROGRESS), "四川's supplement")
    proof = await seal(fed, "zj.hrss", "result", _contribution_proof(case_id, citizen))
    done = await act(fed, "zj.hrss", case_id, 1, cases_pb2.CASE_ACTION_APPROVE, result=proof)
    steps.add("330000", "zj.hrss", "Approve part 1 with its contribution proof", _parts(done))


def _application(citizen: str, person: dict[str, Any], *, complete: bool) -> dict[str, Any]:
    return {
        "form": "基本养老保险关系转移接续申请表",
        "name": person.get("name", ""),
        "citizen_id": citizen,
        "from_region": "330000",
        "to_region": "500000",
        "from_si_number": citizen if complete else "",
    }


def _contribution_proof(case_id: str, citizen: str) -> dict[str, Any]:
    return {
        "document": "参保缴费凭证",
        "case_id": case_id,
        "citizen_id": citizen,
        "issued_by_region": "330000",
        "fund_transferred": True,
    }


async def case_done(fed: Federation, story: Story) -> Result:
    """重庆 approves the transfer; the window watches the case complete; its queries end."""
    if not story.case_id:
        return Result(False, "no open 多地联办 case: the case-multi scenario did not open one")
    watching = asyncio.create_task(watch_until_closed(fed, story.window, story.case_id))
    result = await seal(
        fed,
        story.handler,
        "result",
        {
            "document": "养老保险关系转移接续联系函回执",
            "case_id": story.case_id,
            "citizen_id": story.citizen,
            "received_by_region": "500000",
            "outcome": "接续完成",
        },
    )
    await act(fed, story.handler, story.case_id, 2, cases_pb2.CASE_ACTION_APPROVE, result=result)
    closed, kinds = await watching
    late = query(
        "510000",
        "si.participation",
        "SI-TRANSFER",
        story.citizen,
        fields=SI_FIELDS,
        case_id=story.case_id,
    )
    await wait_for(fed, story.handler, story.case_id, lambda c: c.state == COMPLETED, "done")
    _, reason = await refused_query(fed, story.handler, late)
    story.denials_expected += 1
    results = [p.result.signer_region for p in closed.parts if p.HasField("result")]
    ok = (
        closed.state == COMPLETED
        and all(p.state == DONE for p in closed.parts)
        and results == ["330000", "500000"]
        and reason == "CASE_NOT_OPEN"
    )
    return Result(
        ok,
        f"case {story.case_id} {state_name(closed)} at 四川's window (Watch saw: "
        f"{', '.join(kinds) or 'nothing new'}); results sealed by {', '.join(results)}; a query "
        f"naming the closed case refused {reason}",
    )
