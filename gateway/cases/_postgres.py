"""The case store in the PostgreSQL audit schema (tables: gateway/audit/_postgres_schema.py,
migration 6).

A change is written by the audit store's writer inside the transaction of its record
(`AlsoWrite.in_postgres`), which holds the lock of the log's head row: every replica's appends
to the schema are serialised there, so an event's `position` is the largest held plus one,
gapless and in commit order across replicas (what `Watch` follows with `changes`). Reads, and
marking events delivered (one statement, its own transaction), run on the audit store's reader
connection, through `AuditLog.read` (bounded, and refused at once while the audit store's
breaker is open).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from gateway.audit import (
    Appended,
    AuditLog,
    AuditRecord,
    AuditUnavailable,
    PostgresAuditStore,
    run_in_schema,
)
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
    utc,
)
from gateway.cases._store import (
    CaseChange,
    CaseQuery,
    CaseSummary,
    StoredAttachment,
    StoredEvent,
    StoredRequest,
)

__all__ = ["PostgresCaseStore"]

_NEXT_POSITION = "SELECT coalesce(max(position), 0) + 1 FROM {s}.case_events"
_INSERT_EVENT = (
    f"INSERT INTO {{s}}.case_events ({EVENT_COLUMNS}, audit_idx)"  # noqa: S608 (fixed column names)
    " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING"
)
_INSERT_OUTBOX = (
    "INSERT INTO {s}.case_outbox (event_id, destination, position) VALUES (%s, %s, %s)"
    " ON CONFLICT (event_id, destination) DO NOTHING"
)
_INSERT_ATTACHMENT = (
    "INSERT INTO {s}.case_attachments (sha256, sealed) VALUES (%s, %s)"
    " ON CONFLICT (sha256) DO NOTHING"
)
_UPSERT_CASE = (
    f"INSERT INTO {{s}}.cases ({SUMMARY_COLUMNS})"  # noqa: S608 (fixed column names)
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb)"
    " ON CONFLICT (case_id) DO UPDATE SET matter_code = excluded.matter_code,"
    " window_region = excluded.window_region, window_agency = excluded.window_agency,"
    " applicant = excluded.applicant, state = excluded.state,"
    " submitted_at = excluded.submitted_at, due_at = excluded.due_at,"
    " updated_at = excluded.updated_at, agencies = excluded.agencies,"
    " ready_regions = excluded.ready_regions, handling = excluded.handling"
)
_INSERT_REQUEST = (
    "INSERT INTO {s}.case_requests (agency, request_id, event_id, case_id, digest)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (agency, request_id) DO NOTHING"
)
_EVENTS = f"SELECT {EVENT_COLUMNS} FROM {{s}}.case_events"  # noqa: S608 (fixed column names)
_OUTBOX = (
    f"SELECT {OUTBOX_EVENT_COLUMNS}"  # noqa: S608 (fixed column names)
    " FROM {s}.case_outbox o JOIN {s}.case_events e ON e.event_id = o.event_id"
    " WHERE o.destination = %s ORDER BY o.position LIMIT %s"
)
_DIALECT = Dialect(
    mark="%s",
    contains=lambda column: f"{column} @> jsonb_build_array(%s::text)",
    when=utc,
)


class _Write:
    """The change's rows, written by the PostgreSQL writer in the record's transaction."""

    def __init__(self, store: PostgresAuditStore, prepared: Prepared) -> None:
        self.store, self.prepared = store, prepared

    def in_memory(self, index: int) -> None:
        raise TypeError("a PostgreSQL case store is kept beside a PostgreSQL audit store only")

    def in_sqlite(self, conn: Any, index: int) -> None:
        raise TypeError("a PostgreSQL case store is kept beside a PostgreSQL audit store only")

    async def in_postgres(self, cursor: Any, index: int) -> None:
        rows, q = self.prepared, self.store._sql
        await cursor.execute(q(_NEXT_POSITION))  # the head row's lock is held: no one else adds
        position = int((await cursor.fetchone())[0])
        await cursor.execute(q(_INSERT_EVENT), [*rows.event, position, index])
        if cursor.rowcount == 1 and rows.destinations:  # an event held already owes nothing new
            await cursor.executemany(
                q(_INSERT_OUTBOX), [(rows.event_id, where, position) for where in rows.destinations]
            )
        if rows.attachments:
            await cursor.executemany(q(_INSERT_ATTACHMENT), rows.attachments)
        await cursor.execute(q(_UPSERT_CASE), rows.summary)
        if rows.request is not None:
            await cursor.execute(q(_INSERT_REQUEST), rows.request)


class PostgresCaseStore:
    """A `CaseStore` in the schema of `audit`'s `PostgresAuditStore`."""

    def __init__(self, audit: AuditLog) -> None:
        if not isinstance(audit.store, PostgresAuditStore):
            raise TypeError("a PostgreSQL case store is kept beside a PostgreSQL audit store only")
        self.audit = audit
        self._store: PostgresAuditStore = audit.store
        self._locker: Any = None  # the connection that holds this process's case locks
        self._locking = asyncio.Lock()
        audit.closers.append(self._drop_locker)

    @contextlib.asynccontextmanager
    async def exclusive(self, key: str) -> AsyncIterator[None]:
        """A session advisory lock on `key` (its SHA-256's first 8 bytes), on a connection of
        its own, waited for at most the store's statement timeout; the lock goes with the
        connection if this process dies. One key at a time per process (the book's lock)."""
        number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        async with self._locking:
            conn = await self._lock_connection()
            try:
                await conn.execute("SELECT pg_advisory_lock(%s)", [number])
            except (psycopg.Error, OSError) as exc:
                await self._drop_locker()
                raise AuditUnavailable(f"the case lock was not taken: {exc}") from exc
            try:
                yield
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock(%s)", [number])
                except (psycopg.Error, OSError):
                    await self._drop_locker()  # closing the session releases its locks

    async def _lock_connection(self) -> Any:
        if self._locker is None or self._locker.closed or self._locker.broken:
            await self._drop_locker()
            try:
                self._locker = await self._store._connect(self._store._dsn)
            except (psycopg.Error, OSError) as exc:
                raise AuditUnavailable(f"no connection for the case lock: {exc}") from exc
        return self._locker

    async def _drop_locker(self) -> None:
        conn, self._locker = self._locker, None
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await conn.close()

    async def write(self, record: AuditRecord, change: CaseChange) -> Appended:
        prepared = prepare(change, utc)  # ValueError here, before anything is appended
        return await self.audit.append(record, also=_Write(self._store, prepared))

    async def _run(self, text: str, params: Sequence[Any] = ()) -> list[TupleRow]:
        return await run_in_schema(self.audit, text, params)  # `prepare` refuses a NUL

    async def events(self, case_id: str) -> list[StoredEvent]:
        found = await self._run(f"{_EVENTS} WHERE case_id = %s ORDER BY position", [case_id])
        return [event_from_row(row) for row in found]

    async def summary(self, case_id: str) -> CaseSummary | None:
        found = await self._run(
            f"SELECT {SUMMARY_COLUMNS} FROM {{s}}.cases WHERE case_id = %s",  # noqa: S608
            [case_id],
        )
        return summary_from_row(found[0]) if found else None

    async def cases(self, query: CaseQuery) -> list[CaseSummary]:
        where, params = case_filter(query, _DIALECT)
        found = await self._run(
            f"SELECT {SUMMARY_COLUMNS} FROM {{s}}.cases WHERE {where}"  # noqa: S608 (fixed text)
            " ORDER BY updated_at DESC, case_id DESC LIMIT %s",
            params,
        )
        return [summary_from_row(row) for row in found]

    async def request(self, agency: str, request_id: str) -> StoredRequest | None:
        found = await self._run(
            "SELECT event_id, case_id, digest FROM {s}.case_requests"
            " WHERE agency = %s AND request_id = %s",
            [agency, request_id],
        )
        if not found:
            return None
        event_id, case_id, digest = found[0]
        return StoredRequest(str(event_id), str(case_id), str(digest))

    async def attachment(self, sha256: str) -> StoredAttachment | None:
        found = await self._run(
            "SELECT sealed FROM {s}.case_attachments WHERE sha256 = %s", [sha256]
        )
        return StoredAttachment(sha256, bytes(found[0][0])) if found else None

    async def outbox(self, destination: str, limit: int) -> list[StoredEvent]:
        found = await self._run(_OUTBOX, [destination, count(limit)])
        return [event_from_row(row) for row in found]

    async def delivered(self, destination: str, event_ids: list[str]) -> None:
        if event_ids:
            await self._run(
                "DELETE FROM {s}.case_outbox WHERE destination = %s AND event_id = ANY(%s)",
                [destination, list(event_ids)],
            )

    async def outbox_backlog(self) -> dict[str, int]:
        found = await self._run(
            "SELECT destination, count(*) FROM {s}.case_outbox"
            " GROUP BY destination ORDER BY destination"
        )
        return {str(where): int(n) for where, n in found}

    async def changes(self, after: int, limit: int) -> list[StoredEvent]:
        found = await self._run(
            f"{_EVENTS} WHERE position > %s ORDER BY position LIMIT %s",
            [count(after), count(limit)],
        )
        return [event_from_row(row) for row in found]

    async def overdue(self, now: datetime) -> dict[str, int]:
        found = await self._run(
            "SELECT matter_code, count(*) FROM {s}.cases WHERE state = %s AND due_at < %s"
            " GROUP BY matter_code ORDER BY matter_code",
            [CaseState.OPEN.value, utc(now)],
        )
        return {str(matter): int(n) for matter, n in found}
