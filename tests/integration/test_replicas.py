"""Two replicas of a region sharing one Redis and one PostgreSQL audit store (issue 8, item 4).

The deployment, all in-process on loopback, real Redis and real PostgreSQL:

                                  四川 510000, requester              重庆 500000, provider
    agency sc.hrss ─ round robin ─┬─▶ replica 0 ── Peer.Forward ──▶ replica 0 ─┬─▶ 重庆's data
    (a channel per replica,       └─▶ replica 1 ── Peer.Forward ──▶ replica 1 ─┘   system
     each call on the next)           shared: Redis db 0 (replay      shared: Redis db 1 (answer
                                      window, quotas), audit schema   cache), audit schema

四川 (510000) asks, 重庆 (500000) owns `si.participation` (agreement CY-SI-2026). Each region runs
two replicas of its gateway; the replicas of a region share that region's Redis (a database of
one throw-away `redis-server` per test: the gateway's keys have fixed names, so the machine's
shared Redis would mix them with other tests') and that region's PostgreSQL audit schema (a
fresh one per test, under the roles of `pg_support`; replica 0 opens it with the owner's DSN, as
the deploy step, replica 1 with the application role's alone). The agency's client plays a
round-robin balancer: one channel per requester replica, each call on the next. Each requester
replica's `[peers]` names a different provider replica (as a per-replica sidecar would), so
that traffic spread over the requester replicas is spread over the provider replicas too.

Which replicas matter for what: the replay window and the quotas are checked by the requesting
gateway (510000), the answer cache is the owner's (`cache_scope = "provider"`: 500000), and both
regions audit every query, each in its own shared log. Each test would fail if the property
broke: per-replica quota counts let twice the quota through, a per-replica replay window accepts
the id on the other replica, a per-replica cache misses there, and two writers that each kept
their own tree head would hand out the same audit index twice and break the log's roots.
Every test is bounded by `TEST_SECONDS`, every call by `CALL_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from pg_support import PgRoles, pg_roles
from query_support import CALL_TIMEOUT, Cluster, bearer, request
from redis.asyncio import Redis
from support import (
    DEMO_SOURCE,
    Federation,
    ManualClock,
    RedisServer,
    credentials_as,
    error_info,
    make_federation,
)

from gateway.audit import AuditLog, AuditQuery, AuditRecord, Outcome, PostgresAuditStore
from gateway.config import GatewayConfig
from gateway.demo.config import config_for_dev_pki
from gateway.demo.data import DemoData
from gateway.demo.provider import create_provider
from gateway.quota import minute_of, quota_key
from gateway.server import Gateway, create_gateway
from signer import load_private_key
from tongban.v1 import exchange_pb2, exchange_pb2_grpc, oversight_pb2, oversight_pb2_grpc

pytestmark = pytest.mark.integration

REQUESTER = "510000"  # 四川: its agencies ask; it checks the replay window and the quotas
PROVIDER = "500000"  # 重庆: owns the data, decides again, seals and caches the answers
AGENCY = "sc.hrss"
OVERSIGHT = {REQUESTER: "sc.data", PROVIDER: "cq.data"}  # each region's oversight agency
DATASET, PURPOSE, AGREEMENT = "si.participation", "SI-TRANSFER", "CY-SI-2026"
REPLICAS = 2
CHECKPOINT_EVERY = 7  # records: both replicas sign checkpoints while the other appends
TEST_SECONDS = 90.0  # a whole test, setup and teardown included


# -- the deployment ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roles() -> Iterator[PgRoles]:
    with pg_roles() as made:
        yield made


def replica_config(
    fed: Federation,
    roles: PgRoles,
    region: str,
    replica: int,
    *,
    schema: str,
    redis_url: str,
    provider: str = "",
    peers: dict[str, str] | None = None,
) -> GatewayConfig:
    """One replica of `region`: the region's Redis and its PostgreSQL audit schema."""
    config = config_for_dev_pki(
        fed.pki,
        region,
        listen="127.0.0.1:0",
        snapshot_file=fed.current,
        provider=provider,
        redis_url=redis_url,
        peers=peers,
        bind_queries=False,  # the replicas are queried with made-up case ids
    )
    assert config.audit is not None
    audit = dataclasses.replace(
        config.audit,
        store="postgres",
        dsn=roles.app_dsn,
        owner_dsn=roles.owner_dsn if replica == 0 else "",  # replica 0 migrates: the deploy step
        schema=schema,
        checkpoint_every_records=CHECKPOINT_EVERY,
    )
    return dataclasses.replace(config, audit=audit, grace_seconds=0.2, poll_seconds=0.1)


