"""The PostgreSQL audit store on the real server: the store contract, replicas appending
together, append-only enforced by privileges and by triggers (also in replica mode), tampering
by a superuser detected with the index named, monthly partitions, no raw subject ids stored,
reconnection after the backend is killed, and retention prunes (through the owner's
`prune_below()` only, the log still verifying and still append-only afterwards)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from audit_contract import check_outbox_contract, check_store_contract, make_record
from cryptography.hazmat.primitives.asymmetric import ed25519
from fault_support import TcpProxy
from pg_support import SUPERUSER_DSN, PgRoles, disable_all_triggers, pg_roles, superuser
from psycopg import sql

from gateway.audit import _postgres
from gateway.audit._log import AuditLog, Pruned
from gateway.audit._merkle import CompactRange, leaf_hash
from gateway.audit._postgres import PostgresAuditStore
from gateway.audit._record import AuditRecord, Outcome
from gateway.audit._store import AuditQuery, PruneMarker, StoredRow
from gateway.audit.errors import AuditIntegrityError, AuditUnavailable

pytestmark = pytest.mark.integration

ORIGIN = "audit.test/510000"
KEY_NAME = "audit-510000"
RAW_SUBJECT = "110105194912310021"  # the raw id audit_contract.make_record pseudonymises


@pytest.fixture(scope="module")
def roles() -> Iterator[PgRoles]:
    with pg_roles() as made:
        yield made


@pytest.fixture
def schema(roles: PgRoles) -> Iterator[str]:
    name = roles.fresh_schema()
    yield name
    roles.drop_schema(name)


@pytest.fixture
def make_store(roles: PgRoles, schema: str) -> Callable[..., PostgresAuditStore]:
    def make(**options: object) -> PostgresAuditStore:
        return PostgresAuditStore(
            roles.app_dsn,
            schema=schema,
            owner_dsn=roles.owner_dsn,
            **options,  # type: ignore[arg-type]
        )

    return make


@pytest.fixture
async def store(make_store: Callable[..., PostgresAuditStore]) -> AsyncIterator[PostgresAuditStore]:
    opened = make_store()
    await opened.open()
    yield opened
    await opened.close()


def _audit_log(store: PostgresAuditStore, key: ed25519.Ed25519PrivateKey) -> AuditLog:
    return AuditLog(store, origin=ORIGIN, key=key, key_name=KEY_NAME)


async def _fill(store: PostgresAuditStore, n: int) -> None:
    await asyncio.gather(*(store.append(make_record(i)) for i in range(n)))


def _refused(conn: psycopg.Connection[tuple[Any, ...]], statement: str) -> str:
    """Run a statement that must fail; return the error's message."""
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(statement)
    return str(caught.value)


# -- the contract and replicas ---------------------------------------------------------------


async def test_postgres_store_meets_the_contract(
    make_store: Callable[..., PostgresAuditStore],
) -> None:
    await check_store_contract(make_store)


async def test_postgres_store_keeps_the_outbox(
    make_store: Callable[..., PostgresAuditStore],
) -> None:
    await check_outbox_contract(make_store)


async def test_two_replicas_appending_together_stay_gapless_and_verify(
    make_store: Callable[..., PostgresAuditStore],
) -> None:
    a, b = make_store(), make_store(max_batch=16)
    await asyncio.gather(a.open(), b.open())
    try:
        results = await asyncio.gather(
            *(
                (a if i % 2 else b).append(dataclasses.replace(make_record(i), request_id=f"r{i}"))
                for i in range(400)
            )
        )
        indices = sorted(r.index for r in results)
        assert indices == list(range(400))
        assert a.appended + b.appended == 400
        assert a.commits < 200  # grouped, not one transaction per record
        head_a, head_b = await a.head(), await b.head()
        assert head_a == head_b
        assert head_a.size == 400
        rows = await a.rows(0, 400)
        assert [r.index for r in rows] == list(range(400))
        log = _audit_log(a, ed25519.Ed25519PrivateKey.generate())
        await log.checkpoint()
        result = await log.verify()
        assert result.intact, result.problem
        assert result.records_checked == 400
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_an_unreachable_database_is_audit_unavailable() -> None:
    store = PostgresAuditStore("host=127.0.0.1 port=1 user=nobody dbname=test", timeout=1)
    with pytest.raises(AuditUnavailable):
        await store.open()
    with pytest.raises(AuditUnavailable):
        await store.append(make_record(0))


async def _kill_the_waiting_writer(
    su: psycopg.AsyncConnection[tuple[Any, ...]], app: str, killed: set[int]
) -> None:
    """Wait until a (new) writer of the app role waits for the locked head row, then kill every
    backend of the app role."""
    for _ in range(500):
        cur = await su.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND wait_event_type = 'Lock'",
            [app],
        )
        if {pid for (pid,) in await cur.fetchall()} - killed:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the writer never waited for the head row")
    cur = await su.execute(
        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [app]
    )
    killed.update(pid for pid, _ in await cur.fetchall())


