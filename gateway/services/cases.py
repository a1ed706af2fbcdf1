"""`tongban.v1.Cases`: cross-region cases for the agencies of the gateway's region, and for an
applicant through the region's citizen portal (docs/cases.md).

Every call comes from an agency of this gateway's region (its TLS certificate) with a request
token (`gateway.tokens`): the token names the operator, and, for a citizen portal, the applicant
the call is for (claim `applicant`: that caller sees that applicant's cases only, and may not
Submit or Act). The applicant's id is turned into this gateway's pseudonym at once and never
logged. This module only converts between protobuf messages and the case book's values
(`gateway.cases.CaseBook`), which decides, audits and keeps everything.

`Watch` sends the case (or the cases the caller sees) as it is, then each change: one follower
per gateway (`gateway.cases._watch.CaseWatchers`) reads the store's arrival order every
WATCH_POLL_SECONDS, and at once when the book writes (its `listeners`), for every stream at
once, and only while a stream is open; at most `max_watches_per_agency` watches per agency at
a time (TOO_MANY_CALLS beyond). It ends when the client cancels the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any, Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from gateway import rpcs
from gateway.cases import (
    ActCall,
    CaseAnswer,
    CaseBook,
    CaseCaller,
    CaseEvent,
    CaseView,
    EventKind,
    MaterialInput,
    MaterialRef,
    SubmitCall,
)
from gateway.cases._watch import CaseWatchers
from gateway.errors import Refusal
from gateway.identity import CallerKind, current_caller
from gateway.services._metadata import verified_token
from gateway.tokens import TokenVerifier
from tongban.v1 import cases_pb2, cases_pb2_grpc, credentials_pb2

__all__ = ["DEFAULT_MAX_WATCHES_PER_AGENCY", "WATCH_POLL_SECONDS", "CasesService"]

WATCH_POLL_SECONDS: Final = 0.5
DEFAULT_MAX_WATCHES_PER_AGENCY: Final = 8

Context = grpc.aio.ServicerContext[Any, Any]

_ACTIONS: Final = {
    cases_pb2.CASE_ACTION_ACCEPT: EventKind.ACCEPTED,
    cases_pb2.CASE_ACTION_REQUEST_MATERIAL: EventKind.MATERIAL_REQUESTED,
    cases_pb2.CASE_ACTION_SUPPLEMENT: EventKind.SUPPLEMENTED,
    cases_pb2.CASE_ACTION_APPROVE: EventKind.APPROVED,
    cases_pb2.CASE_ACTION_REJECT: EventKind.REJECTED,
}
_STATES: Final = {
    cases_pb2.CASE_STATE_OPEN: "open",
    cases_pb2.CASE_STATE_COMPLETED: "completed",
    cases_pb2.CASE_STATE_REJECTED: "rejected",
}
_WIRE_STATES: Final = {v: k for k, v in _STATES.items()}
_FORMATS: Final = {
    "jades": credentials_pb2.SEAL_FORMAT_JADES,
    "gbt38540": credentials_pb2.SEAL_FORMAT_GBT38540,
    "ofd": credentials_pb2.SEAL_FORMAT_OFD,
}


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def material_summary(
    ref: MaterialRef, contents: dict[str, tuple[bytes, bytes]] | None = None
) -> cases_pb2.MaterialSummary:
    message = cases_pb2.MaterialSummary(
        material_id=ref.material_id,
        sha256=ref.sha256,
        size=ref.size,
        format=_FORMATS.get(ref.format, credentials_pb2.SEAL_FORMAT_UNSPECIFIED),
        signer_region=ref.signer_region,
        signer=ref.signer,
        verified_by_region=ref.verified_by_region,
        verified_at=_timestamp(ref.verified_at),
    )
    if contents and ref.sha256 in contents:
        message.content, message.signed_data = contents[ref.sha256]
    return message


def event_message(event: CaseEvent, applied: bool) -> cases_pb2.CaseEvent:
    return cases_pb2.CaseEvent(
        event_id=event.event_id,
        kind=event.kind.value,
        region=event.origin,
        agency=event.agency,
        part=event.part,
        at=_timestamp(event.at),
        note=event.note,
        applied=applied,
    )


def case_message(
    view: CaseView,
    *,
    overdue: bool,
    audit_id: str = "",
    history: bool = True,
    contents: dict[str, tuple[bytes, bytes]] | None = None,
) -> cases_pb2.Case:
    """The Case message of a view (without history for a listing)."""
    sub = view.submission
    return cases_pb2.Case(
        case_id=view.case_id,
        matter_code=sub.matter_code,
        matter_name=sub.matter_name,
        window_region=view.window_region,
        window_agency=sub.window_agency,
        state=_WIRE_STATES[view.state.value],
        parts=[
            cases_pb2.CasePart(
                index=p.index,
                region=p.region,
                role=p.role,
                state=cases_pb2.PartState.Value(f"PART_STATE_{p.state.name}"),
                agency=p.agency,
                note=p.note,
                requested_material_ids=list(p.requested),
                result=material_summary(p.result, contents) if p.result else None,
                description=p.description,
            )
            for p in view.parts
        ],
        materials=[material_summary(m, contents) for m in view.materials],
        submitted_at=_timestamp(view.submitted_at),
        due_at=_timestamp(sub.due_at),
        updated_at=_timestamp(view.updated_at),
        overdue=overdue,
        applicant_id=sub.applicant_id,
        history=[event_message(e, applied) for e, applied in view.history] if history else [],
        audit_id=audit_id,
        note=view.note,
    )


def _answer(answer: CaseAnswer) -> cases_pb2.Case:
    return case_message(
        answer.view,
        overdue=answer.overdue,
        audit_id=answer.audit_id,
        contents=dict(answer.contents),
    )


def _materials(materials: Any) -> tuple[MaterialInput, ...]:
    return tuple(MaterialInput(m.material_id, m.content, m.signed_data) for m in materials)


class CasesService(cases_pb2_grpc.CasesServicer):
    """The Cases API of one gateway, over its `CaseBook`."""

    def __init__(
        self,
        book: CaseBook,
        tokens: TokenVerifier,
        *,
        max_watches_per_agency: int = DEFAULT_MAX_WATCHES_PER_AGENCY,
        poll_seconds: float = WATCH_POLL_SECONDS,
    ) -> None:
        self.book = book
        self._tokens = tokens
        self._max_watches = max_watches_per_agency
        self._watching: dict[str, int] = {}
        self._watchers = CaseWatchers(book, poll_seconds)

    async def _caller(self, context: Context, rpc: str, case_id: str = "") -> CaseCaller:
        """The agency of this region calling, its operator and (a portal) its applicant."""
        caller = current_caller.get()
        known = (
            CaseCaller(caller.region, caller.agency_id)
            if caller is not None and caller.kind is CallerKind.AGENCY
            else None
        )
        try:
            if caller is None or known is None or caller.region != self.book.region:
                raise Refusal(
                    "NOT_AUTHORISED_ROLE",
                    f"cases are served to the agencies of region {self.book.region}",
                )
            claims = verified_token(context, self._tokens, self.book.registry(), caller)
        except Refusal as refusal:
            raise await self.book.refused(rpc, known, refusal, case_id=case_id) from None
        applicant = self.book.pseudonym(claims.applicant) if claims.applicant else ""
        return CaseCaller(caller.region, caller.agency_id, claims.operator, applicant)

    async def Submit(
        self, request: cases_pb2.SubmitCaseRequest, context: Context
    ) -> cases_pb2.Case:
        caller = await self._caller(context, rpcs.CASES_SUBMIT)
        call = SubmitCall(
            request_id=request.request_id,
            matter_code=request.matter_code,
            applicant_id=request.applicant_id,
            materials=_materials(request.materials),
            note=request.note,
        )
        return _answer(await self.book.submit(caller, call))

    async def Get(self, request: cases_pb2.GetCaseRequest, context: Context) -> cases_pb2.Case:
        caller = await self._caller(context, rpcs.CASES_GET, request.case_id)
        answer = await self.book.get(
            caller, request.case_id, include_contents=request.include_contents
        )
        return _answer(answer)

    async def List(
        self, request: cases_pb2.ListCasesRequest, context: Context
    ) -> cases_pb2.ListCasesResponse:
        caller = await self._caller(context, rpcs.CASES_LIST)
        if request.state and request.state not in _STATES:  # proto3 keeps unknown numbers
            refusal = Refusal(
                "INVALID_ARGUMENT_FORMAT",
                "state is OPEN, COMPLETED or REJECTED, or unset for every state",
                metadata={"field": "state"},
            )
            raise await self.book.refused(rpcs.CASES_LIST, caller, refusal)
        page = await self.book.list(
            caller,
            state=_STATES.get(request.state, ""),
            overdue=request.overdue,
            matter_code=request.matter_code,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return cases_pb2.ListCasesResponse(
            cases=[
                case_message(v, overdue=v.overdue(page.now), audit_id=page.audit_id, history=False)
                for v in page.cases
            ],
            next_page_token=page.next_page_token,
        )

    async def Act(self, request: cases_pb2.ActRequest, context: Context) -> cases_pb2.Case:
        caller = await self._caller(context, rpcs.CASES_ACT, request.case_id)
        action = _ACTIONS.get(request.action)
        if action is None:
            refusal = Refusal(
                "INVALID_ARGUMENT_FORMAT",
                "action is ACCEPT, REQUEST_MATERIAL, SUPPLEMENT, APPROVE or REJECT",
                metadata={"field": "action"},
            )
            raise await self.book.refused(rpcs.CASES_ACT, caller, refusal, case_id=request.case_id)
        result = request.result if request.HasField("result") else None
        call = ActCall(
            request_id=request.request_id,
            case_id=request.case_id,
            part=request.part,
            action=action,
            note=request.note,
            material_ids=tuple(request.material_ids),
            materials=_materials(request.materials),
            result=MaterialInput("result", result.content, result.signed_data)
            if result is not None
            else None,
        )
        return _answer(await self.book.act(caller, call))

    @contextlib.contextmanager
    def _watch_slot(self, agency: str) -> Iterator[None]:
        if self._watching.get(agency, 0) >= self._max_watches:
            raise Refusal(
                "TOO_MANY_CALLS",
                f"an agency watches at most {self._max_watches} times at once: end one first",
            )
        self._watching[agency] = self._watching.get(agency, 0) + 1
        try:
            yield
        finally:
            self._watching[agency] -= 1
            if not self._watching[agency]:
                del self._watching[agency]

    async def Watch(
        self, request: cases_pb2.WatchCasesRequest, context: Context
    ) -> AsyncIterator[cases_pb2.CaseUpdate]:
        caller = await self._caller(context, rpcs.CASES_WATCH, request.case_id)
        with self._watch_slot(caller.agency):
            answers, position = await self.book.watch_start(caller, request.case_id)
            for answer in answers:
                yield cases_pb2.CaseUpdate(case=_answer(answer))
            watcher = self._watchers.follow(caller, request.case_id, position)
            try:
                while True:
                    view, event = await watcher.next()
                    applied = next((a for e, a in view.history if e == event), False)
                    yield cases_pb2.CaseUpdate(
                        case=case_message(view, overdue=self.book.overdue(view)),
                        event=event_message(event, applied),
                    )
            finally:
                self._watchers.leave(watcher)