class RoundRobin:
    """An agency's client behind a round-robin balancer: one channel per requester replica,
    each call on the next one (replica 0 first)."""

    def __init__(self, stubs: list[exchange_pb2_grpc.DataExchangeAsyncStub], token: str) -> None:
        self.stubs = stubs
        self.token = token
        self._turn = itertools.cycle(range(len(stubs)))
        self.calls: list[int] = []  # the replica each call went to

    async def query(self, query: exchange_pb2.QueryRequest) -> exchange_pb2.QueryResponse:
        replica = next(self._turn)
        self.calls.append(replica)
        return await self.on(replica, query)

    async def on(
        self, replica: int, query: exchange_pb2.QueryRequest
    ) -> exchange_pb2.QueryResponse:
        """The call a balancer sent to `replica`."""
        return await self.stubs[replica].Query(
            query, metadata=bearer(self.token), timeout=CALL_TIMEOUT
        )


@dataclass
class Deployment:
    fed: Federation
    roles: PgRoles
    schemas: dict[str, str]
    redis_urls: dict[str, str]
    clock: Callable[[], datetime]
    gateways: dict[str, list[Gateway]] = field(default_factory=dict)
    audit_keys: dict[str, Path] = field(default_factory=dict)  # each region's checkpoint key

    def replica(self, region: str, n: int) -> Gateway:
        return self.gateways[region][n]

    @functools.cached_property
    def subjects(self) -> list[str]:
        """The citizens 重庆's demo data system holds a si.participation record for."""
        data = DemoData(PROVIDER)
        return [p for p in data.population(40) if data.record(DATASET, p) is not None]

    def subject(self, n: int = 0) -> str:
        """The n-th of them (from the first again past the last)."""
        return self.subjects[n % len(self.subjects)]

    def query(self, n: int = 0, *, case_id: str = "CASE-2026-0001") -> exchange_pb2.QueryRequest:
        """A query of the n-th subject, with a fresh request id."""
        return request(PROVIDER, DATASET, PURPOSE, self.subject(n), case_id=case_id)

    @contextlib.asynccontextmanager
    async def client(self, agency: str = AGENCY) -> AsyncIterator[RoundRobin]:
        channels = [
            grpc.aio.secure_channel(
                f"localhost:{gateway.port}", credentials_as(self.fed, agency, REQUESTER)
            )
            for gateway in self.gateways[REQUESTER]
        ]
        try:
            yield RoundRobin(
                [exchange_pb2_grpc.DataExchangeStub(ch) for ch in channels],
                Cluster(self.fed, {}).token(agency, now=self.clock()),  # query_support's tokens
            )
        finally:
            for ch in channels:
                await ch.close()

    async def verify_audit(self, region: str, replica: int) -> oversight_pb2.VerifyAuditResponse:
        """Oversight.VerifyAudit on one replica, as the region's oversight agency."""
        port = self.replica(region, replica).port
        async with grpc.aio.secure_channel(
            f"localhost:{port}", credentials_as(self.fed, OVERSIGHT[region], region)
        ) as ch:
            return await oversight_pb2_grpc.OversightStub(ch).VerifyAudit(
                oversight_pb2.VerifyAuditRequest(), timeout=CALL_TIMEOUT
            )

    def store(self, region: str, replica: int) -> PostgresAuditStore:
        store = self.replica(region, replica).audit.store  # type: ignore[union-attr]
        assert isinstance(store, PostgresAuditStore)
        return store

    async def stop(self) -> None:
        """Stop every replica (each signs a final checkpoint); again does nothing."""
        for replicas in self.gateways.values():
            while replicas:
                await replicas.pop().stop(0)

    @contextlib.asynccontextmanager
    async def outsider_log(self, region: str) -> AsyncIterator[AuditLog]:
        """The region's shared log opened as an auditor would: the application role, the audit
        key's public half only (it signs nothing)."""
        key = load_private_key(self.audit_keys[region])
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        log = AuditLog(
            PostgresAuditStore(self.roles.app_dsn, schema=self.schemas[region]),
            origin=f"audit.tongban/{region}",
            public_key=key.public_key(),
            key_name=f"audit.tongban/{region}",  # C2SP: the key is named after the log
        )
        await log.open()
        try:
            yield log
        finally:
            await log.close()