async def test_a_killed_connection_fails_at_most_the_batch_in_flight(
    store: PostgresAuditStore, roles: PgRoles, schema: str
) -> None:
    await _fill(store, 5)
    su = await psycopg.AsyncConnection.connect(SUPERUSER_DSN, autocommit=True)
    locker = await psycopg.AsyncConnection.connect(SUPERUSER_DSN)
    killed: set[int] = set()
    async with su, locker:
        # Killed once while waiting for the head row: nothing was committed, so the group is
        # retried on a new connection and succeeds.
        await locker.execute(f"SELECT size FROM {schema}.head WHERE id = 1 FOR UPDATE")
        in_flight = [asyncio.create_task(store.append(make_record(5 + i))) for i in range(20)]
        await _kill_the_waiting_writer(su, roles.app, killed)
        await locker.rollback()
        assert sorted(a.index for a in await asyncio.gather(*in_flight)) == list(range(5, 25))
        # Killed again after the reconnection: the group fails closed.
        await locker.execute(f"SELECT size FROM {schema}.head WHERE id = 1 FOR UPDATE")
        in_flight = [asyncio.create_task(store.append(make_record(25 + i))) for i in range(20)]
        await _kill_the_waiting_writer(su, roles.app, killed)
        await _kill_the_waiting_writer(su, roles.app, killed)
        outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
        await locker.rollback()
        assert all(isinstance(o, AuditUnavailable) for o in outcomes), outcomes
    # Later appends reconnect by themselves, and the log is whole.
    later = [await store.append(make_record(45 + i)) for i in range(5)]
    assert [a.index for a in later] == list(range(25, 30))
    assert (await store.head()).size == 30
    result = await _audit_log(store, ed25519.Ed25519PrivateKey.generate()).verify()
    assert result.intact, result.problem
    assert result.records_checked == 30


# -- append-only: privileges and triggers ------------------------------------------------------


def _partitions(conn: psycopg.Connection[tuple[Any, ...]], schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass(%s) ORDER BY 1",
        [f"{schema}.records"],
    ).fetchall()
    return [str(name) for (name,) in rows]


async def test_the_app_role_may_not_update_delete_or_truncate(
    store: PostgresAuditStore, roles: PgRoles, schema: str
) -> None:
    await _fill(store, 3)
    await _audit_log(store, ed25519.Ed25519PrivateKey.generate()).checkpoint()
    with superuser() as su:
        partition = _partitions(su, schema)[0]
        owners = su.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
            [schema],
        ).fetchall()
        assert owners == [(roles.owner,)]  # the app role owns nothing
    with psycopg.connect(roles.app_dsn, autocommit=True) as app:
        s = schema
        for statement in (
            f"UPDATE {s}.records SET purpose = 'X' WHERE idx = 1",
            f"DELETE FROM {s}.records WHERE idx = 1",
            f"TRUNCATE {s}.records",
            f"UPDATE {partition} SET purpose = 'X'",
            f"DELETE FROM {partition}",
            f"TRUNCATE {partition}",
            f"UPDATE {s}.checkpoints SET note = 'x'",
            f"DELETE FROM {s}.checkpoints",
            f"TRUNCATE {s}.checkpoints",
            f"DELETE FROM {s}.head",
            f"TRUNCATE {s}.head",
            f"INSERT INTO {s}.head (id, size, compact) VALUES (2, 0, '')",
            f"ALTER TABLE {s}.records DISABLE TRIGGER ALL",
            f"DROP TABLE {partition}",
            f"ALTER TABLE {s}.records DETACH PARTITION {partition}",
            f"CREATE TABLE {s}.shadow (x int)",
        ):
            message = _refused(app, statement)
            assert "permission denied" in message or "must be owner" in message, statement
        # The head row is the one thing it may update, and only to grow the log.
        message = _refused(app, f"UPDATE {s}.head SET size = 1, compact = compact")
        assert "only grows" in message
        message = _refused(app, f"UPDATE {s}.head SET size = 4")
        assert "over 0 rows" in message
        assert app.execute(f"SELECT count(*) FROM {s}.records").fetchone() == (3,)


