"""The audit store protocol, and an in-memory store for tests and the embedded demo default.

A store keeps, for each record, its log index, its canonical bytes, its leaf hash and the
log's root after it was appended (so that verification can name the first altered index), plus
the log's compact range (so an append costs O(log n) whatever the log's size) and the signed
checkpoints. `append` returns only once the record is durable, and assigns indices in commit
order; concurrent appends may be committed together (group commit).

The outbox: a record may carry an `Outbound` message for another region (the access report of
a hit a requesting gateway answered from its own cache), stored in the same transaction as the
record, so that the record and its message are durable together or not at all. The sender
reads what is not yet acknowledged (`outbox`), in index order, and moves the destination's
durable cursor past what the destination made durable (`acknowledge`), which also forgets it.
The log is then the only thing that must survive for the message to be delivered.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

from gateway.audit._checkpoint import Checkpoint
from gateway.audit._merkle import CompactRange, leaf_hash
from gateway.audit._record import AuditRecord, Outcome
from gateway.audit.errors import AuditUnavailable

# Appends waiting for a store's writer. A store that hangs (a frozen database server, a lost
# network) must not collect one record per request for as long as it hangs: beyond this many,
# an append is refused at once (AUDIT_UNAVAILABLE, so the answer is not released).
MAX_PENDING_APPENDS: Final = 10_000

__all__ = [
    "AlsoWrite",
    "Appended",
    "AuditQuery",
    "AuditStore",
    "MemoryAuditStore",
    "Outbound",
    "Pending",
    "PruneMarker",
    "StoredRow",
    "TreeHead",
]


@dataclass(frozen=True, slots=True)
class Appended:
    index: int
    leaf_hash: bytes


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message for another region that a record's access owes it (an access report): stored
    with the record, in the same transaction."""

    destination: str  # the region told (GB/T 2260 code)
    payload: bytes  # the message as it will be sent (an access report's canonical JSON)


