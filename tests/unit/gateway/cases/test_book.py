"""The case book at book level: three regions' books (四川 510000, 重庆 500000, 浙江 330000)
passing events by hand (outgoing -> receive -> delivered), the demo's two scenarios, every bad
input of issue 19's acceptance list refused with its reason, audited, nothing stored half-way;
idempotent Submit and Act; duplicates received once."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
from case_support import (
    APPLICANT,
    CQ,
    MEDICAL,
    PENSION,
    SC,
    ZJ,
    Clock,
    Region,
    agency,
    deliver,
    make_region,
    sealed,
)
from flow_support import NOW
from support import Federation

from gateway.audit import Outcome, pseudonymize
from gateway.cases import (
    ActCall,
    CaseCaller,
    CaseState,
    EventKind,
    MaterialInput,
    PartState,
    SubmitCall,
)
from gateway.errors import Refusal
from registry import Registry

SC_WINDOW = agency(SC, "sc.hsa")
CQ_HANDLER = agency(CQ, "cq.hsa")
ZJ_ASSIST = agency(ZJ, "zj.hrss")


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def regions(fed: Federation, registry: Registry, clock: Clock) -> dict[str, Region]:
    return {r: await make_region(fed, registry, r, clock) for r in (SC, CQ, ZJ)}


async def id_card(fed: Federation, registry: Registry, **more: Any) -> MaterialInput:
    payload = {"credential_type": "id_card", "citizen_id": APPLICANT, "name": "张三", **more}
    return await sealed(fed, registry, CQ, payload, material_id="id-card")


async def document(fed: Federation, registry: Registry, material_id: str) -> MaterialInput:
    return await sealed(
        fed, registry, SC, {"form": material_id}, detached=True, material_id=material_id
    )


async def submit_medical(
    fed: Federation, registry: Registry, sc: Region, request_id: str = "sub-1"
) -> str:
    materials = (await id_card(fed, registry), await document(fed, registry, "filing-form"))
    answer = await sc.book.submit(
        SC_WINDOW, SubmitCall(request_id, MEDICAL, APPLICANT, materials, note="加急")
    )
    return answer.view.case_id


def act(case_id: str, part: int, action: EventKind, request_id: str, **more: Any) -> ActCall:
    return ActCall(request_id, case_id, part, action, **more)


async def refused(call: Any, region: Region) -> Refusal:
    """The refusal `call` (an awaitable) ends with, after checking nothing was stored and the
    refusal was audited with its reason."""
    events_before = len(region.store._events)
    cases_before = dict(region.store._cases)
    records_before = len(region.records)
    with pytest.raises(Refusal) as caught:
        await call
    assert len(region.store._events) == events_before
    assert region.store._cases == cases_before
    assert len(region.records) == records_before + 1
    record = region.records[-1]
    assert record.outcome is Outcome.DENIED
    assert record.reason == caught.value.reason
    return caught.value


# -- the two demo scenarios --------------------------------------------------------------------
async def test_chuanyu_remote_receipt_handled_in_chongqing_result_back_at_the_window(
    fed: Federation, registry: Registry, regions: dict[str, Region], clock: Clock
) -> None:
    sc, cq = regions[SC], regions[CQ]
    case_id = await submit_medical(fed, registry, sc)
    assert case_id.startswith(f"{SC}-20261121-")
    assert sc.woken  # the deliverer is woken
    view = await sc.book.view(case_id)
    assert view is not None
    assert [p.state for p in view.parts] == [PartState.DONE, PartState.READY]
    assert await sc.book.outgoing(ZJ, 10) == []  # 浙江 has no part
    await deliver(sc, cq)
    assert await sc.book.outgoing(CQ, 10) == []
    clock.tick()
    # 重庆 sees it in its inbox, accepts, asks for a new filing form
    listed = await cq.book.list(CQ_HANDLER)
    assert [v.case_id for v in listed.cases] == [case_id]
    await cq.book.act(CQ_HANDLER, act(case_id, 1, EventKind.ACCEPTED, "acc-1"))
    clock.tick()
    await cq.book.act(
        CQ_HANDLER,
        act(
            case_id,
            1,
            EventKind.MATERIAL_REQUESTED,
            "ask-1",
            note="备案表未签字",
            material_ids=("filing-form",),
        ),
    )
    await deliver(cq, sc)
    view = await sc.book.view(case_id)
    assert view is not None
    assert view.parts[1].state is PartState.AWAITING_MATERIAL
    assert view.parts[1].requested == ("filing-form",)
    clock.tick()
    again = await sealed(
        fed, registry, SC, b'{"form": "signed"}', detached=True, material_id="filing-form"
    )
    await sc.book.act(
        SC_WINDOW, act(case_id, 1, EventKind.SUPPLEMENTED, "sup-1", materials=(again,))
    )
    await deliver(sc, cq)
    clock.tick()
    result = await sealed(fed, registry, CQ, {"filing": "approved"}, material_id="ignored")
    done = await cq.book.act(CQ_HANDLER, act(case_id, 1, EventKind.APPROVED, "ok-1", result=result))
    assert done.view.state is CaseState.COMPLETED
    await deliver(cq, sc)
    at_window = await sc.book.get(SC_WINDOW, case_id, include_contents=True)
    assert at_window.view.state is CaseState.COMPLETED
    final = at_window.view.parts[1].result
    assert final is not None
    assert (final.material_id, final.signer_region, final.verified_by_region) == ("result", CQ, CQ)
    assert at_window.contents[final.sha256] == (result.content, b"")
    assert at_window.view.parts == done.view.parts
    assert [e.event_id for e, _ in at_window.view.history] == [
        e.event_id for e, _ in done.view.history
    ]
    assert all(applied for _, applied in at_window.view.history)
    # every change is in both audit logs with the event's digest and the matter
    for region in (sc, cq):
        made = [r for r in region.records if r.sealed_digest]
        assert len(made) == 5
        assert {r.purpose for r in made} == {f"matter.{MEDICAL}"}
        assert {r.case_id for r in made} == {case_id}
        assert {r.subject for r in made} == {
            pseudonymize(APPLICANT, f"pseudonym key of {region.region}".encode())
        }
    assert {r.rpc for r in cq.records if r.sealed_digest} == {
        "/tongban.v1.Peer/DeliverCaseEvents",
        "/tongban.v1.Cases/Act",
    }


async def test_multi_region_pension_transfer_across_zhejiang_sichuan_chongqing(
    fed: Federation, registry: Registry, regions: dict[str, Region], clock: Clock
) -> None:
    sc, cq, zj = regions[SC], regions[CQ], regions[ZJ]
    materials = (
        await id_card(fed, registry),
        await document(fed, registry, "transfer-application"),
    )
    made = await sc.book.submit(SC_WINDOW, SubmitCall("p-1", PENSION, APPLICANT, materials))
    case_id = made.view.case_id
    await deliver(sc, zj)
    await deliver(sc, cq)
    # 重庆's part waits for 浙江's: 重庆's agencies do not see it yet
    with pytest.raises(Refusal) as caught:
        await cq.book.act(CQ_HANDLER, act(case_id, 2, EventKind.ACCEPTED, "early"))
    assert caught.value.reason == "CASE_NOT_FOUND"
    clock.tick()
    await zj.book.act(ZJ_ASSIST, act(case_id, 1, EventKind.ACCEPTED, "z-1"))
    clock.tick()
    await zj.book.act(ZJ_ASSIST, act(case_id, 1, EventKind.APPROVED, "z-2"))  # assist: no result
    await deliver(zj, sc)
    await deliver(zj, cq)
    clock.tick()
    await cq.book.act(CQ_HANDLER, act(case_id, 2, EventKind.ACCEPTED, "c-1"))
    clock.tick()
    result = await sealed(fed, registry, CQ, {"transfer": "done"})
    await cq.book.act(CQ_HANDLER, act(case_id, 2, EventKind.APPROVED, "c-2", result=result))
    await deliver(cq, sc)
    await deliver(cq, zj)
    views = [await r.book.view(case_id) for r in (sc, cq, zj)]
    assert all(v is not None and v.state is CaseState.COMPLETED for v in views)
    first = views[0]
    assert first is not None
    for other in views[1:]:
        assert other is not None
        assert other.parts == first.parts
        assert [e.event_id for e, _ in other.history] == [e.event_id for e, _ in first.history]
    assert [p.agency for p in first.parts] == ["sc.hsa", "zj.hrss", "cq.hsa"]
    for region in (sc, cq, zj):  # every outbox is empty
        assert await region.store.outbox_backlog() == {}


# -- idempotency and duplicates ----------------------------------------------------------------
async def test_submit_and_act_sent_again_answer_what_they_made(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc, cq = regions[SC], regions[CQ]
    materials = (await id_card(fed, registry), await document(fed, registry, "filing-form"))
    call = SubmitCall("same", MEDICAL, APPLICANT, materials)
    first = await sc.book.submit(SC_WINDOW, call)
    second = await sc.book.submit(SC_WINDOW, call)
    assert second.view.case_id == first.view.case_id
    assert second.audit_id != first.audit_id  # the second call is audited too
    assert len(sc.store._events) == 1
    other = dataclasses.replace(call, note="another")
    denied = await refused(sc.book.submit(SC_WINDOW, other), sc)
    assert denied.reason == "REQUEST_REPLAYED"
    await deliver(sc, cq)
    accept = act(first.view.case_id, 1, EventKind.ACCEPTED, "acc")
    await cq.book.act(CQ_HANDLER, accept)
    again = await cq.book.act(CQ_HANDLER, accept)
    assert again.view.parts[1].state is PartState.IN_PROGRESS
    assert len(cq.store._events) == 2
    assert (
        await refused(cq.book.act(CQ_HANDLER, dataclasses.replace(accept, part=0)), cq)
    ).reason == "REQUEST_REPLAYED"


async def test_an_event_delivered_twice_is_held_once(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc, cq = regions[SC], regions[CQ]
    await submit_medical(fed, registry, sc)
    out = await sc.book.outgoing(CQ, 10)
    items = [(o.jws, o.attachments) for o in out]
    assert await cq.book.receive(SC, items) == [out[0].event_id]
    records = len(cq.records)
    assert await cq.book.receive(SC, items) == [out[0].event_id]
    assert len(cq.store._events) == 1
    assert len(cq.records) == records


async def test_a_bad_event_in_a_delivery_is_refused_with_its_index_the_ones_before_kept(
    fed: Federation, registry: Registry, regions: dict[str, Region], clock: Clock
) -> None:
    sc, cq = regions[SC], regions[CQ]
    await submit_medical(fed, registry, sc)
    out = await sc.book.outgoing(CQ, 10)
    good = (out[0].jws, out[0].attachments)
    header, payload, signature = out[0].jws.split(".")
    forged = (f"{header}.{payload}.{signature[:-4]}AAAA", out[0].attachments)
    with pytest.raises(Refusal) as caught:
        await cq.book.receive(SC, [good, forged])
    assert caught.value.reason == "CASE_EVENT_INVALID"
    assert caught.value.metadata["index"] == "1"
    assert len(cq.store._events) == 1
    assert cq.records[-1].reason == "CASE_EVENT_INVALID"
    # from another region's gateway than the event's own: refused
    with pytest.raises(Refusal) as caught:
        await regions[ZJ].book.receive(CQ, [good])
    assert caught.value.reason == "CASE_EVENT_INVALID"
    # an attachment that is not the one the event names (at a region of the case that does
    # not hold it yet)
    fresh = await make_region(fed, registry, CQ, clock)
    with pytest.raises(Refusal) as caught:
        await fresh.book.receive(SC, [(out[0].jws, [(b"other", b"")])])
    assert caught.value.reason == "CASE_EVENT_INVALID"
    assert "not one the event names" in caught.value.message
    # the attachments left out
    with pytest.raises(Refusal) as caught:
        await fresh.book.receive(SC, [(out[0].jws, [])])
    assert "was not sent" in caught.value.message
    assert fresh.store._events == {}


async def test_an_event_of_a_case_whose_submission_is_not_here_yet_is_refused_until_it_is(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc, cq, zj = regions[SC], regions[CQ], regions[ZJ]
    materials = (
        await id_card(fed, registry),
        await document(fed, registry, "transfer-application"),
    )
    made = await sc.book.submit(SC_WINDOW, SubmitCall("late", PENSION, APPLICANT, materials))
    await deliver(sc, zj)  # 浙江 has it; 重庆 does not yet
    await zj.book.act(ZJ_ASSIST, act(made.view.case_id, 1, EventKind.ACCEPTED, "z"))
    out = await zj.book.outgoing(CQ, 10)
    with pytest.raises(Refusal) as caught:
        await cq.book.receive(ZJ, [(o.jws, o.attachments) for o in out])
    assert caught.value.reason == "CASE_NOT_FOUND"
    assert caught.value.metadata == {"index": "0"}
    assert cq.store._events == {}
    await deliver(sc, cq)
    await deliver(zj, cq)
    view = await cq.book.view(made.view.case_id)
    assert view is not None
    assert view.parts[1].state is PartState.IN_PROGRESS


# -- bad input: refused with its reason, audited, nothing stored -------------------------------
async def test_an_unknown_matter_is_refused(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc, cq = regions[SC], regions[CQ]
    materials = (await id_card(fed, registry),)
    denied = await refused(
        sc.book.submit(SC_WINDOW, SubmitCall("u-1", "999999999999", APPLICANT, materials)), sc
    )
    assert denied.reason == "MATTER_UNKNOWN"
    # a matter 重庆 handles but 四川 receives: not submitted at a 重庆 window
    denied = await refused(
        cq.book.submit(CQ_HANDLER, SubmitCall("u-2", MEDICAL, APPLICANT, materials)), cq
    )
    assert denied.reason == "MATTER_UNKNOWN"


@pytest.mark.parametrize(
    ("ids", "missing"),
    [
        (("id-card",), "filing-form"),
        (("id-card", "filing-form", "photo"), "photo"),
        (("id-card", "id-card", "filing-form"), "id-card"),
    ],
)
async def test_a_missing_unknown_or_repeated_material_is_refused(
    fed: Federation,
    registry: Registry,
    regions: dict[str, Region],
    ids: tuple[str, ...],
    missing: str,
) -> None:
    sc = regions[SC]
    card = await id_card(fed, registry)
    materials = tuple(dataclasses.replace(card, material_id=i) for i in ids)
    denied = await refused(
        sc.book.submit(SC_WINDOW, SubmitCall("m-1", MEDICAL, APPLICANT, materials)), sc
    )
    assert denied.reason == "MATERIAL_MISSING"
    assert denied.metadata == {"material": missing}
    assert sc.records[-1].fields == tuple(sorted(set(ids)))


async def test_a_material_whose_seal_fails_is_refused(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc = regions[SC]
    card = await id_card(fed, registry)
    header, payload, signature = card.content.decode().split(".")
    doc = json.loads(base64.urlsafe_b64decode(payload + "=="))
    doc["name"] = "李四"
    forged_payload = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
    forged = dataclasses.replace(card, content=f"{header}.{forged_payload}.{signature}".encode())
    form = await document(fed, registry, "filing-form")
    denied = await refused(
        sc.book.submit(SC_WINDOW, SubmitCall("s-1", MEDICAL, APPLICANT, (forged, form))), sc
    )
    assert denied.reason == "MATERIAL_INVALID"
    assert denied.metadata == {"material": "id-card"}
    # not a seal at all
    text = MaterialInput("filing-form", b"%PDF-1.7 not sealed")
    denied = await refused(
        sc.book.submit(SC_WINDOW, SubmitCall("s-2", MEDICAL, APPLICANT, (card, text))), sc
    )
    assert denied.reason == "MATERIAL_INVALID"
    assert denied.metadata == {"material": "filing-form"}


async def test_a_credential_of_another_type_than_the_matter_names_is_refused(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc = regions[SC]
    licence = await sealed(
        fed, registry, CQ, {"credential_type": "business_licence"}, material_id="id-card"
    )
    form = await document(fed, registry, "filing-form")
    denied = await refused(
        sc.book.submit(SC_WINDOW, SubmitCall("t-1", MEDICAL, APPLICANT, (licence, form))), sc
    )
    assert denied.reason == "MATERIAL_INVALID"
    assert "id_card" in denied.message


async def test_a_10_mb_material_is_refused_where_the_limit_is_less(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc = regions[SC]
    card = await id_card(fed, registry)
    big = MaterialInput("filing-form", b"x" * (10 * 1024 * 1024))
    denied = await refused(
        sc.book.submit(SC_WINDOW, SubmitCall("b-1", MEDICAL, APPLICANT, (card, big))), sc
    )
    assert denied.reason == "MATERIAL_TOO_LARGE"
    assert denied.metadata == {"material": "filing-form"}


async def test_an_invalid_applicant_id_or_request_id_is_refused(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc = regions[SC]
    materials = (await id_card(fed, registry), await document(fed, registry, "filing-form"))
    denied = await refused(
        sc.book.submit(SC_WINDOW, SubmitCall("i-1", MEDICAL, "110105194912310021", materials)),
        sc,
    )
    assert denied.reason == "SUBJECT_ID_INVALID"
    assert "1101051949" not in denied.message
    denied = await refused(
        sc.book.submit(SC_WINDOW, SubmitCall("has space", MEDICAL, APPLICANT, materials)), sc
    )
    assert denied.reason == "INVALID_ARGUMENT_FORMAT"


async def test_an_action_out_of_order_and_on_another_regions_part_are_refused(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc, cq = regions[SC], regions[CQ]
    case_id = await submit_medical(fed, registry, sc)
    await deliver(sc, cq)
    # out of order: a supplement nobody asked for; an approval before the part was accepted
    supplement = act(case_id, 1, EventKind.SUPPLEMENTED, "o-0")
    denied = await refused(sc.book.act(SC_WINDOW, supplement), sc)
    assert denied.reason == "CASE_ACTION_NOT_ALLOWED"
    result = await sealed(fed, registry, CQ, {"filing": "approved"})
    denied = await refused(
        cq.book.act(CQ_HANDLER, act(case_id, 1, EventKind.APPROVED, "o-1", result=result)), cq
    )
    assert denied.reason == "CASE_ACTION_NOT_ALLOWED"  # out of order: accepted first
    denied = await refused(sc.book.act(SC_WINDOW, act(case_id, 1, EventKind.ACCEPTED, "o-2")), sc)
    assert denied.reason == "CASE_PART_NOT_YOURS"
    await cq.book.act(CQ_HANDLER, act(case_id, 1, EventKind.ACCEPTED, "o-3"))
    other = agency(CQ, "cq.hrss")  # another 重庆 agency: the part is cq.hsa's now
    denied = await refused(cq.book.act(other, act(case_id, 1, EventKind.ACCEPTED, "o-4")), cq)
    assert denied.reason == "CASE_NOT_FOUND"  # it no longer sees the case
    denied = await refused(cq.book.act(CQ_HANDLER, act(case_id, 1, EventKind.APPROVED, "o-5")), cq)
    assert denied.reason == "MATERIAL_MISSING"  # a handling part's approval needs its result
    denied = await refused(cq.book.act(CQ_HANDLER, act(case_id, 1, EventKind.REJECTED, "o-6")), cq)
    assert denied.reason == "INVALID_ARGUMENT_FORMAT"  # a rejection says why
    denied = await refused(
        cq.book.act(
            CQ_HANDLER,
            act(case_id, 1, EventKind.MATERIAL_REQUESTED, "o-7", note="?", material_ids=("x",)),
        ),
        cq,
    )
    assert denied.reason == "MATERIAL_MISSING"
    denied = await refused(cq.book.act(CQ_HANDLER, act(case_id, 7, EventKind.ACCEPTED, "o-8")), cq)
    assert denied.reason == "CASE_ACTION_NOT_ALLOWED"


# -- who sees what -----------------------------------------------------------------------------
async def test_agencies_see_their_cases_and_applicants_theirs_only(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc = regions[SC]
    case_id = await submit_medical(fed, registry, sc)
    stranger = agency(SC, "sc.amr")
    denied = await refused(sc.book.get(stranger, case_id), sc)
    assert denied.reason == "CASE_NOT_FOUND"
    unknown = await refused(sc.book.get(SC_WINDOW, "510000-20261121-NOSUCHCASE"), sc)
    assert (unknown.reason, unknown.message) == (denied.reason, denied.message)
    assert (await sc.book.list(stranger)).cases == ()
    mine = CaseCaller(SC, "sc.data", applicant=sc.book.pseudonym(APPLICANT))
    assert (await sc.book.get(mine, case_id)).view.case_id == case_id
    assert [v.case_id for v in (await sc.book.list(mine)).cases] == [case_id]
    other = CaseCaller(SC, "sc.data", applicant=sc.book.pseudonym("110105194912310038"))
    assert (await refused(sc.book.get(other, case_id), sc)).reason == "CASE_NOT_FOUND"
    materials = (await id_card(fed, registry), await document(fed, registry, "filing-form"))
    denied = await refused(
        sc.book.submit(mine, SubmitCall("a-1", MEDICAL, APPLICANT, materials)), sc
    )
    assert denied.reason == "NOT_AUTHORISED_ROLE"
    assert APPLICANT not in json.dumps([dataclasses.asdict(r) for r in sc.records], default=str)


async def test_a_listing_pages_newest_first_with_an_opaque_token(
    fed: Federation, registry: Registry, regions: dict[str, Region], clock: Clock
) -> None:
    sc = regions[SC]
    made = []
    for i in range(3):
        clock.tick()
        made.append(await submit_medical(fed, registry, sc, request_id=f"page-{i}"))
    first = await sc.book.list(SC_WINDOW, page_size=2)
    assert [v.case_id for v in first.cases] == [made[2], made[1]]
    assert first.next_page_token
    second = await sc.book.list(SC_WINDOW, page_size=2, page_token=first.next_page_token)
    assert [v.case_id for v in second.cases] == [made[0]]
    assert second.next_page_token == ""
    denied = await refused(sc.book.list(SC_WINDOW, page_token="not-a-token!"), sc)
    assert denied.reason == "INVALID_ARGUMENT_FORMAT"
    assert (await sc.book.list(SC_WINDOW, state="completed")).cases == ()
    clock.tick(60 * 24 * 2)
    assert len((await sc.book.list(SC_WINDOW, overdue=True)).cases) == 3


async def test_events_and_materials_are_sealed_at_rest(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc = regions[SC]
    await submit_medical(fed, registry, sc)
    (stored,) = sc.store._events.values()
    assert stored.sealed_jws.startswith("aes256gcm:")
    assert "." not in stored.sealed_jws.removeprefix("aes256gcm:")
    for attachment in sc.store._attachments.values():
        assert APPLICANT.encode() not in attachment.sealed
        assert b"filing-form" not in attachment.sealed
    summary = next(iter(sc.store._cases.values()))
    assert summary.applicant == sc.book.pseudonym(APPLICANT)