async def test_the_owner_is_refused_by_the_triggers_even_in_replica_mode(
    store: PostgresAuditStore, roles: PgRoles, schema: str
) -> None:
    await _fill(store, 3)
    log = _audit_log(store, ed25519.Ed25519PrivateKey.generate())
    await log.checkpoint()
    with superuser() as su:
        partition = _partitions(su, schema)[0]
        enabled = su.execute(
            "SELECT DISTINCT t.tgenabled::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND NOT t.tgisinternal",
            [schema],
        ).fetchall()
        assert enabled == [("A",)]  # every trigger ENABLE ALWAYS, partitions included
        su.execute(
            sql.SQL("GRANT SET ON PARAMETER session_replication_role TO {}").format(
                sql.Identifier(roles.owner)
            )
        )
    s = schema
    statements = (
        f"UPDATE {s}.records SET purpose = 'X' WHERE idx = 1",
        f"DELETE FROM {s}.records WHERE idx = 1",
        f"TRUNCATE {s}.records",
        f"UPDATE {partition} SET purpose = 'X'",
        f"DELETE FROM {partition}",
        f"TRUNCATE {partition}",
        f"UPDATE {s}.checkpoints SET note = 'x'",
        f"DELETE FROM {s}.checkpoints",
        f"TRUNCATE {s}.checkpoints",
        f"DELETE FROM {s}.head",
        f"TRUNCATE {s}.head",
        f"DELETE FROM {s}.schema_version",
    )
    try:
        for mode in ("origin", "replica"):
            with psycopg.connect(roles.owner_dsn, autocommit=True) as owner:
                owner.execute(f"SET session_replication_role = {mode}")
                for statement in statements:
                    assert "append-only" in _refused(owner, statement), (mode, statement)
                assert "only grows" in _refused(
                    owner, f"UPDATE {s}.head SET size = 0, compact = ''"
                )
    finally:
        with superuser() as su:
            su.execute(
                sql.SQL("REVOKE SET ON PARAMETER session_replication_role FROM {}").format(
                    sql.Identifier(roles.owner)
                )
            )
    assert (await log.verify()).intact


# -- tampering with full database rights -----------------------------------------------------


def _edited(row: StoredRow, **changes: object) -> bytes:
    return dataclasses.replace(AuditRecord.from_canonical(row.canonical), **changes).canonical  # type: ignore[arg-type]


def _tamper_field(su: psycopg.Connection[tuple[Any, ...]], s: str, rows: list[StoredRow]) -> None:
    su.execute(
        f"UPDATE {s}.records SET canonical = %s WHERE idx = 12",
        [_edited(rows[12], purpose="MED-REG")],
    )


def _tamper_field_and_leaf(
    su: psycopg.Connection[tuple[Any, ...]], s: str, rows: list[StoredRow]
) -> None:
    canonical = _edited(rows[12], outcome=Outcome.DENIED)
    su.execute(
        f"UPDATE {s}.records SET canonical = %s, leaf_hash = %s, outcome = 'denied' WHERE idx = 12",
        [canonical, leaf_hash(canonical)],
    )


def _tamper_delete(su: psycopg.Connection[tuple[Any, ...]], s: str, rows: list[StoredRow]) -> None:
    su.execute(f"DELETE FROM {s}.records WHERE idx = 7")


def _tamper_swap(su: psycopg.Connection[tuple[Any, ...]], s: str, rows: list[StoredRow]) -> None:
    su.execute(
        f"UPDATE {s}.records SET idx = CASE idx WHEN 4 THEN 9 ELSE 4 END WHERE idx IN (4, 9)"
    )


def _tamper_tail(su: psycopg.Connection[tuple[Any, ...]], s: str, rows: list[StoredRow]) -> None:
    compact = CompactRange()
    for row in rows[:20]:
        compact.append(row.leaf_hash)
    su.execute(f"DELETE FROM {s}.records WHERE idx >= 20")
    su.execute(
        f"UPDATE {s}.head SET size = %s, compact = %s WHERE id = 1",
        [compact.size, compact.to_bytes()],
    )


TAMPERING = {
    "one field changed": (_tamper_field, 12, "changed after it was written"),
    "one field changed, leaf hash recomputed": (
        _tamper_field_and_leaf,
        12,
        "does not follow the records before it",
    ),
    "a row deleted": (_tamper_delete, 7, "record 7 is missing"),
    "two rows swapped": (_tamper_swap, 4, "does not follow the records before it"),
    "the tail truncated and the head rewound": (_tamper_tail, 20, "record 20 is missing"),
}


@pytest.mark.parametrize("name", list(TAMPERING))
async def test_tampering_by_a_superuser_is_detected_and_the_index_named(
    name: str, store: PostgresAuditStore, schema: str
) -> None:
    tamper, index, problem = TAMPERING[name]
    await _fill(store, 30)
    log = _audit_log(store, ed25519.Ed25519PrivateKey.generate())
    kept = await log.checkpoint()
    assert (await log.verify()).intact
    rows = await store.rows(0, 30)
    with superuser() as su:
        disable_all_triggers(su, schema)
        tamper(su, schema, rows)
    result = await log.verify()
    assert not result.intact
    assert result.first_bad_index == index, result.problem
    assert problem in result.problem
    if name.startswith("the tail"):
        # Also deleting the stored checkpoints does not help against one kept elsewhere.
        with superuser() as su:
            su.execute(f"DELETE FROM {schema}.checkpoints")
        assert (await log.verify()).intact  # nothing stored contradicts the rewound log...
        result = await log.verify(trusted=kept)  # ...but the checkpoint a monitor kept does
        assert not result.intact
        assert result.first_bad_index == 20


