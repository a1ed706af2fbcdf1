"""The SQLite audit store: the store contract, group commit, append-only triggers, the schema,
failures that must not leave a gap, no raw subject ids on disk, and tampering with the file by
someone who drops the triggers first, detected by `AuditLog.verify()` with the index named."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from audit_contract import KEY, check_outbox_contract, check_store_contract, make_record
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit import _sqlite
from gateway.audit._checkpoint import Checkpoint
from gateway.audit._log import AuditLog, Verification
from gateway.audit._merkle import CompactRange, leaf_hash
from gateway.audit._record import AuditRecord, Outcome, pseudonymize
from gateway.audit._sqlite import SCHEMA_VERSION, SqliteAuditStore
from gateway.audit._store import AuditQuery, Outbound
from gateway.audit.errors import AuditIntegrityError, AuditUnavailable

ORIGIN = "audit.test/510000"
KEY_NAME = "audit-510000"
SIGNING_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
RAW_ID = "110105194912310021"


def _log(store: SqliteAuditStore) -> AuditLog:
    return AuditLog(store, origin=ORIGIN, key=SIGNING_KEY, key_name=KEY_NAME)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


async def _fill(path: Path, n: int = 30, *, checkpoint: bool = True) -> Checkpoint | None:
    """n records at indices 0..n-1 (record i at index i), then a signed checkpoint."""
    store = SqliteAuditStore(path)
    await store.open()
    for i in range(n):
        assert (await store.append(make_record(i))).index == i
    kept = await _log(store).checkpoint() if checkpoint else None
    await store.close()
    return kept


async def _verify(path: Path, trusted: Checkpoint | None = None) -> Verification:
    store = SqliteAuditStore(path)
    await store.open()
    try:
        return await _log(store).verify(trusted)
    finally:
        await store.close()


@contextlib.contextmanager
def _raw(path: Path, *, drop_triggers: bool = False) -> Iterator[sqlite3.Connection]:
    """The file opened by hand; with `drop_triggers`, as someone who can edit it at will."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        if drop_triggers:
            names = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            for (name,) in names.fetchall():
                conn.execute(f"DROP TRIGGER {name}")
        yield conn
    finally:
        conn.close()


# the contract and group commit -----------------------------------------------------------------
async def test_sqlite_store_meets_the_contract(db: Path) -> None:
    await check_store_contract(lambda: SqliteAuditStore(db))


async def test_sqlite_store_keeps_the_outbox(db: Path) -> None:
    await check_outbox_contract(lambda: SqliteAuditStore(db))


async def test_concurrent_appends_are_committed_together(db: Path) -> None:
    store = SqliteAuditStore(db)
    await store.open()
    await store.append(make_record(0))
    before = store.commits
    appended = await asyncio.gather(*(store.append(make_record(i)) for i in range(1, 65)))
    assert sorted(a.index for a in appended) == list(range(1, 65))
    assert store.commits - before <= 8, store.commits - before  # typically 2
    assert store.largest_batch >= 8
    await store.close()


async def test_a_batch_holds_at_most_max_batch_records(db: Path) -> None:
    store = SqliteAuditStore(db, max_batch=4)
    await store.open()
    await asyncio.gather(*(store.append(make_record(i)) for i in range(64)))
    assert store.largest_batch <= 4
    assert store.commits >= 16
    assert (await store.head()).size == 64
    await store.close()


async def test_close_commits_what_is_queued_and_then_refuses(db: Path) -> None:
    store = SqliteAuditStore(db)
    await store.open()
    tasks = [asyncio.create_task(store.append(make_record(i))) for i in range(100)]
    await asyncio.sleep(0)  # every task has queued its record
    await store.close()
    assert sorted(a.index for a in await asyncio.gather(*tasks)) == list(range(100))
    with pytest.raises(AuditUnavailable, match="not open"):
        await store.append(make_record(100))
    assert (await _verify(db)).intact


