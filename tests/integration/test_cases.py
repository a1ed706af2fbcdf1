"""Cross-region cases (issue 19) end to end: three regions' gateways, each its own process
(`case_processes`), agencies calling them over mutual TLS with request tokens.

- 川渝异地代收 (matter 000125002100): a 四川 window submits a 重庆 matter; 重庆 accepts, queries
  the applicant's medical insurance in 四川 under the case, approves with a sealed result; the
  window's `Get` shows the case completed with the result, and its `Watch` streamed each change.
- 多地联办 (matter 000112003100): 四川 receives, 浙江 assists, 重庆 handles, in that order, with a
  request for material and its supplement; every region holds the same history.
- Cases bind queries: a query for a conditional dataset without an open case the asking agency
  handles for that applicant is refused CASE_NOT_OPEN by the requesting gateway, and by the
  owner deciding again (a `Peer.Forward` sent to it straight, as a peer gateway would); both
  audited.
- Bad input, each refused with its reason and audited, nothing stored half-way.

Crash safety (a gateway SIGKILLed between the steps) is tests/faults/test_case_crashes.py (run
beside the rest, with the fault suite).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from case_processes import (
    CASES,
    CHONGQING,
    SICHUAN,
    ZHEJIANG,
    Regions,
    act,
    applicants,
    assert_recorded_once,
    id_card,
    ids,
    kinds,
    new_request_id,
    three_regions,
)
from query_support import request
from support import error_info, sign_forward_message

from gateway.consent import issue_region_consent
from gateway.demo.data import DemoData
from tongban.v1 import cases_pb2, common_pb2, credentials_pb2, exchange_pb2

pytestmark = pytest.mark.integration

FILING = "000125002100"  # 异地就医登记备案: 四川 receives, 重庆 handles
TRANSFER = "000112003100"  # 养老保险关系转移接续: 四川 receives, 浙江 assists, 重庆 handles
MED = ("medical.insurance", "MED-REG")  # 有条件共享; the filing matter's query
MED_FIELDS = ("citizen_id", "filing_status", "insured_region", "name", "status")
Case = cases_pb2.Case
OPEN, COMPLETED = cases_pb2.CASE_STATE_OPEN, cases_pb2.CASE_STATE_COMPLETED
WAITING, READY = cases_pb2.PART_STATE_WAITING, cases_pb2.PART_STATE_READY
IN_PROGRESS, DONE = cases_pb2.PART_STATE_IN_PROGRESS, cases_pb2.PART_STATE_DONE
AWAITING = cases_pb2.PART_STATE_AWAITING_MATERIAL


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Regions]:
    with three_regions(tmp_path_factory.mktemp("cases")) as made:
        yield made


def med(regions: Regions, applicant: str, case_id: str) -> exchange_pb2.QueryRequest:
    """The filing matter's query of 四川's medical insurance (requires_consent), with the
    applicant's consent issued by 重庆, their home region."""
    query = request(SICHUAN, *MED, applicant, fields=MED_FIELDS, case_id=case_id)
    now = datetime.now(UTC)
    query.consent = issue_region_consent(
        regions.fed.pki,
        CHONGQING,
        subject=applicant,
        purpose=MED[1],
        datasets=[(SICHUAN, MED[0], MED_FIELDS)],
        regions=(CHONGQING,),
        not_before=now,
        expires_at=now + timedelta(hours=1),
        max_uses=5,
        now=now,
    )
    return query


def sha256(material: cases_pb2.Material) -> str:
    return hashlib.sha256(material.content).hexdigest()


async def filing_materials(regions: Regions, agency: str, applicant: str) -> list[Any]:
    form = {"form": "跨省异地就医登记备案表", "insured_region": "500000", "settle_in": "510100"}
    return [
        await id_card(regions, agency, applicant),
        await regions.material(agency, "filing-form", form),
    ]


