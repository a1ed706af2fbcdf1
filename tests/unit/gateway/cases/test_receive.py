"""A delivered event's materials are verified before the receiving book's lock is taken
(`CaseBook.receive`): a slow verification holds up no other case's delivery, and what another
change could alter meanwhile is checked again under the lock."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from case_support import APPLICANT, CQ, MEDICAL, SC, Clock, agency, make_region, sealed
from flow_support import NOW
from support import Federation

from gateway.cases import MaterialInput, MaterialVerifier, SubmitCall
from registry import Registry

SC_WINDOW = agency(SC, "sc.hsa")


class HeldVerifier:
    """The region's verifier, but the verification of one material waits until released
    (it runs in a worker thread: a threading.Event, at most 5 s)."""

    def __init__(self, real: MaterialVerifier, held_sha256: str) -> None:
        self._real = real
        self._held = held_sha256
        self.waiting = threading.Event()
        self.release = threading.Event()

    def verify(self, material: MaterialInput, **options: Any) -> Any:
        if material.sha256 == self._held:
            self.waiting.set()
            self.release.wait(5)
        return self._real.verify(material, **options)

    def check_sizes(self, materials: Any) -> None:
        self._real.check_sizes(materials)


async def test_a_slow_verification_does_not_hold_up_another_cases_delivery(
    fed: Federation, registry: Registry
) -> None:
    clock = Clock(NOW)
    sc = await make_region(fed, registry, SC, clock)
    cq = await make_region(fed, registry, CQ, clock)
    cards = []
    for i in range(2):
        card = await sealed(
            fed, registry, CQ, {"credential_type": "id_card", "n": i}, material_id="id-card"
        )
        form = await sealed(fed, registry, SC, b"form", detached=True, material_id="filing-form")
        await sc.book.submit(SC_WINDOW, SubmitCall(f"recv-{i}", MEDICAL, APPLICANT, (card, form)))
        cards.append(card)
    slow, quick = await sc.book.outgoing(CQ, 64)
    held = HeldVerifier(cq.book.materials, cards[0].sha256)
    cq.book.materials = held  # type: ignore[assignment]
    first = asyncio.create_task(cq.book.receive(SC, [(slow.jws, slow.attachments)]))
    try:
        assert await asyncio.to_thread(held.waiting.wait, 5)
        second = await asyncio.wait_for(cq.book.receive(SC, [(quick.jws, quick.attachments)]), 5)
        assert second == [quick.event_id]
        assert not first.done()  # still verifying, its case untouched
    finally:
        held.release.set()
    assert await asyncio.wait_for(first, 5) == [slow.event_id]
    assert {e.event_id for e in cq.store._events.values()} == {slow.event_id, quick.event_id}


async def test_an_event_held_while_it_was_verified_is_answered_as_held_and_kept_once(
    fed: Federation, registry: Registry
) -> None:
    clock = Clock(NOW)
    sc = await make_region(fed, registry, SC, clock)
    cq = await make_region(fed, registry, CQ, clock)
    card = await sealed(fed, registry, CQ, {"credential_type": "id_card"}, material_id="id-card")
    form = await sealed(fed, registry, SC, b"form", detached=True, material_id="filing-form")
    await sc.book.submit(SC_WINDOW, SubmitCall("twice", MEDICAL, APPLICANT, (card, form)))
    (out,) = await sc.book.outgoing(CQ, 64)
    held = HeldVerifier(cq.book.materials, card.sha256)
    cq.book.materials = held  # type: ignore[assignment]
    first = asyncio.create_task(cq.book.receive(SC, [(out.jws, out.attachments)]))
    assert await asyncio.to_thread(held.waiting.wait, 5)
    held.waiting.clear()
    second = asyncio.create_task(cq.book.receive(SC, [(out.jws, out.attachments)]))
    assert await asyncio.to_thread(held.waiting.wait, 5)  # both verify, neither holds the lock
    held.release.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), 5) == [[out.event_id]] * 2
    assert [e.event_id for e in cq.store._events.values()] == [out.event_id]
    receipts = [r for r in cq.records if r.rpc.endswith("DeliverCaseEvents") and r.sealed_digest]
    assert len(receipts) == 1  # kept once, with one record of its receipt
