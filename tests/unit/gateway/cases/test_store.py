"""The case stores, one contract for all three (memory, SQLite file, PostgreSQL schema): every
method of `CaseStore`, listing filters and keyset paging, an event kept once however often it
is written (its record appended each time), the outbox in arrival order and delivered, what
Watch follows (`changes`), overdue cases; each change durable with its audit record or not at
all (an audit store failing, an `AlsoWrite` failing after the case rows were written); cases
surviving a reopen; reads of a database that stopped answering refused within the bound."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from audit_contract import make_record
from cryptography.hazmat.primitives.asymmetric import ed25519
from fault_support import TcpProxy
from pg_support import PgRoles, pg_roles, superuser

from gateway.audit import (
    AuditLog,
    AuditRecord,
    AuditStore,
    AuditUnavailable,
    MemoryAuditStore,
    PostgresAuditStore,
    SqliteAuditStore,
)
from gateway.audit import _sqlite as audit_sqlite
from gateway.breaker import CircuitBreaker
from gateway.cases import (
    CaseChange,
    CaseQuery,
    CaseStore,
    CaseSummary,
    MemoryCaseStore,
    StoredAttachment,
    StoredEvent,
    StoredRequest,
    case_store_for,
)
from gateway.cases._postgres import PostgresCaseStore
from gateway.cases._sqlite import SqliteCaseStore

KEY = ed25519.Ed25519PrivateKey.generate()
ORIGIN, KEY_NAME = "audit.test/510000", "audit-510000"
T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
SC, CQ, ZJ = "510000", "500000", "330000"
MATTER, OTHER_MATTER = "000112003100", "000112003200"
APPLICANT, OTHER_APPLICANT = "a1" * 32, "b2" * 32
DIGEST_A, DIGEST_B = "a" * 64, "b" * 64


# -- what is written ----------------------------------------------------------------------------


def event(case_id: str, origin: str, seq: int, *, attachments: tuple[str, ...] = ()) -> StoredEvent:
    return StoredEvent(
        event_id=f"{case_id}/{origin}/{seq}",
        case_id=case_id,
        origin=origin,
        seq=seq,
        sealed_jws=f"sealed:{case_id}:{origin}:{seq}",
        attachments=attachments,
        received_at=T0 + timedelta(seconds=seq),
    )


def summary(case_id: str, minute: int, **changed: Any) -> CaseSummary:
    base = CaseSummary(
        case_id=case_id,
        matter_code=MATTER,
        window_region=SC,
        window_agency="sc-window",
        applicant=APPLICANT,
        state="open",
        submitted_at=T0,
        due_at=T0 + timedelta(days=45),
        updated_at=T0 + timedelta(minutes=minute),
        agencies=("sc-window",),
        ready_regions=(CQ,),
        handling=(),
    )
    return dataclasses.replace(base, **changed)


def submitted(case_id: str, minute: int = 0, **changed: Any) -> CaseChange:
    """A case submitted here: its first event, one material, owed to two regions."""
    return CaseChange(
        event=event(case_id, SC, 1, attachments=(DIGEST_A,)),
        attachments=(StoredAttachment(DIGEST_A, b"sealed material"),),
        summary=summary(case_id, minute, **changed),
        destinations=(CQ, ZJ),
        request=("sc-window", f"req-{case_id}"),
        request_digest="d" * 64,
    )


def then(case_id: str, origin: str, seq: int, minute: int, **changed: Any) -> CaseChange:
    """A later event of the case, received from `origin` (owed to no one) or made here."""
    return CaseChange(
        event=event(case_id, origin, seq),
        attachments=(),
        summary=summary(case_id, minute, **changed),
        destinations=(CQ,) if origin == SC else (),
    )


_records = iter(range(10**9))


def record() -> AuditRecord:
    return make_record(next(_records))


# -- the three stores ---------------------------------------------------------------------------


@dataclass
class Backend:
    kind: str
    make_store: Callable[[], AuditStore]  # over the same storage each call (a reopen)

    async def open(self, **options: Any) -> AuditLog:
        log = AuditLog(self.make_store(), origin=ORIGIN, key=KEY, key_name=KEY_NAME, **options)
        await log.open()
        return log


@pytest.fixture(scope="module")
def roles() -> Iterator[PgRoles]:
    with pg_roles() as made:
        yield made


def _backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        memory = MemoryAuditStore()
        yield Backend("memory", lambda: memory)
    elif request.param == "sqlite":
        yield Backend("sqlite", lambda: SqliteAuditStore(tmp_path / "audit.db"))
    else:
        roles: PgRoles = request.getfixturevalue("roles")
        schema = roles.fresh_schema()
        yield Backend(
            "postgres",
            lambda: PostgresAuditStore(roles.app_dsn, schema=schema, owner_dsn=roles.owner_dsn),
        )
        roles.drop_schema(schema)


_DURABLE = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]
backend = pytest.fixture(params=["memory", *_DURABLE])(_backend)
durable_backend = pytest.fixture(params=_DURABLE)(_backend)
one_process_backend = pytest.fixture(params=["memory", "sqlite"])(_backend)


@pytest.fixture
async def audit(backend: Backend) -> AsyncIterator[AuditLog]:
    log = await backend.open()
    yield log
    await log.close()


@pytest.fixture
def cases(audit: AuditLog) -> CaseStore:
    return case_store_for(audit)


async def size(audit: AuditLog) -> int:
    return (await audit.store.head()).size


# -- the contract -------------------------------------------------------------------------------


async def test_a_change_is_kept_with_its_record_and_read_back(
    audit: AuditLog, cases: CaseStore
) -> None:
    change = submitted("C1")
    appended = await cases.write(record(), change)
    assert appended.index == 0
    assert await size(audit) == 1

    [held] = await cases.events("C1")
    assert held == dataclasses.replace(change.event, position=1)
    assert await cases.summary("C1") == change.summary
    assert await cases.attachment(DIGEST_A) == StoredAttachment(DIGEST_A, b"sealed material")
    assert await cases.request("sc-window", "req-C1") == StoredRequest(
        "C1/510000/1", "C1", "d" * 64
    )
    assert await cases.outbox(CQ, 10) == [held]
    assert await cases.outbox(ZJ, 10) == [held]
    assert await cases.outbox_backlog() == {CQ: 1, ZJ: 1}
    assert await cases.changes(0, 10) == [held]
    assert await cases.cases(CaseQuery()) == [change.summary]


async def test_what_is_not_held_reads_as_nothing(cases: CaseStore) -> None:
    await cases.write(record(), submitted("C1"))
    assert await cases.events("C2") == []
    assert await cases.summary("C2") is None
    assert await cases.attachment(DIGEST_B) is None
    assert await cases.request("sc-window", "req-C2") is None
    assert await cases.request("cq-si", "req-C1") is None  # the request id is the agency's
    assert await cases.outbox(SC, 10) == []
    assert await cases.changes(1, 10) == []
    assert await cases.cases(CaseQuery(matter_code="999999999999")) == []
    assert await cases.overdue(T0) == {}


async def test_an_event_written_twice_is_kept_once_and_recorded_twice(
    audit: AuditLog, cases: CaseStore
) -> None:
    first = submitted("C1")
    await cases.write(record(), first)
    again = dataclasses.replace(
        first,
        event=dataclasses.replace(first.event, sealed_jws="another copy"),
        summary=summary("C1", 5, state="completed"),
        destinations=(CQ, ZJ, SC),
        request=("sc-window", "req-other"),
    )
    appended = await cases.write(record(), again)
    assert appended.index == 1
    assert await size(audit) == 2
    [held] = await cases.events("C1")
    assert held.sealed_jws == first.event.sealed_jws
    assert held.position == 1
    assert await cases.outbox_backlog() == {CQ: 1, ZJ: 1}  # no second outbox row, none for SC
    assert [e.event_id for e in await cases.changes(0, 10)] == ["C1/510000/1"]
    assert await cases.summary("C1") == again.summary  # the summary is the latest
    # the call that made it is still the first one; the repeated one is kept as well
    assert await cases.request("sc-window", "req-C1") == StoredRequest(
        "C1/510000/1", "C1", "d" * 64
    )
    assert await cases.request("sc-window", "req-other") is not None


async def test_a_request_and_an_attachment_are_kept_once(cases: CaseStore) -> None:
    await cases.write(record(), submitted("C1"))
    other = dataclasses.replace(
        then("C1", SC, 2, 1),
        attachments=(StoredAttachment(DIGEST_A, b"other bytes"), StoredAttachment(DIGEST_B, b"b")),
        request=("sc-window", "req-C1"),
        request_digest="e" * 64,
    )
    await cases.write(record(), other)
    assert await cases.attachment(DIGEST_A) == StoredAttachment(DIGEST_A, b"sealed material")
    assert await cases.attachment(DIGEST_B) == StoredAttachment(DIGEST_B, b"b")
    assert await cases.request("sc-window", "req-C1") == StoredRequest(
        "C1/510000/1", "C1", "d" * 64
    )


async def test_events_positions_and_changes_follow_arrival_order(cases: CaseStore) -> None:
    await cases.write(record(), submitted("C1"))
    await cases.write(record(), submitted("C2", 1))
    await cases.write(record(), then("C1", CQ, 1, 2))
    await cases.write(record(), then("C1", SC, 2, 3))
    assert [(e.event_id, e.position) for e in await cases.events("C1")] == [
        ("C1/510000/1", 1),
        ("C1/500000/1", 3),
        ("C1/510000/2", 4),
    ]
    assert [e.position for e in await cases.changes(0, 10)] == [1, 2, 3, 4]
    assert [e.position for e in await cases.changes(1, 2)] == [2, 3]
    assert [e.position for e in await cases.changes(3, 10)] == [4]
    assert await cases.changes(4, 10) == []
    assert await cases.changes(0, 0) == []
    assert [e.position for e in await cases.changes(-5, 1)] == [1]
    assert await cases.changes(2**70, 10) == []  # beyond any position: nothing, not an error


async def test_concurrent_writes_get_gapless_positions_in_commit_order(cases: CaseStore) -> None:
    await asyncio.gather(*(cases.write(record(), submitted(f"K{i}", i)) for i in range(20)))
    held = await cases.changes(0, 100)
    assert [e.position for e in held] == list(range(1, 21))
    assert sorted(e.case_id for e in held) == sorted(f"K{i}" for i in range(20))


async def test_the_outbox_in_arrival_order_until_delivered(cases: CaseStore) -> None:
    await cases.write(record(), submitted("C1"))
    await cases.write(record(), then("C1", CQ, 1, 1))  # received: owed to no one
    await cases.write(record(), then("C1", SC, 2, 2))
    await cases.write(record(), submitted("C2", 3))
    assert [e.event_id for e in await cases.outbox(CQ, 10)] == [
        "C1/510000/1",
        "C1/510000/2",
        "C2/510000/1",
    ]
    assert [e.event_id for e in await cases.outbox(CQ, 2)] == ["C1/510000/1", "C1/510000/2"]
    assert await cases.outbox(CQ, 0) == []
    assert await cases.outbox_backlog() == {CQ: 3, ZJ: 2}

    await cases.delivered(CQ, ["C1/510000/1", "C1/510000/2", "C9/510000/1"])
    assert [e.event_id for e in await cases.outbox(CQ, 10)] == ["C2/510000/1"]
    assert len(await cases.outbox(ZJ, 10)) == 2  # delivered to one region, not to the other
    await cases.delivered(CQ, [])
    await cases.delivered(CQ, ["C2/510000/1"])
    await cases.delivered(CQ, ["C2/510000/1"])  # again: nothing more to do
    assert await cases.outbox(CQ, 10) == []
    assert await cases.outbox_backlog() == {ZJ: 2}
    assert len(await cases.events("C1")) == 3  # delivery forgets the outbox row, not the event


async def test_listing_filters_newest_first(cases: CaseStore) -> None:
    await cases.write(record(), submitted("A", 1))
    await cases.write(
        record(),
        submitted(
            "B", 2, applicant=OTHER_APPLICANT, ready_regions=(), agencies=("sc-window", "cq-si")
        ),
    )
    await cases.write(
        record(), submitted("C", 3, matter_code=OTHER_MATTER, state="completed", ready_regions=())
    )
    await cases.write(
        record(), submitted("D", 4, window_agency="zj-window", agencies=("zj-window",))
    )

    async def listed(**query: Any) -> list[str]:
        return [s.case_id for s in await cases.cases(CaseQuery(**query))]

    assert await listed() == ["D", "C", "B", "A"]
    assert await listed(applicant=OTHER_APPLICANT) == ["B"]
    assert await listed(state="completed") == ["C"]
    assert await listed(state="open") == ["D", "B", "A"]
    assert await listed(matter_code=OTHER_MATTER) == ["C"]
    assert await listed(matter_code=MATTER, state="open", applicant=APPLICANT) == ["D", "A"]
    # an agency sees the cases it is in, and those with a part ready in its region
    assert await listed(agency="cq-si", agency_region=CQ) == ["D", "B", "A"]
    assert await listed(agency="cq-si", agency_region=ZJ) == ["B"]
    assert await listed(agency="zj-window", agency_region=ZJ) == ["D"]
    assert await listed(agency="sc-window", agency_region=SC) == ["C", "B", "A"]
    assert await listed(agency="nobody", agency_region="") == []
    assert await listed(limit=2) == ["D", "C"]
    assert await listed(limit=0) == []
    assert await listed(limit=-1) == []


async def test_listing_pages_by_update_time_then_case_id(cases: CaseStore) -> None:
    # three changed in the same instant: the case id breaks the tie, so no page repeats or skips
    for case_id, minute in (("P1", 1), ("P2", 2), ("P3", 2), ("P4", 2), ("P5", 3)):
        await cases.write(record(), submitted(case_id, minute))
    pages: list[list[str]] = []
    before: tuple[datetime, str] | None = None
    while True:
        page = await cases.cases(CaseQuery(before=before, limit=2))
        if not page:
            break
        pages.append([s.case_id for s in page])
        before = (page[-1].updated_at, page[-1].case_id)
    assert pages == [["P5", "P4"], ["P3", "P2"], ["P1"]]
    at = T0 + timedelta(minutes=2)
    assert [s.case_id for s in await cases.cases(CaseQuery(before=(at, "P3")))] == ["P2", "P1"]


async def test_a_case_changed_moves_to_the_top(cases: CaseStore) -> None:
    await cases.write(record(), submitted("A", 1))
    await cases.write(record(), submitted("B", 2))
    await cases.write(record(), then("A", CQ, 1, 3, state="completed"))
    listed = await cases.cases(CaseQuery())
    assert [(s.case_id, s.state) for s in listed] == [("A", "completed"), ("B", "open")]


async def test_overdue_open_cases_per_matter(cases: CaseStore) -> None:
    due = T0 + timedelta(days=45)
    await cases.write(record(), submitted("A", 1))
    await cases.write(record(), submitted("B", 2, due_at=due - timedelta(days=10)))
    await cases.write(record(), submitted("C", 3, matter_code=OTHER_MATTER))
    await cases.write(record(), submitted("D", 4, state="completed", due_at=T0))
    assert await cases.overdue(due - timedelta(days=11)) == {}
    assert await cases.overdue(due - timedelta(days=1)) == {MATTER: 1}
    assert await cases.overdue(due + timedelta(seconds=1)) == {MATTER: 2, OTHER_MATTER: 1}
    assert await cases.overdue(due) == {MATTER: 1}  # due at `now` is not yet overdue
    listed = await cases.cases(CaseQuery(overdue_at=due + timedelta(seconds=1)))
    assert [s.case_id for s in listed] == ["C", "B", "A"]
    listed = await cases.cases(CaseQuery(overdue_at=due + timedelta(days=1), matter_code=MATTER))
    assert [s.case_id for s in listed] == ["B", "A"]


async def test_summaries_keep_every_column(cases: CaseStore) -> None:
    full = summary(
        "F",
        7,
        window_agency="川渝通办窗口",
        agencies=("sc-window", "cq-si", "zj-si"),
        ready_regions=(ZJ, CQ),
        handling=((CQ, "cq-si"), (ZJ, "zj-si")),
        submitted_at=datetime(2026, 12, 7, 16, 0, 0, 123456, tzinfo=UTC),
    )
    await cases.write(record(), dataclasses.replace(submitted("F"), summary=full))
    assert await cases.summary("F") == full
    assert await cases.cases(CaseQuery(agency="cq-si", agency_region=SC)) == [full]


async def test_a_change_no_store_can_keep_is_refused_before_anything_is_appended(
    audit: AuditLog, cases: CaseStore
) -> None:
    good = submitted("C1")
    bad = [
        dataclasses.replace(good, summary=summary("C2", 0)),  # another case's summary
        dataclasses.replace(good, summary=summary("C1", 0, due_at=datetime(2027, 1, 1))),  # naive
        dataclasses.replace(
            good, event=dataclasses.replace(good.event, received_at=datetime(2026, 1, 1))
        ),
        dataclasses.replace(good, event=dataclasses.replace(good.event, seq=0)),
        dataclasses.replace(good, event=dataclasses.replace(good.event, seq=2**63)),
        dataclasses.replace(good, event=dataclasses.replace(good.event, sealed_jws="a\x00b")),
        dataclasses.replace(good, destinations=("50\x000000",)),
    ]
    for change in bad:
        with pytest.raises(ValueError, match=r"case|NUL|seq"):
            await cases.write(record(), change)
    assert await size(audit) == 0
    assert await cases.summary("C1") is None


async def test_the_same_store_for_the_same_log(backend: Backend, audit: AuditLog) -> None:
    store = case_store_for(audit)
    assert case_store_for(audit) is store
    kind = {"memory": MemoryCaseStore, "sqlite": SqliteCaseStore, "postgres": PostgresCaseStore}
    assert type(store) is kind[backend.kind]
    if backend.kind == "memory":  # a second log over the same memory store: not the same log
        other = AuditLog(audit.store, origin=ORIGIN, key=KEY, key_name=KEY_NAME)
        assert case_store_for(other) is not store


def test_no_case_store_beside_an_unknown_audit_store() -> None:
    class Elsewhere(MemoryAuditStore):
        pass

    assert isinstance(
        case_store_for(AuditLog(Elsewhere(), origin=ORIGIN, key=KEY, key_name=KEY_NAME)),
        MemoryCaseStore,
    )
    log = AuditLog(object(), origin=ORIGIN, key=KEY, key_name=KEY_NAME)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no case store is kept beside a object"):
        case_store_for(log)
    with pytest.raises(TypeError, match="SQLite"):
        SqliteCaseStore(AuditLog(MemoryAuditStore(), origin=ORIGIN, key=KEY, key_name=KEY_NAME))
    with pytest.raises(TypeError, match="PostgreSQL"):
        PostgresCaseStore(AuditLog(MemoryAuditStore(), origin=ORIGIN, key=KEY, key_name=KEY_NAME))


# -- atomicity ----------------------------------------------------------------------------------


class Raising:
    """An `AlsoWrite` failing in the record's transaction, after `inner`'s rows (if any)."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner

    def in_memory(self, index: int) -> None:
        raise RuntimeError("the other rows could not be written")

    def in_sqlite(self, conn: Any, index: int) -> None:
        if self.inner is not None:
            self.inner.in_sqlite(conn, index)
        raise RuntimeError("the other rows could not be written")

    async def in_postgres(self, cursor: Any, index: int) -> None:
        if self.inner is not None:
            await self.inner.in_postgres(cursor, index)
        raise RuntimeError("the other rows could not be written")


