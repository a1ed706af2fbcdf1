"""A case as its events make it: the state machine, and the one order every region applies.

Who may make which change (`transition`), per part::

    WAITING ──(earlier parts done)──▶ READY ──accepted──▶ IN_PROGRESS ──approved──▶ DONE
                                                        │  ▲        │
                                     material_requested │  │ supplemented (window)
                                                        ▼  │        │ rejected
                                                  AWAITING_MATERIAL ─┴──rejected──▶ REJECTED

- `submitted` is the case's first event, by the window's region: a receiving part of that
  region is DONE at once (the window took the application), the first part not done is READY,
  the rest WAITING.
- `accepted`, `material_requested`, `approved`, `rejected` come from the part's own region;
  after `accepted`, only the accepting agency acts on the part.
- `supplemented` comes from the window's region (its window agency).
- The case is COMPLETED when every part is DONE, REJECTED when one is; then nothing applies.

Every region applies a case's events in one order (`causal_order`): an event only after the
events of its region before it (`seq`) and the events it says it had seen (`seen`), ties broken
by (time, region, seq), all of which the event's signature covers: regions holding the same
events make the same case. An event that does not fit when its turn comes (it raced another
region's change) is kept, marked not applied, and changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from gateway._errors import GatewayError
from gateway.cases._model import (
    CaseEvent,
    CaseState,
    EventKind,
    MaterialRef,
    PartState,
    Submission,
)

__all__ = [
    "CaseRefused",
    "CaseView",
    "Part",
    "causal_order",
    "fold",
    "transition",
]

NOT_YOURS: Final = "CASE_PART_NOT_YOURS"
NOT_ALLOWED: Final = "CASE_ACTION_NOT_ALLOWED"


class CaseRefused(GatewayError):
    """An event does not fit the case: `reason` is the contract reason, the text says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Part:
    index: int
    region: str
    role: str
    description: str
    state: PartState
    agency: str = ""
    note: str = ""
    requested: tuple[str, ...] = ()
    result: MaterialRef | None = None


@dataclass(frozen=True, slots=True)
class CaseView:
    """A case as the events applied so far make it."""

    case_id: str
    submission: Submission
    window_region: str
    submitted_at: datetime
    note: str
    state: CaseState
    parts: tuple[Part, ...]
    materials: tuple[MaterialRef, ...]  # submitted, then supplemented, in order
    history: tuple[tuple[CaseEvent, bool], ...]  # (event, applied) in the order applied
    updated_at: datetime

    @property
    def processed(self) -> dict[str, int]:
        """Events taken into account, per region (what a new event of this region has seen)."""
        counts: dict[str, int] = {}
        for event, _ in self.history:
            counts[event.origin] = max(counts.get(event.origin, 0), event.seq)
        return counts

    @property
    def agencies(self) -> frozenset[str]:
        """The window agency and every agency that accepted a part."""
        return frozenset(
            {self.submission.window_agency} | {p.agency for p in self.parts if p.agency}
        )

    def overdue(self, now: datetime) -> bool:
        return self.state is CaseState.OPEN and now > self.submission.due_at


def _ready_index(parts: list[Part]) -> None:
    """Make the first part not done READY (if it waits); the ones after it keep waiting."""
    for i, part in enumerate(parts):
        if part.state is PartState.DONE:
            continue
        if part.state is PartState.WAITING:
            parts[i] = dataclasses.replace(part, state=PartState.READY)
        return


def _start(event: CaseEvent) -> CaseView:
    sub = event.submission
    if event.kind is not EventKind.SUBMITTED or sub is None or event.seq != 1 or event.seen:
        raise CaseRefused(
            NOT_ALLOWED, "a case begins with its submission, its region's first event"
        )
    if not any(p.region == event.origin for p in sub.parts):
        raise CaseRefused(NOT_YOURS, "the window's region has no part in the matter")
    parts = [
        Part(
            i,
            p.region,
            p.role,
            p.description,
            PartState.DONE
            if p.role == "receive" and p.region == event.origin
            else PartState.WAITING,
            sub.window_agency if p.role == "receive" and p.region == event.origin else "",
        )
        for i, p in enumerate(sub.parts)
    ]
    _ready_index(parts)
    return CaseView(
        case_id=event.case_id,
        submission=sub,
        window_region=event.origin,
        submitted_at=event.at,
        note=event.note,
        state=CaseState.OPEN,
        parts=tuple(parts),
        materials=event.materials,
        history=((event, True),),
        updated_at=event.at,
    )