# schema ----------------------------------------------------------------------------------------
async def test_the_schema_is_created_with_its_indexes_and_triggers(db: Path) -> None:
    store = SqliteAuditStore(db)
    await store.open()
    await store.close()
    with _raw(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
        assert {
            "audit_records",
            "audit_head",
            "audit_checkpoints",
            "audit_records_subject",
            "audit_records_caller_time",
            "audit_records_provider_time",
            "audit_records_purpose",
            "audit_records_time",
            "audit_records_no_update",
            "audit_records_no_delete",
        } <= names
        plan = " ".join(
            str(row[-1])
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT idx FROM audit_records"
                " WHERE subject = ? AND idx > ? ORDER BY idx LIMIT 10",
                ("x", -1),
            )
        )
        assert "INDEX audit_records_subject" in plan


async def test_the_writer_commits_durably_and_checkpoints_the_wal(db: Path) -> None:
    """`synchronous = FULL` (a WAL commit is durable when it returns), and the WAL copied into
    the file once past its bound: nothing is lost across a reopen without a checkpoint."""
    store = SqliteAuditStore(db)
    await store.open()
    conn = store._connect_writer()  # configured as the writer thread's connection is
    try:
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (4000,)
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    finally:
        conn.close()
    for i in range(5):
        await store.append(make_record(i))
    await store.close()
    with _raw(db) as raw:
        assert raw.execute("SELECT count(*) FROM audit_records").fetchone() == (5,)