async def test_a_query_refuses_rows_whose_columns_were_edited(
    store: PostgresAuditStore, schema: str
) -> None:
    await _fill(store, 6)
    with superuser() as su:
        disable_all_triggers(su, schema)
        su.execute(f"UPDATE {schema}.records SET purpose = 'MED-REG' WHERE idx = 2")
    with pytest.raises(AuditIntegrityError, match="record 2"):
        await store.query(AuditQuery(purpose="MED-REG"))
    # A record hidden from queries by its true purpose is named by verification too.
    assert await store.column_mismatches() == 2
    result = await AuditLog(
        store,
        origin="audit.test/510000",
        key=ed25519.Ed25519PrivateKey.generate(),
        key_name="audit-510000",
    ).verify()
    assert (result.intact, result.first_bad_index) == (False, 2)


# -- partitions and what is stored -------------------------------------------------------------


async def test_monthly_partitions_ahead_and_on_demand(
    store: PostgresAuditStore, schema: str
) -> None:
    now = datetime.now(UTC)
    this_month = date(now.year, now.month, 1)
    next_month = date(now.year + now.month // 12, now.month % 12 + 1, 1)
    months = await store.months()
    assert this_month in months
    assert next_month in months
    late = dataclasses.replace(make_record(0), time=datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC))
    appended = await store.append(late)
    assert date(2024, 2, 1) in await store.months()
    assert (await store.rows(appended.index, appended.index + 1))[0].canonical == late.canonical
    with superuser() as su:
        where = su.execute(
            f"SELECT tableoid::regclass::text FROM {schema}.records WHERE idx = %s",
            [appended.index],
        ).fetchone()
        assert where == (f"{schema}.records_y2024m02",)
        truncate_triggers = su.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s)"
            " AND tgname = 'records_no_truncate' AND tgenabled = 'A'",
            [f"{schema}.records_y2024m02"],
        ).fetchone()
        assert truncate_triggers == (1,)


async def test_no_raw_subject_id_is_stored(store: PostgresAuditStore, schema: str) -> None:
    await _fill(store, 20)
    await store.append(make_record(20, subject="51010819851231002X"))
    await _audit_log(store, ed25519.Ed25519PrivateKey.generate()).checkpoint()
    raw_id = re.compile(rb"(?<![0-9a-fA-F])\d{17}[\dXx](?![0-9a-fA-F])")
    with superuser() as su:
        columns = su.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s AND data_type IN ('text', 'bytea', 'character varying')",
            [schema],
        ).fetchall()
        assert len(columns) > 15
        scanned = 0
        for table, column, kind in columns:
            query = sql.SQL("SELECT {}::bytea FROM {}.{}").format(
                sql.Identifier(str(column)), sql.Identifier(schema), sql.Identifier(str(table))
            )
            if kind != "bytea":
                query = sql.SQL("SELECT convert_to({}, 'UTF8') FROM {}.{}").format(
                    sql.Identifier(str(column)), sql.Identifier(schema), sql.Identifier(str(table))
                )
            for (value,) in su.execute(query):
                data = bytes(value) if value is not None else b""
                assert RAW_SUBJECT.encode() not in data, (table, column)
                assert b"51010819851231002X" not in data, (table, column)
                assert not raw_id.search(data), (table, column)
                scanned += 1
        assert scanned > 100


# -- retention prunes ----------------------------------------------------------------------------

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)  # the cut falls inside May 2026 (see _spanning)
DAYS = 180


def _spanning(n: int = 40) -> list[AuditRecord]:
    """Record i is 400 - 10 i days older than NOW: 400 days in all, 14 months of partitions."""
    return [
        dataclasses.replace(make_record(i), time=NOW - timedelta(days=400 - 10 * i))
        for i in range(n)
    ]


def _month_of(moment: datetime) -> date:
    return date(moment.year, moment.month, 1)


async def _prune(log: AuditLog, now: datetime = NOW) -> Pruned | None:
    return await log.prune(
        older_than=timedelta(days=DAYS),
        operator="data bureau ops",
        reason="retention ticket 42",
        gateway="gw",
        region="510000",
        now=now,
    )


@pytest.fixture
async def spanning_log(
    make_store: Callable[..., PostgresAuditStore],
) -> AsyncIterator[tuple[AuditLog, list[AuditRecord]]]:
    """An opened log over 40 records spanning 400 days (appended in time order), signed."""
    log = _audit_log(make_store(), ed25519.Ed25519PrivateKey.generate())
    await log.open()
    records = _spanning()
    for record in records:
        await log.append(record)
    await log.checkpoint()
    yield log, records
    await log.close()


