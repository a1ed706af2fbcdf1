"""What a receiving gateway checks of a delivered case event beyond its signature
(`gateway.cases._scrutiny`): events signed with a region's real audit key that may not exist (a
second submission of a held case, a forged matter, a region acting on another's part, another
region's agency, a gap in a region's numbering, a case past its bound) are refused
CASE_EVENT_INVALID, audited, and nothing of them is kept."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from case_support import (
    APPLICANT,
    CQ,
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
from flow_support import NOW, audit_key
from support import Federation

import gateway.cases._book
import gateway.cases._local
import gateway.cases._scrutiny
from gateway.audit import AuditUnavailable, Outcome
from gateway.cases import (
    ActCall,
    CaseEvent,
    EventKind,
    MaterialInput,
    PartSpec,
    SubmitCall,
    sign_event,
)
from gateway.cases._events import read_event
from gateway.errors import Refusal
from registry import Registry


@pytest.fixture
async def regions(fed: Federation, registry: Registry) -> dict[str, Region]:
    clock = Clock(NOW)
    return {r: await make_region(fed, registry, r, clock) for r in (SC, CQ, ZJ)}


async def pension(fed: Federation, registry: Registry, sc: Region) -> str:
    card = await sealed(fed, registry, CQ, {"credential_type": "id_card"}, material_id="id-card")
    form = await sealed(
        fed, registry, SC, b"form", detached=True, material_id="transfer-application"
    )
    answer = await sc.book.submit(
        agency(SC, "sc.hsa"), SubmitCall("p-1", PENSION, APPLICANT, (card, form))
    )
    return answer.view.case_id


def signed(fed: Federation, event: CaseEvent) -> str:
    key, kid = audit_key(fed, event.origin)
    return sign_event(event, key, kid)


async def refused(region: Region, sender: str, jws: str, attachments: Any = ()) -> Refusal:
    events, records = len(region.store._events), len(region.records)
    with pytest.raises(Refusal) as caught:
        await region.book.receive(sender, [(jws, list(attachments))])
    assert len(region.store._events) == events
    assert len(region.records) == records + 1
    assert region.records[-1].outcome in (Outcome.DENIED, Outcome.FAILED)
    assert region.records[-1].reason == caught.value.reason
    return caught.value


async def submission_of(region: Region, destination: str) -> tuple[CaseEvent, list[Any]]:
    (out,) = await region.book.outgoing(destination, 10)
    return read_event(out.jws), out.attachments


async def test_a_submission_whose_matter_is_not_the_registrys_is_refused(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc, zj = regions[SC], regions[ZJ]
    await pension(fed, registry, sc)
    event, attachments = await submission_of(sc, ZJ)
    sub = event.submission
    assert sub is not None
    forgeries = {
        "parts are not its matter's": dataclasses.replace(
            sub, parts=(*sub.parts, PartSpec(ZJ, "handle"))
        ),
        "name or time limit": dataclasses.replace(sub, due_at=sub.due_at + timedelta(days=300)),
        "not in registry": dataclasses.replace(sub, matter_code="999999999999"),
        "applicant id": dataclasses.replace(sub, applicant_id="11010519491231002Y"),
    }
    for why, forged in forgeries.items():
        jws = signed(fed, dataclasses.replace(event, submission=forged))
        refusal = await refused(zj, SC, jws, attachments)
        assert refusal.reason == "CASE_EVENT_INVALID"
        assert why in refusal.message
    missing = dataclasses.replace(event, materials=event.materials[:1])
    refusal = await refused(zj, SC, signed(fed, missing), attachments[:1])
    assert "materials are not the ones its matter asks for" in refusal.message
    newer = dataclasses.replace(sub, registry_version=registry.version + 1)
    refusal = await refused(zj, SC, signed(fed, dataclasses.replace(event, submission=newer)))
    assert refusal.reason == "REGISTRY_STALE"
    assert await deliver(sc, zj)  # the true submission is kept


async def test_events_that_may_not_exist_are_refused(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc, cq, zj = regions[SC], regions[CQ], regions[ZJ]
    case_id = await pension(fed, registry, sc)
    await deliver(sc, zj)
    await deliver(sc, cq)
    held = await zj.book.events(case_id)
    accepted = CaseEvent(
        case_id=case_id, origin=CQ, seq=1, seen=((SC, 1),), kind=EventKind.ACCEPTED,
        agency="cq.hrss", operator="x", at=NOW + timedelta(minutes=1), part=2,
    )  # fmt: skip
    # 重庆 submits the case again as its own: a case is submitted once
    assert held[0].submission is not None
    hijack = dataclasses.replace(
        held[0],
        origin=CQ,
        agency="cq.hrss",
        at=NOW - timedelta(days=1),
        submission=dataclasses.replace(held[0].submission, window_agency="cq.hrss"),
    )
    assert "submitted once" in (await refused(zj, CQ, signed(fed, hijack))).message
    # 重庆 acts on 浙江's part (1) and on 四川's receiving part (0)
    for part in (0, 1):
        wrong = dataclasses.replace(accepted, part=part)
        assert "its own parts" in (await refused(zj, CQ, signed(fed, wrong))).message
    # as an agency of another region
    foreign = dataclasses.replace(accepted, agency="zj.hrss")
    assert "not an agency of region" in (await refused(zj, CQ, signed(fed, foreign))).message
    # its second event before its first
    second = dataclasses.replace(accepted, seq=2)
    assert "in order" in (await refused(zj, CQ, signed(fed, second))).message
    # a supplement from a region that is not the window's
    supplement = dataclasses.replace(accepted, kind=EventKind.SUPPLEMENTED, part=2)
    message = (await refused(zj, CQ, signed(fed, supplement))).message
    assert "only the window's region supplements" in message
    assert [e.event_id for e in await zj.book.events(case_id)] == [held[0].event_id]


async def test_a_case_takes_no_event_past_its_bound(
    fed: Federation, registry: Registry, regions: dict[str, Region], monkeypatch: Any
) -> None:
    sc, zj = regions[SC], regions[ZJ]
    case_id = await pension(fed, registry, sc)
    await deliver(sc, zj)
    monkeypatch.setattr(gateway.cases._scrutiny, "MAX_EVENTS_PER_CASE", 1)
    accepted = CaseEvent(
        case_id=case_id, origin=CQ, seq=1, seen=((SC, 1),), kind=EventKind.ACCEPTED,
        agency="cq.hrss", operator="x", at=NOW + timedelta(minutes=1), part=2,
    )  # fmt: skip
    refusal = await refused(zj, CQ, signed(fed, accepted))
    assert "at most 1 events" in refusal.message


async def test_an_agency_may_not_act_on_a_case_past_its_bound(
    fed: Federation, registry: Registry, regions: dict[str, Region], monkeypatch: Any
) -> None:
    sc, zj = regions[SC], regions[ZJ]
    case_id = await pension(fed, registry, sc)
    await deliver(sc, zj)
    monkeypatch.setattr(gateway.cases._local, "MAX_EVENTS_PER_CASE", 1)
    events = len(zj.store._events)
    with pytest.raises(Refusal) as caught:
        await zj.book.act(agency(ZJ, "zj.hrss"), ActCall("b-1", case_id, 1, EventKind.ACCEPTED))
    assert caught.value.reason == "CASE_ACTION_NOT_ALLOWED"
    assert len(zj.store._events) == events
    assert zj.records[-1].reason == "CASE_ACTION_NOT_ALLOWED"


class Down:
    """A case store whose reads find the audit database down."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        if name == "write":
            return self.store.write

        async def read(*args: Any) -> Any:
            raise AuditUnavailable("the audit database is not available: connection refused")

        return read