async def refused(call: Any, code: grpc.StatusCode, reason: str) -> dict[str, str]:
    """Awaits `call`, which must be refused with `code` and `reason`; its ErrorInfo metadata."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert (caught.value.code(), error_info(caught.value).reason) == (code, reason), (
        caught.value.details()
    )
    return dict(error_info(caught.value).metadata)


def denied(regions: Regions, region: str, request_id: str, rpc: str, reason: str) -> dict[str, Any]:
    """The region's one audit record of the refused call."""
    records = regions.audited(region, request_id)
    assert [(r["rpc"], r["outcome"], r["reason"]) for r in records] == [(rpc, "denied", reason)], (
        records
    )
    return records[0]


# 1. the two demo scenarios ---------------------------------------------------------------------
async def test_chuanyu_a_chongqing_matter_received_at_a_sichuan_window(regions: Regions) -> None:
    """川渝异地代收: sc.hsa receives, cq.hsa accepts, queries 四川's medical insurance record of
    the applicant under the case, approves with a sealed result; the window sees it all."""
    applicant = applicants(SICHUAN, MED[0])[0]
    materials = await filing_materials(regions, "sc.hsa", applicant)
    submit_id = new_request_id()
    case = await regions.submit(
        "sc.hsa", FILING, applicant, materials, request_id=submit_id, note="异地长期居住"
    )
    case_id = case.case_id
    assert (case.matter_code, case.matter_name) == (FILING, "异地就医登记备案")
    assert (case.window_region, case.window_agency, case.state) == (SICHUAN, "sc.hsa", OPEN)
    assert case.applicant_id == applicant
    assert applicant not in case_id
    assert [(p.index, p.region, p.role, p.state) for p in case.parts] == [
        (0, SICHUAN, "receive", DONE),
        (1, CHONGQING, "handle", READY),
    ]
    assert case.parts[0].agency == "sc.hsa"
    assert [(m.material_id, m.sha256, m.signer_region, m.verified_by_region) for m in
            case.materials] == [
        ("id-card", sha256(materials[0]), SICHUAN, SICHUAN),
        ("filing-form", sha256(materials[1]), SICHUAN, SICHUAN),
    ]  # fmt: skip
    assert [m.format for m in case.materials] == [credentials_pb2.SEAL_FORMAT_JADES] * 2
    assert [m.size for m in case.materials] == [len(m.content) for m in materials]
    assert kinds(case) == ["submitted"]
    assert case.history[0].region == SICHUAN
    assert case.due_at.ToDatetime() - case.submitted_at.ToDatetime() == timedelta(days=1)
    assert case.note == "异地长期居住"
    [record] = [r for r in regions.audited(SICHUAN, submit_id) if r["rpc"] == CASES + "Submit"]
    assert (record["outcome"], record["case_id"], record["caller_agency"]) == (
        "allowed",
        case_id,
        "sc.hsa",
    )
    assert record["purpose"] == f"matter.{FILING}"
    assert record["subject"]
    assert applicant not in json.dumps(regions.audit(SICHUAN))
    assert case.audit_id.endswith(f"#{regions.audit(SICHUAN).index(record)}")

    # The same submission sent again answers the case it made.
    again = await regions.submit(
        "sc.hsa", FILING, applicant, materials, request_id=submit_id, note="异地长期居住"
    )
    assert (again.case_id, ids(again)) == (case_id, ids(case))

    async with regions.watching("sc.hsa", case_id) as updates:
        # 重庆's handling agency finds it in its inbox.
        seen = await regions.until("cq.hsa", case_id, lambda c: len(c.history) == 1, "the case")
        assert ids(seen) == ids(case)
        assert seen.parts[1].state == READY
        assert case_id in [c.case_id for c in await regions.listed("cq.hsa")]
        accepted = await regions.act("cq.hsa", act(case_id, 1, cases_pb2.CASE_ACTION_ACCEPT))
        assert (accepted.parts[1].state, accepted.parts[1].agency) == (IN_PROGRESS, "cq.hsa")
        # The owner of the data decides the query again on its own copy: it must have it.
        await regions.until("sc.hsa", case_id, lambda c: len(c.history) == 2, "the acceptance")

        query = med(regions, applicant, case_id)
        answer = await regions.query("cq.hsa", query)
        record = json.loads(answer.record.payload)
        assert record["citizen_id"] == applicant
        assert set(answer.fields) <= set(MED_FIELDS)
        assert answer.agreement_id == "YC-SI-2026"
        [asked] = regions.audited(CHONGQING, query.request_id)
        [owned] = regions.audited(SICHUAN, query.request_id)
        assert (asked["outcome"], asked["case_id"]) == ("allowed", case_id)
        assert (owned["rpc"], owned["outcome"], owned["case_id"]) == (
            "/tongban.v1.Peer/Forward",
            "allowed",
            case_id,
        )

        result = await regions.material(
            "cq.hsa", "result", {"filing": "已备案", "valid_until": "2027-12-31"}
        )
        done = await regions.act(
            "cq.hsa", act(case_id, 1, cases_pb2.CASE_ACTION_APPROVE, result=result)
        )
        assert done.state == COMPLETED
        assert done.parts[1].state == DONE

        window = await regions.until(
            "sc.hsa", case_id, lambda c: c.state == COMPLETED, "the window to see it completed"
        )
        assert window.parts[1].result.sha256 == sha256(result)
        assert window.parts[1].result.signer_region == CHONGQING
        full = await regions.get("sc.hsa", case_id, include_contents=True)
        assert full.parts[1].result.content == result.content
        assert [m.content for m in full.materials] == [m.content for m in materials]
        assert ids(window) == ids(done)
        assert kinds(window) == ["submitted", "accepted", "approved"]
        assert all(e.applied for e in window.history)
        await regions.until(
            "sc.hsa", case_id, lambda _: len(updates) >= 3, "the watch to stream the changes"
        )
    assert_recorded_once(regions, case_id, (SICHUAN, CHONGQING), 3)
    assert not updates[0].HasField("event")
    assert ids(updates[0].case) == ids(case)
    assert [u.event.kind for u in updates[1:]] == ["accepted", "approved"]
    assert [u.case.state for u in updates] == [OPEN, OPEN, COMPLETED]
    assert updates[-1].case.parts[1].result.sha256 == sha256(result)