def _store_of(log: AuditLog) -> PostgresAuditStore:
    assert isinstance(log.store, PostgresAuditStore)
    return log.store


def _triggers_enabled(schema: str) -> set[str]:
    with superuser() as su:
        rows = su.execute(
            "SELECT DISTINCT t.tgenabled::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND NOT t.tgisinternal",
            [schema],
        ).fetchall()
    return {str(state) for (state,) in rows}


async def test_a_prune_removes_the_old_records_and_the_log_still_verifies(
    spanning_log: tuple[AuditLog, list[AuditRecord]], schema: str
) -> None:
    log, records = spanning_log
    store = _store_of(log)
    before = await store.rows(0, 40)
    assert await store.first_index_at_or_after(NOW - timedelta(days=DAYS)) == 22
    pruned = await _prune(log)
    assert pruned is not None
    assert (pruned.first, pruned.cut) == (0, 22)
    assert (pruned.at_cut.size, pruned.at_head.size) == (22, 41)  # 40 + the record of the prune
    # The records below the cut are gone, the rest (and the record of the prune) remain.
    assert await store.rows(0, 22) == []
    assert await store.rows(0, 41) == before[22:] + (await store.rows(40, 41))
    assert [i for i, _ in await store.query(AuditQuery(limit=1000))] == list(range(22, 41))
    assert (await store.head()).size == 41
    with superuser() as su:
        assert su.execute(f"SELECT min(idx), count(*) FROM {schema}.records").fetchone() == (22, 19)
    # The marker: the compact range at the cut, which the checkpoint at the cut signed.
    marker = await store.pruned()
    compact = CompactRange()
    for row in before[:22]:
        compact.append(row.leaf_hash)
    assert marker == PruneMarker(
        22, compact.to_bytes(), NOW, "data bureau ops", "retention ticket 42"
    )
    assert pruned.at_cut.root == compact.root()
    # Months wholly below the cut were dropped; the month the cut falls in kept its later rows.
    months = set(await store.months())
    by_month: dict[date, set[int]] = {}
    for i, record in enumerate(records):
        by_month.setdefault(_month_of(record.time), set()).add(i)
    below = {m for m, indices in by_month.items() if max(indices) < 22}
    straddling = {m for m, indices in by_month.items() if min(indices) < 22 <= max(indices)}
    assert len(below) >= 6
    assert straddling == {date(2026, 5, 1)}
    assert not below & months
    assert straddling <= months
    # Verification resumes from the marker and counts only what remains.
    result = await log.verify()
    assert result.intact, result.problem
    assert result.records_checked == 19
    # The prune is itself on record.
    (index, record), *_ = await store.query(AuditQuery(caller_agency="", limit=10))
    assert (index, record.rpc, record.case_id) == (40, "Audit.Prune", "retention ticket 42")
    assert record.agreement_id == "removed records 0 to 21"
    assert _triggers_enabled(schema) == {"A"}


async def test_appends_continue_and_a_second_prune_moves_the_cut(
    spanning_log: tuple[AuditLog, list[AuditRecord]],
    make_store: Callable[..., PostgresAuditStore],
    schema: str,
) -> None:
    log, records = spanning_log
    store = _store_of(log)
    assert await _prune(log) is not None
    # Appends go on at the right indices, also into a month whose partition the prune dropped
    # (the writer learns it has gone, and recreates it).
    assert (await log.append(dataclasses.replace(make_record(100), time=NOW))).index == 41
    late = dataclasses.replace(make_record(101), time=records[0].time)
    assert _month_of(late.time) not in await store.months()
    assert (await log.append(late)).index == 42
    assert _month_of(late.time) in await store.months()
    # A replica that still believes a dropped month has its partition: its group fails once
    # (rolled back, nothing stored), the partition is recreated and the group retried.
    replica = make_store()
    await replica.open()
    try:
        gone = _month_of(records[3].time)  # November 2025
        assert gone not in await store.months()
        replica._months.add(gone)  # as after an append into that month before the prune
        late = dataclasses.replace(make_record(102), time=records[3].time)
        assert (await replica.append(late)).index == 43
        assert replica.commits == 1
        assert gone in await store.months()
    finally:
        await replica.close()
    await log.checkpoint()
    result = await log.verify()
    assert result.intact, result.problem
    assert result.records_checked == 44 - 22
    # Nothing more is old enough: no prune.
    assert await _prune(log) is None
    # 100 days on, the cut moves (the late record is newer in the log, so it stays).
    later = NOW + timedelta(days=100)
    assert await store.first_index_at_or_after(later - timedelta(days=DAYS)) == 32
    second = await _prune(log, now=later)
    assert second is not None
    assert (second.first, second.cut, second.at_head.size) == (22, 32, 45)
    marker = await store.pruned()
    assert marker is not None
    assert (marker.before, marker.pruned_at) == (32, later)
    assert await store.rows(0, 32) == []
    assert [r.index for r in await store.rows(0, 100)] == list(range(32, 45))
    result = await log.verify()
    assert result.intact, result.problem
    assert result.records_checked == 45 - 32
    with superuser() as su:
        markers = su.execute(f"SELECT before FROM {schema}.prunes ORDER BY id").fetchall()
        assert markers == [(22,), (32,)]  # the first marker is kept
    assert _triggers_enabled(schema) == {"A"}


