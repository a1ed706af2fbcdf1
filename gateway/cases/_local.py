"""The changes a gateway's own agencies make: Submit (a window agency) and Act (a part's
region's agency; the window agency supplements). See `gateway.cases._book`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway import rpcs
from gateway.applicant_ids import is_applicant_id
from gateway.audit import AuditUnavailable
from gateway.cases._book import CaseBookBase
from gateway.cases._calls import (
    ACTIONS,
    ActCall,
    CaseAnswer,
    CaseCaller,
    SubmitCall,
    call_digest,
    new_case_id,
)
from gateway.cases._fold import CaseRefused, CaseView, fold, transition
from gateway.cases._materials import MaterialInput, material_label
from gateway.cases._model import (
    MAX_EVENTS_PER_CASE,
    MAX_NOTE_CHARS,
    CaseEvent,
    EventKind,
    MaterialRef,
    PartSpec,
    Submission,
)
from gateway.cases._trail import Note
from gateway.errors import Refusal
from registry import Registry

__all__ = ["LocalChanges"]


def _missing(material_id: str, message: str) -> Refusal:
    return Refusal("MATERIAL_MISSING", message, metadata={"material": material_label(material_id)})


@dataclass(frozen=True, slots=True)
class _Matter:
    """What a case needs of its matter in the registry's catalogue."""

    code: str
    name: str
    parts: tuple[PartSpec, ...]
    time_limit_days: int
    materials: frozenset[str]
    required: frozenset[str]
    credentials: dict[str, str]  # material id -> credential type ("" for any)

    def credential_type(self, material_id: str) -> str | None:
        """The credential type a material must be ("" any), None for a document."""
        return self.credentials.get(material_id)


def _matter_of(registry: Registry, code: str) -> _Matter | None:
    matter = registry.matter(code) if code else None
    if matter is None:
        return None
    return _Matter(
        code=matter.code,
        name=matter.name,
        parts=tuple(PartSpec(p.region, p.role.value, p.description) for p in matter.parts),
        time_limit_days=matter.time_limit_days,
        materials=frozenset(m.id for m in matter.materials),
        required=frozenset(m.id for m in matter.materials if m.required),
        credentials={
            m.id: m.credential_type for m in matter.materials if m.kind.value == "credential"
        },
    )


def _check_note(note: str) -> None:
    if len(note) > MAX_NOTE_CHARS or not all(c.isprintable() or c == "\n" for c in note):
        raise Refusal(
            "INVALID_ARGUMENT_FORMAT",
            f"note is at most {MAX_NOTE_CHARS} printable characters",
            metadata={"field": "note"},
        )


def _check_set(
    given: list[str], allowed: frozenset[str] | set[str], required: frozenset[str] | set[str]
) -> None:
    """Each material once, none outside `allowed`, every one of `required` present."""
    seen: set[str] = set()
    for material_id in given:
        if material_id in seen:
            raise _missing(material_id, "a material is given once")
        if material_id not in allowed:
            raise _missing(material_id, "a material is given that is not asked for")
        seen.add(material_id)
    for material_id in sorted(required - seen):
        raise _missing(material_id, "a material the case requires is missing")