async def test_a_store_that_does_not_answer_is_audit_unavailable_not_an_internal_error(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc = regions[SC]
    case_id = await pension(fed, registry, sc)
    sc.book.store = gateway.cases._book._Reads(Down(sc.store))  # type: ignore[assignment]
    window = agency(SC, "sc.hsa")
    calls = [
        sc.book.get(window, case_id),
        sc.book.list(window),
        sc.book.watch_start(window, case_id),
        sc.book.act(window, ActCall("d-1", case_id, 1, EventKind.ACCEPTED)),
    ]
    for call in calls:
        with pytest.raises(Refusal) as caught:
            await call
        assert caught.value.reason == "AUDIT_UNAVAILABLE"
        assert sc.records[-1].reason == "AUDIT_UNAVAILABLE"
        assert sc.records[-1].outcome is Outcome.FAILED


async def test_an_event_that_does_not_carry_what_its_kind_carries_is_refused(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc, zj = regions[SC], regions[ZJ]
    case_id = await pension(fed, registry, sc)
    await deliver(sc, zj)
    (first,) = await zj.book.events(case_id)
    base = CaseEvent(
        case_id=case_id, origin=CQ, seq=1, seen=((SC, 1),), kind=EventKind.ACCEPTED,
        agency="cq.hrss", operator="x", at=NOW + timedelta(minutes=1), part=2,
    )  # fmt: skip
    shapes = {
        "only a supplement gives materials": dataclasses.replace(base, materials=first.materials),
        "only an approval gives a result": dataclasses.replace(base, result=first.materials[0]),
        "approving a handling part": dataclasses.replace(base, kind=EventKind.APPROVED),
        "only a request for material names": dataclasses.replace(base, requested=("id-card",)),
        "names materials, each once": dataclasses.replace(
            base, kind=EventKind.MATERIAL_REQUESTED, note="why", requested=("a", "a")
        ),
        "says why": dataclasses.replace(base, kind=EventKind.REJECTED),
    }
    for why, event in shapes.items():
        assert why in (await refused(zj, CQ, signed(fed, event))).message


async def test_an_event_whose_texts_are_not_plain_is_refused(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    sc, zj = regions[SC], regions[ZJ]
    case_id = await pension(fed, registry, sc)
    await deliver(sc, zj)
    base = CaseEvent(
        case_id=case_id, origin=CQ, seq=1, seen=((SC, 1),), kind=EventKind.ACCEPTED,
        agency="cq.hrss", operator="x", at=NOW + timedelta(minutes=1), part=2,
    )  # fmt: skip
    for hostile in (
        dataclasses.replace(base, note="\u202egnp.exe"),
        dataclasses.replace(base, note="a\x00b"),
        dataclasses.replace(base, operator="op\x1b[31m"),
        dataclasses.replace(
            base, kind=EventKind.MATERIAL_REQUESTED, note="why", requested=("id\x07card",)
        ),
    ):
        assert "not plain text" in (await refused(zj, CQ, signed(fed, hostile))).message


async def test_a_credential_of_another_type_is_refused_on_arrival(
    fed: Federation, registry: Registry, regions: dict[str, Region]
) -> None:
    """The window verified the id card as the credential its matter names; a receiver does too,
    so a window that slips a credential of another type into a case is refused."""
    sc, zj = regions[SC], regions[ZJ]
    await pension(fed, registry, sc)
    event, attachments = await submission_of(sc, ZJ)
    other = await sealed(
        fed, registry, CQ, {"credential_type": "business_licence"}, material_id="id-card"
    )
    (card,) = [r for r in event.materials if r.material_id == "id-card"]
    swapped = dataclasses.replace(card, sha256=other.sha256, size=other.size)
    forged = dataclasses.replace(
        event, materials=tuple(swapped if r is card else r for r in event.materials)
    )
    kept = [a for a in attachments if MaterialInput("", *a).sha256 != card.sha256]
    refusal = await refused(zj, SC, signed(fed, forged), [*kept, (other.content, b"")])
    assert "not a id_card credential" in refusal.message