async def test_appends_during_a_prune_all_land_and_the_log_verifies(
    spanning_log: tuple[AuditLog, list[AuditRecord]],
) -> None:
    log, _ = spanning_log
    store = _store_of(log)
    fresh = [
        dataclasses.replace(make_record(200 + i), time=NOW + timedelta(seconds=i))
        for i in range(60)
    ]
    outcome = await asyncio.gather(_prune(log), *(log.append(r) for r in fresh))
    pruned = outcome[0]
    assert isinstance(pruned, Pruned)
    assert pruned.cut == 22
    head = await store.head()
    assert head.size == 40 + 60 + 1
    assert [r.index for r in await store.rows(0, head.size)] == list(range(22, head.size))
    await log.checkpoint()
    result = await log.verify()
    assert result.intact, result.problem
    assert result.records_checked == head.size - 22


def _tamper_kept_record(su: psycopg.Connection[tuple[Any, ...]], s: str) -> None:
    row = su.execute(f"SELECT canonical FROM {s}.records WHERE idx = 30").fetchone()
    assert row is not None
    edited = dataclasses.replace(AuditRecord.from_canonical(bytes(row[0])), purpose="MED-REG")
    su.execute(f"UPDATE {s}.records SET canonical = %s WHERE idx = 30", [edited.canonical])


def _tamper_marker(su: psycopg.Connection[tuple[Any, ...]], s: str) -> None:
    # A compact range of the right shape that no checkpoint signed.
    su.execute(f"UPDATE {s}.prunes SET compact = substr(compact, 33) || sha256(compact)")


def _tamper_forget_the_prune(su: psycopg.Connection[tuple[Any, ...]], s: str) -> None:
    su.execute(f"DELETE FROM {s}.prunes")


def _tamper_prune_further(su: psycopg.Connection[tuple[Any, ...]], s: str) -> None:
    su.execute(f"DELETE FROM {s}.records WHERE idx < 25")


PRUNED_TAMPERING = {
    "a kept record changed": (
        _tamper_kept_record,
        30,
        "record 30 was changed after it was written",
    ),
    "the marker's compact range replaced": (_tamper_marker, 22, "no signed checkpoint vouches"),
    "the marker deleted": (_tamper_forget_the_prune, 0, "record 0 is missing"),
    "more records removed by hand": (_tamper_prune_further, 22, "record 22 is missing"),
}


@pytest.mark.parametrize("name", list(PRUNED_TAMPERING))
async def test_tampering_after_a_prune_is_detected_and_the_index_named(
    name: str, spanning_log: tuple[AuditLog, list[AuditRecord]], schema: str
) -> None:
    tamper, index, problem = PRUNED_TAMPERING[name]
    log, _ = spanning_log
    assert await _prune(log) is not None
    assert (await log.verify()).intact
    with superuser() as su:
        disable_all_triggers(su, schema)
        tamper(su, schema)
    result = await log.verify()
    assert not result.intact
    assert result.first_bad_index == index, result.problem
    assert problem in result.problem