def transition(view: CaseView, event: CaseEvent) -> CaseView:
    """The case after `event`, or `CaseRefused` if the event does not fit it now."""
    if event.kind is EventKind.SUBMITTED:
        raise CaseRefused(NOT_ALLOWED, "the case was already submitted")
    if view.state is not CaseState.OPEN:
        raise CaseRefused(NOT_ALLOWED, f"the case is {view.state.value}")
    if not 0 <= event.part < len(view.parts):
        raise CaseRefused(NOT_ALLOWED, f"the case has no part {event.part}")
    part = view.parts[event.part]
    if event.kind is EventKind.SUPPLEMENTED:
        if event.origin != view.window_region or event.agency != view.submission.window_agency:
            raise CaseRefused(NOT_YOURS, "only the window agency supplements material")
    elif event.origin != part.region:
        raise CaseRefused(NOT_YOURS, f"part {part.index} is region {part.region}'s")
    changed = _change(part, event)  # the part's state first: out of order is out of order
    if event.kind not in _ANY_AGENCY and event.agency != part.agency:
        raise CaseRefused(NOT_YOURS, f"part {part.index} is handled by another agency")
    parts = list(view.parts)
    parts[part.index] = changed
    state: CaseState = view.state
    if changed.state is PartState.REJECTED:
        state = CaseState.REJECTED
    elif changed.state is PartState.DONE:
        _ready_index(parts)
        if all(p.state is PartState.DONE for p in parts):
            state = CaseState.COMPLETED
    return dataclasses.replace(
        view,
        state=state,
        parts=tuple(parts),
        materials=view.materials + event.materials,
        history=(*view.history, (event, True)),
        updated_at=max(view.updated_at, event.at),
    )


_ANY_AGENCY: Final = frozenset({EventKind.ACCEPTED, EventKind.SUPPLEMENTED})
_FROM: Final[dict[EventKind, tuple[PartState, ...]]] = {
    EventKind.ACCEPTED: (PartState.READY,),
    EventKind.MATERIAL_REQUESTED: (PartState.IN_PROGRESS,),
    EventKind.SUPPLEMENTED: (PartState.AWAITING_MATERIAL,),
    EventKind.APPROVED: (PartState.IN_PROGRESS,),
    EventKind.REJECTED: (PartState.IN_PROGRESS, PartState.AWAITING_MATERIAL),
}


def _change(part: Part, event: CaseEvent) -> Part:
    if part.state not in _FROM[event.kind]:
        raise CaseRefused(
            NOT_ALLOWED, f"part {part.index} is {part.state.value}: it cannot be {event.kind.value}"
        )
    if event.kind is EventKind.ACCEPTED:
        return dataclasses.replace(part, state=PartState.IN_PROGRESS, agency=event.agency)
    if event.kind is EventKind.MATERIAL_REQUESTED:
        return dataclasses.replace(
            part, state=PartState.AWAITING_MATERIAL, note=event.note, requested=event.requested
        )
    if event.kind is EventKind.SUPPLEMENTED:
        if not {m.material_id for m in event.materials} <= set(part.requested):
            raise CaseRefused(NOT_ALLOWED, f"part {part.index} did not ask for that material")
        return dataclasses.replace(part, state=PartState.IN_PROGRESS, requested=())
    if event.kind is EventKind.APPROVED:
        return dataclasses.replace(part, state=PartState.DONE, result=event.result)
    return dataclasses.replace(part, state=PartState.REJECTED, note=event.note, requested=())


def causal_order(events: Iterable[CaseEvent]) -> list[CaseEvent]:
    """The events in the order every region applies them; those whose past is not all here
    (an earlier event of their region, or one they had seen, has not arrived) are left out."""
    waiting = {(e.origin, e.seq): e for e in events}
    done: dict[str, int] = {}
    order: list[CaseEvent] = []
    while waiting:
        ready = [
            e
            for e in waiting.values()
            if done.get(e.origin, 0) == e.seq - 1
            and all(done.get(region, 0) >= count for region, count in e.seen)
        ]
        if not ready:
            break
        first = min(ready, key=lambda e: (e.at, e.origin, e.seq))
        order.append(first)
        done[first.origin] = first.seq
        del waiting[(first.origin, first.seq)]
    return order


def fold(events: Iterable[CaseEvent]) -> CaseView | None:
    """The case its events make (None before its submission has arrived)."""
    ordered = causal_order(events)
    if not ordered:
        return None
    try:
        view = _start(ordered[0])
    except CaseRefused:
        return None
    for event in ordered[1:]:
        try:
            view = transition(view, event)
        except CaseRefused:
            view = dataclasses.replace(view, history=(*view.history, (event, False)))
    return view
