"""The home gateway's consent register, one contract in memory, in its SQLite file and in the
PostgreSQL audit schema (real server, a fresh schema per test): a consent kept once, revoked
once (the first time stays, a later registration changes nothing), a citizen's consents newest
first. The durable ones: a revocation survives a restart and another instance on the same file
or schema (another replica) sees it at once. PostgreSQL: concurrent revocations on two replicas
keep one time, the database itself keeps pseudonyms only and never undoes a revocation, a
frozen database fails the call within its bound (AUDIT_UNAVAILABLE at the RPC), and the wiring
keeps the register beside a PostgreSQL audit store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from fault_support import TcpProxy
from pg_support import PgRoles, pg_roles
from psycopg import sql

from gateway._wiring import consent_register
from gateway.audit import (
    AuditLog,
    AuditStore,
    AuditUnavailable,
    MemoryAuditStore,
    PostgresAuditStore,
)
from gateway.breaker import CircuitBreaker
from gateway.config import AuditConfig, GatewayConfig
from gateway.consent import (
    ConsentGate,
    ConsentRegister,
    ConsentUses,
    MemoryConsentRegister,
    PostgresConsentRegister,
    RegisteredConsent,
    SqliteConsentRegister,
)
from gateway.errors import Refusal
from gateway.identity import Caller, CallerKind
from gateway.services.consents import consent_status
from tongban.v1 import exchange_pb2

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
KEY = ed25519.Ed25519PrivateKey.generate()
SUBJECT_A, SUBJECT_B, SUBJECT_C = "a" * 64, "b" * 64, "c" * 64  # pseudonyms (64 hex digits)
RAW_ID = "11010519491231002X"  # a citizen id: never kept

POSTGRES = pytest.param("postgres", marks=pytest.mark.integration)
ALL = ["memory", "sqlite", POSTGRES]
DURABLE = ["sqlite", POSTGRES]


def consent(consent_id: str, subject: str, issued: datetime) -> RegisteredConsent:
    return RegisteredConsent(
        consent_id=consent_id,
        subject=subject,
        agencies=("cq.hsa",),
        regions=(),
        purpose="MED-REG",
        datasets=("510000/medical.insurance",),
        valid_from=issued,
        valid_until=issued + timedelta(days=30),
        max_uses=3,
        issued_at=issued,
    )


@pytest.fixture(scope="module")
def roles() -> Iterator[PgRoles]:
    with pg_roles() as made:
        yield made


def audit_log(store: AuditStore, **options: object) -> AuditLog:
    return AuditLog(store, origin="audit.test/500000", key=KEY, key_name="audit-500000", **options)  # type: ignore[arg-type]


class Place:
    """Where a register is kept; each `open()` is another instance on it (a restart, a replica)."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.file = tmp_path / "audit.db-consents.sqlite"
        self.memory = MemoryConsentRegister()
        self.roles: PgRoles | None = None
        self.schema = ""
        if kind == "postgres":
            self.roles = request.getfixturevalue("roles")
            self.schema = self.roles.fresh_schema()
        self._closers: dict[int, Callable[[], object]] = {}

    async def open(self) -> ConsentRegister:
        if self.kind == "memory":
            return self.memory
        if self.kind == "sqlite":
            register = SqliteConsentRegister(self.file)
            self._closers[id(register)] = register.close
            return register
        assert self.roles is not None
        log = audit_log(
            PostgresAuditStore(
                self.roles.app_dsn, schema=self.schema, owner_dsn=self.roles.owner_dsn
            )
        )
        await log.open()
        pg = PostgresConsentRegister(log)
        self._closers[id(pg)] = log.close
        return pg

    async def close(self, register: ConsentRegister) -> None:
        close = self._closers.pop(id(register), None)
        if close is not None:
            done = close()
            if asyncio.iscoroutine(done):
                await done

    async def close_all(self) -> None:
        for key in list(self._closers):
            done = self._closers.pop(key)()
            if asyncio.iscoroutine(done):
                await done
        if self.roles is not None:
            self.roles.drop_schema(self.schema)


@pytest.fixture
async def place(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Place]:
    made = Place(request.param, tmp_path, request)
    yield made
    await made.close_all()


# -- the contract, every kind ---------------------------------------------------------------


@pytest.mark.parametrize("place", ALL, indirect=True)
async def test_a_consent_is_kept_once_and_revoked_once(place: Place) -> None:
    register = await place.open()
    first = consent("consent-0001", SUBJECT_A, T0)
    assert await register.get("consent-0001") is None
    assert await register.register(first) == first  # every field as registered
    other = replace(consent("consent-0001", SUBJECT_B, T0 + timedelta(days=1)), max_uses=9)
    assert await register.register(other) == first  # idempotent: the first registration stays
    revoked = await register.revoke("consent-0001", T0 + timedelta(hours=1))
    assert revoked == replace(first, revoked_at=T0 + timedelta(hours=1))
    again = await register.revoke("consent-0001", T0 + timedelta(hours=2))
    assert again == revoked  # the first time stays
    assert await register.register(first) == revoked  # a later registration undoes nothing
    assert await register.get("consent-0001") == revoked
    assert await register.revoke("consent-none", T0) is None
    assert await register.get("consent-none") is None