async def test_an_also_write_that_fails_fails_its_record(audit: AuditLog, cases: CaseStore) -> None:
    await cases.write(record(), submitted("C1"))
    with pytest.raises((AuditUnavailable, RuntimeError)):
        await audit.append(record(), also=Raising())
    assert await size(audit) == 1  # the record was not appended either
    await cases.write(record(), then("C1", CQ, 1, 1))  # and the next one is
    assert await size(audit) == 2
    assert [e.position for e in await cases.events("C1")] == [1, 2]


async def test_a_case_change_whose_transaction_fails_leaves_nothing(
    backend: Backend, audit: AuditLog, cases: CaseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await cases.write(record(), submitted("C1"))
    if backend.kind == "memory":  # no transaction to fail midway: the store is switched off
        assert isinstance(audit.store, MemoryAuditStore)
        audit.store.available = False
    else:  # the case rows are written, then the transaction fails and is rolled back
        append = audit.append

        async def failing(record: AuditRecord, outbound: Any = None, also: Any = None) -> Any:
            return await append(record, outbound, Raising(also))

        monkeypatch.setattr(audit, "append", failing)
    with pytest.raises(AuditUnavailable):
        await cases.write(record(), submitted("C2", 1))
    with pytest.raises(AuditUnavailable):
        await cases.write(record(), then("C1", SC, 2, 2, state="completed"))
    monkeypatch.undo()
    if isinstance(audit.store, MemoryAuditStore):
        audit.store.available = True
    assert await size(audit) == 1
    assert await cases.summary("C2") is None
    assert await cases.summary("C1") == submitted("C1").summary
    assert [e.event_id for e in await cases.changes(0, 10)] == ["C1/510000/1"]
    assert await cases.outbox_backlog() == {CQ: 1, ZJ: 1}
    assert await cases.request("sc-window", "req-C2") is None
    # and the position given to the change that failed is given again
    await cases.write(record(), submitted("C3", 3))
    assert [e.position for e in await cases.events("C3")] == [2]


# -- durability ---------------------------------------------------------------------------------


async def test_cases_survive_a_reopen(durable_backend: Backend) -> None:
    backend = durable_backend
    first = await backend.open()
    await case_store_for(first).write(record(), submitted("C1"))
    await case_store_for(first).write(record(), then("C1", CQ, 1, 1, state="completed"))
    await case_store_for(first).delivered(ZJ, ["C1/510000/1"])
    await first.close()

    again = await backend.open()
    try:
        cases = case_store_for(again)
        assert [e.event_id for e in await cases.events("C1")] == ["C1/510000/1", "C1/500000/1"]
        assert (await cases.summary("C1")) == then("C1", CQ, 1, 1, state="completed").summary
        assert await cases.outbox_backlog() == {CQ: 1}
        assert await cases.request("sc-window", "req-C1") is not None
        assert await cases.attachment(DIGEST_A) is not None
        await cases.write(record(), then("C1", SC, 2, 2))
        assert [e.position for e in await cases.changes(0, 10)] == [1, 2, 3]
        assert (await again.verify()).intact
    finally:
        await again.close()


async def test_a_version_5_sqlite_file_gains_the_case_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.db"
    monkeypatch.setattr(audit_sqlite, "SCHEMA_VERSION", 5)
    old = SqliteAuditStore(path)
    await old.open()
    await old.append(record())
    await old.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(5,)]
    monkeypatch.undo()

    log = AuditLog(SqliteAuditStore(path), origin=ORIGIN, key=KEY, key_name=KEY_NAME)
    await log.open()
    try:
        await case_store_for(log).write(record(), submitted("C1"))
        assert (await log.store.head()).size == 2
        assert len(await case_store_for(log).events("C1")) == 1
    finally:
        await log.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(6,)]


