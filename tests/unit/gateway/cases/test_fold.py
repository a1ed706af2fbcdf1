"""The case state machine and the one order every region applies events in."""

from __future__ import annotations

import dataclasses
import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest

from gateway.cases import (
    CaseEvent,
    CaseRefused,
    CaseState,
    EventKind,
    MalformedEvent,
    MaterialRef,
    PartSpec,
    PartState,
    Submission,
    causal_order,
    fold,
    transition,
)

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
SC, CQ, ZJ = "510000", "500000", "330000"
REF = MaterialRef("id-card", "a" * 64, 10, "jades", CQ, "CN=seal", SC, T0)
PROOF = MaterialRef("contribution-proof", "b" * 64, 10, "jades", SC, "CN=seal", SC, T0)
SUB = Submission(
    "000112003100",
    "养老保险关系转移接续",
    "500101199001011234",
    "sc-window",
    (PartSpec(SC, "receive"), PartSpec(ZJ, "assist"), PartSpec(CQ, "handle")),
    T0 + timedelta(days=45),
    7,
)


def ev(origin: str, seq: int, kind: EventKind, minute: int, **more: object) -> CaseEvent:
    return CaseEvent(
        case_id="C1",
        origin=origin,
        seq=seq,
        seen=tuple(sorted(more.pop("seen", {}).items())),  # type: ignore[attr-defined]
        kind=kind,
        agency=str(more.pop("agency", "")),
        operator="op",
        at=T0 + timedelta(minutes=minute),
        **more,  # type: ignore[arg-type]
    )


SUBMITTED = ev(SC, 1, EventKind.SUBMITTED, 0, agency="sc-window", submission=SUB, materials=(REF,))
ZJ_ACCEPT = ev(ZJ, 1, EventKind.ACCEPTED, 1, agency="zj-si", part=1, seen={SC: 1})
ZJ_APPROVE = ev(ZJ, 2, EventKind.APPROVED, 2, agency="zj-si", part=1, seen={SC: 1})
CQ_ACCEPT = ev(CQ, 1, EventKind.ACCEPTED, 3, agency="cq-si", part=2, seen={SC: 1, ZJ: 2})
CQ_ASK = ev(
    CQ,
    2,
    EventKind.MATERIAL_REQUESTED,
    4,
    agency="cq-si",
    part=2,
    seen={SC: 1, ZJ: 2},
    requested=("contribution-proof",),
    note="请补充缴费凭证",
)
SC_SUPPLY = ev(
    SC,
    2,
    EventKind.SUPPLEMENTED,
    5,
    agency="sc-window",
    part=2,
    seen={ZJ: 2, CQ: 2},
    materials=(PROOF,),
)
CQ_APPROVE = ev(
    CQ, 3, EventKind.APPROVED, 6, agency="cq-si", part=2, seen={SC: 2, ZJ: 2}, result=REF
)
HAPPY = [SUBMITTED, ZJ_ACCEPT, ZJ_APPROVE, CQ_ACCEPT, CQ_ASK, SC_SUPPLY, CQ_APPROVE]


def test_a_multi_region_case_completes_when_every_part_is_done_in_order() -> None:
    view = fold(HAPPY)
    assert view is not None
    assert view.state is CaseState.COMPLETED
    assert [p.state for p in view.parts] == [PartState.DONE] * 3
    assert view.parts[2].result == REF
    assert view.parts[2].agency == "cq-si"
    assert all(applied for _, applied in view.history)
    assert view.processed == {SC: 2, ZJ: 2, CQ: 3}


def test_the_states_along_the_way() -> None:
    view = fold(HAPPY[:1])
    assert view is not None
    assert [p.state for p in view.parts] == [PartState.DONE, PartState.READY, PartState.WAITING]
    assert view.parts[0].agency == "sc-window"
    view = fold(HAPPY[:5])
    assert view is not None
    assert view.parts[2].state is PartState.AWAITING_MATERIAL
    assert view.parts[2].requested == ("contribution-proof",)
    assert view.state is CaseState.OPEN


def test_every_arrival_order_makes_the_same_case() -> None:
    expected = fold(HAPPY)
    for order in itertools.islice(itertools.permutations(HAPPY), 0, 5040, 7):
        assert fold(order) == expected


