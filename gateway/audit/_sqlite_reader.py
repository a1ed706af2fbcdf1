"""The SQLite audit store's reads: a second connection (``query_only``) used from a worker
thread, so reads never block the event loop and never wait for the writer (WAL readers see the
last commit)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from gateway.audit._checkpoint import Checkpoint
from gateway.audit._record import AuditRecord
from gateway.audit._sqlite_schema import EQUALITY, QUERY_COLUMNS, blob, time_text
from gateway.audit._store import AuditQuery, Pending, PruneMarker, StoredRow
from gateway.audit.errors import AuditIntegrityError, AuditUnavailable

__all__ = ["SqliteReader"]

T = TypeVar("T")


class SqliteReader:
    """The reading connection of a `SqliteAuditStore` and the queries it runs."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def connect(self) -> None:
        """Open the connection (blocking: call it from a worker thread)."""
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA query_only = ON")
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            with self._lock:
                if self._conn is None:
                    raise AuditUnavailable(f"the audit store {self.path} is not open")
                try:
                    return fn(self._conn)
                except sqlite3.Error as exc:
                    raise AuditUnavailable(f"the audit database read failed: {exc}") from exc

        return await asyncio.to_thread(run)

    async def first_index_at_or_after(self, time: datetime) -> int | None:
        """The first index at or after `time` (None: no record is that late)."""

        def read(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT min(idx) FROM audit_records WHERE time >= ?", (time_text(time),)
            ).fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return await self.read(read)

    async def outbox(self, destination: str, limit: int) -> list[Pending]:
        def read(conn: sqlite3.Connection) -> list[Pending]:
            return [
                Pending(int(idx), blob(payload))
                for idx, payload in conn.execute(
                    "SELECT idx, payload FROM audit_outbox WHERE destination = ? AND idx > "
                    "coalesce((SELECT through FROM audit_outbox_cursor WHERE destination = ?), -1)"
                    " ORDER BY idx LIMIT ?",
                    (destination, destination, max(limit, 0)),
                )
            ]

        return await self.read(read)

    async def outbox_backlog(self) -> dict[str, int]:
        def read(conn: sqlite3.Connection) -> dict[str, int]:
            return {
                str(destination): int(count)
                for destination, count in conn.execute(
                    "SELECT destination, count(*) FROM audit_outbox"
                    " GROUP BY destination ORDER BY destination"
                )
            }

        return await self.read(read)

    async def pruned(self) -> PruneMarker | None:
        def read(conn: sqlite3.Connection) -> PruneMarker | None:
            row = conn.execute(
                "SELECT before, compact, pruned_at, operator, reason FROM audit_prunes ORDER BY before DESC LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            return PruneMarker(
                int(row[0]), blob(row[1]), datetime.fromisoformat(row[2]), str(row[3]), str(row[4])
            )

        return await self.read(read)

    async def rows(self, start: int, end: int) -> list[StoredRow]:
        start, end = max(start, 0), max(end, 0)
        if end <= start:
            return []

        def read(conn: sqlite3.Connection) -> list[StoredRow]:
            return [
                StoredRow(int(idx), blob(canonical), blob(leaf), blob(root))
                for idx, canonical, leaf, root in conn.execute(
                    "SELECT idx, canonical, leaf_hash, root FROM audit_records"
                    " WHERE idx >= ? AND idx < ? ORDER BY idx",
                    (start, end),
                )
            ]

        return await self.read(read)

    async def query(self, query: AuditQuery) -> list[tuple[int, AuditRecord]]:
        clauses = ["idx > ?"]
        params: list[object] = [query.after_index]
        for column in EQUALITY:
            value = getattr(query, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.outcome is not None:
            clauses.append("outcome = ?")
            params.append(query.outcome.value)
        if query.since is not None:
            clauses.append("time >= ?")
            params.append(time_text(query.since))
        if query.until is not None:
            clauses.append("time < ?")
            params.append(time_text(query.until))
        params.append(max(query.limit, 0))
        sql = (
            "SELECT idx, canonical FROM audit_records WHERE "  # noqa: S608 (fixed column names)
            + " AND ".join(clauses)
            + " ORDER BY idx LIMIT ?"
        )

        def read(conn: sqlite3.Connection) -> list[tuple[int, bytes]]:
            return [(int(idx), blob(canonical)) for idx, canonical in conn.execute(sql, params)]

        out: list[tuple[int, AuditRecord]] = []
        for index, canonical in await self.read(read):
            try:
                record = AuditRecord.from_canonical(canonical)
            except (ValueError, KeyError, TypeError) as exc:
                raise AuditIntegrityError(
                    f"record {index} is not a canonical audit record: verify the log"
                ) from exc
            if not query.matches(record):  # the filter columns say what the record does not
                raise AuditIntegrityError(
                    f"record {index}'s query columns disagree with the record: verify the log"
                )
            out.append((index, record))
        return out

    async def column_mismatches(self) -> int | None:
        def read(conn: sqlite3.Connection) -> int | None:
            checks = " OR ".join(
                f"{column} IS NOT json_extract(CAST(canonical AS TEXT), '$.{column}')"
                for column in QUERY_COLUMNS
            )
            row = conn.execute(f"SELECT min(idx) FROM audit_records WHERE {checks}").fetchone()  # noqa: S608 (fixed names)
            return None if row is None or row[0] is None else int(row[0])

        return await self.read(read)

    async def checkpoints(self) -> list[Checkpoint]:
        def read(conn: sqlite3.Connection) -> list[Checkpoint]:
            return [
                Checkpoint(
                    str(note).split("\n", 1)[0],
                    int(size),
                    blob(root),
                    str(note),
                    key,
                    datetime.fromisoformat(str(signed_at)).astimezone(UTC),
                    blob(stamp) if stamp is not None else None,
                )
                for size, root, note, key, signed_at, stamp in conn.execute(
                    "SELECT size, root, note, key_name, signed_at, time_stamp FROM audit_checkpoints"
                    " ORDER BY size, id"
                )
            ]

        return await self.read(read)