async def test_after_a_prune_the_log_is_still_append_only(
    spanning_log: tuple[AuditLog, list[AuditRecord]], roles: PgRoles, schema: str
) -> None:
    log, _ = spanning_log
    assert await _prune(log) is not None
    assert _triggers_enabled(schema) == {"A"}  # every trigger ENABLE ALWAYS again
    s = schema
    with superuser() as su:
        partition = _partitions(su, schema)[0]
        functions = su.execute(
            "SELECT p.proname, pg_get_userbyid(p.proowner), p.prosecdef, p.proconfig::text"
            " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = %s AND p.proname = 'prune_below'",
            [schema],
        ).fetchall()
        assert functions == [
            ("prune_below", roles.owner, True, '{"search_path=pg_catalog, pg_temp"}')
        ]
        privileges = su.execute(
            "SELECT has_function_privilege('public', p.oid, 'EXECUTE'),"
            " has_function_privilege(%s, p.oid, 'EXECUTE')"
            " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = %s AND p.proname = 'prune_below'",
            [roles.app, schema],
        ).fetchone()
        assert privileges == (False, True)
    with psycopg.connect(roles.app_dsn, autocommit=True) as app:
        for statement in (
            f"DELETE FROM {s}.records WHERE idx = 30",
            f"DELETE FROM {partition}",
            f"TRUNCATE {s}.records",
            f"UPDATE {s}.records SET purpose = 'X' WHERE idx = 30",
            f"DELETE FROM {s}.prunes",
            f"UPDATE {s}.prunes SET before = 1",
            f"TRUNCATE {s}.prunes",
            f"INSERT INTO {s}.prunes (before, compact, pruned_at, operator, reason)"
            " VALUES (39, '', now(), 'x', 'y')",
            f"ALTER TABLE {partition} DISABLE TRIGGER records_append_only",
        ):
            message = _refused(app, statement)
            assert "permission denied" in message or "must be owner" in message, statement
        assert app.execute(f"SELECT count(*) FROM {s}.records").fetchone() == (19,)
    with psycopg.connect(roles.owner_dsn, autocommit=True) as owner:
        for statement in (
            f"DELETE FROM {s}.records WHERE idx = 30",
            f"DELETE FROM {partition}",
            f"DELETE FROM {s}.prunes",
            f"UPDATE {s}.prunes SET before = 1",
            f"TRUNCATE {s}.prunes",
        ):
            assert "append-only" in _refused(owner, statement), statement
    assert (await log.verify()).intact


async def test_prune_below_refuses_a_bad_cut_and_changes_nothing(
    spanning_log: tuple[AuditLog, list[AuditRecord]], roles: PgRoles, schema: str
) -> None:
    log, _ = spanning_log
    store = _store_of(log)
    rows = await store.rows(0, 40)

    def compact_at(size: int) -> bytes:
        compact = CompactRange()
        for row in rows[:size]:
            compact.append(row.leaf_hash)
        return compact.to_bytes()

    def marker(before: int, compact: bytes | None = None, operator: str = "ops") -> PruneMarker:
        compact = compact_at(before) if compact is None else compact
        return PruneMarker(before, compact, NOW, operator, "ticket")

    refused = {
        "outside the audit log": marker(41, compact_at(40) + b"\0" * 32),
        "outside the audit log (size": marker(0, b""),
        "holds 2 hashes": marker(10, compact_at(8)),
        "does not give the root stored with record 9": marker(10, compact_at(12)),
        "prunes_operator_check": marker(10, operator=" "),
    }
    for reason, bad in refused.items():
        with pytest.raises(AuditUnavailable, match=re.escape(reason)):
            await store.prune(bad)
    assert await store.pruned() is None
    assert len(await store.rows(0, 40)) == 40
    # The app role may call the function itself (that is the grant): the same checks hold.
    s = schema
    with psycopg.connect(roles.app_dsn, autocommit=True) as app:
        message = _refused(
            app,
            f"SELECT {s}.prune_below(10, decode('{compact_at(12).hex()}', 'hex'), now(), 'a', 'b')",
        )
        assert "does not give the root" in message
        app.execute(
            f"SELECT {s}.prune_below(10, decode('{compact_at(10).hex()}', 'hex'), now(), 'a', 'b')"
        )
        message = _refused(
            app,
            f"SELECT {s}.prune_below(8, decode('{compact_at(8).hex()}', 'hex'), now(), 'a', 'b')",
        )
        assert "already pruned below 10" in message
    assert (await store.pruned() or marker(1)).before == 10
    assert [r.index for r in await store.rows(0, 40)] == list(range(10, 40))
    assert _triggers_enabled(schema) == {"A"}


async def test_first_index_at_or_after(
    make_store: Callable[..., PostgresAuditStore],
) -> None:
    store = make_store()
    await store.open()
    try:
        assert await store.first_index_at_or_after(NOW) == 0  # an empty log: its size
        records = _spanning(10)
        for record in records:
            await store.append(record)
        assert await store.first_index_at_or_after(records[0].time - timedelta(days=999)) == 0
        assert await store.first_index_at_or_after(records[0].time) == 0
        assert await store.first_index_at_or_after(records[3].time) == 3
        assert await store.first_index_at_or_after(records[3].time + timedelta(microseconds=1)) == 4
        assert await store.first_index_at_or_after(records[9].time) == 9
        assert await store.first_index_at_or_after(records[9].time + timedelta(seconds=1)) == 10
        assert await store.first_index_at_or_after(NOW + timedelta(days=999)) == 10
        # A late record (older than those before it) is found by its index, not its time.
        await store.append(dataclasses.replace(make_record(10), time=records[0].time))
        assert await store.first_index_at_or_after(records[9].time + timedelta(seconds=1)) == 11
        assert await store.first_index_at_or_after(records[0].time) == 0
    finally:
        await store.close()


