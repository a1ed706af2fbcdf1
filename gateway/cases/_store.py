"""Where a gateway keeps cases: beside its audit log, in the same store, each change written in
the transaction of its audit record (`AuditLog.append(..., also=...)`), so that a case never
changes without its record and a record never claims a change that was not kept.

What is kept (all of it encrypted where it holds personal data, by `gateway.cases`, before it
reaches the store; the store keeps opaque text and bytes):

``case_events``
    every event held, made here or received: id, case, origin, seq, the signed JWS (sealed),
    the digests of the attachments it names, when it arrived, and the arrival order here
    (`StoredEvent.position`, what `Watch` follows). An event is kept once (by id).
``case_attachments``
    the materials and results, by SHA-256 (sealed), each once.
``cases``
    one row per case: what listing and the query check need without reading events
    (`CaseSummary`), replaced by each change.
``case_outbox``
    per event made here and each region to deliver it to: delivered or not.
``case_requests``
    (agency, request id) → the event a local call made and the digest of the call, so that the
    same call sent again answers what it made instead of acting twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from gateway.audit import Appended, AuditLog, AuditRecord

__all__ = [
    "CaseChange",
    "CaseQuery",
    "CaseStore",
    "CaseSummary",
    "MemoryCaseStore",
    "StoredAttachment",
    "StoredEvent",
    "StoredRequest",
    "check_change",
    "one_process",
]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: str  # "<case_id>/<origin>/<seq>"
    case_id: str
    origin: str
    seq: int
    sealed_jws: str  # the signed event, sealed by gateway.cases (the store does not open it)
    attachments: tuple[str, ...]  # sha256 of the materials and result it names
    received_at: datetime
    position: int = 0  # arrival order in this store, from 1 (set by the store)


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    sha256: str
    sealed: bytes  # content and signed data, sealed by gateway.cases


@dataclass(frozen=True, slots=True)
class CaseSummary:
    """What listing a case, and deciding a query bound to it, need."""

    case_id: str
    matter_code: str
    window_region: str
    window_agency: str
    applicant: str  # this region's pseudonym of the applicant (hex HMAC), never the raw id
    state: str  # CaseState value
    submitted_at: datetime
    due_at: datetime
    updated_at: datetime
    agencies: tuple[str, ...]  # the window agency and the agencies that accepted a part
    ready_regions: tuple[str, ...]  # regions with a part READY (their agencies may accept it)
    handling: tuple[tuple[str, str], ...]  # (region, agency) of each part IN_PROGRESS/AWAITING


@dataclass(frozen=True, slots=True)
class StoredRequest:
    event_id: str
    case_id: str
    digest: str  # hex SHA-256 of what the call asked


@dataclass(frozen=True, slots=True)
class CaseChange:
    """One event kept, with the case as it now is, where it goes, and the call that made it."""

    event: StoredEvent
    attachments: tuple[StoredAttachment, ...]
    summary: CaseSummary
    destinations: tuple[str, ...] = ()  # regions to deliver it to (events made here)
    request: tuple[str, str] | None = None  # (agency, request id) of the local call
    request_digest: str = ""


@dataclass(frozen=True, slots=True)
class CaseQuery:
    """Which cases to list, newest change first; a case matches every filter given."""

    agency: str = ""  # visible to this agency: in `agencies`, or its region in `ready_regions`
    agency_region: str = ""  # the agency's region (with `agency`)
    applicant: str = ""  # this applicant's cases (pseudonym)
    state: str = ""
    overdue_at: datetime | None = None  # open and due before this time
    matter_code: str = ""
    before: tuple[datetime, str] | None = None  # (updated_at, case_id) of the last one seen
    limit: int = 50


@contextlib.asynccontextmanager
async def one_process(key: str) -> AsyncIterator[None]:
    """`CaseStore.exclusive` of a store only one process writes (memory, SQLite): the case
    book's own lock already serialises its changes."""
    yield


class CaseStore(Protocol):
    def exclusive(self, key: str) -> AbstractAsyncContextManager[None]:
        """Hold `key` (a case id; or an agency's request id, for a submission) against the
        other processes that share this store (a region's replicas and workers, on
        PostgreSQL) while a change is read, made and written: two replicas never make two
        events under one number, or two cases of one request. `AuditUnavailable` if it cannot
        be held within the store's bound."""
        ...

    async def write(self, record: AuditRecord, change: CaseChange) -> Appended:
        """The record and the change, durable together (`AuditUnavailable` otherwise). An
        event already held is not kept twice (the record is still appended). A change no store
        can keep (`check_change`) raises `ValueError` before anything is appended."""
        ...

    async def events(self, case_id: str) -> list[StoredEvent]:
        """Every event held for the case, in arrival order."""
        ...

    async def summary(self, case_id: str) -> CaseSummary | None: ...

    async def cases(self, query: CaseQuery) -> list[CaseSummary]: ...

    async def request(self, agency: str, request_id: str) -> StoredRequest | None: ...

    async def attachment(self, sha256: str) -> StoredAttachment | None: ...

    async def outbox(self, destination: str, limit: int) -> list[StoredEvent]:
        """Up to `limit` events not yet delivered to `destination`, in arrival order."""
        ...

    async def delivered(self, destination: str, event_ids: list[str]) -> None: ...

    async def outbox_backlog(self) -> dict[str, int]:
        """Events waiting, per destination with any."""
        ...

    async def changes(self, after: int, limit: int) -> list[StoredEvent]:
        """Events that arrived after position `after`, in arrival order (what Watch follows)."""
        ...

    async def overdue(self, now: datetime) -> dict[str, int]:
        """Open cases due before `now`, per matter code."""
        ...


_MAX_INTEGER = 2**63 - 1  # what SQLite's INTEGER and PostgreSQL's bigint hold