class AlsoWrite(Protocol):
    """Rows another part of the gateway keeps with a record, in the record's own transaction
    (a case's change: `gateway.cases`), so that both are durable or neither is. Each store calls
    its own method with the record's index; the method must not fail on what it was given
    (check before appending), since it fails the transaction of every record with it."""

    def in_memory(self, index: int) -> None: ...

    def in_sqlite(self, conn: Any, index: int) -> None: ...

    async def in_postgres(self, cursor: Any, index: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Pending:
    """An outbound message not yet acknowledged by its destination, and its record's index."""

    index: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class TreeHead:
    size: int
    root: bytes


@dataclass(frozen=True, slots=True)
class PruneMarker:
    """Records below `before` were removed by a retention prune; `compact` is the log's compact
    range at that size, whose root a checkpoint signed before the removal vouches for."""

    before: int
    compact: bytes
    pruned_at: datetime
    operator: str
    reason: str


@dataclass(frozen=True, slots=True)
class StoredRow:
    """A row as stored: what verification recomputes from (never trusted blindly)."""

    index: int
    canonical: bytes
    leaf_hash: bytes
    root: bytes  # the log's root once this record was appended (size index + 1)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters for oversight queries; `subject` is a pseudonym (hash the id before asking)."""

    subject: str | None = None
    caller_agency: str | None = None
    provider_region: str | None = None
    purpose: str | None = None
    dataset: str | None = None
    outcome: Outcome | None = None
    since: datetime | None = None
    until: datetime | None = None
    after_index: int = -1  # paging: only records with a larger index
    limit: int = 100

    def matches(self, record: AuditRecord) -> bool:
        return (
            (self.subject is None or record.subject == self.subject)
            and (self.caller_agency is None or record.caller_agency == self.caller_agency)
            and (self.provider_region is None or record.provider_region == self.provider_region)
            and (self.purpose is None or record.purpose == self.purpose)
            and (self.dataset is None or record.dataset == self.dataset)
            and (self.outcome is None or record.outcome is self.outcome)
            and (self.since is None or record.time >= self.since)
            and (self.until is None or record.time < self.until)
        )


class AuditStore(Protocol):
    commits: int  # transactions that made appended records durable (a group commit is one)

    async def open(self) -> None:
        """Create or migrate the schema; load the head."""
        ...

    async def close(self) -> None:
        """Finish pending appends and release the store."""
        ...

    async def append(
        self, record: AuditRecord, outbound: Outbound | None = None, also: AlsoWrite | None = None
    ) -> Appended:
        """Store the record (and its outbound message, and `also`'s rows, in the same
        transaction) durably and return its index; raise `AuditUnavailable` otherwise."""
        ...

    async def outbox(self, destination: str, limit: int) -> list[Pending]:
        """Up to `limit` messages for `destination` past its cursor, in index order."""
        ...

    async def outbox_backlog(self) -> dict[str, int]:
        """Messages waiting, by destination (destinations with none are left out)."""
        ...

    async def acknowledge(self, destination: str, through: int) -> None:
        """`destination` made every message up to index `through` durable: move its cursor
        there (never back) and forget them."""
        ...

    async def withdraw(self, index: int) -> bool:
        """Forget the message of record `index` if it is still waiting (its answer was not
        released after all); whether it was."""
        ...

    async def head(self) -> TreeHead: ...

    async def rows(self, start: int, end: int) -> list[StoredRow]:
        """Stored rows with start <= index < end, in index order (gaps show as missing)."""
        ...

    async def query(self, query: AuditQuery) -> list[tuple[int, AuditRecord]]:
        """(index, record) of matching records in index order, at most `query.limit`."""
        ...

    async def column_mismatches(self) -> int | None:
        """The first index whose query columns disagree with its canonical bytes, if any: an
        edit there would hide the record from oversight queries without changing its leaf."""
        ...

    async def first_index_at_or_after(self, time: datetime) -> int:
        """The smallest index whose record time is >= `time` (the log's size if none is)."""
        ...

    async def prune(self, marker: PruneMarker) -> None:
        """Remove every record below `marker.before` and keep the marker: a privileged act."""
        ...

    async def pruned(self) -> PruneMarker | None:
        """The latest prune marker, if the log was ever pruned."""
        ...

    async def add_checkpoint(self, checkpoint: Checkpoint, signed_at: datetime) -> None: ...

    async def checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint, by size (then signing order)."""
        ...


class MemoryAuditStore:
    """An `AuditStore` in memory: nothing survives the process (tests, the demo's default)."""

    def __init__(self) -> None:
        self._rows: list[StoredRow] = []
        self._records: list[AuditRecord | None] = []  # None once pruned
        self._range = CompactRange()
        self._checkpoints: list[Checkpoint] = []
        self._marker: PruneMarker | None = None
        self._lock = asyncio.Lock()
        self._outbox: dict[str, dict[int, bytes]] = {}  # destination -> index -> payload
        self._cursors: dict[str, int] = {}
        self.commits = 0
        self.available = True  # tests switch this off to simulate an outage

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def append(
        self, record: AuditRecord, outbound: Outbound | None = None, also: AlsoWrite | None = None
    ) -> Appended:
        if not self.available:
            raise AuditUnavailable("the in-memory audit store is switched off")
        async with self._lock:
            index = self._range.size
            if also is not None:  # first: if it fails, the record is not appended either
                also.in_memory(index)
            leaf = leaf_hash(record.canonical)
            self._range.append(leaf)
            self._rows.append(StoredRow(index, record.canonical, leaf, self._range.root()))
            self._records.append(record)
            if outbound is not None:
                self._outbox.setdefault(outbound.destination, {})[index] = outbound.payload
            self.commits += 1
            return Appended(index, leaf)

    async def outbox(self, destination: str, limit: int) -> list[Pending]:
        if not self.available:
            raise AuditUnavailable("the in-memory audit store is switched off")
        cursor = self._cursors.get(destination, -1)
        waiting = self._outbox.get(destination, {})
        return [Pending(i, waiting[i]) for i in sorted(waiting) if i > cursor][: max(limit, 0)]

    async def outbox_backlog(self) -> dict[str, int]:
        if not self.available:
            raise AuditUnavailable("the in-memory audit store is switched off")
        return {d: len(waiting) for d, waiting in sorted(self._outbox.items()) if waiting}

    async def acknowledge(self, destination: str, through: int) -> None:
        if not self.available:
            raise AuditUnavailable("the in-memory audit store is switched off")
        async with self._lock:
            self._cursors[destination] = max(self._cursors.get(destination, -1), through)
            waiting = self._outbox.get(destination, {})
            for index in [i for i in waiting if i <= through]:
                del waiting[index]
            if not waiting:
                self._outbox.pop(destination, None)

    async def withdraw(self, index: int) -> bool:
        async with self._lock:
            for destination, waiting in list(self._outbox.items()):
                if waiting.pop(index, None) is not None:
                    if not waiting:
                        del self._outbox[destination]
                    return True
            return False

    async def head(self) -> TreeHead:
        return TreeHead(self._range.size, self._range.root())

    async def rows(self, start: int, end: int) -> list[StoredRow]:
        return [r for r in self._rows if start <= r.index < end]

    async def query(self, query: AuditQuery) -> list[tuple[int, AuditRecord]]:
        out: list[tuple[int, AuditRecord]] = []
        if query.limit <= 0:  # as SQL's LIMIT 0: nothing (the loop below would return one)
            return out
        for index in range(max(query.after_index + 1, 0), len(self._records)):
            record = self._records[index]
            if record is not None and query.matches(record):
                out.append((index, record))
                if len(out) >= query.limit:
                    break
        return out

    async def column_mismatches(self) -> int | None:
        return None  # queries read the records themselves

    async def first_index_at_or_after(self, time: datetime) -> int:
        for index, record in enumerate(self._records):
            if record is not None and record.time >= time:
                return index
        return len(self._records)

    async def prune(self, marker: PruneMarker) -> None:
        async with self._lock:
            self._rows = [r for r in self._rows if r.index >= marker.before]
            self._records = [None if i < marker.before else r for i, r in enumerate(self._records)]
            self._marker = marker

    async def pruned(self) -> PruneMarker | None:
        return self._marker

    async def add_checkpoint(self, checkpoint: Checkpoint, signed_at: datetime) -> None:
        self._checkpoints.append(dataclasses.replace(checkpoint, signed_at=signed_at))

    async def checkpoints(self) -> list[Checkpoint]:
        return sorted(self._checkpoints, key=lambda c: c.size)

    # For tamper tests: the in-memory equivalent of editing the database by hand.
    def tamper(self, rows: Sequence[StoredRow]) -> None:
        self._rows = list(rows)