def test_an_event_whose_past_has_not_arrived_waits() -> None:
    assert causal_order([SUBMITTED, CQ_ACCEPT]) == [SUBMITTED]  # zj's approval not here yet
    assert fold([ZJ_ACCEPT]) is None  # nothing before the submission


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (
            ev(ZJ, 1, EventKind.ACCEPTED, 1, agency="zj", part=2, seen={SC: 1}),
            "CASE_PART_NOT_YOURS",
        ),
        (
            ev(CQ, 1, EventKind.ACCEPTED, 1, agency="cq", part=2, seen={SC: 1}),
            "CASE_ACTION_NOT_ALLOWED",
        ),
        (
            ev(ZJ, 1, EventKind.APPROVED, 1, agency="zj", part=1, seen={SC: 1}),
            "CASE_ACTION_NOT_ALLOWED",
        ),
        (
            ev(ZJ, 1, EventKind.SUPPLEMENTED, 1, agency="zj", part=1, seen={SC: 1}),
            "CASE_PART_NOT_YOURS",
        ),
        (
            ev(SC, 2, EventKind.SUPPLEMENTED, 1, agency="sc-window", part=1),
            "CASE_ACTION_NOT_ALLOWED",
        ),
        (ev(ZJ, 1, EventKind.SUBMITTED, 1, agency="zj", seen={SC: 1}), "CASE_ACTION_NOT_ALLOWED"),
        (
            ev(ZJ, 1, EventKind.ACCEPTED, 1, agency="zj", part=7, seen={SC: 1}),
            "CASE_ACTION_NOT_ALLOWED",
        ),
    ],
)
def test_what_does_not_fit_is_refused_with_its_reason(event: CaseEvent, reason: str) -> None:
    view = fold([SUBMITTED])
    assert view is not None
    with pytest.raises(CaseRefused) as refused:
        transition(view, event)
    assert refused.value.reason == reason


def test_only_the_accepting_agency_acts_and_a_closed_case_takes_nothing() -> None:
    view = fold(HAPPY[:2])
    assert view is not None
    other = ev(ZJ, 2, EventKind.APPROVED, 2, agency="zj-other", part=1, seen={SC: 1})
    with pytest.raises(CaseRefused, match="another agency"):
        transition(view, other)
    rejected = ev(ZJ, 2, EventKind.REJECTED, 2, agency="zj-si", part=1, seen={SC: 1}, note="x")
    closed = transition(view, rejected)
    assert closed.state is CaseState.REJECTED
    with pytest.raises(CaseRefused, match="rejected"):
        transition(closed, ZJ_APPROVE)


def test_changes_that_raced_make_the_same_case_everywhere() -> None:
    # cq rejects while the window supplements (neither saw the other): every order ends rejected
    reject = ev(CQ, 3, EventKind.REJECTED, 4, agency="cq-si", part=2, seen={SC: 1, ZJ: 2}, note="n")
    cases = {repr(fold(order)) for order in itertools.permutations([*HAPPY[:6], reject])}
    assert len(cases) == 1
    view = fold([*HAPPY[:6], reject])
    assert view is not None
    assert view.state is CaseState.REJECTED
    # an approval made after the rejection was applied there does not fit: kept, not applied
    late = ev(CQ, 4, EventKind.APPROVED, 9, agency="cq-si", part=2, seen={SC: 2, ZJ: 2})
    view = fold([*HAPPY[:6], reject, late])
    assert view is not None
    assert view.history[-1] == (late, False)
    assert view.state is CaseState.REJECTED


def test_the_signed_document_round_trips_and_refuses_what_does_not_fit() -> None:
    for event in HAPPY:
        doc = json.loads(json.dumps(event.document()))
        assert CaseEvent.from_document(doc) == event
    doc = SUBMITTED.document()
    for broken in (
        {**doc, "v": 2},
        {**doc, "extra": 1},
        {**doc, "seq": 0},
        {**doc, "origin": "51"},
        {**doc, "kind": "withdrawn"},
        {**doc, "seen": {SC: 1}},
        {**doc, "at": "yesterday"},
        {**doc, "note": "x" * 1001},
        {**doc, "materials": [{"sha256": "A" * 64}]},
    ):
        with pytest.raises(MalformedEvent):
            CaseEvent.from_document(broken)


def test_an_approval_before_the_part_is_accepted_is_out_of_order() -> None:
    view = fold([SUBMITTED])
    assert view is not None
    early = ev(ZJ, 1, EventKind.APPROVED, 1, agency="zj-si", part=1, seen={SC: 1})
    with pytest.raises(CaseRefused) as refused:
        transition(view, early)
    assert refused.value.reason == "CASE_ACTION_NOT_ALLOWED"


def test_a_supplement_of_material_the_part_did_not_ask_for_is_not_applied() -> None:
    smuggled = dataclasses.replace(SC_SUPPLY, materials=(PROOF, REF))
    view = fold([*HAPPY[:5], smuggled])
    assert view is not None
    assert view.parts[2].state is PartState.AWAITING_MATERIAL
    assert view.history[-1] == (smuggled, False)
    assert view.materials == (REF,)