class LocalChanges(CaseBookBase):
    # -- Submit ----------------------------------------------------------------------------
    async def submit(self, caller: CaseCaller, call: SubmitCall) -> CaseAnswer:
        """A new case of `call.matter_code` for the applicant, received at the caller's window."""
        note = self.note(rpcs.CASES_SUBMIT, caller, call.request_id)
        note.matter_code = call.matter_code
        note.fields = tuple(m.material_id for m in call.materials)
        if call.applicant_id:
            note.subject = self.pseudonym(call.applicant_id)
        try:
            return await self._submit(caller, call, note)
        except (Refusal, AuditUnavailable) as refused:
            raise await self._trail.refused(note, refused) from None

    def _agency_only(self, caller: CaseCaller, what: str) -> None:
        if caller.applicant or not caller.agency or caller.region != self.region:
            raise Refusal("NOT_AUTHORISED_ROLE", f"only an agency of region {self.region} {what}")

    async def _submit(self, caller: CaseCaller, call: SubmitCall, note: Note) -> CaseAnswer:
        self._agency_only(caller, "submits a case")
        self.check_request_id(call.request_id)
        registry = self.registry()
        note.registry_version = registry.version
        digest = call_digest(
            "submit",
            {
                "matter_code": call.matter_code,
                "applicant_id": call.applicant_id,
                "note": call.note,
                "materials": [[m.material_id, m.sha256] for m in call.materials],
            },
        )
        again = await self._again(caller, call.request_id, digest, note)
        if again is not None:
            return again
        matter = self._matter(registry, call.matter_code)
        _check_note(call.note)
        if not is_applicant_id(call.applicant_id):
            raise Refusal(
                "SUBJECT_ID_INVALID",
                "applicant_id is an 18-character citizen id (GB 11643) or unified social "
                "credit code (GB 32100) with its check character",
                metadata={"field": "applicant_id"},
            )
        self.materials.check_sizes(call.materials)
        _check_set([m.material_id for m in call.materials], matter.materials, matter.required)
        now = self.clock()
        refs = self._verify(matter, call.materials, now)
        async with self._lock, self.store.exclusive(f"request {caller.agency} {call.request_id}"):
            again = await self._again(caller, call.request_id, digest, note)
            if again is not None:
                return again
            case_id = new_case_id(self.region, now)
            note.case_id = case_id
            event = CaseEvent(
                case_id=case_id,
                origin=self.region,
                seq=1,
                seen=(),
                kind=EventKind.SUBMITTED,
                agency=caller.agency,
                operator=caller.operator,
                at=now,
                note=call.note,
                materials=refs,
                submission=Submission(
                    matter_code=matter.code,
                    matter_name=matter.name,
                    applicant_id=call.applicant_id,
                    window_agency=caller.agency,
                    parts=matter.parts,
                    due_at=now + timedelta(days=matter.time_limit_days),
                    registry_version=registry.version,
                ),
            )
            view = fold([event])
            if view is None:  # pragma: no cover - the matter gives this region a part
                raise Refusal("MATTER_UNKNOWN", "the matter gives this region no part")
            jws = self.sign(registry, event)
            audit = await self.write(
                note,
                event,
                jws,
                view,
                self.sealed_attachments(call.materials),
                local=True,
                request=(caller.agency, call.request_id),
                request_digest=digest,
            )
        return CaseAnswer(view, audit, self.overdue(view))

    def _matter(self, registry: Registry, code: str) -> _Matter:
        matter = _matter_of(registry, code)
        receiving = [p for p in matter.parts if p.role == "receive"] if matter else []
        if matter is None or not any(p.region == self.region for p in (receiving or matter.parts)):
            raise Refusal(
                "MATTER_UNKNOWN",
                f"matter_code is not a matter of registry version {registry.version}'s "
                f"catalogue that region {self.region} receives",
            )
        return matter

    def _verify(
        self, matter: _Matter, materials: tuple[MaterialInput, ...], now: datetime
    ) -> tuple[MaterialRef, ...]:
        return tuple(
            self.materials.verify(m, now=now, credential_type=matter.credential_type(m.material_id))
            for m in materials
        )

    async def _again(
        self, caller: CaseCaller, request_id: str, digest: str, note: Note
    ) -> CaseAnswer | None:
        """The answer to a call sent again (the case as it now is), None for a new one."""
        found = await self.store.request(caller.agency, request_id)
        if found is None:
            return None
        if found.digest != digest:
            raise Refusal(
                "REQUEST_REPLAYED",
                "this request_id was already used by this agency for another call",
            )
        note.case_id = found.case_id
        view = await self.visible(caller, found.case_id, note)
        return CaseAnswer(view, await self._trail.allowed(note), self.overdue(view))

    # -- Act -------------------------------------------------------------------------------
    async def act(self, caller: CaseCaller, call: ActCall) -> CaseAnswer:
        """Accept, ask for material, supplement, approve or reject a part of the case."""
        note = self.note(rpcs.CASES_ACT, caller, call.request_id)
        note.case_id = call.case_id
        note.fields = tuple(
            [*call.material_ids, *(m.material_id for m in call.materials)]
            + (["result"] if call.result is not None else [])
        )
        try:
            return await self._act(caller, call, note)
        except (Refusal, AuditUnavailable) as refused:
            raise await self._trail.refused(note, refused) from None

    async def _act(self, caller: CaseCaller, call: ActCall, note: Note) -> CaseAnswer:
        self._agency_only(caller, "acts on a case")
        self.check_request_id(call.request_id)
        if call.action not in ACTIONS:
            raise Refusal(
                "INVALID_ARGUMENT_FORMAT",
                "action is ACCEPT, REQUEST_MATERIAL, SUPPLEMENT, APPROVE or REJECT",
                metadata={"field": "action"},
            )
        registry = self.registry()
        note.registry_version = registry.version
        view = await self.visible(caller, call.case_id, note)
        if len(view.history) >= MAX_EVENTS_PER_CASE:  # no region would take one more
            raise Refusal(
                "CASE_ACTION_NOT_ALLOWED", f"a case takes at most {MAX_EVENTS_PER_CASE} changes"
            )
        digest = call_digest(
            "act",
            {
                "case_id": call.case_id,
                "part": call.part,
                "action": call.action.value,
                "note": call.note,
                "material_ids": list(call.material_ids),
                "materials": [[m.material_id, m.sha256] for m in call.materials],
                "result": call.result.sha256 if call.result is not None else "",
            },
        )
        again = await self._again(caller, call.request_id, digest, note)
        if again is not None:
            return again
        _check_note(call.note)
        self._fits(view, self._event(caller, call, view, ()))  # before any seal work
        self._check_arguments(registry, view, call)
        now = self.clock()
        given = [*call.materials, *([call.result] if call.result is not None else [])]
        self.materials.check_sizes(given)
        refs = tuple(self.materials.verify(m, now=now) for m in given)
        async with self._lock, self.store.exclusive(call.case_id):
            again = await self._again(caller, call.request_id, digest, note)
            if again is not None:
                return again
            view = await self.visible(caller, call.case_id, note)
            event = self._event(caller, call, view, refs, at=now)
            changed = self._fits(view, event)
            jws = self.sign(registry, event)
            audit = await self.write(
                note,
                event,
                jws,
                changed,
                self.sealed_attachments(given),
                local=True,
                request=(caller.agency, call.request_id),
                request_digest=digest,
            )
        return CaseAnswer(changed, audit, self.overdue(changed))

    def _event(
        self,
        caller: CaseCaller,
        call: ActCall,
        view: CaseView,
        refs: tuple[MaterialRef, ...],
        *,
        at: datetime | None = None,
    ) -> CaseEvent:
        """The event the call makes, numbered after every event of this region held and
        seeing every other region's held events."""
        processed = view.processed
        own = max(
            [processed.get(self.region, 0)]
            + [e.seq for e, _ in view.history if e.origin == self.region]
        )
        approving = call.action is EventKind.APPROVED and call.result is not None
        result = refs[-1] if approving and refs else None
        materials = refs if call.action is EventKind.SUPPLEMENTED else ()
        return CaseEvent(
            case_id=view.case_id,
            origin=self.region,
            seq=own + 1,
            seen=tuple(sorted((r, n) for r, n in processed.items() if r != self.region)),
            kind=call.action,
            agency=caller.agency,
            operator=caller.operator,
            at=at or self.clock(),
            part=call.part,
            note=call.note,
            requested=call.material_ids if call.action is EventKind.MATERIAL_REQUESTED else (),
            materials=materials,
            result=None if result is None else _as_result(result),
        )

    @staticmethod
    def _fits(view: CaseView, event: CaseEvent) -> CaseView:
        try:
            return transition(view, event)
        except CaseRefused as exc:
            raise Refusal(exc.reason, str(exc)) from None

    def _check_arguments(self, registry: Registry, view: CaseView, call: ActCall) -> None:
        """What each action needs besides the case's state (checked by `transition`)."""
        part = view.parts[call.part]
        if call.action in (EventKind.MATERIAL_REQUESTED, EventKind.REJECTED) and not call.note:
            raise Refusal(
                "INVALID_ARGUMENT_FORMAT",
                "note is required: say why",
                metadata={"field": "note"},
            )
        if call.action is EventKind.MATERIAL_REQUESTED:
            matter = _matter_of(registry, view.submission.matter_code)
            known = matter.materials if matter is not None else frozenset()
            if not call.material_ids:
                raise _missing("", "name the materials asked for (material_ids)")
            _check_set(list(call.material_ids), known, set())
        if call.action is EventKind.SUPPLEMENTED:
            asked = set(part.requested)
            _check_set([m.material_id for m in call.materials], asked, asked)
        elif call.materials:
            raise _missing(call.materials[0].material_id, "only a supplement gives materials")
        if call.action is EventKind.APPROVED:
            if call.result is None and part.role == "handle":
                raise _missing("result", "approving a handling part needs its result")
        elif call.result is not None:
            raise _missing("result", "only an approval gives a result")


def _as_result(ref: MaterialRef) -> MaterialRef:
    return dataclasses.replace(ref, material_id="result")