@pytest.mark.parametrize("place", ALL, indirect=True)
async def test_a_citizens_consents_are_listed_newest_first_and_only_theirs(place: Place) -> None:
    register = await place.open()
    for n, subject in enumerate([SUBJECT_A, SUBJECT_A, SUBJECT_C]):
        await register.register(consent(f"consent-000{n}", subject, T0 + timedelta(days=n)))
    await register.revoke("consent-0000", T0 + timedelta(days=5))
    listed = await register.of_subject(SUBJECT_A)
    assert [c.consent_id for c in listed] == ["consent-0001", "consent-0000"]
    assert [c.revoked_at for c in listed] == [None, T0 + timedelta(days=5)]
    assert await register.of_subject("d" * 64) == []


# -- durable registers: a restart, another replica --------------------------------------------


@pytest.mark.parametrize("place", DURABLE, indirect=True)
async def test_a_revocation_survives_a_reopen_and_the_first_time_stays(place: Place) -> None:
    register = await place.open()
    kept = await register.register(consent("consent-0001", SUBJECT_A, T0))
    assert kept.revoked_at is None
    await register.revoke("consent-0001", T0 + timedelta(hours=1))
    await place.close(register)
    reopened = await place.open()  # the gateway restarted
    found = await reopened.get("consent-0001")
    assert found == replace(kept, revoked_at=T0 + timedelta(hours=1))
    assert found.datasets == ("510000/medical.insurance",)
    later = await reopened.revoke("consent-0001", T0 + timedelta(hours=2))
    assert later is not None
    assert later.revoked_at == T0 + timedelta(hours=1)


@pytest.mark.parametrize("place", DURABLE, indirect=True)
async def test_another_replica_sees_a_revocation_at_once_and_cannot_undo_it(
    place: Place,
) -> None:
    one, other = await place.open(), await place.open()
    kept = await one.register(consent("consent-0001", SUBJECT_A, T0))
    assert await other.get("consent-0001") == kept
    revoked = await one.revoke("consent-0001", T0 + timedelta(hours=1))
    assert await other.get("consent-0001") == revoked  # at once: no cache, no delay
    assert await other.register(consent("consent-0001", SUBJECT_A, T0)) == revoked
    assert await other.revoke("consent-0001", T0 + timedelta(hours=3)) == revoked
    assert [c.revoked_at for c in await other.of_subject(SUBJECT_A)] == [revoked.revoked_at]


# -- PostgreSQL only -----------------------------------------------------------------------


@pytest.mark.parametrize("place", [POSTGRES], indirect=True)
async def test_concurrent_revocations_on_two_replicas_keep_one_time(place: Place) -> None:
    one, other = await place.open(), await place.open()
    ids = [f"consent-{n:04d}" for n in range(8)]
    for consent_id in ids:
        await one.register(consent(consent_id, SUBJECT_A, T0))
    t1, t2 = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    for consent_id in ids:
        a, b = await asyncio.gather(one.revoke(consent_id, t1), other.revoke(consent_id, t2))
        assert a is not None
        assert b is not None
        assert a.revoked_at == b.revoked_at
        assert a.revoked_at in {t1, t2}


@pytest.mark.parametrize("place", [POSTGRES], indirect=True)
async def test_the_database_keeps_pseudonyms_only_and_never_undoes_a_revocation(
    place: Place,
) -> None:
    assert place.roles is not None
    register = await place.open()
    with pytest.raises(ValueError, match="pseudonym"):
        await register.register(consent("consent-0002", RAW_ID, T0))
    assert await register.of_subject(RAW_ID) == []
    await register.register(consent("consent-0001", SUBJECT_A, T0))
    await register.revoke("consent-0001", T0 + timedelta(hours=1))
    table = sql.Identifier(place.schema, "consents")
    insert_raw = sql.SQL(
        "INSERT INTO {} (consent_id, subject, agencies, regions, purpose, datasets, valid_from,"
        " valid_until, max_uses, issued_at) VALUES ('consent-0003', %s, %s::text[], %s::text[],"
        " 'MED-REG', %s::text[], now(), now(), 1, now())"
    )
    refused = {
        place.roles.app: [  # what the replicas connect as
            (sql.SQL("UPDATE {} SET revoked_at = NULL"), [], "revocation is recorded"),
            (sql.SQL("UPDATE {} SET purpose = 'X'"), [], "permission denied"),
            (sql.SQL("DELETE FROM {}"), [], "permission denied"),
            (sql.SQL("TRUNCATE {}"), [], "permission denied"),
            (insert_raw, [RAW_ID, [], [], []], "check constraint"),
        ],
        place.roles.owner: [  # even the table's owner
            (sql.SQL("UPDATE {} SET revoked_at = now()"), [], "revocation is recorded"),
            (sql.SQL("DELETE FROM {}"), [], "append-only"),
            (sql.SQL("TRUNCATE {}"), [], "append-only"),
        ],
    }
    for role, statements in refused.items():
        with psycopg.connect(place.roles.dsn(role), autocommit=True) as conn:
            for statement, params, message in statements:
                with pytest.raises(psycopg.Error, match=message):
                    conn.execute(statement.format(table), params or None)
    found = await register.get("consent-0001")
    assert found is not None
    assert found.revoked_at == T0 + timedelta(hours=1)


