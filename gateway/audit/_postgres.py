"""The audit store in PostgreSQL, shared by the gateway replicas of one region.

Appends are queued in-process and committed in groups by one writer task. Each group is ONE
transaction that starts from the locked head row (``SELECT ... FROM head WHERE id = 1 FOR
UPDATE``), so replicas writing to the same schema are serialised by the database and never trust
a head they remember: indices are assigned from the locked row, leaf hashes and per-row roots
are computed with a `CompactRange`, the rows are copied in and the head is updated before the
commit. Any database error fails the group's appends with `AuditUnavailable` (fail closed); the
store reconnects by itself for the next group. An append whose commit was cut off may still have
been written (the database decides): the caller then releases nothing for a record the log
holds, never the other way round.


The tables, their migrations and grants, and how a region deploys them: `_postgres_schema`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from gateway.audit._checkpoint import Checkpoint
from gateway.audit._merkle import CompactRange, ProofError, leaf_hash
from gateway.audit._postgres_conn import DISCARD_SECONDS, cancel_twice, run_bounded, shut_down
from gateway.audit._postgres_outbox import PostgresOutbox
from gateway.audit._postgres_schema import (
    COLUMNS,
    GRANTS,
    MIGRATIONS,
    PARTITION_NAME,
    SCHEMA_VERSION,
    first_mismatch_sql,
    month_of,
    next_month,
    no_partition,
    query_filter,
    record_row,
)
from gateway.audit._record import AuditRecord
from gateway.audit._store import (
    MAX_PENDING_APPENDS,
    AlsoWrite,
    Appended,
    AuditQuery,
    Outbound,
    PruneMarker,
    StoredRow,
    TreeHead,
)
from gateway.audit.errors import AuditIntegrityError, AuditOutcomeUnknown, AuditUnavailable

__all__ = ["SCHEMA_VERSION", "PostgresAuditStore"]

log = logging.getLogger("tongban.audit.postgres")

_Connection = psycopg.AsyncConnection[TupleRow]
_Pending = tuple[AuditRecord, Outbound | None, AlsoWrite | None, "asyncio.Future[Appended]"]

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresAuditStore(PostgresOutbox):
    """An `AuditStore` in a PostgreSQL schema that several gateway replicas share."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "tongban_audit",
        max_batch: int = 512,
        owner_dsn: str | None = None,
        timeout: float = 10.0,
        max_pending: int = MAX_PENDING_APPENDS,
    ) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"the audit schema name {schema!r} is not a plain lower-case name")
        if max_batch < 1:
            raise ValueError("max_batch is at least 1")
        self._dsn = dsn
        self._owner_dsn = owner_dsn
        self.schema = schema
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._timeout = timeout
        self._s = sql.Identifier(schema)
        self._writer: _Connection | None = None
        self._reader: _Connection | None = None
        self._read_lock = asyncio.Lock()
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._months: set[date] = set()  # months known to have a partition
        self._committing = False  # the writer's current group is being committed
        self.commits = 0  # committed groups, for tests and metrics
        self.appended = 0  # records committed by this instance

    def _sql(self, text: str, **more: sql.Composable) -> sql.Composed:
        return sql.SQL(text).format(s=self._s, schema=sql.Literal(self.schema), **more)

    # -- connections -------------------------------------------------------------------------

    async def _connect(self, dsn: str) -> _Connection:
        conn = await psycopg.AsyncConnection.connect(
            dsn,
            autocommit=True,
            connect_timeout=max(1, round(self._timeout)),
            application_name="tongban-audit",
        )
        await conn.execute(
            "SELECT set_config('statement_timeout', %s, false)",
            [f"{int(self._timeout * 1000)}ms"],
        )
        return conn

    @staticmethod
    def _dead(conn: _Connection | None) -> bool:
        return conn is None or conn.closed or conn.broken

    @staticmethod
    async def _discard(conn: _Connection | None) -> None:
        """Close a connection; one whose server does not answer is given a second at most."""
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(DISCARD_SECONDS):
                    await conn.close()

    # -- open, migrate, close ----------------------------------------------------------------

    async def open(self) -> None:
        if self._task is not None:
            return
        try:
            reader = await self._connect(self._dsn)
            self._reader = reader
            cur = await reader.execute("SELECT current_user")
            app_role = str((await cur.fetchone() or ("",))[0])
            if self._owner_dsn is not None:
                async with await self._connect(self._owner_dsn) as owner:
                    await self._migrate(owner, app_role)
            elif await self._version(reader) != SCHEMA_VERSION:
                log.warning(
                    "audit schema %s migrated by the application role %s itself: it owns the "
                    "tables, so the log is not append-only against it (pass owner_dsn)",
                    self.schema,
                    app_role,
                )
                await self._migrate(reader, None)
            this_month = month_of(datetime.now(UTC))
            await self._ensure_months(reader, {this_month, next_month(this_month)})
            self._writer = await self._connect(self._dsn)
        except BaseException as exc:
            await self._discard(self._reader)
            await self._discard(self._writer)
            self._reader = self._writer = None
            if isinstance(exc, psycopg.Error):
                raise AuditUnavailable(f"the audit database is not available: {exc}") from exc
            raise
        self._closing = False
        self._task = asyncio.create_task(self._write_loop(), name="audit-postgres-writer")

    async def _version(self, conn: _Connection) -> int:
        exists = await conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", [f'"{self.schema}".schema_version']
        )
        if not (await exists.fetchone() or (False,))[0]:
            return 0
        cur = await conn.execute(
            self._sql("SELECT coalesce(max(version), 0) FROM {s}.schema_version")
        )
        return int((await cur.fetchone() or (0,))[0])

    async def _migrate(self, conn: _Connection, app_role: str | None) -> None:
        """Create or migrate the schema (as the owner when there is one); grant the app role."""
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",  # the lock ensure_month() takes
                [f"tongban_audit.ddl:{self.schema}"],
            )
            cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [self.schema])
            if await cur.fetchone() is None:  # CREATE ... IF NOT EXISTS needs CREATE on the db
                await conn.execute(self._sql("CREATE SCHEMA {s}"))
            await conn.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS {s}.schema_version ("
                    " version integer PRIMARY KEY,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
            )
            version = await self._version(conn)
            if version > SCHEMA_VERSION:
                raise AuditUnavailable(
                    f"the audit schema {self.schema} is at version {version}, newer than this "
                    f"gateway's {SCHEMA_VERSION}"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                await conn.execute(self._sql(MIGRATIONS[number - 1]))
                await conn.execute(
                    self._sql("INSERT INTO {s}.schema_version (version) VALUES (%s)"), [number]
                )
                log.info("audit schema %s migrated to version %d", self.schema, number)
            cur = await conn.execute("SELECT current_user")
            owner_role = str((await cur.fetchone() or ("",))[0])
            if app_role is not None and app_role != owner_role:
                await conn.execute(self._sql(GRANTS, app=sql.Identifier(app_role)))
            elif app_role is not None:
                log.warning(
                    "owner_dsn connects as the application role %s: the log is not "
                    "append-only against it",
                    app_role,
                )

    async def _ensure_months(self, conn: _Connection, months: set[date]) -> None:
        """Create the missing monthly partitions, each in its own short transaction."""
        for month in sorted(months - self._months):
            await conn.execute(self._sql("SELECT {s}.ensure_month(%s)"), [month])
            self._months.add(month)

    async def months(self) -> list[date]:
        """The months that have a partition."""
        rows = await self._run(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(%s)",
            [f'"{self.schema}".records'],
        )
        out = []
        for (name,) in rows:
            if match := PARTITION_NAME.fullmatch(name):
                out.append(date(int(match[1]), int(match[2]), 1))
        return sorted(out)

    async def close(self) -> None:
        """Commit what is queued, within the store's timeout: a database that does not answer
        (frozen, or a network that silently drops packets) does not hold the stop. What it did
        not commit by then is refused (`AuditUnavailable`, so nothing is released for it)."""
        if self._task is not None:
            self._closing = True
            self._queue.put_nowait(None)
            done, _ = await asyncio.wait({self._task}, timeout=self._timeout)
            if not done:
                log.error(
                    "audit: PostgreSQL did not commit the appends still queued within %g s of "
                    "the stop; they are refused",
                    self._timeout,
                )
                # Its connection shut down under it, the statement it waits on fails at once,
                # and the writer, closing, neither retries nor reconnects. (Not a cancellation:
                # psycopg would ask the silent server to cancel, blocking in older versions.)
                if self._writer is not None:
                    shut_down(self._writer)
                done, _ = await asyncio.wait({self._task}, timeout=DISCARD_SECONDS)
                if not done:
                    await cancel_twice(self._task)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._refuse_queued(AuditUnavailable("the audit store was closed before it took them"))
        await self._discard(self._writer)
        await self._discard(self._reader)
        self._writer = self._reader = None

    def _refuse_queued(self, error: AuditUnavailable) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None and not item[3].done():
                item[3].set_exception(error)

    # -- appends -------------------------------------------------------------------------------

    async def append(
        self, record: AuditRecord, outbound: Outbound | None = None, also: AlsoWrite | None = None
    ) -> Appended:
        if self._task is None or self._closing:
            raise AuditUnavailable("the PostgreSQL audit store is not open")
        if self._queue.qsize() >= self._max_pending:
            raise AuditUnavailable(
                f"{self._queue.qsize()} audit records are waiting for PostgreSQL to take them"
            )
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((record, outbound, also, future))
        return await future

    async def _write_loop(self) -> None:
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                appended = await self._write(
                    [(record, out, also) for record, out, also, _ in batch]
                )
            except asyncio.CancelledError:  # close() gave up on a database that does not answer
                error = (
                    AuditOutcomeUnknown(
                        "the audit store was closed while its commit was on its way"
                    )
                    if self._committing
                    else AuditUnavailable("the audit store was closed before it answered")
                )
                for _, _, _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                raise
            except Exception as exc:
                if not isinstance(exc, AuditUnavailable):
                    log.exception("audit batch failed")
                    exc = AuditUnavailable(f"the audit batch failed: {exc}")
                for _, _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, _, _, future), result in zip(batch, appended, strict=True):
                    if not future.done():
                        future.set_result(result)

    async def _write(
        self, records: Sequence[tuple[AuditRecord, Outbound | None, AlsoWrite | None]]
    ) -> list[Appended]:
        """Commit one group; retry once on a fresh connection if the old one was found dead
        before anything was committed."""
        for attempt in (1, 2):
            self._committing = False
            try:
                if self._closing and self._dead(self._writer):
                    raise AuditUnavailable("the audit store is closing: its connection is gone")
                if self._dead(self._writer):
                    await self._discard(self._writer)
                    self._writer = None
                    self._writer = await self._connect(self._dsn)
                conn = self._writer
                assert conn is not None
                await self._ensure_months(conn, {month_of(r.time) for r, _, _ in records})
                async with conn.transaction():
                    appended = await self._insert(conn, records)
                    self._committing = True  # leaving the block commits: the outcome may
                    # be unknown
            except psycopg.Error as exc:
                self._months.clear()  # a partition may have gone (retention): ask again
                dead = self._dead(self._writer)
                if dead:
                    await self._discard(self._writer)
                    self._writer = None
                if attempt == 1 and dead and not self._committing and not self._closing:
                    log.warning("audit database connection lost, reconnecting: %s", exc)
                    continue
                if attempt == 1 and no_partition(exc):  # rolled back: nothing was stored
                    log.info("audit partition gone (a retention prune), recreating: %s", exc)
                    continue
                if self._committing:
                    raise AuditOutcomeUnknown(
                        f"the audit commit got no answer, it may have been stored: {exc}"
                    ) from exc
                raise AuditUnavailable(f"the audit records were not stored: {exc}") from exc
            except ProofError as exc:
                raise AuditUnavailable(f"the stored audit head is malformed: {exc}") from exc
            else:
                self._committing = False
                self.commits += 1
                self.appended += len(records)
                return appended
        raise AssertionError("unreachable")  # pragma: no cover

    async def _insert(
        self,
        conn: _Connection,
        records: Sequence[tuple[AuditRecord, Outbound | None, AlsoWrite | None]],
    ) -> list[Appended]:
        cur = conn.cursor()
        await cur.execute(self._sql("SELECT size, compact FROM {s}.head WHERE id = 1 FOR UPDATE"))
        head = await cur.fetchone()
        if head is None:
            raise AuditUnavailable("the audit head row is missing")
        start = int(head[0])
        compact = CompactRange.from_bytes(start, bytes(head[1]))
        rows: list[tuple[Any, ...]] = []
        appended: list[Appended] = []
        outbound: list[tuple[Any, ...]] = []
        also: list[tuple[AlsoWrite, int]] = []
        for offset, (record, out, extra) in enumerate(records):
            if extra is not None:
                also.append((extra, start + offset))
            if out is not None:
                outbound.append((start + offset, out.destination, out.payload))
            leaf = leaf_hash(record.canonical)
            compact.append(leaf)
            appended.append(Appended(start + offset, leaf))
            rows.append(record_row(start + offset, record, leaf, compact.root()))
        copy_sql = self._sql(
            "COPY {s}.records ({columns}) FROM STDIN (FORMAT BINARY)",
            columns=sql.SQL(", ").join(sql.Identifier(name) for name, _ in COLUMNS),
        )
        async with cur.copy(copy_sql) as copy:
            copy.set_types([kind for _, kind in COLUMNS])
            for row in rows:
                await copy.write_row(row)
        if outbound:
            await cur.executemany(
                self._sql("INSERT INTO {s}.outbox (idx, destination, payload) VALUES (%s, %s, %s)"),
                outbound,
            )
        for write, index in also:
            await write.in_postgres(cur, index)
        await cur.execute(
            self._sql(
                "UPDATE {s}.head SET size = %s, compact = %s, updated_at = now() WHERE id = 1"
            ),
            [compact.size, compact.to_bytes()],
        )
        return appended

    # -- reads -------------------------------------------------------------------------------

    async def _run(self, query: str | sql.Composed, params: Sequence[Any] = ()) -> list[TupleRow]:
        """Run one statement on the reader connection (reads, checkpoints); reconnect and retry
        once if the connection was found dead."""
        async with self._read_lock:
            for attempt in (1, 2):
                try:
                    if self._dead(self._reader):
                        await self._discard(self._reader)
                        self._reader = None
                        self._reader = await self._connect(self._dsn)
                    conn = self._reader
                    assert conn is not None
                    return await run_bounded(conn, query, params, self._timeout)
                except psycopg.Error as exc:
                    if self._dead(self._reader):
                        await self._discard(self._reader)
                        self._reader = None
                        if attempt == 1:
                            continue
                    raise AuditUnavailable(f"the audit database is not available: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def head(self) -> TreeHead:
        rows = await self._run(self._sql("SELECT size, compact FROM {s}.head WHERE id = 1"))
        if not rows:
            raise AuditIntegrityError("the audit head row is missing")
        size = int(rows[0][0])
        try:
            return TreeHead(size, CompactRange.from_bytes(size, bytes(rows[0][1])).root())
        except ProofError as exc:
            raise AuditIntegrityError(f"the stored audit head is malformed: {exc}") from exc

    async def column_mismatches(self) -> int | None:
        found = await self._run(first_mismatch_sql(self.schema), [])
        return None if not found or found[0][0] is None else int(found[0][0])

    async def rows(self, start: int, end: int) -> list[StoredRow]:
        found = await self._run(
            self._sql(
                "SELECT idx, canonical, leaf_hash, root FROM {s}.records"
                " WHERE idx >= %s AND idx < %s ORDER BY idx"
            ),
            [max(start, 0), max(end, 0)],
        )
        return [StoredRow(int(i), bytes(c), bytes(h), bytes(r)) for i, c, h, r in found]

    async def query(self, query: AuditQuery) -> list[tuple[int, AuditRecord]]:
        where, params = query_filter(query)
        params.append(max(query.limit, 0))
        found = await self._run(
            self._sql(
                "SELECT idx, canonical FROM {s}.records WHERE {where} ORDER BY idx LIMIT %s",
                where=where,
            ),
            params,
        )
        out: list[tuple[int, AuditRecord]] = []
        for index, canonical in found:
            # The filter columns are copies: answer from the canonical bytes, and refuse to
            # answer from a row whose copies were edited to say something else.
            try:
                record = AuditRecord.from_canonical(bytes(canonical))
            except (ValueError, KeyError, TypeError) as exc:
                raise AuditIntegrityError(
                    f"record {index} is not a canonical audit record (run verify)"
                ) from exc
            if not query.matches(record):
                raise AuditIntegrityError(
                    f"record {index}'s columns do not match its canonical bytes (run verify)"
                )
            out.append((int(index), record))
        return out

    async def first_index_at_or_after(self, time: datetime) -> int:
        found = await self._run(
            self._sql(
                "SELECT coalesce((SELECT min(idx) FROM {s}.records WHERE time >= %s),"
                " (SELECT size FROM {s}.head WHERE id = 1))"
            ),
            [time],
        )
        if not found or found[0][0] is None:
            raise AuditIntegrityError("the audit head row is missing")
        return int(found[0][0])

    async def pruned(self) -> PruneMarker | None:
        found = await self._run(
            self._sql(
                "SELECT before, compact, pruned_at, operator, reason FROM {s}.prunes"
                " ORDER BY before DESC, id DESC LIMIT 1"
            )
        )
        if not found:
            return None
        before, compact, pruned_at, operator, reason = found[0]
        return PruneMarker(int(before), bytes(compact), pruned_at, str(operator), str(reason))

    async def prune(self, marker: PruneMarker) -> None:
        """Remove the records below the marker through ``prune_below()``, in one transaction on
        a connection of its own. Appends to other months go on meanwhile; dropping a whole
        month's partition waits for the parent's lock at most half the store's timeout (appends
        queue behind it), while the deletion itself may take as long as it needs."""
        try:
            async with await self._connect(self._dsn) as conn, conn.transaction():
                await conn.execute(
                    "SELECT set_config('statement_timeout', '0', true),"
                    " set_config('lock_timeout', %s, true)",
                    [f"{max(1, int(self._timeout * 500))}ms"],
                )
                cur = await conn.execute(
                    self._sql("SELECT {s}.prune_below(%s, %s, %s, %s, %s)"),
                    [
                        marker.before,
                        marker.compact,
                        marker.pruned_at,
                        marker.operator,
                        marker.reason,
                    ],
                )
                removed = (await cur.fetchone() or (0,))[0]
        except psycopg.Error as exc:
            raise AuditUnavailable(f"the audit records were not pruned: {exc}") from exc
        self._months.clear()  # whole months may have gone: ask before the next append
        log.info(
            "audit schema %s pruned below %d (%s records removed)",
            self.schema,
            marker.before,
            removed,
        )

    async def add_checkpoint(self, checkpoint: Checkpoint, signed_at: datetime) -> None:
        await self._run(
            self._sql(
                "INSERT INTO {s}.checkpoints (origin, size, root, key_name, note, signed_at,"
                " time_stamp) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            ),
            [
                checkpoint.origin,
                checkpoint.size,
                checkpoint.root,
                checkpoint.key_name,
                checkpoint.note,
                signed_at,
                checkpoint.time_stamp,
            ],
        )

    async def checkpoints(self) -> list[Checkpoint]:
        found = await self._run(
            self._sql(
                "SELECT origin, size, root, note, key_name, signed_at, time_stamp"
                " FROM {s}.checkpoints"
                " ORDER BY size, seq"
            )
        )
        return [
            Checkpoint(
                str(origin),
                int(size),
                bytes(root),
                str(note),
                str(key_name),
                signed_at.astimezone(UTC),
                bytes(stamp) if stamp is not None else None,
            )
            for origin, size, root, note, key_name, signed_at, stamp in found
        ]
