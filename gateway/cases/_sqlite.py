"""The case store in the SQLite audit file (tables: gateway/audit/_sqlite_schema.py, version 6).

A change is written by the audit store's writer thread inside the transaction of its record
(`AlsoWrite.in_sqlite`), so both are committed together or neither is. The writer is the only
one writing the file, so an event's `position` is the largest held plus one: gapless, in
commit order. Reads use the audit store's reading connection, through `AuditLog.read` (bounded,
and refused at once while the audit store's breaker is open); marking events delivered is a
write of its own on the writer thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, TypeVar

from gateway.audit import Appended, AuditLog, AuditRecord, SqliteAuditStore
from gateway.cases._model import CaseState
from gateway.cases._rows import (
    EVENT_COLUMNS,
    OUTBOX_EVENT_COLUMNS,
    SUMMARY_COLUMNS,
    Dialect,
    Prepared,
    case_filter,
    count,
    event_from_row,
    prepare,
    summary_from_row,
    time_text,
)
from gateway.cases._store import (
    CaseChange,
    CaseQuery,
    CaseSummary,
    StoredAttachment,
    StoredEvent,
    StoredRequest,
    one_process,
)

__all__ = ["SqliteCaseStore"]

_T = TypeVar("_T")

_NEXT_POSITION = "SELECT coalesce(max(position), 0) + 1 FROM case_events"
_INSERT_EVENT = (
    f"INSERT INTO case_events ({EVENT_COLUMNS}, audit_idx) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 (fixed column names)
    " ON CONFLICT (event_id) DO NOTHING"
)
_INSERT_OUTBOX = (
    "INSERT INTO case_outbox (event_id, destination, position) VALUES (?, ?, ?)"
    " ON CONFLICT (event_id, destination) DO NOTHING"
)
_INSERT_ATTACHMENT = (
    "INSERT INTO case_attachments (sha256, sealed) VALUES (?, ?) ON CONFLICT (sha256) DO NOTHING"
)
_UPSERT_CASE = (
    f"INSERT INTO cases ({SUMMARY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 (fixed column names)
    " ON CONFLICT (case_id) DO UPDATE SET matter_code = excluded.matter_code,"
    " window_region = excluded.window_region, window_agency = excluded.window_agency,"
    " applicant = excluded.applicant, state = excluded.state,"
    " submitted_at = excluded.submitted_at, due_at = excluded.due_at,"
    " updated_at = excluded.updated_at, agencies = excluded.agencies,"
    " ready_regions = excluded.ready_regions, handling = excluded.handling"
)
_INSERT_REQUEST = (
    "INSERT INTO case_requests (agency, request_id, event_id, case_id, digest)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (agency, request_id) DO NOTHING"
)
_EVENTS = f"SELECT {EVENT_COLUMNS} FROM case_events"  # noqa: S608 (fixed column names)
_OUTBOX = (
    f"SELECT {OUTBOX_EVENT_COLUMNS}"  # noqa: S608 (fixed column names)
    " FROM case_outbox o JOIN case_events e ON e.event_id = o.event_id"
    " WHERE o.destination = ? ORDER BY o.position LIMIT ?"
)


def _holds(column: str) -> str:
    """The JSON list in `column` (a fixed name) holds the parameter."""
    return f"EXISTS (SELECT 1 FROM json_each({column}) WHERE value = ?)"  # noqa: S608


_DIALECT = Dialect(mark="?", contains=_holds, when=time_text)


class _Write:
    """The change's rows, written by the SQLite writer in the record's transaction."""

    def __init__(self, prepared: Prepared) -> None:
        self.prepared = prepared

    def in_memory(self, index: int) -> None:
        raise TypeError("a SQLite case store is kept beside a SQLite audit store only")

    def in_sqlite(self, conn: Any, index: int) -> None:
        rows = self.prepared
        position = int(conn.execute(_NEXT_POSITION).fetchone()[0])
        added = conn.execute(_INSERT_EVENT, (*rows.event, position, index)).rowcount == 1
        if added and rows.destinations:  # an event held already owes no one anything new
            conn.executemany(
                _INSERT_OUTBOX, [(rows.event_id, where, position) for where in rows.destinations]
            )
        if rows.attachments:
            conn.executemany(_INSERT_ATTACHMENT, rows.attachments)
        conn.execute(_UPSERT_CASE, rows.summary)
        if rows.request is not None:
            conn.execute(_INSERT_REQUEST, rows.request)

    async def in_postgres(self, cursor: Any, index: int) -> None:
        raise TypeError("a SQLite case store is kept beside a SQLite audit store only")


class SqliteCaseStore:
    """A `CaseStore` in the SQLite file of `audit`'s `SqliteAuditStore`."""

    def __init__(self, audit: AuditLog) -> None:
        if not isinstance(audit.store, SqliteAuditStore):
            raise TypeError("a SQLite case store is kept beside a SQLite audit store only")
        self.audit = audit
        self._store: SqliteAuditStore = audit.store

    def exclusive(self, key: str) -> AbstractAsyncContextManager[None]:
        return one_process(key)  # one SQLite file has one writing process

    async def write(self, record: AuditRecord, change: CaseChange) -> Appended:
        prepared = prepare(change, time_text)  # ValueError here, before anything is appended
        return await self.audit.append(record, also=_Write(prepared))

    async def _read(self, read: Callable[[sqlite3.Connection], _T]) -> _T:
        reader = self._store._reads
        return await self.audit.read(lambda: reader.read(read))

    async def events(self, case_id: str) -> list[StoredEvent]:
        def read(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                f"{_EVENTS} WHERE case_id = ? ORDER BY position", (case_id,)
            ).fetchall()

        return [event_from_row(row) for row in await self._read(read)]

    async def summary(self, case_id: str) -> CaseSummary | None:
        def read(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                f"SELECT {SUMMARY_COLUMNS} FROM cases WHERE case_id = ?",  # noqa: S608
                (case_id,),
            ).fetchone()

        row = await self._read(read)
        return None if row is None else summary_from_row(row)

    async def cases(self, query: CaseQuery) -> list[CaseSummary]:
        where, params = case_filter(query, _DIALECT)
        statement = (
            f"SELECT {SUMMARY_COLUMNS} FROM cases WHERE {where}"  # noqa: S608 (fixed text)
            " ORDER BY updated_at DESC, case_id DESC LIMIT ?"
        )

        def read(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(statement, params).fetchall()

        return [summary_from_row(row) for row in await self._read(read)]

    async def request(self, agency: str, request_id: str) -> StoredRequest | None:
        def read(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                "SELECT event_id, case_id, digest FROM case_requests"
                " WHERE agency = ? AND request_id = ?",
                (agency, request_id),
            ).fetchone()

        row = await self._read(read)
        return None if row is None else StoredRequest(str(row[0]), str(row[1]), str(row[2]))

    async def attachment(self, sha256: str) -> StoredAttachment | None:
        def read(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                "SELECT sealed FROM case_attachments WHERE sha256 = ?", (sha256,)
            ).fetchone()

        row = await self._read(read)
        return None if row is None else StoredAttachment(sha256, bytes(row[0]))

    async def outbox(self, destination: str, limit: int) -> list[StoredEvent]:
        def read(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(_OUTBOX, (destination, count(limit))).fetchall()

        return [event_from_row(row) for row in await self._read(read)]

    async def delivered(self, destination: str, event_ids: list[str]) -> None:
        rows = [(destination, event_id) for event_id in event_ids]
        if not rows:
            return

        def remove(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM case_outbox WHERE destination = ? AND event_id = ?", rows)

        store = self._store
        await self.audit.read(lambda: store._submit(remove))

    async def outbox_backlog(self) -> dict[str, int]:
        def read(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT destination, count(*) FROM case_outbox"
                " GROUP BY destination ORDER BY destination"
            ).fetchall()

        return {str(where): int(count) for where, count in await self._read(read)}

    async def changes(self, after: int, limit: int) -> list[StoredEvent]:
        def read(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                f"{_EVENTS} WHERE position > ? ORDER BY position LIMIT ?",
                (count(after), count(limit)),
            ).fetchall()

        return [event_from_row(row) for row in await self._read(read)]

    async def overdue(self, now: datetime) -> dict[str, int]:
        params = (CaseState.OPEN.value, time_text(now))

        def read(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT matter_code, count(*) FROM cases WHERE state = ? AND due_at < ?"
                " GROUP BY matter_code ORDER BY matter_code",
                params,
            ).fetchall()

        return {str(matter): int(count) for matter, count in await self._read(read)}