@pytest.mark.integration
async def test_a_frozen_database_fails_the_call_within_its_bound(roles: PgRoles) -> None:
    schema = roles.fresh_schema()
    proxy = TcpProxy("127.0.0.1", 5432)
    port = await proxy.start()
    dsn = psycopg.conninfo.make_conninfo(roles.app_dsn, host="127.0.0.1", port=port)
    log = audit_log(
        PostgresAuditStore(dsn, schema=schema, owner_dsn=roles.owner_dsn, timeout=2.0),
        read_timeout_seconds=0.3,
        breaker=CircuitBreaker(failure_threshold=10),  # each failure here is the store's own
    )
    gate = ConsentGate(
        region="500000",
        register=PostgresConsentRegister(log),
        uses=ConsentUses(),
        ask_status=None,
        pseudonym=lambda subject: SUBJECT_A,
        clock=lambda: T0,
    )
    peer = Caller(CallerKind.GATEWAY, "510000", "", "t", "CN=gateway-510000")
    asked = exchange_pb2.ConsentStatusRequest(consent_id="consent-0001")
    try:
        await log.open()
        await gate.register.register(consent("consent-0001", SUBJECT_A, T0))
        assert not (await consent_status(gate, peer, asked)).revoked
        proxy.freeze()
        started = time.monotonic()
        with pytest.raises(AuditUnavailable):
            await gate.register.revoke("consent-0001", T0 + timedelta(hours=1))
        with pytest.raises(Refusal) as refused:  # Peer.ConsentStatus
            await consent_status(gate, peer, asked)
        assert refused.value.reason == "AUDIT_UNAVAILABLE"
        assert time.monotonic() - started < 1.5
        proxy.thaw()
        await proxy.cut()  # the abandoned statements' connection goes with it
        await proxy.restore()
        await gate.register.revoke("consent-0001", T0 + timedelta(hours=2))
        assert (await consent_status(gate, peer, asked)).revoked
    finally:
        proxy.thaw()
        async with asyncio.timeout(30):
            await log.close()
        await proxy.close()
        roles.drop_schema(schema)


def test_the_register_is_kept_beside_the_audit_store(tmp_path: Path) -> None:
    def config(store: str, **more: object) -> GatewayConfig:
        audit = AuditConfig(
            store=store, key=tmp_path / "audit.key", pseudonym_key=b"k" * 32, **more
        )  # type: ignore[arg-type]
        return GatewayConfig(
            region="500000",
            listen="127.0.0.1:0",
            tls_certificate=tmp_path / "tls.pem",
            tls_private_key=tmp_path / "tls.key",
            authority_public_key=tmp_path / "authority.pem",
            snapshot_file=tmp_path / "snapshot.json",
            audit=audit,
        )

    closers: list[Callable[[], Awaitable[None]]] = []
    postgres = PostgresAuditStore("host=127.0.0.1 dbname=test", schema="tongban_audit")
    on_pg = consent_register(config("postgres", dsn="host=127.0.0.1"), audit_log(postgres), [])
    assert isinstance(on_pg, PostgresConsentRegister)  # not connected until it is used
    sqlite = consent_register(
        config("sqlite", path=tmp_path / "audit.db"), audit_log(MemoryAuditStore()), closers
    )
    assert isinstance(sqlite, SqliteConsentRegister)
    assert sqlite.path == tmp_path / "audit.db-consents.sqlite"
    assert len(closers) == 1
    sqlite.close()
    memory = consent_register(config("memory"), audit_log(MemoryAuditStore()), [])
    assert isinstance(memory, MemoryConsentRegister)
    with pytest.raises(TypeError, match="PostgreSQL audit store"):
        PostgresConsentRegister(audit_log(MemoryAuditStore()))
