"""The audit store in one SQLite file: WAL, `synchronous=FULL`, one writer thread, group commit.

`append()` adds the record to the loop's list of appends and awaits its future; the first
append of a loop iteration schedules one hand-off (`call_soon`) that gives the writer the whole
list at once (one queue put and one wake-up of the writer per iteration, not per record). The
writer thread takes everything waiting (at most `max_batch`), gives the records consecutive
indices from the compact range, inserts each row with its leaf hash and the root after it (one
pass over the batch: `CompactRange.append_all`), moves the head, and commits ONE transaction;
then it settles the batch's futures with one `call_soon_threadsafe`. An append
therefore returns only after its commit (and `synchronous=FULL` makes a WAL commit durable).
If anything fails, every append of the batch raises `AuditUnavailable`, the compact range goes
back to the committed head (so indices stay gapless), and later appends try again.

The columns oversight queries filter on (time, caller_agency, provider_region, purpose,
dataset, subject, outcome) are written beside the canonical bytes, and every record a query
returns is checked against them (`AuditIntegrityError` when they disagree): what a person
reads is always the Merkle leaf. (Generating the columns from the JSON in SQL cost ~60 µs per
row, most of the write path.) Triggers refuse UPDATE and DELETE of records, and UPDATE, DELETE
and INSERT-over-an-existing-row of checkpoints (append-only for the application; someone
holding the file can drop them: the signed checkpoints detect what the file allows).

Access reports owed to other regions (`Outbound`) go into `audit_outbox` in the same
transaction as their records; `audit_outbox_cursor` keeps, per destination, the last index it
acknowledged. The outbox is not evidence (the records are): delivered messages are deleted.

Reads use a second connection (`query_only`) in a worker thread, so they never block the event
loop and never wait for the writer (WAL readers see the last commit): `_sqlite_reader`. The
migrations: `_sqlite_schema`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit._checkpoint import Checkpoint
from gateway.audit._merkle import CompactRange, ProofError, leaf_hashes
from gateway.audit._record import AuditRecord
from gateway.audit._sqlite_reader import SqliteReader
from gateway.audit._sqlite_schema import (
    RECORDS_NO_DELETE,
    SCHEMA_VERSION,
    WRITER,
    blob,
    migrate,
)
from gateway.audit._store import (
    MAX_PENDING_APPENDS,
    AlsoWrite,
    Appended,
    AuditQuery,
    Outbound,
    Pending,
    PruneMarker,
    StoredRow,
    TreeHead,
)
from gateway.audit.errors import AuditIntegrityError, AuditOutcomeUnknown, AuditUnavailable

__all__ = ["SCHEMA_VERSION", "SqliteAuditStore"]

log = logging.getLogger("tongban.audit")

_INSERT = (
    "INSERT INTO audit_records (idx, time, caller_agency, provider_region, purpose, dataset, "
    "subject, outcome, canonical, leaf_hash, root) VALUES "
)
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_ROWS = 90  # rows per INSERT statement: 990 parameters, under SQLite's oldest limit (999)
_MOVE_HEAD = "UPDATE audit_head SET size = ?, compact = ? WHERE id = 1"
_INSERT_OUTBOUND = "INSERT INTO audit_outbox (idx, destination, payload) VALUES (?, ?, ?)"
_ACKNOWLEDGE = (
    "INSERT INTO audit_outbox_cursor (destination, through, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (destination) DO UPDATE SET through = max(through, excluded.through),"
    " updated_at = excluded.updated_at"
)


@dataclass(slots=True)
class _Append:
    record: AuditRecord
    future: asyncio.Future[Appended]
    outbound: Outbound | None = None
    also: AlsoWrite | None = None


@dataclass(slots=True)
class _Job:
    """Any other write, run by the writer in its own transaction (checkpoints)."""

    run: Callable[[sqlite3.Connection], None]
    future: asyncio.Future[None]


class _Stop:
    """Queued by close(): everything queued before it is committed, then the writer ends."""


_STOP = _Stop()

_Outcome = tuple[asyncio.Future[Any], object]  # (future, result or exception)


def _resolve(outcomes: list[_Outcome]) -> None:
    """On the event loop: resolve a batch's futures (those whose awaiter gave up are skipped)."""
    for future, outcome in outcomes:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class SqliteAuditStore:
    """An `AuditStore` in one SQLite file (WAL, `synchronous=FULL`), with group commit.

    `commits` counts the transactions that committed appended records, `appended` the records
    they held and `largest_batch` the most in one: with many concurrent appenders `appended /
    commits` is the group-commit factor.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_batch: int = 512,
        busy_timeout: float = 5.0,
        max_pending: int = MAX_PENDING_APPENDS,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch is at least 1")
        self.path = Path(path)
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.busy_timeout = busy_timeout
        self.commits = 0
        self.appended = 0
        self.largest_batch = 0
        self.failed_batches = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: queue.SimpleQueue[list[_Append] | _Job | _Stop] = queue.SimpleQueue()
        # Appends of this loop iteration, handed to the writer together by `_hand_over`.
        self._appends: list[_Append] = []
        self._given = 0  # records handed over or about to be (the loop's count)
        self._taken = 0  # records the writer took into a batch (the writer's count)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._range = CompactRange()  # the committed head's; the writer thread's own after open
        self._head = TreeHead(0, self._range.root())
        self._reads = SqliteReader(self.path, busy_timeout)

    # lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._closing = False
        self._queue = queue.SimpleQueue()
        self._appends = []
        self._given = self._taken = 0
        thread = threading.Thread(
            target=self._writer, args=(ready,), name=f"audit-writer:{self.path.name}", daemon=True
        )
        thread.start()
        try:
            await ready
            await asyncio.to_thread(self._reads.connect)
        except BaseException:
            self._queue.put(_STOP)
            await asyncio.to_thread(thread.join)
            raise
        self._thread = thread

    async def close(self) -> None:
        """Commit everything queued so far, stop the writer, close both connections."""
        thread = self._thread
        if thread is None:
            return
        self._closing = True  # appends from now on are refused; those queued are committed
        self._hand_over()
        self._queue.put(_STOP)
        await asyncio.to_thread(thread.join)
        await asyncio.sleep(0)  # let the last batch's settlement run before we return
        self._reads.close()
        self._thread = None

    # writing ---------------------------------------------------------------------------------
    async def append(
        self, record: AuditRecord, outbound: Outbound | None = None, also: AlsoWrite | None = None
    ) -> Appended:
        loop = self._admit(1)
        future: asyncio.Future[Appended] = loop.create_future()
        appends = self._appends
        appends.append(_Append(record, future, outbound, also))
        self._given += 1
        if len(appends) == 1:
            loop.call_soon(self._hand_over)
        return await future

    def append_many(self, records: Sequence[AuditRecord]) -> list[asyncio.Future[Appended]]:
        """`append` of each record (no outbound message, no rows kept with it), without a
        coroutine each: the futures of their appends, in order (`AuditLog.append_all`). All or
        none are taken (`AuditUnavailable`); each is committed as an `append`'s would be."""
        loop = self._admit(len(records))
        futures: list[asyncio.Future[Appended]] = [loop.create_future() for _ in records]
        appends = self._appends
        if futures and not appends:
            loop.call_soon(self._hand_over)
        appends.extend(
            _Append(record, future) for record, future in zip(records, futures, strict=True)
        )
        self._given += len(futures)
        return futures

    def _admit(self, count: int) -> asyncio.AbstractEventLoop:
        """The loop to settle `count` more appends on; or `AuditUnavailable` when the store is
        not open, its writer stopped, or `max_pending` appends would be waiting for it."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or self._closing:
            raise AuditUnavailable(f"the audit store {self.path} is not open")
        if not thread.is_alive():
            raise AuditUnavailable(f"the audit writer of {self.path} has stopped")
        waiting = self._given - self._taken
        if waiting + count > self.max_pending:
            raise AuditUnavailable(
                f"{waiting} audit records are waiting for the writer of {self.path}"
            )
        return loop

    def _hand_over(self) -> None:
        """On the loop: give the writer every append of this iteration in one queue item."""
        appends = self._appends
        if appends:
            self._appends = []
            self._queue.put(appends)

    async def _submit(self, run: Callable[[sqlite3.Connection], None]) -> None:
        """Run a write on the writer thread in its own transaction and wait for it."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or self._closing or not thread.is_alive():
            raise AuditUnavailable(f"the audit store {self.path} is not open")
        future: asyncio.Future[None] = loop.create_future()
        self._hand_over()  # the appends made before this write are committed before it
        self._queue.put(_Job(run, future))
        await future

    async def add_checkpoint(self, checkpoint: Checkpoint, signed_at: datetime) -> None:
        row = (
            checkpoint.size,
            checkpoint.root,
            checkpoint.note,
            checkpoint.key_name,
            signed_at.astimezone(UTC).isoformat(),
            checkpoint.time_stamp,
        )

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO audit_checkpoints (size, root, note, key_name, signed_at, time_stamp)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )

        await self._submit(insert)

    async def first_index_at_or_after(self, time: datetime) -> int:
        found = await self._reads.first_index_at_or_after(time)
        return self._head.size if found is None else found

    async def prune(self, marker: PruneMarker) -> None:
        """Delete the records below the marker in one transaction that lifts the append-only
        trigger and puts it back: no other writer (the writer thread is this) sees it lifted."""

        def remove(conn: sqlite3.Connection) -> None:
            previous = conn.execute("SELECT max(before) FROM audit_prunes").fetchone()[0]
            if previous is not None and marker.before <= previous:
                raise AuditIntegrityError(f"the log was already pruned below {previous}")
            if marker.before > self._range.size:
                raise AuditIntegrityError(
                    f"the log has {self._range.size} records, not {marker.before}"
                )
            conn.execute("DROP TRIGGER audit_records_no_delete")
            conn.execute("DELETE FROM audit_records WHERE idx < ?", (marker.before,))
            conn.execute(RECORDS_NO_DELETE)
            conn.execute(
                "INSERT INTO audit_prunes (before, compact, pruned_at, operator, reason) VALUES (?, ?, ?, ?, ?)",
                (
                    marker.before,
                    marker.compact,
                    marker.pruned_at.astimezone(UTC).isoformat(),
                    marker.operator,
                    marker.reason,
                ),
            )

        await self._submit(remove)

    # the outbox ------------------------------------------------------------------------------
    async def outbox(self, destination: str, limit: int) -> list[Pending]:
        return await self._reads.outbox(destination, limit)

    async def outbox_backlog(self) -> dict[str, int]:
        return await self._reads.outbox_backlog()

    async def acknowledge(self, destination: str, through: int) -> None:
        at = datetime.now(UTC).isoformat()

        def move(conn: sqlite3.Connection) -> None:
            conn.execute(_ACKNOWLEDGE, (destination, through, at))
            conn.execute(
                "DELETE FROM audit_outbox WHERE destination = ? AND idx <= ?",
                (destination, through),
            )

        await self._submit(move)

    async def withdraw(self, index: int) -> bool:
        removed: list[int] = []

        def remove(conn: sqlite3.Connection) -> None:
            removed.append(
                conn.execute("DELETE FROM audit_outbox WHERE idx = ?", (index,)).rowcount
            )

        await self._submit(remove)
        return bool(removed and removed[0])

    async def pruned(self) -> PruneMarker | None:
        return await self._reads.pruned()

    # the writer thread -----------------------------------------------------------------------
    def _writer(self, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect_writer()
        except Exception as exc:
            self._settle([(ready, self._open_error(exc))])
            return
        try:
            try:
                migrate(conn, self.path, SCHEMA_VERSION)
                self._range = self._load_head(conn)
                self._head = TreeHead(self._range.size, self._range.root())
            except Exception as exc:
                self._settle([(ready, self._open_error(exc))])
                return
            self._settle([(ready, None)])
            self._serve(conn)
        finally:
            conn.close()

    def _open_error(self, exc: Exception) -> Exception:
        if isinstance(exc, AuditUnavailable | AuditIntegrityError):
            return exc
        error = AuditUnavailable(f"cannot open the audit database {self.path}: {exc}")
        error.__cause__ = exc
        return error

    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            self._require_wal(conn)
            for pragma in WRITER:  # synchronous = FULL among them
                conn.execute(f"PRAGMA {pragma}")
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _require_wal(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise AuditUnavailable(
                f"the audit database {self.path} cannot use write-ahead logging (journal mode {mode})"
            )

    def _load_head(self, conn: sqlite3.Connection) -> CompactRange:
        row = conn.execute("SELECT size, compact FROM audit_head WHERE id = 1").fetchone()
        if row is None:
            raise AuditIntegrityError(f"the audit database {self.path} has no tree head")
        try:
            return CompactRange.from_bytes(int(row[0]), blob(row[1]))
        except (ProofError, TypeError, ValueError) as exc:
            raise AuditIntegrityError(
                f"the tree head stored in {self.path} is malformed: {exc}"
            ) from exc

    def _serve(self, conn: sqlite3.Connection) -> None:
        held: _Job | _Stop | None = None  # an item taken while gathering, run next
        appends: deque[_Append] = deque()  # taken, not yet committed (beyond max_batch)
        while True:
            if not appends:
                item = held if held is not None else self._queue.get()
                held = None
                if isinstance(item, _Stop):
                    return  # close(): everything queued before it has been committed
                if isinstance(item, _Job):
                    self._run_job(conn, item)
                    continue
                appends.extend(item)
            while len(appends) < self.max_batch and held is None:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(following, list):
                    appends.extend(following)
                else:
                    held = following
            count = min(len(appends), self.max_batch)
            batch = [appends.popleft() for _ in range(count)]
            self._taken += count
            self._commit(conn, batch)

    def _commit(self, conn: sqlite3.Connection, batch: Sequence[_Append]) -> None:
        compact = CompactRange(self._range.size, self._range.hashes)  # a copy
        outcomes: list[_Outcome] = []
        try:
            records = [item.record for item in batch]
            first = compact.size
            leaves = leaf_hashes([record.canonical for record in records])
            roots = compact.append_all(leaves)
            rows: list[tuple[object, ...]] = [
                (
                    first + n,
                    record.time_text,
                    record.caller_agency,
                    record.provider_region,
                    record.purpose,
                    record.dataset,
                    record.subject,
                    record.outcome.value,
                    record.canonical,
                    leaves[n],
                    roots[n],
                )
                for n, record in enumerate(records)
            ]
            outbound: list[tuple[object, ...]] = []
            also: list[tuple[AlsoWrite, int]] = []
            for n, item in enumerate(batch):
                outcomes.append((item.future, Appended(first + n, leaves[n])))
                if item.outbound is not None:
                    outbound.append((first + n, item.outbound.destination, item.outbound.payload))
                if item.also is not None:
                    also.append((item.also, first + n))
            self._write(conn, rows, compact, outbound, also)
        except Exception as exc:
            committed = self._rollback(conn)
            if committed is not None and (committed.size, committed.root()) == (
                compact.size,
                compact.root(),
            ):
                # The COMMIT reported an error, and yet the file holds the batch: durable.
                log.warning(
                    "audit commit of %d records reported %s, yet it is durable", len(batch), exc
                )
                self._committed(compact, len(batch))
                self._settle(outcomes)
                return
            self.failed_batches += 1
            log.exception("audit commit of %d records failed", len(batch))
            kind = AuditUnavailable if committed is not None else AuditOutcomeUnknown
            outcomes = []
            for item in batch:
                error = kind(f"the audit record could not be made durable: {exc}")
                error.__cause__ = exc
                outcomes.append((item.future, error))
        else:
            self._committed(compact, len(batch))
        self._settle(outcomes)

    def _write(
        self,
        conn: sqlite3.Connection,
        rows: list[tuple[object, ...]],
        compact: CompactRange,
        outbound: Sequence[tuple[object, ...]] = (),
        also: Sequence[tuple[AlsoWrite, int]] = (),
    ) -> None:
        """One transaction: the rows, their outbound messages, the rows kept with them (`also`)
        and the head that covers them."""
        conn.execute("BEGIN IMMEDIATE")
        # Many rows per statement: one step (one release of the GIL) instead of one per row.
        for at in range(0, len(rows), _INSERT_ROWS):
            chunk = rows[at : at + _INSERT_ROWS]
            conn.execute(
                _INSERT + ", ".join([_ROW] * len(chunk)),
                [value for row in chunk for value in row],
            )
        if outbound:
            conn.executemany(_INSERT_OUTBOUND, outbound)
        for write, index in also:
            write.in_sqlite(conn, index)
        if conn.execute(_MOVE_HEAD, (compact.size, compact.to_bytes())).rowcount != 1:
            raise AuditIntegrityError("the audit head row is missing")
        conn.execute("COMMIT")

    def _rollback(self, conn: sqlite3.Connection) -> CompactRange | None:
        """Undo a failed transaction and go back to the head that is really committed (which
        it returns; None when it cannot be read: what was committed is then unknown)."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("audit rollback failed")
        if conn.in_transaction:
            return None  # keep the head from before the batch; the next BEGIN fails loudly
        try:  # a COMMIT that reported an error may still have committed: trust the file
            committed = self._load_head(conn)
        except Exception:
            log.exception("cannot re-read the audit head after a failed commit")
            return None
        if committed.size != self._range.size:
            log.warning(
                "audit head is %d after a failed commit (expected %d)",
                committed.size,
                self._range.size,
            )
        self._range = committed
        self._head = TreeHead(committed.size, committed.root())
        return committed

    def _committed(self, compact: CompactRange, records: int) -> None:
        """The writer's view after a batch of `records` became durable."""
        self._range = compact
        self._head = TreeHead(compact.size, compact.root())
        self.commits += 1
        self.appended += records
        self.largest_batch = max(self.largest_batch, records)

    def _run_job(self, conn: sqlite3.Connection, job: _Job) -> None:
        outcome: object = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            job.run(conn)
            conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            error = AuditUnavailable(f"the audit database write failed: {exc}")
            error.__cause__ = exc
            outcome = error
        self._settle([(job.future, outcome)])

    def _settle(self, outcomes: list[_Outcome]) -> None:
        """From the writer thread: one hop to the loop for the whole batch."""
        if not outcomes or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(_resolve, outcomes)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            log.warning(
                "audit results for %d writes dropped: the event loop is closed", len(outcomes)
            )

    # reading ---------------------------------------------------------------------------------
    async def head(self) -> TreeHead:
        if self._thread is None:
            raise AuditUnavailable(f"the audit store {self.path} is not open")
        return self._head

    async def rows(self, start: int, end: int) -> list[StoredRow]:
        return await self._reads.rows(start, end)

    async def query(self, query: AuditQuery) -> list[tuple[int, AuditRecord]]:
        return await self._reads.query(query)

    async def column_mismatches(self) -> int | None:
        return await self._reads.column_mismatches()

    async def checkpoints(self) -> list[Checkpoint]:
        return await self._reads.checkpoints()
