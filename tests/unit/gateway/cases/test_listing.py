"""A listing answers the cases as their events make them, in every state, and folds a case's
events again only when one arrived (`CaseBook.view` keeps each view by the events it was
folded from)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from case_support import (
    APPLICANT,
    CQ,
    MEDICAL,
    SC,
    Clock,
    Region,
    agency,
    deliver,
    make_region,
    sealed,
)
from flow_support import NOW
from support import Federation

import gateway.cases._book as book_module
from gateway.cases import ActCall, CaseState, EventKind, SubmitCall, fold
from registry import Registry

SC_WINDOW = agency(SC, "sc.hsa")
CQ_HANDLER = agency(CQ, "cq.hsa")


async def submit(fed: Federation, registry: Registry, sc: Region, request_id: str) -> str:
    card = await sealed(fed, registry, CQ, {"credential_type": "id_card"}, material_id="id-card")
    form = await sealed(fed, registry, SC, b"form", detached=True, material_id="filing-form")
    answer = await sc.book.submit(
        SC_WINDOW, SubmitCall(request_id, MEDICAL, APPLICANT, (card, form), note="加急")
    )
    return answer.view.case_id


async def act(
    region: Region, case_id: str, action: EventKind, request_id: str, **more: Any
) -> None:
    await region.book.act(CQ_HANDLER, ActCall(request_id, case_id, 1, action, **more))


async def cases_in_every_state(
    fed: Federation, registry: Registry, sc: Region, cq: Region, clock: Clock
) -> list[str]:
    """Five cases at 四川: open and READY, in progress, awaiting material, completed and
    rejected (重庆 handling each, its events delivered back)."""
    made = [await submit(fed, registry, sc, f"list-{i}") for i in range(5)]
    await deliver(sc, cq)
    clock.tick()
    for case_id in made[1:]:
        await act(cq, case_id, EventKind.ACCEPTED, f"acc-{case_id}")
    await act(
        cq,
        made[2],
        EventKind.MATERIAL_REQUESTED,
        "ask",
        note="备案表未签字",
        material_ids=("filing-form",),
    )
    result = await sealed(fed, registry, CQ, {"filing": "approved"}, material_id="r")
    await act(cq, made[3], EventKind.APPROVED, "ok", result=result)
    await act(cq, made[4], EventKind.REJECTED, "no", note="不符合条件")
    await deliver(cq, sc)
    return made


@pytest.fixture
async def counted_folds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    folded: list[str] = []
    real: Callable[..., Any] = book_module.fold

    def counting(events: Any) -> Any:
        view = real(events)
        folded.append(view.case_id if view is not None else "")
        return view

    monkeypatch.setattr(book_module, "fold", counting)
    return folded


async def test_a_listing_answers_each_case_as_its_events_make_it_folding_only_what_changed(
    fed: Federation, registry: Registry, counted_folds: list[str]
) -> None:
    clock = Clock(NOW)
    sc = await make_region(fed, registry, SC, clock)
    cq = await make_region(fed, registry, CQ, clock)
    made = await cases_in_every_state(fed, registry, sc, cq, clock)

    async def as_folded(case_ids: Any) -> tuple[Any, ...]:
        return tuple([fold(await sc.book.events(c)) for c in case_ids])

    page = await sc.book.list(SC_WINDOW)
    assert {v.case_id for v in page.cases} == set(made)
    assert page.cases == await as_folded(v.case_id for v in page.cases)
    states = {v.case_id: v.state for v in page.cases}
    assert [states[c] for c in made] == [CaseState.OPEN] * 3 + [
        CaseState.COMPLETED,
        CaseState.REJECTED,
    ]
    counted_folds.clear()
    again = await sc.book.list(SC_WINDOW)
    assert again.cases == page.cases
    assert counted_folds == []  # nothing arrived: no case folded again
    for state, expected in (("completed", [made[3]]), ("rejected", [made[4]])):
        assert [v.case_id for v in (await sc.book.list(SC_WINDOW, state=state)).cases] == expected
    supplement = await sealed(
        fed, registry, SC, b'{"form": "signed"}', detached=True, material_id="filing-form"
    )
    clock.tick()
    await sc.book.act(
        SC_WINDOW,
        ActCall("sup", made[2], 1, EventKind.SUPPLEMENTED, materials=(supplement,)),
    )
    counted_folds.clear()
    after = await sc.book.list(SC_WINDOW)
    assert counted_folds == [made[2]]  # only the case an event arrived for
    assert after.cases == await as_folded(v.case_id for v in after.cases)
    assert after.cases[0].case_id == made[2]