async def test_duoditongban_three_regions_in_the_matters_order(regions: Regions) -> None:
    """多地联办: 四川 receives, 浙江 assists, then 重庆 handles; 重庆 asks for material, the window
    supplements it; every region holds the same history, each event once."""
    applicant = DemoData(SICHUAN).population(40)[7]
    materials = [
        await id_card(regions, "sc.hrss", applicant),
        await regions.material("sc.hrss", "transfer-application", {"from": "330000"}),
    ]
    case = await regions.submit("sc.hrss", TRANSFER, applicant, materials)
    case_id = case.case_id
    assert [(p.region, p.role, p.state) for p in case.parts] == [
        (SICHUAN, "receive", DONE),
        (ZHEJIANG, "assist", READY),
        (CHONGQING, "handle", WAITING),
    ]
    await regions.until("zj.hrss", case_id, lambda c: len(c.history) == 1, "浙江 to hold it")
    # 重庆 holds it too (its citizen portal shows the applicant their case), but its part waits
    # for 浙江's: in no 重庆 agency's inbox yet, it cannot be taken out of order.
    portal = await regions.until(
        "cq.data", case_id, lambda c: len(c.history) == 1, "重庆 to hold it", applicant=applicant
    )
    assert [p.state for p in portal.parts] == [DONE, READY, WAITING]
    assert portal.applicant_id == applicant
    await refused(
        regions.act("cq.hrss", act(case_id, 2, cases_pb2.CASE_ACTION_ACCEPT)),
        grpc.StatusCode.NOT_FOUND,
        "CASE_NOT_FOUND",
    )
    await regions.act("zj.hrss", act(case_id, 1, cases_pb2.CASE_ACTION_ACCEPT))
    proof = await regions.material("zj.hrss", "result", {"contribution_months": 86})
    assisted = await regions.act(
        "zj.hrss", act(case_id, 1, cases_pb2.CASE_ACTION_APPROVE, result=proof)
    )
    assert [p.state for p in assisted.parts] == [DONE, DONE, READY]

    await regions.until("cq.hrss", case_id, lambda c: c.parts[2].state == READY, "重庆's turn")
    await regions.act("cq.hrss", act(case_id, 2, cases_pb2.CASE_ACTION_ACCEPT))
    asked = await regions.act(
        "cq.hrss",
        act(
            case_id,
            2,
            cases_pb2.CASE_ACTION_REQUEST_MATERIAL,
            material_ids=["contribution-proof"],
            note="请补交转出地参保缴费凭证",
        ),
    )
    assert asked.parts[2].state == AWAITING
    window = await regions.until(
        "sc.hrss", case_id, lambda c: c.parts[2].state == AWAITING, "the request at the window"
    )
    assert list(window.parts[2].requested_material_ids) == ["contribution-proof"]
    assert window.parts[2].note == "请补交转出地参保缴费凭证"
    supplement = await regions.material("sc.hrss", "contribution-proof", {"months": 86})
    await regions.act(
        "sc.hrss", act(case_id, 2, cases_pb2.CASE_ACTION_SUPPLEMENT, materials=[supplement])
    )
    await regions.until(
        "cq.hrss", case_id, lambda c: c.parts[2].state == IN_PROGRESS, "the supplement at 重庆"
    )
    result = await regions.material("cq.hrss", "result", {"transferred": True})
    await regions.act("cq.hrss", act(case_id, 2, cases_pb2.CASE_ACTION_APPROVE, result=result))

    held = {
        agency: await regions.until(
            agency, case_id, lambda c: c.state == COMPLETED, "the case completed everywhere"
        )
        for agency in ("sc.hrss", "zj.hrss", "cq.hrss")
    }
    expected = ["submitted", "accepted", "approved", "accepted", "material_requested",
                "supplemented", "approved"]  # fmt: skip
    window = held["sc.hrss"]
    assert kinds(window) == expected
    assert [e.region for e in window.history] == [SICHUAN, ZHEJIANG, ZHEJIANG, CHONGQING,
                                                 CHONGQING, SICHUAN, CHONGQING]  # fmt: skip
    assert len(set(ids(window))) == len(expected)
    for case in held.values():
        assert ids(case) == ids(window)
        assert all(e.applied for e in case.history)
        assert [p.state for p in case.parts] == [DONE, DONE, DONE]
        assert [m.material_id for m in case.materials] == [
            "id-card",
            "transfer-application",
            "contribution-proof",
        ]
        assert case.parts[1].result.sha256 == sha256(proof)
        assert case.parts[2].result.sha256 == sha256(result)
    assert [p.agency for p in window.parts] == ["sc.hrss", "zj.hrss", "cq.hrss"]
    assert_recorded_once(regions, case_id, (SICHUAN, ZHEJIANG, CHONGQING), len(expected))
    # The applicant sees it done through their home region's portal; another applicant does
    # not see it, and a portal does not act.
    mine = await regions.get("sc.data", case_id, applicant=applicant)
    assert (mine.state, ids(mine)) == (COMPLETED, ids(window))
    stranger = DemoData(SICHUAN).population(40)[8]
    await refused(
        regions.get("sc.data", case_id, applicant=stranger),
        grpc.StatusCode.NOT_FOUND,
        "CASE_NOT_FOUND",
    )
    await refused(
        regions.cases(
            "sc.data",
            "Act",
            act(case_id, 2, cases_pb2.CASE_ACTION_REJECT, note="x", request_id=new_request_id()),
            applicant,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_AUTHORISED_ROLE",
    )


# 3. cases bind queries -------------------------------------------------------------------------
async def open_filing_case(regions: Regions, applicant: str) -> str:
    """A filing case of `applicant` that cq.hsa accepted, held as such by both regions."""
    case = await regions.submit(
        "sc.hsa", FILING, applicant, await filing_materials(regions, "sc.hsa", applicant)
    )
    await regions.until("cq.hsa", case.case_id, lambda c: len(c.history) == 1, "the case")
    await regions.act("cq.hsa", act(case.case_id, 1, cases_pb2.CASE_ACTION_ACCEPT))
    await regions.until("sc.hsa", case.case_id, lambda c: len(c.history) == 2, "the acceptance")
    return case.case_id


@pytest.mark.parametrize("without", ["a case", "the applicant", "the handling agency"])
async def test_a_query_without_an_open_case_is_refused_by_the_requesting_gateway(
    regions: Regions, without: str
) -> None:
    """cq.hsa handles a case of A: asking 四川 for B's record under it, or under no case, or
    cq.hrss (which handles nothing) asking for A's, is refused at 重庆 and never reaches 四川."""
    applicant, other = applicants(SICHUAN, MED[0])[1:3]
    case_id = await open_filing_case(regions, applicant)
    agency, subject = "cq.hsa", applicant
    if without == "a case":
        case_id = f"{SICHUAN}-{secrets.token_hex(6)}"
    elif without == "the applicant":
        subject = other
    else:
        agency = "cq.hrss"
    query = request(SICHUAN, *MED, subject, fields=MED_FIELDS, case_id=case_id)
    await refused(regions.query(agency, query), grpc.StatusCode.PERMISSION_DENIED, "CASE_NOT_OPEN")
    record = denied(regions, CHONGQING, query.request_id, "/tongban.v1.DataExchange/Query",
                    "CASE_NOT_OPEN")  # fmt: skip
    assert (record["case_id"], record["caller_agency"], record["dataset"]) == (
        case_id,
        agency,
        MED[0],
    )
    assert regions.audited(SICHUAN, query.request_id) == []  # never forwarded
    # The case covers the query its handling agency makes for its applicant.
    if without != "a case":
        allowed = med(regions, applicant, case_id)
        assert json.loads((await regions.query("cq.hsa", allowed)).record.payload)


def forward(regions: Regions, agency: str, query: exchange_pb2.QueryRequest) -> Any:
    """What 重庆's gateway would send 四川 for `agency`'s query, signed by 重庆's audit key."""
    message = exchange_pb2.ForwardRequest(
        query=query,
        caller=common_pb2.CallerIdentity(
            agency_id=agency,
            region=CHONGQING,
            operator="经办人 张三",
            certificate_thumbprint=base64.urlsafe_b64encode(secrets.token_bytes(32))
            .rstrip(b"=")
            .decode(),
        ),
        requesting_region=CHONGQING,
    )
    return sign_forward_message(regions.fed, message)


@pytest.mark.parametrize("without", ["the applicant", "the handling agency"])
async def test_a_query_without_an_open_case_is_refused_by_the_owner_deciding_again(
    regions: Regions, without: str
) -> None:
    """A peer gateway that does not check (or lies) gets nothing either: 四川, the owner, holds
    its own copy of the case and refuses a forwarded query that it does not cover."""
    applicant, other = applicants(SICHUAN, MED[0])[3:5]
    case_id = await open_filing_case(regions, applicant)
    agency, subject = ("cq.hsa", other) if without == "the applicant" else ("cq.hrss", applicant)
    query = request(SICHUAN, *MED, subject, fields=MED_FIELDS, case_id=case_id)
    await refused(
        regions.forward(CHONGQING, SICHUAN, forward(regions, agency, query)),
        grpc.StatusCode.PERMISSION_DENIED,
        "CASE_NOT_OPEN",
    )
    record = denied(regions, SICHUAN, query.request_id, "/tongban.v1.Peer/Forward",
                    "CASE_NOT_OPEN")  # fmt: skip
    assert (record["case_id"], record["caller_agency"], record["caller_region"]) == (
        case_id,
        agency,
        CHONGQING,
    )
    # The forward the case covers is answered: the refusal was the case's, not the message's.
    covered = med(regions, applicant, case_id)
    answer = await regions.forward(CHONGQING, SICHUAN, forward(regions, "cq.hsa", covered))
    assert json.loads(answer.record.payload)["citizen_id"] == applicant


# 4. bad input ----------------------------------------------------------------------------------
def tampered(jws: str) -> str:
    """The JWS with one value of its payload changed (the seal no longer covers it)."""
    header, payload, signature = jws.split(".")
    document = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    document["form"] = "篡改的备案表"
    changed = base64.urlsafe_b64encode(json.dumps(document, ensure_ascii=False).encode())
    return f"{header}.{changed.rstrip(b'=').decode()}.{signature}"


@pytest.mark.parametrize(
    ("bad", "reason", "material"),
    [
        ("unknown matter", "MATTER_UNKNOWN", ""),
        ("missing material", "MATERIAL_MISSING", "filing-form"),
        ("tampered seal", "MATERIAL_INVALID", "filing-form"),
        ("10 MB material", "MATERIAL_TOO_LARGE", "filing-form"),
    ],
)
async def test_a_bad_submission_is_refused_audited_and_stores_nothing(
    regions: Regions, bad: str, reason: str, material: str
) -> None:
    """sc.amr submits only these: whatever it lists afterwards was stored half-way."""
    applicant = DemoData(SICHUAN).population(40)[11]
    good = await filing_materials(regions, "sc.amr", applicant)
    matter, materials = FILING, list(good)
    if bad == "unknown matter":
        matter = "000199999900"
    elif bad == "missing material":
        materials = good[:1]
    elif bad == "tampered seal":
        materials[1] = cases_pb2.Material(
            material_id="filing-form", content=tampered(good[1].content.decode()).encode()
        )
    else:
        materials[1] = cases_pb2.Material(
            material_id="filing-form", content=secrets.token_bytes(10 * 1000 * 1000)
        )
    request_id = new_request_id()
    metadata = await refused(
        regions.submit("sc.amr", matter, applicant, materials, request_id=request_id),
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
    )
    if material:
        assert metadata.get("material") == material
    record = denied(regions, SICHUAN, request_id, CASES + "Submit", reason)
    assert record["caller_agency"] == "sc.amr"
    assert applicant not in json.dumps(record)
    assert await regions.listed("sc.amr") == []
    for agency in ("cq.hsa", "cq.hrss"):  # the handling region was told of nothing
        assert "sc.amr" not in [c.window_agency for c in await regions.listed(agency)]


@pytest.mark.parametrize(
    ("bad", "code", "reason"),
    [
        ("approve before accepting", grpc.StatusCode.FAILED_PRECONDITION,
         "CASE_ACTION_NOT_ALLOWED"),
        ("accept the received part", grpc.StatusCode.FAILED_PRECONDITION,
         "CASE_ACTION_NOT_ALLOWED"),
        ("supplement nothing asked", grpc.StatusCode.FAILED_PRECONDITION,
         "CASE_ACTION_NOT_ALLOWED"),
        ("the window takes 重庆's part", grpc.StatusCode.PERMISSION_DENIED,
         "CASE_PART_NOT_YOURS"),
    ],
)  # fmt: skip
async def test_a_bad_action_is_refused_audited_and_changes_nothing(
    regions: Regions, bad: str, code: grpc.StatusCode, reason: str
) -> None:
    applicant = DemoData(SICHUAN).population(40)[13]
    case = await regions.submit(
        "sc.hsa", FILING, applicant, await filing_materials(regions, "sc.hsa", applicant)
    )
    case_id = case.case_id
    await regions.until("cq.hsa", case_id, lambda c: len(c.history) == 1, "the case at 重庆")
    if bad == "approve before accepting":
        result = await regions.material("cq.hsa", "result", {"filing": "已备案"})
        agency, call = "cq.hsa", act(case_id, 1, cases_pb2.CASE_ACTION_APPROVE, result=result)
    elif bad == "accept the received part":
        agency, call = "sc.hsa", act(case_id, 0, cases_pb2.CASE_ACTION_ACCEPT)
    elif bad == "supplement nothing asked":
        extra = await regions.material("sc.hsa", "filing-form", {"form": "补充"})
        agency = "sc.hsa"
        call = act(case_id, 1, cases_pb2.CASE_ACTION_SUPPLEMENT, materials=[extra])
    else:
        agency, call = "sc.hsa", act(case_id, 1, cases_pb2.CASE_ACTION_ACCEPT)
    call.request_id = new_request_id()
    await refused(regions.act(agency, call), code, reason)
    record = denied(regions, regions.region_of(agency), call.request_id, CASES + "Act", reason)
    assert (record["case_id"], record["caller_agency"]) == (case_id, agency)
    for holder in ("sc.hsa", "cq.hsa"):
        held = await regions.get(holder, case_id)
        assert ids(held) == ids(case)
        assert held.parts[1].state == READY
    # The part is still there to be taken, by its own region.
    taken = await regions.act("cq.hsa", act(case_id, 1, cases_pb2.CASE_ACTION_ACCEPT))
    assert kinds(taken) == ["submitted", "accepted"]