# -- a database that stops answering ------------------------------------------------------------


async def test_a_frozen_sqlite_reader_is_not_waited_for(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db")
    log = AuditLog(store, origin=ORIGIN, key=KEY, key_name=KEY_NAME, read_timeout_seconds=0.2)
    await log.open()
    cases = case_store_for(log)
    await cases.write(record(), submitted("C1"))
    store._reads._lock.acquire()  # the reading connection is busy and never comes back
    try:
        started = time.monotonic()
        with pytest.raises(AuditUnavailable, match=r"did not answer within 0\.2 s"):
            await cases.events("C1")
        assert time.monotonic() - started < 2
    finally:
        store._reads._lock.release()
    await asyncio.sleep(0.3)  # let the abandoned read finish, then the breaker close again
    await log.close()


@pytest.mark.integration
async def test_a_frozen_postgres_is_not_waited_for_and_an_outage_keeps_nothing(
    roles: PgRoles,
) -> None:
    schema = roles.fresh_schema()
    proxy = TcpProxy("127.0.0.1", 5432)
    port = await proxy.start()
    dsn = psycopg.conninfo.make_conninfo(roles.app_dsn, host="127.0.0.1", port=port)
    store = PostgresAuditStore(dsn, schema=schema, owner_dsn=roles.owner_dsn, timeout=2.0)
    log = AuditLog(
        store,
        origin=ORIGIN,
        key=KEY,
        key_name=KEY_NAME,
        read_timeout_seconds=0.3,
        append_timeout_seconds=1.0,
        breaker=CircuitBreaker(failure_threshold=10),  # each failure here is the store's own
    )
    try:
        await log.open()
        cases = case_store_for(log)
        await cases.write(record(), submitted("C1"))
        proxy.freeze()
        started = time.monotonic()
        with pytest.raises(AuditUnavailable):
            await cases.cases(CaseQuery())
        assert time.monotonic() - started < 1.5
        proxy.thaw()
        await proxy.cut()  # the database is gone (and the connection of the abandoned read)
        with pytest.raises(AuditUnavailable):
            await cases.write(record(), submitted("C2", 1))
        await proxy.restore()
        await cases.write(record(), submitted("C3", 2))
        assert await cases.summary("C2") is None
        assert [e.case_id for e in await cases.changes(0, 10)] == ["C1", "C3"]
        with superuser() as conn:
            found = conn.execute(f"SELECT count(*) FROM {schema}.case_events").fetchone()
            assert found == (2,)
    finally:
        proxy.thaw()
        async with asyncio.timeout(30):
            await log.close()
        await proxy.close()
        roles.drop_schema(schema)


# -- replicas ---------------------------------------------------------------------------------


@pytest.mark.integration
async def test_replicas_sharing_postgres_hold_a_case_one_at_a_time(roles: PgRoles) -> None:
    """Two replicas' stores on one schema: while one holds a case (or a request), the other
    waits for it; another key does not wait; a lock held by a replica whose connection dies
    goes with it."""
    schema = roles.fresh_schema()
    make = lambda: PostgresAuditStore(roles.app_dsn, schema=schema, owner_dsn=roles.owner_dsn)  # noqa: E731
    first = AuditLog(make(), origin=ORIGIN, key=KEY, key_name=KEY_NAME)
    second = AuditLog(make(), origin=ORIGIN, key=KEY, key_name=KEY_NAME)
    try:
        await first.open()
        await second.open()
        one, other = case_store_for(first), case_store_for(second)
        order: list[str] = []

        async def later() -> None:
            async with other.exclusive("C1"):
                order.append("second")

        async with one.exclusive("C1"):
            waiting = asyncio.create_task(later())
            async with asyncio.timeout(5), other.exclusive("C2"):
                order.append("another key")
            await asyncio.sleep(0.3)
            assert not waiting.done()  # held by the first replica
            order.append("first")
        async with asyncio.timeout(5):
            await waiting
        assert order == ["another key", "first", "second"]

        holder = asyncio.create_task(_hold_forever(one, "C3"))
        await asyncio.sleep(0.3)
        locker = one._locker  # type: ignore[attr-defined]
        await locker.close()  # the replica's session ends: its lock with it
        async with asyncio.timeout(5), other.exclusive("C3"):
            pass
        holder.cancel()
        with contextlib.suppress(asyncio.CancelledError, AuditUnavailable):
            await holder
    finally:
        await first.close()
        await second.close()
        roles.drop_schema(schema)


async def _hold_forever(store: CaseStore, key: str) -> None:
    async with store.exclusive(key):
        await asyncio.Event().wait()


async def test_one_process_stores_need_no_lock(one_process_backend: Backend) -> None:
    log = await one_process_backend.open()
    try:
        cases = case_store_for(log)
        async with asyncio.timeout(1), cases.exclusive("C1"), cases.exclusive("C1"):
            pass  # the book's own lock serialises a process's changes
    finally:
        await log.close()


async def test_a_key_with_a_nul_finds_nothing_and_leaves_the_store_working(
    cases: CaseStore,
) -> None:
    """No store keeps a NUL in text (`prepare` refuses one), so a read keyed by one finds
    nothing: PostgreSQL is not asked (its error would open the audit store's breaker and fail
    every audited call after a caller's bad case id)."""
    await cases.write(record(), submitted("C1"))
    assert await cases.summary("C1\x00") is None
    assert await cases.events("C1\x00") == []
    assert await cases.request("sc-window", "req-C1\x00") is None
    assert await cases.attachment("\x00") is None
    assert await cases.cases(CaseQuery(matter_code="\x00")) == []
    await cases.delivered(CQ, ["C1/510000/1\x00"])
    assert [s.case_id for s in await cases.cases(CaseQuery())] == ["C1"]
    assert await cases.summary("C1") is not None
    assert len(await cases.outbox(CQ, 10)) == 1
