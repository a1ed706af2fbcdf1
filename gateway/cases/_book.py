"""The case book: what a gateway does with cases (docs/cases.md).

`CaseBook` takes the calls of its region's agencies (Submit, Act; Get, List and Watch also for
an applicant through the region's portal), makes the events they ask for (each checked against
the case with `transition` before anything is written, signed with the gateway's audit key,
kept sealed with its audit record in one transaction, queued for every other region of the
case), takes the events other regions' gateways deliver (`receive`, `gateway.cases._intake`),
and gives the deliverer what to send (`outgoing`, `delivered`, `listeners`).

Every call makes an audit record (`gateway.cases._trail`), allowed or refused; a refused call
stores nothing else. Submit and Act are idempotent by (agency, request id): the same call sent
again answers the case as it now is (audited, no new event); another call under the same id is
REQUEST_REPLAYED.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, cast

from gateway import rpcs
from gateway.audit import (
    AuditLog,
    AuditUnavailable,
    Outcome,
    is_case_id,
    is_request_id,
    pseudonymize,
)
from gateway.cases._calls import (
    CaseAnswer,
    CaseCaller,
    CasePage,
    Outgoing,
    check_matter_filter,
    may_see,
    read_page_token,
    summary_of,
    write_page_token,
)
from gateway.cases._events import EventSigner, read_event
from gateway.cases._fold import CaseView, fold
from gateway.cases._materials import MaterialInput, MaterialVerifier
from gateway.cases._model import CaseEvent, MaterialRef
from gateway.cases._sealing import (
    open_bytes,
    open_text,
    pack_attachment,
    seal_bytes,
    seal_text,
    unpack_attachment,
)
from gateway.cases._store import (
    CaseChange,
    CaseQuery,
    CaseStore,
    StoredAttachment,
    StoredEvent,
)
from gateway.cases._trail import CaseTrail, Note
from gateway.errors import Refusal
from registry import Registry, RegistryError

__all__ = [
    "CHANGES_PAGE",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "CaseBookBase",
    "RegistrySource",
]

log = logging.getLogger("tongban.cases")

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 500
_OPENED_EVENTS: Final = 4096  # events kept read (they never change)
_KEPT_VIEWS: Final = 1024  # cases kept folded, with the event ids they were folded from
CHANGES_PAGE: Final = 500  # changes read at once (Watch)


class RegistrySource(Protocol):
    """Where the current registry comes from (the gateway's `registry.RegistryStore`)."""

    def current(self) -> Registry: ...


_READS: Final = frozenset(
    {"events", "summary", "cases", "request", "attachment", "outbox", "changes", "overdue"}
)


class _Reads:
    """The case store as the book reads it: a read the audit database cannot answer
    (`AuditUnavailable`) is the refusal AUDIT_UNAVAILABLE, which each call audits (best effort)
    and answers like any other, never an unmapped error (INTERNAL). `write` is the book's own
    business (`CaseBookBase.write`)."""

    def __init__(self, store: CaseStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._store, name)
        if name not in _READS:
            return found

        async def read(*args: Any, **kwargs: Any) -> Any:
            try:
                return await found(*args, **kwargs)
            except AuditUnavailable as exc:
                raise Refusal("AUDIT_UNAVAILABLE", f"the case store did not answer: {exc}") from exc

        return read


class CaseBookBase:
    """What every call of the book shares: the store, the keys, reading and writing events."""

    def __init__(
        self,
        region: str,
        store: CaseStore,
        *,
        registry: RegistrySource,
        signer: EventSigner,
        materials: MaterialVerifier,
        pseudonym_key: bytes,
        audit: AuditLog,
        gateway_name: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if len(pseudonym_key) < 16:
            raise ValueError("the pseudonym key must be at least 16 bytes")
        self.region = region
        self.store: CaseStore = cast(CaseStore, _Reads(store))
        self.materials = materials
        self.listeners: list[Callable[[], None]] = []  # called after each write here
        # told each event kept (its kind; made "here" or "received"): the gateway's metrics
        self.on_event: Callable[[str, Literal["here", "received"]], None] | None = None
        self.clock = clock
        self._registry = registry
        self._signer = signer
        self._key = pseudonym_key
        self._trail = CaseTrail(
            audit, gateway_name=gateway_name or f"gateway-{region}", region=region, clock=clock
        )
        self._lock = asyncio.Lock()  # one local change at a time: seq numbers, request ids
        self._opened: OrderedDict[str, CaseEvent] = OrderedDict()
        self._views: OrderedDict[str, tuple[tuple[str, ...], CaseView | None]] = OrderedDict()

    # -- reading ---------------------------------------------------------------------------
    def registry(self) -> Registry:
        try:
            return self._registry.current()
        except RegistryError as exc:
            raise Refusal("REGISTRY_STALE", str(exc)) from exc

    def pseudonym(self, applicant_id: str) -> str:
        return pseudonymize(applicant_id, self._key)

    def opened(self, stored: StoredEvent) -> CaseEvent:
        """The event of a stored one, opened (kept opened: an event never changes)."""
        event = self._opened.get(stored.event_id)
        if event is None:
            event = read_event(self.open_jws(stored))
            self._opened[stored.event_id] = event
            while len(self._opened) > _OPENED_EVENTS:
                self._opened.popitem(last=False)
        else:
            self._opened.move_to_end(stored.event_id)
        return event

    def open_jws(self, stored: StoredEvent) -> str:
        return open_text(stored.sealed_jws, stored.event_id, self._key)

    async def events(self, case_id: str) -> list[CaseEvent]:
        """Every event held for the case, opened, in arrival order."""
        return [self.opened(s) for s in await self.store.events(case_id)]

    async def view(self, case_id: str) -> CaseView | None:
        """The case its held events make (None when none is held, or not its submission).

        The case's summary cannot answer a listing (no parts, materials, applicant id or matter
        name), so every listed case needs its view; but a view is the same while the events
        held are: it is kept by the ids of the events read, and folded again only when one
        arrived (the store is still read, so a replica's event is never missed)."""
        stored = await self.store.events(case_id)
        held = tuple(s.event_id for s in stored)
        kept = self._views.get(case_id)
        if kept is not None and kept[0] == held:
            self._views.move_to_end(case_id)
            return kept[1]
        view = fold([self.opened(s) for s in stored])
        self._views[case_id] = (held, view)
        while len(self._views) > _KEPT_VIEWS:
            self._views.popitem(last=False)
        return view

    async def contents(self, refs: Sequence[MaterialRef]) -> dict[str, tuple[bytes, bytes]]:
        """(content, signed_data) of each material held, by sha256."""
        found: dict[str, tuple[bytes, bytes]] = {}
        for ref in refs:
            if ref.sha256 in found:
                continue
            kept = await self.store.attachment(ref.sha256)
            if kept is not None:
                found[ref.sha256] = unpack_attachment(
                    open_bytes(kept.sealed, ref.sha256, self._key)
                )
        return found

    # -- writing ---------------------------------------------------------------------------
    def sealed_attachments(
        self, materials: Sequence[MaterialInput]
    ) -> tuple[StoredAttachment, ...]:
        kept: dict[str, StoredAttachment] = {}
        for m in materials:
            sha = m.sha256
            if sha not in kept:
                packed = pack_attachment(m.content, m.signed_data)
                kept[sha] = StoredAttachment(sha, seal_bytes(packed, sha, self._key))
        return tuple(kept.values())

    async def write(
        self,
        note: Note,
        event: CaseEvent,
        jws: str,
        view: CaseView,
        attachments: tuple[StoredAttachment, ...],
        *,
        local: bool,
        request: tuple[str, str] | None = None,
        request_digest: str = "",
    ) -> str:
        """Keep the event (sealed), its attachments and the case's summary with the allowed
        record of `note`, in one transaction; the record's audit id. An event made here goes
        to every other region of the case."""
        refs = [*event.materials, *([event.result] if event.result else [])]
        stored = StoredEvent(
            event_id=event.event_id,
            case_id=event.case_id,
            origin=event.origin,
            seq=event.seq,
            sealed_jws=seal_text(jws, event.event_id, self._key),
            attachments=tuple(dict.fromkeys(r.sha256 for r in refs)),
            received_at=self.clock(),
        )
        destinations = (
            tuple(r for r in view.submission.regions if r != self.region) if local else ()
        )
        change = CaseChange(
            event=stored,
            attachments=attachments,
            summary=summary_of(view, self.pseudonym(view.submission.applicant_id)),
            destinations=destinations,
            request=request,
            request_digest=request_digest,
        )
        note.jws = jws
        try:
            appended = await self.store.write(self._trail.record(note, Outcome.ALLOWED), change)
        except AuditUnavailable as exc:
            raise Refusal(
                "AUDIT_UNAVAILABLE", f"the case change was not kept: {exc}", audited=True
            ) from exc
        self._opened[event.event_id] = event
        while len(self._opened) > _OPENED_EVENTS:
            self._opened.popitem(last=False)
        if self.on_event is not None:
            self.on_event(event.kind.value, "here" if local else "received")
        self._wake()
        return self._trail.audit_id(appended.index)

    def _wake(self) -> None:
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:  # a listener's failure is its own; the change is kept
                log.exception("a case listener failed")

    def sign(self, registry: Registry, event: CaseEvent) -> str:
        return self._signer.sign(registry, event)

    # -- who sees what ---------------------------------------------------------------------
    def note(self, rpc: str, caller: CaseCaller | None, request_id: str = "") -> Note:
        if caller is None:
            return Note(rpc=rpc)
        return Note(
            rpc=rpc,
            caller_region=caller.region,
            caller_agency=caller.agency,
            caller_operator=caller.operator,
            request_id=request_id,
            subject=caller.applicant,
        )

    async def refused(
        self, rpc: str, caller: CaseCaller | None, refusal: Refusal, *, case_id: str = ""
    ) -> Refusal:
        """Audit a call refused before the book was asked (at the service edge: no token, not
        an agency of this region) and return the refusal to raise."""
        note = self.note(rpc, caller)
        note.case_id = case_id
        return await self._trail.refused(note, refusal)

    async def visible(self, caller: CaseCaller, case_id: str, note: Note) -> CaseView:
        """The case, if `caller` may see it; CASE_NOT_FOUND otherwise (as for an unknown id)."""
        # a case id outside the grammar (NUL, a citizen id, 10 MB) is no case: not asked of
        # the store (PostgreSQL refuses a NUL in text), and answered as an unknown id
        summary = await self.store.summary(case_id) if is_case_id(case_id) else None
        view = await self.view(case_id) if summary is not None else None
        if summary is None or view is None or not may_see(summary, caller):
            raise Refusal("CASE_NOT_FOUND", "no case with this id is held here for this caller")
        note.subject, note.matter_code = summary.applicant, summary.matter_code
        return view

    @staticmethod
    def check_request_id(request_id: str) -> None:
        if not is_request_id(request_id):
            raise Refusal(
                "INVALID_ARGUMENT_FORMAT",
                "request_id is 1 to 128 printable ASCII characters without spaces",
                metadata={"field": "request_id"},
            )

    def overdue(self, view: CaseView) -> bool:
        return view.overdue(self.clock())

    # -- reading calls ---------------------------------------------------------------------
    async def get(
        self, caller: CaseCaller, case_id: str, *, include_contents: bool = False
    ) -> CaseAnswer:
        note = self.note(rpcs.CASES_GET, caller)
        note.case_id = case_id
        try:
            view = await self.visible(caller, case_id, note)
            contents: dict[str, tuple[bytes, bytes]] = {}
            if include_contents:
                refs = [*view.materials, *(p.result for p in view.parts if p.result)]
                contents = await self.contents(refs)
            audit = await self._trail.allowed(note)
        except (Refusal, AuditUnavailable) as refused:
            raise await self._trail.refused(note, refused) from None
        return CaseAnswer(view, audit, self.overdue(view), contents)

    async def list(
        self,
        caller: CaseCaller,
        *,
        state: str = "",
        overdue: bool = False,
        matter_code: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> CasePage:
        """One page of the cases `caller` sees, newest change first."""
        note = self.note(rpcs.CASES_LIST, caller)
        note.matter_code = matter_code
        try:
            check_matter_filter(matter_code)
            size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            now = self.clock()
            query = CaseQuery(
                agency="" if caller.applicant else caller.agency,
                agency_region="" if caller.applicant else caller.region,
                applicant=caller.applicant,
                state=state,
                overdue_at=now if overdue else None,
                matter_code=matter_code,
                before=read_page_token(page_token),
                limit=size + 1,
            )
            if not caller.applicant and not caller.agency:
                raise Refusal("NOT_AUTHORISED_ROLE", "cases are listed for an agency or applicant")
            found = await self.store.cases(query)
            views = [v for s in found[:size] if (v := await self.view(s.case_id)) is not None]
            token = write_page_token(found[size - 1]) if len(found) > size else ""
            audit = await self._trail.allowed(note)
        except (Refusal, AuditUnavailable) as refused:
            raise await self._trail.refused(note, refused) from None
        return CasePage(tuple(views), token, audit, now)

    async def outgoing(self, destination: str, limit: int) -> builtins.list[Outgoing]:
        """Up to `limit` events made here not yet delivered to `destination`, in order."""
        out = []
        for stored in await self.store.outbox(destination, limit):
            attachments = []
            for sha in stored.attachments:
                kept = await self.store.attachment(sha)
                if kept is None:  # pragma: no cover - written in the event's transaction
                    raise RuntimeError(f"the attachment of event {stored.event_id} is not held")
                attachments.append(unpack_attachment(open_bytes(kept.sealed, sha, self._key)))
            out.append(Outgoing(stored.event_id, self.open_jws(stored), attachments))
        return out

    async def delivered(self, destination: str, event_ids: builtins.list[str]) -> None:
        await self.store.delivered(destination, event_ids)

    # -- Watch -----------------------------------------------------------------------------
    async def last_position(self) -> int:
        """The arrival position of the last event held (where a watch starts following)."""
        after = 0
        while changes := await self.store.changes(after, CHANGES_PAGE):
            after = changes[-1].position
        return after

    async def watch_start(
        self, caller: CaseCaller, case_id: str
    ) -> tuple[builtins.list[CaseAnswer], int]:
        """The case (or the first page of cases the caller sees) as it is now, and the
        position to follow changes from; audited as a Watch call."""
        note = self.note(rpcs.CASES_WATCH, caller)
        note.case_id = case_id
        try:
            position = await self.last_position()
            if case_id:
                views = [await self.visible(caller, case_id, note)]
            else:
                page = await self.store.cases(
                    CaseQuery(
                        agency="" if caller.applicant else caller.agency,
                        agency_region="" if caller.applicant else caller.region,
                        applicant=caller.applicant,
                        limit=MAX_PAGE_SIZE,
                    )
                )
                views = [v for s in page if (v := await self.view(s.case_id)) is not None]
            audit = await self._trail.allowed(note)
        except (Refusal, AuditUnavailable) as refused:
            raise await self._trail.refused(note, refused) from None
        return [CaseAnswer(v, audit, self.overdue(v)) for v in views], position