def check_change(change: CaseChange) -> None:
    """Refuse (`ValueError`) a change that no store can keep as given, before its record is
    appended: a change failing inside the transaction would fail every record written with it."""
    event, summary = change.event, change.summary
    if not event.event_id or not event.case_id:
        raise ValueError("a case event is kept under its event id and case id")
    if summary.case_id != event.case_id:
        raise ValueError("a change's summary is of another case than its event")
    if not 0 < event.seq <= _MAX_INTEGER:
        raise ValueError("a case event's seq is a positive 64-bit count")
    for moment in (event.received_at, summary.submitted_at, summary.due_at, summary.updated_at):
        if moment.utcoffset() is None:
            raise ValueError("the times of a case change are timezone-aware")
    texts = [
        event.event_id,
        event.case_id,
        event.origin,
        event.sealed_jws,
        *event.attachments,
        *(a.sha256 for a in change.attachments),
        summary.matter_code,
        summary.window_region,
        summary.window_agency,
        summary.applicant,
        summary.state,
        *summary.agencies,
        *summary.ready_regions,
        *(name for pair in summary.handling for name in pair),
        *change.destinations,
        *(change.request or ()),
        change.request_digest,
    ]
    if any("\x00" in text for text in texts):
        raise ValueError("a case change holds a NUL character (no store keeps it in text)")


def matches(summary: CaseSummary, query: CaseQuery) -> bool:
    if query.agency and not (
        query.agency in summary.agencies or query.agency_region in summary.ready_regions
    ):
        return False
    if query.applicant and summary.applicant != query.applicant:
        return False
    if query.state and summary.state != query.state:
        return False
    if query.overdue_at is not None and not (
        summary.state == "open" and summary.due_at < query.overdue_at
    ):
        return False
    if query.matter_code and summary.matter_code != query.matter_code:
        return False
    return query.before is None or (summary.updated_at, summary.case_id) < query.before


class _MemoryWrite:
    def __init__(self, store: MemoryCaseStore, change: CaseChange) -> None:
        self.store, self.change = store, change

    def in_memory(self, index: int) -> None:
        self.store._apply(self.change)

    def in_sqlite(self, conn: Any, index: int) -> None:
        raise TypeError("a memory case store is kept beside a memory audit store only")

    async def in_postgres(self, cursor: Any, index: int) -> None:
        raise TypeError("a memory case store is kept beside a memory audit store only")


class MemoryCaseStore:
    """A `CaseStore` in memory, beside a `MemoryAuditStore` (tests, the demo's default)."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self._events: dict[str, StoredEvent] = {}
        self._by_case: dict[str, list[str]] = {}
        self._attachments: dict[str, StoredAttachment] = {}
        self._cases: dict[str, CaseSummary] = {}
        self._outbox: dict[str, dict[str, None]] = {}  # destination -> event ids, in order
        self._requests: dict[tuple[str, str], StoredRequest] = {}
        self._position = 0
        self._lock = asyncio.Lock()

    def exclusive(self, key: str) -> AbstractAsyncContextManager[None]:
        return one_process(key)

    async def write(self, record: AuditRecord, change: CaseChange) -> Appended:
        check_change(change)
        async with self._lock:
            return await self.audit.append(record, also=_MemoryWrite(self, change))

    def _apply(self, change: CaseChange) -> None:
        event = change.event
        if event.event_id not in self._events:
            self._position += 1
            self._events[event.event_id] = dataclasses.replace(event, position=self._position)
            self._by_case.setdefault(event.case_id, []).append(event.event_id)
            for destination in change.destinations:
                self._outbox.setdefault(destination, {})[event.event_id] = None
        for attachment in change.attachments:
            self._attachments.setdefault(attachment.sha256, attachment)
        self._cases[change.summary.case_id] = change.summary
        if change.request is not None:
            self._requests.setdefault(
                change.request, StoredRequest(event.event_id, event.case_id, change.request_digest)
            )

    async def events(self, case_id: str) -> list[StoredEvent]:
        return [self._events[i] for i in self._by_case.get(case_id, [])]

    async def summary(self, case_id: str) -> CaseSummary | None:
        return self._cases.get(case_id)

    async def cases(self, query: CaseQuery) -> list[CaseSummary]:
        found = [s for s in self._cases.values() if matches(s, query)]
        found.sort(key=lambda s: (s.updated_at, s.case_id), reverse=True)
        return found[: max(query.limit, 0)]

    async def request(self, agency: str, request_id: str) -> StoredRequest | None:
        return self._requests.get((agency, request_id))

    async def attachment(self, sha256: str) -> StoredAttachment | None:
        return self._attachments.get(sha256)

    async def outbox(self, destination: str, limit: int) -> list[StoredEvent]:
        waiting = self._outbox.get(destination, {})
        return [self._events[i] for i in list(waiting)[: max(limit, 0)]]

    async def delivered(self, destination: str, event_ids: list[str]) -> None:
        waiting = self._outbox.get(destination, {})
        for event_id in event_ids:
            waiting.pop(event_id, None)
        if not waiting:
            self._outbox.pop(destination, None)

    async def outbox_backlog(self) -> dict[str, int]:
        return {d: len(w) for d, w in sorted(self._outbox.items()) if w}

    async def changes(self, after: int, limit: int) -> list[StoredEvent]:
        found = sorted(
            (e for e in self._events.values() if e.position > after), key=lambda e: e.position
        )
        return found[: max(limit, 0)]

    async def overdue(self, now: datetime) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self._cases.values():
            if s.state == "open" and s.due_at < now:
                counts[s.matter_code] = counts.get(s.matter_code, 0) + 1
        return dict(sorted(counts.items()))