async def test_a_newer_schema_version_is_refused(db: Path) -> None:
    await _fill(db, 3, checkpoint=False)
    with _raw(db) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    store = SqliteAuditStore(db)
    with pytest.raises(AuditUnavailable, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        await store.open()
    with pytest.raises(AuditUnavailable, match="not open"):
        await store.append(make_record(3))


async def test_a_file_with_foreign_audit_tables_is_refused(db: Path) -> None:
    with _raw(db) as conn:
        conn.execute("CREATE TABLE audit_records (idx INTEGER PRIMARY KEY)")
    with pytest.raises(AuditUnavailable, match="no schema_version"):
        await SqliteAuditStore(db).open()


# append-only -----------------------------------------------------------------------------------
async def test_records_and_checkpoints_cannot_be_updated_deleted_or_replaced(db: Path) -> None:
    await _fill(db, 5)
    with _raw(db) as conn:
        refused = [
            "UPDATE audit_records SET canonical = CAST('{}' AS BLOB) WHERE idx = 2",
            "DELETE FROM audit_records WHERE idx = 4",
            "DELETE FROM audit_records",
            "UPDATE audit_checkpoints SET size = 3",
            "DELETE FROM audit_checkpoints",
        ]
        for statement in refused:
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(statement)
    assert (await _verify(db)).intact


async def test_an_edited_query_column_is_caught_by_queries_and_named_by_verify(db: Path) -> None:
    await _fill(db, 8)
    with _raw(db, drop_triggers=True) as conn:
        conn.execute("UPDATE audit_records SET subject = ? WHERE idx = 5", ("0" * 64,))
    store = SqliteAuditStore(db)
    await store.open()
    with pytest.raises(AuditIntegrityError, match="record 5's query columns disagree"):
        await store.query(AuditQuery(subject="0" * 64))
    assert await store.column_mismatches() == 5
    result = await _log(store).verify()
    assert (result.intact, result.first_bad_index) == (False, 5)
    assert "query columns were edited" in result.problem
    await store.close()


# failures --------------------------------------------------------------------------------------
async def test_a_failed_commit_fails_its_appends_and_leaves_no_gap(db: Path) -> None:
    await _fill(db, 10, checkpoint=False)
    store = SqliteAuditStore(db)
    await store.open()
    with _raw(db) as conn:  # fails each batch after its rows are inserted: all must roll back
        conn.execute(
            "CREATE TRIGGER fault BEFORE UPDATE ON audit_head BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    results = await asyncio.gather(
        *(store.append(make_record(i)) for i in range(10, 18)), return_exceptions=True
    )
    assert all(isinstance(r, AuditUnavailable) for r in results), results
    assert "disk on fire" in str(results[0])
    assert store.failed_batches >= 1
    assert await store.rows(10, 30) == []
    assert (await store.head()).size == 10
    with _raw(db) as conn:
        conn.execute("DROP TRIGGER fault")
    again = await asyncio.gather(*(store.append(make_record(i)) for i in range(10, 18)))
    assert sorted(a.index for a in again) == list(range(10, 18))
    result = await _log(store).verify()
    assert result.intact, result.problem
    assert result.records_checked == 18
    await store.close()


async def test_a_locked_database_fails_appends_until_it_is_released(db: Path) -> None:
    await _fill(db, 3, checkpoint=False)
    store = SqliteAuditStore(db, busy_timeout=0.1)
    await store.open()
    with _raw(db) as conn:
        conn.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with pytest.raises(AuditUnavailable, match="locked"):
            await store.append(make_record(3))
        conn.execute("ROLLBACK")
    assert (await store.append(make_record(3))).index == 3
    assert (await _log(store).verify()).intact
    await store.close()


async def test_a_commit_reported_failed_that_did_commit_is_durable_and_reuses_no_index(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite may report an error from a COMMIT that took effect (an fsync error after the WAL
    frames were written): the writer reads the head back from the file, finds the batch, and
    answers the append as durable (issue 14: refusing it would leave an "allowed" record for an
    answer never released), and the next append goes on after it."""
    store = SqliteAuditStore(db)
    await store.open()
    await store.append(make_record(0))
    write = store._write
    calls = 0

    def commit_then_fail(*args: object) -> None:  # e.g. an fsync error after the WAL frames
        nonlocal calls
        calls += 1
        write(*args)  # type: ignore[arg-type]
        if calls == 1:
            raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_write", commit_then_fail)
    assert (await store.append(make_record(1))).index == 1
    assert (await store.head()).size == 2  # re-read from the file, not assumed
    assert (await store.append(make_record(2))).index == 2
    assert (await _log(store).verify()).intact
    await store.close()


# privacy ---------------------------------------------------------------------------------------
async def test_no_raw_subject_id_is_stored(db: Path) -> None:
    store = SqliteAuditStore(db)
    await store.open()
    await asyncio.gather(*(store.append(make_record(i, subject=RAW_ID)) for i in range(40)))
    subject = pseudonymize(RAW_ID, KEY)
    assert len(await store.query(AuditQuery(subject=subject, limit=100))) == 40
    await _log(store).checkpoint()
    await store.close()
    on_disk = b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name))
    assert subject.encode() in on_disk  # the scan does see the records
    assert RAW_ID.encode() not in on_disk
    assert RAW_ID.encode("utf-16-le") not in on_disk
    with _raw(db) as conn:
        tables = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f"SELECT * FROM {table}"):
                for value in row:
                    text = (
                        value.decode(errors="replace") if isinstance(value, bytes) else str(value)
                    )
                    assert RAW_ID not in text, (table, row)


# queries ---------------------------------------------------------------------------------------
async def test_queries_filter_on_outcome_and_dataset_and_refuse_naive_times(db: Path) -> None:
    store = SqliteAuditStore(db)
    await store.open()
    for i in range(12):
        await store.append(
            make_record(i, outcome=Outcome.DENIED if i % 5 == 0 else Outcome.ALLOWED)
        )
    denied = await store.query(AuditQuery(outcome=Outcome.DENIED))
    assert [i for i, _ in denied] == [0, 5, 10]
    assert all(r.outcome is Outcome.DENIED for _, r in denied)
    assert await store.query(AuditQuery(dataset="other")) == []
    assert await store.query(AuditQuery(limit=0)) == []
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.query(AuditQuery(since=make_record(0).time.replace(tzinfo=None)))
    await store.close()


# tampering with the file -----------------------------------------------------------------------
def _canonical(conn: sqlite3.Connection, index: int) -> AuditRecord:
    (blob,) = conn.execute("SELECT canonical FROM audit_records WHERE idx = ?", (index,)).fetchone()
    return AuditRecord.from_canonical(blob)


def _edit(conn: sqlite3.Connection, index: int, *, rehash: bool, **changes: object) -> None:
    edited = dataclasses.replace(_canonical(conn, index), **changes).canonical  # type: ignore[arg-type]
    conn.execute("UPDATE audit_records SET canonical = ? WHERE idx = ?", (edited, index))
    if rehash:
        conn.execute(
            "UPDATE audit_records SET leaf_hash = ? WHERE idx = ?", (leaf_hash(edited), index)
        )


def _swap(conn: sqlite3.Connection, a: int, b: int) -> None:
    get = "SELECT canonical, leaf_hash, root FROM audit_records WHERE idx = ?"
    row_a, row_b = conn.execute(get, (a,)).fetchone(), conn.execute(get, (b,)).fetchone()
    put = "UPDATE audit_records SET canonical = ?, leaf_hash = ?, root = ? WHERE idx = ?"
    conn.execute(put, (*row_b, a))
    conn.execute(put, (*row_a, b))


def _truncate(conn: sqlite3.Connection, keep: int) -> None:
    """Delete the tail and rewind the head so that the file agrees with itself."""
    conn.execute("DELETE FROM audit_records WHERE idx >= ?", (keep,))
    compact = CompactRange()
    for (leaf,) in conn.execute("SELECT leaf_hash FROM audit_records ORDER BY idx"):
        compact.append(leaf)
    conn.execute("UPDATE audit_head SET size = ?, compact = ?", (keep, compact.to_bytes()))


def _uncanonical(conn: sqlite3.Connection, index: int) -> None:
    (blob,) = conn.execute("SELECT canonical FROM audit_records WHERE idx = ?", (index,)).fetchone()
    conn.execute(
        "UPDATE audit_records SET canonical = ? WHERE idx = ?",
        (blob.replace(b'"v":1', b'"v": 1'), index),
    )


TAMPERING: dict[str, tuple[Callable[[sqlite3.Connection], None], int, str]] = {
    "one field changed (leaf hash left as it was)": (
        lambda c: _edit(c, 12, rehash=False, purpose="MED-REG"),
        12,
        "changed after it was written",
    ),
    "one field changed, leaf hash recomputed too": (
        lambda c: _edit(c, 12, rehash=True, outcome=Outcome.DENIED),
        12,
        "does not follow the records before it",
    ),
    "a row deleted": (
        lambda c: c.execute("DELETE FROM audit_records WHERE idx = 7"),
        7,
        "record 7 is missing",
    ),
    "two rows swapped": (lambda c: _swap(c, 4, 9), 4, "does not follow the records before it"),
    "the tail truncated and the head rewound": (
        lambda c: _truncate(c, 20),
        20,
        "record 20 is missing",
    ),
    "not canonical any more": (lambda c: _uncanonical(c, 5), 5, "not a canonical audit record"),
}


@pytest.mark.parametrize("name", list(TAMPERING))
async def test_tampering_with_the_file_is_detected_and_the_index_named(db: Path, name: str) -> None:
    tamper, index, problem = TAMPERING[name]
    await _fill(db, 30)
    assert (await _verify(db)).intact
    with _raw(db, drop_triggers=True) as conn:
        tamper(conn)
    result = await _verify(db)
    assert not result.intact
    assert result.first_bad_index == index, result.problem
    assert problem in result.problem


async def test_an_edited_record_is_caught_by_queries_and_named_by_verify(db: Path) -> None:
    await _fill(db, 30)
    with _raw(db, drop_triggers=True) as conn:
        _edit(conn, 12, rehash=True, purpose="MED-REG")
    store = SqliteAuditStore(db)
    await store.open()
    # The columns still say SI-TRANSFER: a query by them meets the edited bytes and says so.
    with pytest.raises(AuditIntegrityError, match="record 12's query columns disagree"):
        await store.query(AuditQuery(purpose="SI-TRANSFER", limit=100))
    result = await _log(store).verify()
    assert (result.intact, result.first_bad_index) == (False, 12)
    await store.close()


async def test_truncation_with_the_checkpoints_deleted_needs_a_trusted_checkpoint(
    db: Path,
) -> None:
    kept = await _fill(db, 30)
    assert kept is not None
    with _raw(db, drop_triggers=True) as conn:
        _truncate(conn, 20)
        conn.execute("DELETE FROM audit_checkpoints")
    assert (await _verify(db)).intact  # the file alone agrees with itself...
    result = await _verify(db, trusted=kept)  # ...but not with what was signed and kept
    assert not result.intact
    assert result.first_bad_index == 20
    assert "record 20 is missing" in result.problem


async def test_an_unmodified_log_verifies_after_reopening(db: Path) -> None:
    await _fill(db, 30)
    result = await _verify(db)
    assert result.intact, result.problem
    assert (result.records_checked, result.checkpoints_checked) == (30, 1)


async def test_appends_waiting_for_a_stuck_writer_are_bounded(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer that hangs (a disk that does not answer) must not collect one record per request
    # for as long as it hangs: beyond `max_pending`, an append is refused at once.
    store = SqliteAuditStore(db, max_pending=4)
    await store.open()
    release = threading.Event()
    commit = store._commit

    def stuck(conn: sqlite3.Connection, batch: Any) -> None:
        release.wait(10)
        commit(conn, batch)

    monkeypatch.setattr(store, "_commit", stuck)
    try:
        taken = asyncio.ensure_future(store.append(make_record(0)))
        await asyncio.sleep(0.1)  # the writer holds it
        waiting = [asyncio.ensure_future(store.append(make_record(i))) for i in range(1, 5)]
        await asyncio.sleep(0.05)
        with pytest.raises(AuditUnavailable, match="waiting"):
            await asyncio.wait_for(store.append(make_record(5)), 1)
    finally:
        release.set()
    results = await asyncio.gather(taken, *waiting)
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    await store.close()


async def test_a_record_and_its_outbound_report_are_durable_together_or_not_at_all(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One transaction: when the report cannot be stored, neither is its record (the caller is
    refused, nothing is released); the next append goes on from the same head."""
    store = SqliteAuditStore(db)
    await store.open()
    await store.append(make_record(0), Outbound("330000", b"{}"))
    monkeypatch.setattr(_sqlite, "_INSERT_OUTBOUND", "INSERT INTO no_such_table VALUES (?, ?, ?)")
    with pytest.raises(AuditUnavailable):
        await store.append(make_record(1), Outbound("330000", b"{}"))
    assert (await store.head()).size == 1
    assert [p.index for p in await store.outbox("330000", 10)] == [0]
    monkeypatch.undo()
    assert (await store.append(make_record(2), Outbound("330000", b"{}"))).index == 1
    assert [p.index for p in await store.outbox("330000", 10)] == [0, 1]
    await store.close()


async def test_a_batch_is_committed_as_its_records_one_by_one(tmp_path: Path) -> None:
    """`append_many` (a batch without a coroutine each) stores what `append` stores, in order;
    beyond `max_pending` waiting records the whole batch is refused, none taken."""
    records = [make_record(i) for i in range(5)]
    stores = [SqliteAuditStore(tmp_path / "one.db"), SqliteAuditStore(tmp_path / "batch.db")]
    for store in stores:
        await store.open()
    for record in records:
        await stores[0].append(record)
    appended = await asyncio.gather(*stores[1].append_many(records))
    assert [a.index for a in appended] == list(range(5))
    assert await stores[1].rows(0, 5) == await stores[0].rows(0, 5)
    assert await stores[1].head() == await stores[0].head()
    stores[1].max_pending = 3
    with pytest.raises(AuditUnavailable, match="waiting for the writer"):
        stores[1].append_many(records[:4])
    assert stores[1].append_many([]) == []
    for store in stores:
        await store.close()