@contextlib.asynccontextmanager
async def deployed(
    fed: Federation,
    roles: PgRoles,
    redis: RedisServer,
    *,
    clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[Deployment]:
    """Two replicas of 500000 (with 重庆's demo data system), then two of 510000, the n-th
    requester replica forwarding to the n-th provider replica."""
    schemas = {region: roles.fresh_schema() for region in (REQUESTER, PROVIDER)}
    redis_urls = {
        REQUESTER: f"redis://127.0.0.1:{redis.port}/0",
        PROVIDER: f"redis://127.0.0.1:{redis.port}/1",
    }
    kwargs = {"clock": clock} if clock is not None else {}
    deployment = Deployment(fed, roles, schemas, redis_urls, clock or (lambda: datetime.now(UTC)))
    data_system, data_port = create_provider(PROVIDER)
    await data_system.start()
    try:
        deployment.gateways[PROVIDER] = []
        for n in range(REPLICAS):
            config = replica_config(
                fed,
                roles,
                PROVIDER,
                n,
                schema=schemas[PROVIDER],
                redis_url=redis_urls[PROVIDER],
                provider=f"127.0.0.1:{data_port}",
            )
            gateway, _ = await create_gateway(config, **kwargs)
            deployment.gateways[PROVIDER].append(gateway)
            assert config.audit is not None
            deployment.audit_keys[PROVIDER] = config.audit.key
        deployment.gateways[REQUESTER] = []
        for n in range(REPLICAS):
            config = replica_config(
                fed,
                roles,
                REQUESTER,
                n,
                schema=schemas[REQUESTER],
                redis_url=redis_urls[REQUESTER],
                peers={PROVIDER: f"localhost:{deployment.replica(PROVIDER, n).port}"},
            )
            gateway, _ = await create_gateway(config, **kwargs)
            deployment.gateways[REQUESTER].append(gateway)
            assert config.audit is not None
            deployment.audit_keys[REQUESTER] = config.audit.key
        yield deployment
    finally:
        await deployment.stop()
        await data_system.stop(0)
        for schema in schemas.values():
            roles.drop_schema(schema)


async def outcome(call: Awaitable[exchange_pb2.QueryResponse]) -> str:
    """The string "ok", or the ErrorInfo reason of the refusal."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return error_info(exc).reason
    return "ok"


def index_of(audit_id: str, region: str) -> int:
    match = re.fullmatch(rf"audit\.tongban/{region}#(\d+)", audit_id)
    assert match, audit_id
    return int(match[1])


async def records(store: PostgresAuditStore, **where: Any) -> list[AuditRecord]:
    return [record for _, record in await store.query(AuditQuery(limit=1000, **where))]


# -- 1. quotas ---------------------------------------------------------------------------------

QUOTA = 3  # CY-SI-2026's queries a minute in this test's registry (600 in the demo's)


@pytest.fixture
def small_quota(tmp_path: Path) -> Federation:
    source = tmp_path / "source"
    shutil.copytree(DEMO_SOURCE, source)
    agreements = source / "agreements.toml"
    text = agreements.read_text(encoding="utf-8")
    section = text.index(f"[agreements.{AGREEMENT}]")
    at = text.index("quota_per_minute = 600\n", section)
    assert at < text.index("[agreements.", section + 1)  # still inside CY-SI-2026
    edited = (
        text[:at] + f"quota_per_minute = {QUOTA}\n" + text[at + len("quota_per_minute = 600\n") :]
    )
    agreements.write_text(edited, encoding="utf-8")
    fed = make_federation(tmp_path / "fed", source=source)
    fed.publish()
    return fed


async def test_an_agreements_quota_is_counted_once_across_both_replicas(
    small_quota: Federation, roles: PgRoles, redis_server: RedisServer
) -> None:
    # The quota window is the clock's minute: one pinned clock for every gateway, so the calls
    # never straddle a minute boundary (which would legitimately let twice the quota through).
    clock = ManualClock()
    calls = 8
    async with asyncio.timeout(TEST_SECONDS):
        async with deployed(small_quota, roles, redis_server, clock=clock) as deployment:
            async with deployment.client() as client:
                outcomes = [await outcome(client.query(deployment.query(n))) for n in range(calls)]
            assert client.calls == [0, 1] * (calls // 2)
            # Counted per replica, calls 4 and 5 (each replica's third) would pass too.
            assert outcomes == ["ok"] * QUOTA + ["QUOTA_EXCEEDED"] * (calls - QUOTA)
            async with Redis.from_url(deployment.redis_urls[REQUESTER]) as redis:
                counted = await redis.get(quota_key(AGREEMENT, minute_of(clock())))
            assert counted == str(calls).encode()  # one counter, raised by both replicas
            denied = await records(deployment.store(REQUESTER, 1), outcome=Outcome.DENIED)
            assert [(r.reason, r.agreement_id) for r in denied] == [
                ("QUOTA_EXCEEDED", AGREEMENT)
            ] * (calls - QUOTA)
            # The refused calls never left 四川: 重庆's log holds the allowed ones only.
            assert len(await records(deployment.store(PROVIDER, 0))) == QUOTA


# -- 2. the replay window ----------------------------------------------------------------------


async def test_a_request_id_replayed_on_the_other_replica_is_refused(
    federation: Federation, roles: PgRoles, redis_server: RedisServer
) -> None:
    async with asyncio.timeout(TEST_SECONDS):
        async with deployed(federation, roles, redis_server) as deployment:
            first, second = deployment.query(0), deployment.query(0)
            async with deployment.client() as client:
                answered = await client.query(first)  # replica 0
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await client.query(first)  # replica 1: the same request id
                again = await outcome(client.query(first))  # replica 0 once more
                fresh = await client.on(1, second)  # replica 1 answers a new id
            assert client.calls == [0, 1, 0]
            # Remembered per replica, replica 1 would have answered the replay.
            assert (caught.value.code(), error_info(caught.value).reason) == (
                grpc.StatusCode.ALREADY_EXISTS,
                "REQUEST_REPLAYED",
            )
            assert again == "REQUEST_REPLAYED"
            assert answered.audit_id
            assert fresh.audit_id
            log = await records(deployment.store(REQUESTER, 1), outcome=Outcome.DENIED)
            assert [(r.request_id, r.reason) for r in log] == [
                (first.request_id, "REQUEST_REPLAYED")
            ] * 2
            # The replays never left 四川: 重庆 saw the two first uses only.
            forwarded = await records(deployment.store(PROVIDER, 1))
            assert sorted(r.request_id for r in forwarded) == sorted(
                (first.request_id, second.request_id)
            )


# -- 3. the answer cache -----------------------------------------------------------------------


async def test_an_answer_cached_by_one_provider_replica_is_a_hit_on_the_other(
    federation: Federation, roles: PgRoles, redis_server: RedisServer
) -> None:
    async with asyncio.timeout(TEST_SECONDS):
        async with deployed(federation, roles, redis_server) as deployment:
            async with deployment.client() as client:
                # replica 0 of 510000 forwards to replica 0 of 500000, replica 1 to replica 1
                miss = await client.query(deployment.query(0, case_id="CASE-2026-0101"))
                hit = await client.query(deployment.query(0, case_id="CASE-2026-0102"))
            assert client.calls == [0, 1]
            # A cache per replica would miss on replica 1 as well.
            assert (miss.cache_hit, hit.cache_hit) == (False, True)
            assert hit.record.jws == miss.record.jws  # the same sealed bytes, still sealed
            counters = []
            for n in range(REPLICAS):
                path = deployment.replica(PROVIDER, n).query_path
                assert path is not None
                counters.append(path.cache.counters)
            assert [(c.hits, c.misses) for c in counters] == [(0, 1), (1, 0)]
            # The entry lives in 重庆's Redis, once; 四川's holds no answers.
            async with Redis.from_url(deployment.redis_urls[PROVIDER]) as redis:
                cached = [key async for key in redis.scan_iter(match="tb:c:*")]
            async with Redis.from_url(deployment.redis_urls[REQUESTER]) as redis:
                elsewhere = [key async for key in redis.scan_iter(match="tb:c:*")]
            assert (len(cached), elsewhere) == (1, [])
            # Both accesses are in the owner's log, the second marked as served from the cache.
            served = await records(deployment.store(PROVIDER, 0))
            assert [(r.case_id, r.cache_hit) for r in served] == [
                ("CASE-2026-0101", False),
                ("CASE-2026-0102", True),
            ]


# -- 4. the shared audit log -------------------------------------------------------------------


async def test_the_shared_audit_logs_verify_after_concurrent_appends_from_both_replicas(
    federation: Federation, roles: PgRoles, redis_server: RedisServer
) -> None:
    queries = 48
    # Each VerifyAudit is itself recorded in the log it checks, before it answers.
    verifies = dict.fromkeys((REQUESTER, PROVIDER), 0)
    async with asyncio.timeout(TEST_SECONDS):
        async with deployed(federation, roles, redis_server) as deployment:
            sent = [deployment.query(n, case_id=f"CASE-2026-{n:04d}") for n in range(queries)]
            burst_over = asyncio.Event()

            async def oversight_meanwhile() -> list[oversight_pb2.VerifyAuditResponse]:
                """VerifyAudit over and over while the replicas append (a log being written
                to is still whole at every moment)."""
                verdicts = []
                for turn in itertools.count():
                    region = (REQUESTER, PROVIDER)[turn % 2]
                    verdicts.append(await deployment.verify_audit(region, turn // 2 % REPLICAS))
                    verifies[region] += 1
                    if burst_over.is_set():
                        return verdicts
                raise AssertionError("unreachable")

            watcher = asyncio.create_task(oversight_meanwhile())
            try:
                async with deployment.client() as client:
                    answers = await asyncio.gather(*(client.query(q) for q in sent))
            except BaseException:
                watcher.cancel()
                raise
            finally:
                burst_over.set()
            meanwhile = await watcher
            assert all(v.intact for v in meanwhile), [v.problem for v in meanwhile]
            assert sorted(client.calls) == [0] * (queries // 2) + [1] * (queries // 2)
            indices = [index_of(a.audit_id, REQUESTER) for a in answers]
            assert len(set(indices)) == queries  # distinct: one tree
            for region in (REQUESTER, PROVIDER):
                # both replicas wrote to the region's log
                appended = [deployment.store(region, n).appended for n in range(REPLICAS)]
                assert sum(appended) == queries + verifies[region], (region, appended)
                assert all(appended), (region, appended)
                # Oversight.VerifyAudit on either replica checks the records of both
                for n in range(REPLICAS):
                    verdict = await deployment.verify_audit(region, n)
                    assert verdict.intact, (region, n, verdict.problem)
                    assert verdict.records_checked == queries + verifies[region]
                    verifies[region] += 1
            # Every audit id a client was given names the record of its own request; the
            # other records, gapless around them, are the VerifyAudit calls'.
            total = queries + verifies[REQUESTER]
            rows = await deployment.store(REQUESTER, 1).rows(0, total)
            assert [row.index for row in rows] == list(range(total))
            by_index = {row.index: AuditRecord.from_canonical(row.canonical) for row in rows}
            assert {r.rpc for i, r in by_index.items() if i not in set(indices)} == {
                "/tongban.v1.Oversight/VerifyAudit"
            }
            for query, answer, index in zip(sent, answers, indices, strict=True):
                record = by_index[index]
                assert (record.request_id, record.case_id, record.rpc, record.outcome) == (
                    query.request_id,
                    query.case_id,
                    "/tongban.v1.DataExchange/Query",
                    Outcome.ALLOWED,
                )
                assert (
                    record.sealed_digest == hashlib.sha256(answer.record.jws.encode()).hexdigest()
                )
            forwarded = [
                r
                for r in await records(deployment.store(PROVIDER, 0))
                if r.rpc == "/tongban.v1.Peer/Forward"
            ]
            assert sorted(r.request_id for r in forwarded) == sorted(q.request_id for q in sent)
            # Stopped, every replica signs a final checkpoint; an auditor with the public key
            # alone finds both logs whole, every checkpoint (from either replica) included.
            await deployment.stop()
            for region in (REQUESTER, PROVIDER):
                async with deployment.outsider_log(region) as log:
                    result = await log.verify()
                    checkpoints = await log.store.checkpoints()
                assert result.intact, (region, result.problem)
                assert result.records_checked == queries + verifies[region]
                assert result.checkpoints_checked == len(checkpoints) >= REPLICAS
                assert result.latest is not None
                assert result.latest.size == queries + verifies[region]
