"""The PostgreSQL audit store on the real server: the store contract, replicas appending
together, append-only enforced by privileges and by triggers (also in replica mode), tampering
by a superuser detected with the index named, monthly partitions, no raw subject ids stored,
and reconnection after the backend is killed."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import pytest
from audit_contract import check_store_contract, make_record
from cryptography.hazmat.primitives.asymmetric import ed25519
from pg_support import SUPERUSER_DSN, PgRoles, disable_all_triggers, pg_roles, superuser
from psycopg import sql

from gateway.audit._log import AuditLog
from gateway.audit._merkle import CompactRange, leaf_hash
from gateway.audit._postgres import PostgresAuditStore
from gateway.audit._record import AuditRecord, Outcome
from gateway.audit._store import AuditQuery, StoredRow
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
        assert a.batches < 200  # grouped, not one transaction per record
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
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND data_type IN ('text', 'bytea', 'character varying')",
            [schema],
        ).fetchall()
        assert len(columns) > 15
        scanned = 0
        for table, column in columns:
            query = sql.SQL("SELECT {}::bytea FROM {}.{}").format(
                sql.Identifier(str(column)), sql.Identifier(schema), sql.Identifier(str(table))
            )
            if column not in ("canonical", "leaf_hash", "root", "compact"):
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