async def test_a_version_1_schema_is_migrated_and_pruned(
    roles: PgRoles, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A schema as the first release left it, with records in it.
    monkeypatch.setattr(_postgres, "SCHEMA_VERSION", 1)
    old = PostgresAuditStore(roles.owner_dsn, schema=schema)
    await old.open()
    for record in _spanning():
        await old.append(record)
    await old.close()
    monkeypatch.undo()
    # This release's store migrates it, and the app role may prune it.
    log = _audit_log(
        PostgresAuditStore(roles.app_dsn, schema=schema, owner_dsn=roles.owner_dsn),
        ed25519.Ed25519PrivateKey.generate(),
    )
    await log.open()
    try:
        with superuser() as su:
            versions = su.execute(f"SELECT version FROM {schema}.schema_version ORDER BY 1")
            assert versions.fetchall() == [(v,) for v in range(1, _postgres.SCHEMA_VERSION + 1)]
        assert await log.store.pruned() is None
        pruned = await _prune(log)
        assert pruned is not None
        assert pruned.cut == 22
        result = await log.verify()
        assert result.intact, result.problem
        assert result.records_checked == 19
    finally:
        await log.close()


async def test_appends_waiting_for_a_stuck_database_are_bounded(
    make_store: Callable[..., PostgresAuditStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A frozen PostgreSQL (or a lost network) answers nothing, ever: the requests that wait
    # for it must not each leave a record queued for as long as it lasts.
    store = make_store(max_pending=4)
    await store.open()
    release = asyncio.Event()
    write = store._write

    async def stuck(records: Any) -> Any:
        await release.wait()
        return await write(records)

    monkeypatch.setattr(store, "_write", stuck)
    try:
        taken = asyncio.ensure_future(store.append(make_record(0)))
        await asyncio.sleep(0.05)  # the writer holds it
        waiting = [asyncio.ensure_future(store.append(make_record(i))) for i in range(1, 5)]
        await asyncio.sleep(0.05)
        with pytest.raises(AuditUnavailable, match="waiting"):
            await asyncio.wait_for(store.append(make_record(5)), 1)
    finally:
        release.set()
    results = await asyncio.gather(taken, *waiting)
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    await store.close()


async def test_a_stop_is_not_held_by_a_database_that_stopped_answering(
    roles: PgRoles, schema: str
) -> None:
    """The network to PostgreSQL silently drops packets (a proxy that stops forwarding): an
    append on its way waits, the stop gives up on it within the store's timeout, and the append
    is refused (nothing is released for it), instead of the process never ending."""
    proxy = TcpProxy("127.0.0.1", 5432)
    port = await proxy.start()
    dsn = psycopg.conninfo.make_conninfo(roles.app_dsn, host="127.0.0.1", port=port)
    store = PostgresAuditStore(dsn, schema=schema, owner_dsn=roles.owner_dsn, timeout=1.0)
    try:
        await store.open()
        await store.append(make_record(0))
        proxy.freeze()
        pending = asyncio.ensure_future(store.append(make_record(1)))
        await asyncio.sleep(0.1)
        async with asyncio.timeout(30):  # a guard: without a bound, the stop never ends
            await store.close()
        with pytest.raises(AuditUnavailable):
            await pending
    finally:
        proxy.thaw()
        await proxy.close()


async def test_a_read_given_up_on_leaves_no_closed_socket_in_the_event_loop(
    roles: PgRoles, schema: str
) -> None:
    """A read the store gives up on (the database stopped answering) ends its connection, and
    the statement waiting on it leaves the event loop's selector at once. A descriptor closed
    while still registered stays in asyncio's map after epoll has dropped it, and the
    reconnection, given the same number, cannot be registered ("FileNotFoundError" from
    epoll_ctl: seen with psycopg 3.2.1 in CI)."""
    proxy = TcpProxy("127.0.0.1", 5432)
    port = await proxy.start()
    dsn = psycopg.conninfo.make_conninfo(roles.app_dsn, host="127.0.0.1", port=port)
    store = PostgresAuditStore(dsn, schema=schema, owner_dsn=roles.owner_dsn, timeout=0.5)
    try:
        await store.open()
        await store.append(make_record(0))
        assert (await store.head()).size == 1
        for _ in range(3):  # each round gives up on a read, then reads through a new connection
            proxy.freeze()
            with pytest.raises(AuditUnavailable, match="did not answer"):
                await store.head()
            for _ in range(3):
                await asyncio.sleep(0)  # the abandoned statement's task runs
            selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
            for key in list(selector.get_map().values()):
                os.fstat(key.fd)  # OSError for a descriptor closed under the selector
            proxy.thaw()
            assert (await store.head()).size == 1
    finally:
        proxy.thaw()
        async with asyncio.timeout(30):
            await store.close()
        await proxy.close()
