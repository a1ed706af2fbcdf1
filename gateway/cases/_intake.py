"""Events other regions' gateways deliver (`Peer.DeliverCaseEvents`), and the `CaseBook`.

Per event, in the order sent: (1) `verify_event` (a JWS by an audit key of the sending region,
of that region's own making); (2) an event already held is answered with its id and not kept
again (a different event under a held id is refused: a region does not sign two events under
one number); (4) the case is folded with it (an event that does not fit when its turn comes is kept, marked
not applied), after `gateway.cases._scrutiny`'s checks (in order of its region, within the
case's bound, by an agency of its region, on a part its region may act on; a submission: once,
of a matter of this gateway's own registry with exactly its parts); (3) every material and
result the event names is among the attachments sent, or held already, matched by SHA-256 and
size, and each sent is verified again here (at the time its region verified it: a seal that
expired since does not undo the case; a credential of the matter as a credential of its type),
in a worker thread and before the book's lock is taken: (2), (4) and what (3) reads of the
store are checked again under the lock, against what another change may have made meanwhile;
(5) kept with this gateway's audit record of the receipt, in one transaction. A bad event is
refused (CASE_EVENT_INVALID, metadata "index"); the events before it stay held. An event of a
case whose submission has not arrived here yet (the window's gateway is behind) is refused
CASE_NOT_FOUND: the sender retries it later, as after any refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from gateway import rpcs
from gateway.audit import AuditUnavailable, is_case_id
from gateway.cases._delivery import MAX_EVENTS_PER_DELIVERY
from gateway.cases._events import verify_event
from gateway.cases._fold import CaseView, fold
from gateway.cases._local import LocalChanges
from gateway.cases._materials import MaterialInput, material_digest
from gateway.cases._model import CaseEvent, EventKind, MaterialRef
from gateway.cases._scrutiny import check_arrival, check_reach
from gateway.cases._trail import Note
from gateway.errors import Refusal
from registry import Registry

__all__ = ["CaseBook"]


def _invalid(message: str) -> Refusal:
    return Refusal("CASE_EVENT_INVALID", message)


class CaseBook(LocalChanges):
    """A gateway's cases: `submit`, `act`, `get`, `list`, `watch_start` for its
    own callers; `receive` for other regions' gateways; `outgoing` / `delivered` /
    `listeners` for its deliverer."""

    async def receive(
        self, sender_region: str, items: Sequence[tuple[str, Sequence[tuple[bytes, bytes]]]]
    ) -> list[str]:
        """The ids of the events held after the delivery (newly or already), in order; a
        Refusal (metadata "index": the position of the first bad item) otherwise."""
        if len(items) > MAX_EVENTS_PER_DELIVERY:
            raise Refusal(
                "REQUEST_TOO_LARGE",
                f"a delivery holds at most {MAX_EVENTS_PER_DELIVERY} case events",
            )
        registry = self.registry()
        held: list[str] = []
        for index, (jws, attachments) in enumerate(items):
            note = Note(rpc=rpcs.DELIVER_CASE_EVENTS, caller_region=sender_region)
            note.registry_version = registry.version
            try:
                held.append(await self._receive(registry, sender_region, jws, attachments, note))
            except (Refusal, AuditUnavailable) as refused:
                refusal = (
                    refused
                    if isinstance(refused, Refusal)
                    else Refusal("AUDIT_UNAVAILABLE", f"the case store did not answer: {refused}")
                )
                indexed = Refusal(
                    refusal.reason,
                    f"case event {index}: {refusal.message}",
                    metadata={**refusal.metadata, "index": str(index)},
                    audited=refusal.audited,
                )
                raise await self._trail.refused(note, indexed) from None
        return held

    async def _receive(
        self,
        registry: Registry,
        sender_region: str,
        jws: str,
        attachments: Sequence[tuple[bytes, bytes]],
        note: Note,
    ) -> str:
        event = verify_event(jws, registry, sender_region)  # (1)
        if not is_case_id(event.case_id):
            raise _invalid("the event's case id is not a case number (printable, no citizen id)")
        note.case_id, note.jws = event.case_id, jws
        note.fields = tuple(r.material_id for r in _refs(event)) + event.requested
        # Every check before the materials' (the slow part, in a worker thread), then the
        # materials, without the book's lock: another case's delivery or call goes on
        # meanwhile. Under the lock, what another change of the case may have changed since
        # (held events, order, fold, attachments held) is checked again; the materials' bytes
        # and the matter of the case (its submission, once) cannot change.
        found = await self._checked(registry, event, await self.events(event.case_id))
        if found is None:
            return event.event_id
        given = self._given(event, attachments)
        await self._check_sent(event, given)
        await self._verify_sent(event, given, _credentials(registry, found))  # (3)
        async with self._lock, self.store.exclusive(event.case_id):
            view = await self._checked(registry, event, await self.events(event.case_id))
            if view is None:
                return event.event_id
            await self._check_sent(event, given)
            note.subject = self.pseudonym(view.submission.applicant_id)
            note.matter_code = view.submission.matter_code
            kept = self.sealed_attachments(list(given.values()))
            await self.write(note, event, jws, view, kept, local=False)  # (5)
        return event.event_id

    async def _checked(
        self, registry: Registry, event: CaseEvent, events: list[CaseEvent]
    ) -> CaseView | None:
        """The case with the event folded in, after the checks (2) and (4) against the events
        held; None when the event is held already."""
        for other in events:  # (2)
            if other.event_id == event.event_id:
                if other != event:
                    raise _invalid("a different event under the id of one held")
                return None
        view = self._folded(event, events)  # (4)
        check_arrival(registry, event, events)
        check_reach(view, event)
        return view

    def _folded(self, event: CaseEvent, events: list[CaseEvent]) -> CaseView:
        view = fold([*events, event])
        if view is None:
            if event.kind is EventKind.SUBMITTED:
                raise _invalid("the submission does not begin a case its region may submit")
            raise Refusal(  # transient: the window's gateway has not delivered it here yet
                "CASE_NOT_FOUND",
                "the case's submission has not arrived here yet: retry once the window's "
                "gateway has delivered it",
            )
        if self.region not in view.submission.regions:
            raise _invalid(f"region {self.region} has no part in the case")
        if event.origin not in view.submission.regions:
            raise _invalid(f"region {event.origin} has no part in the case")
        return view

    @staticmethod
    def _given(
        event: CaseEvent, attachments: Sequence[tuple[bytes, bytes]]
    ) -> dict[str, MaterialInput]:
        """(3) of the module docstring: the attachments sent, by SHA-256, each one the event
        names with the size it names."""
        refs = {r.sha256: r for r in _refs(event)}
        given: dict[str, MaterialInput] = {}
        for content, signed_data in attachments:
            sha = material_digest(content, signed_data)
            ref = refs.get(sha)
            if ref is None:
                raise _invalid("an attachment is not one the event names")
            if ref.size != len(content) + len(signed_data):
                raise _invalid("an attachment's size is not the one the event names")
            given[sha] = MaterialInput(ref.material_id, content, signed_data)
        return given

    async def _check_sent(self, event: CaseEvent, given: Mapping[str, MaterialInput]) -> None:
        """(3): each material the event names and the delivery does not carry is held here."""
        for ref in _refs(event):
            if ref.sha256 not in given and await self.store.attachment(ref.sha256) is None:
                raise _invalid(f"the event's material {ref.material_id} was not sent")

    async def _verify_sent(
        self, event: CaseEvent, given: Mapping[str, MaterialInput], credentials: Mapping[str, str]
    ) -> None:
        """(3): each attachment sent verified again, in a worker thread (seals of megabytes
        take a while), as the window verified it: at the time its region verified it, a
        material the matter names a credential (`credentials`: id -> type) as a credential of
        that type."""
        refs = {r.sha256: r for r in _refs(event)}
        now = self.clock()

        def verify_all() -> None:
            for sha, material in given.items():
                try:
                    self.materials.verify(
                        material,
                        now=now,
                        validation_time=refs[sha].verified_at,
                        credential_type=None
                        if refs[sha] is event.result
                        else credentials.get(material.material_id),
                    )
                except Refusal as refusal:
                    raise _invalid(
                        f"material {material.material_id} does not verify here: {refusal.message}"
                    ) from None

        if given:
            await asyncio.to_thread(verify_all)


def _credentials(registry: Registry, view: CaseView) -> dict[str, str]:
    """The case's credential materials in the registry's matter: material id -> type."""
    matter = registry.matter(view.submission.matter_code)
    if matter is None:
        return {}
    return {m.id: m.credential_type for m in matter.materials if m.kind.value == "credential"}


def _refs(event: CaseEvent) -> list[MaterialRef]:
    return [*event.materials, *([event.result] if event.result is not None else [])]
