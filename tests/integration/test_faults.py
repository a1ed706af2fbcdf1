"""Fault injection under load (issue 9, item 2): three regional gateways and their data systems
on loopback, agencies querying continuously while one part of the deployment fails.

| fault | injected by | what must hold |
| --- | --- | --- |
| Redis killed and restarted | SIGKILL of the test's own `redis-server`, then a new one on the port | answers continue uncached, the cache circuit opens (metric), hits resume by themselves |
| PostgreSQL audit store cut | a TCP proxy between the gateways and PostgreSQL closes every connection and refuses new ones | `UNAVAILABLE`/`AUDIT_UNAVAILABLE` while cut, nothing released unaudited, resumes by itself, logs verify |
| data system hangs | a `DataProvider` that never answers | each query ends within its deadline (`UNAVAILABLE`/`DEADLINE_EXCEEDED`), audited `failed`, the gateway stays healthy, answers again when the data system does |
| peer gateway killed | `Gateway.stop(0)` of the provider region mid-stream, then a new gateway on the same port | `UNAVAILABLE`, never `UNKNOWN`; other regions unaffected; queries succeed again |
| registry unreachable until expiry | a short-lived snapshot, then the published file removed | `UNAVAILABLE`/`REGISTRY_STALE`, health `NOT_SERVING`; a fresh publish brings it back |
| gateway SIGKILLed | `tongban gateway serve` as a process, SIGKILL mid-load | every audit id a client received is in the SQLite log, which verifies; a restart continues it |

Each test is bounded in calls (a cap per traffic stream) and guarded against a hang
(`asyncio.timeout`); a phase lasts until every stream had a call end in it, never a count of
calls in a time (a loaded machine sends fewer, and must not fail for it). Each uses loopback only, never touches the machine's shared Redis or PostgreSQL servers, and prints (with
`-s`) and asserts a one-line report: requests sent, succeeded, refused by reason, and audit
records checked. No gateway may end a call with UNKNOWN or INTERNAL (its own
`grpc_server_handled_total`), and no client may see either.

Gaps these faults exposed, each fixed since and held by its own test:

- a request id used before Redis restarted empty is accepted again, although the replica
  remembered it (`test_a_request_id_used_before_redis_lost_its_data_is_still_refused`);
- nothing fails fast in front of a hung data system: every query waits out its deadline
  (`test_a_hung_data_system_is_failed_fast_after_repeated_timeouts`);
- a query cancelled while the owner's data system is being asked leaves no audit record on
  either gateway (`test_a_query_cancelled_after_the_data_system_was_asked_is_audited`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from fault_support import (
    BAD_CODES,
    Shot,
    Tally,
    TcpProxy,
    bad_server_codes,
    check_audit_ids,
    held_subjects,
    metric_value,
    pump,
    query_maker,
    reason_of,
    records,
    restart,
    running_gateways,
    wait_until,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pg_support import PgRoles, pg_roles
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from query_support import Cluster, bearer
from support import (
    REPO,
    Federation,
    RedisServer,
    credentials_as,
    free_port,
    make_federation,
    running,
)

from gateway.audit import AuditLog, SqliteAuditStore
from gateway.config import GatewayConfig
from gateway.demo.config import config_for_dev_pki
from gateway.demo.data import DemoData
from gateway.demo.provider import DemoProviderService
from gateway.provider._client import BREAKER_FAILURES, BREAKER_OPEN_SECONDS
from signer import load_private_key
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

pytestmark = pytest.mark.integration

TEST_SECONDS = 240.0  # a hang guard for a whole test, set-up and tear-down included
WAIT_SECONDS = 60.0  # a hang guard for what a test waits for; never a bound it asserts
CALL_TIMEOUT = 5.0  # one query, two hops
RATE = 5.0  # calls a second a traffic stream at most: three of one agreement, 900 a minute
FLOOR = 10  # answered calls a stream in each phase a test waits out (its audit checks' material)
LICENCE = ("market.business_licence", "LICENCE-VERIFY")  # quota 1200/min per agreement
SI = ("si.participation", "SI-TRANSFER")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def no_bad_codes(cluster: Cluster, tally: Tally) -> None:
    """Neither the clients nor any gateway saw UNKNOWN or INTERNAL."""
    assert not [s for s in tally.shots if s.code in BAD_CODES], tally.refused()
    assert {r: bad_server_codes(g) for r, g in cluster.gateways.items()} == dict.fromkeys(
        cluster.gateways, 0
    )


async def health(port: int, fed: Federation, agency: str, region: str) -> int:
    async with grpc.aio.secure_channel(
        f"localhost:{port}", credentials_as(fed, agency, region)
    ) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
        )
    status: int = response.status
    return status


async def once(
    tally: Tally,
    stream: str,
    stub: exchange_pb2_grpc.DataExchangeAsyncStub,
    query: exchange_pb2.QueryRequest,
    metadata: tuple[tuple[str, str], ...],
) -> Shot:
    """One call, recorded like the traffic's."""
    shot = Shot(stream, query.request_id, tally.phase, time.monotonic())
    tally.shots.append(shot)
    try:
        shot.response = await stub.Query(query, metadata=metadata, timeout=CALL_TIMEOUT)
        shot.code = "OK"
    except grpc.aio.AioRpcError as exc:
        shot.code, shot.reason = exc.code().name, reason_of(exc)
    shot.done, shot.phase_done = time.monotonic(), tally.phase
    return shot


def names(streams: list[tuple[str, str, tuple[str, str], int]]) -> set[str]:
    """The tally's names of `traffic` streams."""
    return {f"{agency}->{provider}" for agency, provider, _, _ in streams}


def every_stream(
    tally: Tally,
    phase: str,
    *,
    answered: bool,
    streams: Iterable[str] | None = None,
    at_least: int = 1,
) -> bool:
    """Every stream (of `streams`, else every one the tally saw) has `at_least` calls sent and
    ended in `phase`; answered ones when `answered`. What a phase waits for instead of a count
    of calls in a time, which a loaded machine cannot promise."""
    wanted = set(streams) if streams is not None else {s.stream for s in tally.shots}
    ended = Counter(
        s.stream
        for s in tally.shots
        if s.phase_sent == s.phase_done == phase and (s.ok or not answered)
    )
    return all(ended[name] >= at_least for name in wanted)


@contextlib.asynccontextmanager
async def traffic(
    cluster: Cluster,
    tally: Tally,
    streams: list[tuple[str, str, tuple[str, str], int]],
    *,
    rate: float | None = RATE,
    limit: int | None = None,
    timeout: float = CALL_TIMEOUT,
    distinct: bool = False,
) -> Any:
    """Continuous queries, one task per (agency, provider region, (dataset, purpose), offset),
    each at most `rate` a second (None: back to back, then with a `limit`); stopped (and awaited)
    when the block ends, never sooner: a phase that takes long on a loaded machine still has
    traffic. Each stream cycles through six subjects (cache hits at the owner), or with
    `distinct` asks a new subject each time (misses: every query reaches the data system;
    streams start 100 subjects apart)."""
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        tasks = []
        for agency, provider, (dataset, purpose), first in streams:
            stub = await stack.enter_async_context(cluster.exchange(agency))
            subjects = (
                held_subjects(provider, dataset, 600)
                if distinct
                else held_subjects(provider, dataset)[:6]
            )
            tasks.append(
                asyncio.create_task(
                    pump(
                        tally,
                        f"{agency}->{provider}",
                        stub,
                        query_maker(
                            provider,
                            dataset,
                            purpose,
                            subjects,
                            offset=first * 100 if distinct else first,
                        ),
                        bearer(cluster.token(agency)),
                        stop=stop,
                        rate=rate,
                        limit=limit,
                        timeout=timeout,
                    )
                )
            )
        try:
            yield stop
        finally:
            stop.set()
            await asyncio.gather(*tasks)


def hits(shots: list[Shot]) -> int:
    return sum(1 for s in shots if s.ok and s.response is not None and s.response.cache_hit)


# 1. Redis killed and restarted ----------------------------------------------------------------
async def test_redis_killed_and_restarted_under_load(
    federation: Federation, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Cache, replay window and quotas of all three gateways live in the test's own
    redis-server. kill -9 it mid-load: answers continue, uncached (the owner's cache circuit
    opens and says so in its metric), the replay window falls back to the replica's memory (a
    replay is still refused); start it again on the port: hits resume by themselves."""
    tally = Tally("redis kill -9 / restart")
    async with (
        asyncio.timeout(TEST_SECONDS),
        running_gateways(federation, tmp_path, redis_url=redis_server.url) as cluster,
    ):
        owner = cluster.gateways["330000"]  # the licences' owner: its cache is in Redis
        streams = [
            ("sc.amr", "330000", LICENCE, 0),
            ("sc.amr", "330000", LICENCE, 3),
            ("cq.amr", "330000", LICENCE, 1),
        ]

        def circuit_open() -> float:
            owner.observe()
            return metric_value(owner, "tongban_cache_circuit_open")

        async with (
            traffic(cluster, tally, streams),
            cluster.exchange("sc.amr") as probe,
        ):
            tally.enter("up")
            cache = owner.query_path.cache  # type: ignore[union-attr]
            await wait_until(
                lambda: cache.counters.hits >= 1, "cache hits through Redis", WAIT_SECONDS
            )
            await wait_until(
                lambda: every_stream(
                    tally, "up", streams=names(streams), answered=True, at_least=FLOOR
                ),
                f"{FLOOR} answers on every stream with Redis up",
                WAIT_SECONDS,
            )
            assert circuit_open() == 0

            redis_server.kill()  # SIGKILL; returns once the process is gone
            tally.enter("down")
            await wait_until(lambda: circuit_open() == 1, "the cache circuit to open", WAIT_SECONDS)
            hits_at_kill = cache.counters.hits  # answers read from Redis so far
            # A request id used while Redis is down is remembered by the replica: a replay of it
            # is still refused.
            token = bearer(cluster.token("sc.amr"))
            query = query_maker("330000", *LICENCE, held_subjects("330000", LICENCE[0]))(0)
            first = await once(tally, "replay-probe", probe, query, token)
            again = await once(tally, "replay-probe", probe, query, token)
            assert (first.code, again.code, again.reason) == (
                "OK",
                "ALREADY_EXISTS",
                "REQUEST_REPLAYED",
            )
            await wait_until(
                lambda: every_stream(
                    tally, "down", streams=names(streams), answered=True, at_least=FLOOR
                ),
                f"{FLOOR} answers on every stream while Redis is down",
                WAIT_SECONDS,
            )

            hits_while_down = cache.counters.hits - hits_at_kill
            redis_server.start()  # an empty Redis on the same port (no persistence)
            tally.enter("back")
            took = await wait_until(
                lambda: cache.counters.hits >= hits_at_kill + 3,
                "cache hits after Redis came back",
                WAIT_SECONDS,
            )
            await wait_until(
                lambda: every_stream(
                    tally, "back", streams=names(streams), answered=True, at_least=FLOOR
                ),
                f"{FLOOR} answers on every stream after Redis came back",
                WAIT_SECONDS,
            )
            assert circuit_open() == 0
        no_bad_codes(cluster, tally)
        requester = cluster.gateways["510000"].audit
        assert requester is not None
        tally.audit_checked = await check_audit_ids(
            requester, [s for s in tally.shots if s.stream.startswith("sc.")]
        )
        counters = cache.counters

    traffic_shots = [s for s in tally.shots if s.stream != "replay-probe"]
    down = [s for s in traffic_shots if s.phase_sent == s.phase_done == "down"]
    line = tally.report(
        f"while down {len(down)} sent, {sum(s.ok for s in down)} answered, {hits_while_down} "
        f"read from the cache ({hits(down)} shared a concurrent caller's load: single flight); "
        f"Redis hits again {took:.1f}s after the restart; cache errors {counters.errors}, "
        f"bypassed {counters.bypassed}, circuit opened {counters.opened}x"
    )
    assert all(s.ok for s in traffic_shots), tally.refused(traffic_shots)
    assert tally.refused() == {"ALREADY_EXISTS/REQUEST_REPLAYED": 1}, line
    assert down
    assert all(s.ok for s in down)
    assert hits_while_down == 0, "an answer came from a cache that was down"
    assert counters.opened >= 1
    assert counters.bypassed >= 1
    assert tally.audit_checked >= 50


async def test_a_request_id_used_before_redis_lost_its_data_is_still_refused(
    federation: Federation, tmp_path: Path, redis_server: RedisServer
) -> None:
    """A request id answered before Redis was killed (and came back empty) is replayed once
    Redis is in use again: it is refused, since the replica that answered it remembers it."""
    tally = Tally("replay across a Redis restart")
    async with (
        asyncio.timeout(TEST_SECONDS),
        running_gateways(federation, tmp_path, redis_url=redis_server.url) as cluster,
        cluster.exchange("sc.amr") as stub,
    ):
        token = bearer(cluster.token("sc.amr"))
        query = query_maker("330000", *LICENCE, held_subjects("330000", LICENCE[0]))(0)
        tally.enter("up")
        first = await once(tally, "sc.amr->330000", stub, query, token)
        redis_server.kill()
        redis_server.start()  # empty: Redis had no persistence
        tally.enter("back")
        other = query_maker("330000", *LICENCE, held_subjects("330000", LICENCE[0]))
        for n in range(3):  # the gateway's Redis connections are up again
            await once(tally, "sc.amr->330000", stub, other(n), token)
        again = await once(tally, "sc.amr->330000", stub, query, token)
        no_bad_codes(cluster, tally)
    tally.report()
    assert first.ok
    assert (again.code, again.reason) == ("ALREADY_EXISTS", "REQUEST_REPLAYED")


# 2. PostgreSQL audit store cut ----------------------------------------------------------------
@pytest.fixture(scope="module")
def roles() -> Iterator[PgRoles]:
    with pg_roles() as made:
        yield made


def postgres_target(dsn: str) -> tuple[str, int]:
    params = conninfo_to_dict(dsn)
    return str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)


async def test_postgres_audit_store_cut_under_load(
    federation: Federation, tmp_path: Path, roles: PgRoles
) -> None:
    """The audit logs of 四川 (510000, the requester: it hands out the audit ids) and 浙江
    (330000, an owner) are in PostgreSQL behind a TCP proxy; 重庆 (500000) keeps SQLite. The
    proxy cuts every connection and refuses new ones mid-load: every query fails closed with
    UNAVAILABLE/AUDIT_UNAVAILABLE (no answer without a durable record, on either side); the
    proxy is restored and queries resume by themselves; both logs verify, and every audit id a
    client received names its request's record."""
    tally = Tally("postgres audit cut")
    schemas = {"510000": roles.fresh_schema(), "330000": roles.fresh_schema()}
    proxy = TcpProxy(*postgres_target(roles.app_dsn))
    await proxy.start()

    def via_proxy(dsn: str) -> str:
        return make_conninfo(dsn, host="127.0.0.1", port=str(proxy.port))

    def configure(region: str, config: GatewayConfig) -> GatewayConfig:
        if region not in schemas:
            return config
        assert config.audit is not None
        audit = dataclasses.replace(
            config.audit,
            store="postgres",
            dsn=via_proxy(roles.app_dsn),
            owner_dsn=via_proxy(roles.owner_dsn),
            schema=schemas[region],
            checkpoint_every_records=25,
        )
        return dataclasses.replace(config, audit=audit)

    try:
        async with (
            asyncio.timeout(TEST_SECONDS),
            running_gateways(federation, tmp_path, configure=configure) as cluster,
        ):
            requester, owner = cluster.gateways["510000"], cluster.gateways["330000"]
            assert requester.audit is not None
            assert owner.audit is not None
            streams = [
                ("sc.amr", "330000", LICENCE, 0),  # both audit logs behind the proxy
                ("sc.amr", "330000", LICENCE, 2),
                ("sc.hrss", "500000", SI, 0),  # only the requester's
            ]
            async with traffic(cluster, tally, streams):
                tally.enter("up")
                await wait_until(
                    lambda: every_stream(
                        tally, "up", streams=names(streams), answered=True, at_least=FLOOR
                    ),
                    f"{FLOOR} answers on every stream before the cut",
                    WAIT_SECONDS,
                )
                await proxy.cut()
                tally.enter("cut")
                await wait_until(
                    lambda: every_stream(tally, "cut", streams=names(streams), answered=False),
                    "a query on every stream to end while the store is cut off",
                    WAIT_SECONDS,
                )
                await proxy.restore()
                tally.enter("restored")
                resumed = await wait_until(
                    lambda: any(s.ok for s in tally.where(phase_sent="restored")),
                    "an answer after the store came back",
                    WAIT_SECONDS,
                )
                first_ok = min(s.sent for s in tally.where(phase_sent="restored") if s.ok)
                await wait_until(
                    lambda: every_stream(
                        tally, "restored", streams=names(streams), answered=True, at_least=FLOOR
                    ),
                    f"{FLOOR} answers on every stream after the restore",
                    WAIT_SECONDS,
                )
            no_bad_codes(cluster, tally)
            checked = {}
            for region, gateway in (("510000", requester), ("330000", owner)):
                assert gateway.audit is not None
                result = await gateway.audit.verify()
                assert result.intact, (region, result.problem)
                checked[region] = result
            answered = [s for s in tally.shots if s.ok]
            tally.audit_checked = await check_audit_ids(requester.audit, answered)
            # The owner's log holds every answer 四川 released of its data: an allowed
            # Peer.Forward, or, for a repeat 四川 answered from its own cache (cache_scope
            # "requester"), the Peer.ReportAccess 四川 sent it (delivered with retries).
            from_owner = {s.request_id for s in answered if s.stream == "sc.amr->330000"}

            async def unknown_to_owner() -> set[str]:
                assert owner.audit is not None
                return from_owner - {
                    r["request_id"]
                    for r in await records(owner.audit)
                    if r["rpc"] in {"/tongban.v1.Peer/Forward", "/tongban.v1.Peer/ReportAccess"}
                    and r["outcome"] == "allowed"
                }

            async def owner_knows_all() -> bool:
                return not await unknown_to_owner()

            await wait_until(owner_knows_all, "the owner to record every answer", WAIT_SECONDS)
            tally.audit_checked += len(from_owner)
            stored = {r["request_id"]: r["outcome"] for r in await records(requester.audit)}
            failures = metric_value(requester, "tongban_audit_append_failures_total")
    finally:
        await proxy.close()

    cut = [s for s in tally.shots if s.phase_sent == s.phase_done == "cut"]
    after = [s for s in tally.shots if s.sent > first_ok + 0.2]
    recorded_unreleased = sum(
        1 for s in tally.shots if not s.ok and stored.get(s.request_id) == "allowed"
    )
    line = tally.report(
        f"while cut {len(cut)} sent, {sum(s.ok for s in cut)} answered; "
        f"{proxy.severed} connections severed; answers again {resumed:.1f}s after the restore; "
        f"logs verify ({checked['510000'].records_checked} + {checked['330000'].records_checked} "
        f"records, {checked['510000'].checkpoints_checked} + "
        f"{checked['330000'].checkpoints_checked} checkpoints); {int(failures)} audit append "
        f"failures counted; {recorded_unreleased} recorded but not released"
    )
    assert cut, line
    assert tally.refused(cut) == {"UNAVAILABLE/AUDIT_UNAVAILABLE": len(cut)}, line
    assert set(tally.refused()) == {"UNAVAILABLE/AUDIT_UNAVAILABLE"}, line
    assert after
    assert all(s.ok for s in after), tally.refused(after)
    assert proxy.severed >= 2  # the gateways' connections were open and were cut
    assert failures >= 1
    assert tally.audit_checked >= 50


# 3. A data system that hangs ------------------------------------------------------------------
class HangingProvider(exchange_pb2_grpc.DataProviderServicer):
    """A region's data system that stops answering while `hang` is set (the call stays open
    until the caller gives up); otherwise the demo data system."""

    def __init__(self, region: str) -> None:
        self.real = DemoProviderService(DemoData(region))
        self.hang = False
        self.calls = 0
        self.hung = 0
        self.held: list[float] = []  # seconds each hung call was held before it was given up

    async def Fetch(
        self, request: exchange_pb2.ProviderFetchRequest, context: Any
    ) -> exchange_pb2.ProviderFetchResponse:
        self.calls += 1
        if self.hang:
            self.hung += 1
            started = time.monotonic()
            try:
                await asyncio.sleep(HANG_SECONDS)  # cancelled when the gateway gives the call up
            finally:
                self.held.append(time.monotonic() - started)
        return await self.real.Fetch(request, context)


@contextlib.asynccontextmanager
async def hanging_provider(region: str) -> Any:
    service = HangingProvider(region)
    server = grpc.aio.server()
    exchange_pb2_grpc.add_DataProviderServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield service, server, port
    finally:
        await server.stop(0)


HANG_TIMEOUT = 1.5  # the client's deadline for queries that reach the hanging data system
HANG_SECONDS = 3600.0  # how long the hanging data system holds a call unless it is cancelled


async def test_a_data_system_that_hangs(federation: Federation, tmp_path: Path) -> None:
    """浙江's data system stops answering mid-load. Each query for its data ends within the
    client's deadline with UNAVAILABLE/PROVIDER_UNAVAILABLE (or DEADLINE_EXCEEDED), both
    gateways audit it as failed, queries to 重庆 keep being answered, every gateway stays
    SERVING; when the data system answers again, so do the queries."""
    tally = Tally("data system hangs")
    async with (
        asyncio.timeout(TEST_SECONDS),
        hanging_provider("330000") as (provider, server, port),
        running_gateways(
            federation, tmp_path, providers={"330000": server}, provider_ports={"330000": port}
        ) as cluster,
    ):
        async with (
            traffic(
                cluster,
                tally,
                [("sc.amr", "330000", LICENCE, n) for n in (0, 1, 2)],
                timeout=HANG_TIMEOUT,
                distinct=True,
            ),
            traffic(cluster, tally, [("sc.hrss", "500000", SI, 0)]),
        ):
            tally.enter("normal")
            await wait_until(
                lambda: every_stream(tally, "normal", answered=True),
                "answers on every stream before the hang",
                WAIT_SECONDS,
            )
            provider.hang = True
            tally.enter("hang")
            await wait_until(
                lambda: (
                    len(
                        [
                            s
                            for s in tally.where(phase_sent="hang", stream="sc.amr->330000")
                            if s.done
                        ]
                    )
                    >= 6
                ),
                "six queries to end against the hung data system",
                WAIT_SECONDS,
            )
            statuses = {
                region: await health(cluster.ports[region], federation, agency, region)
                for region, agency in (("330000", "zj.amr"), ("510000", "sc.amr"))
            }
            provider.hang = False
            tally.enter("recovered")
            await wait_until(
                lambda: any(
                    s.ok for s in tally.where(phase_sent="recovered", stream="sc.amr->330000")
                ),
                "an answer once the data system answers again",
                WAIT_SECONDS,
            )
            # Traffic goes on past the breaker's open period, to see every query answered.
            await asyncio.sleep(
                max(0.5, tally.marks["recovered"] + BREAKER_OPEN_SECONDS + 1.5 - time.monotonic())
            )
        # The gateway gave up every call to the hung data system by its deadline: none lingers.
        await wait_until(
            lambda: len(provider.held) == provider.hung,
            "the hung calls to be given up",
            WAIT_SECONDS,
        )
        no_bad_codes(cluster, tally)
        await asyncio.sleep(0.2)  # the last failures' records are committed
        owner_log = {
            r["request_id"]: r
            for r in await records(cluster.gateways["330000"].audit)  # type: ignore[arg-type]
            if r["rpc"] == "/tongban.v1.Peer/Forward"
        }
        requester_log = {
            r["request_id"]: r
            for r in await records(cluster.gateways["510000"].audit)  # type: ignore[arg-type]
            if r["rpc"] == "/tongban.v1.DataExchange/Query"
        }
        requester_audit = cluster.gateways["510000"].audit
        assert requester_audit is not None
        tally.audit_checked = await check_audit_ids(requester_audit, tally.shots)

    hung = [
        s
        for s in tally.where(stream="sc.amr->330000")
        if s.phase_sent == "hang" and s.phase_done == "hang"
    ]
    # A refusal 四川 sent its client was audited by 四川 first, with the same reason; a
    # PROVIDER_UNAVAILABLE was audited by 浙江 first too. PEER_UNAVAILABLE: 浙江's refusal came
    # back after 四川's deadline for the hop (50 ms margins per hop: a race under load). When the
    # client's own deadline passed first ("-"), the calls were cancelled and may have left no
    # record (see test_a_query_cancelled_after_the_data_system_was_asked_is_audited).
    unaudited = 0
    for shot in hung:
        if shot.reason == "-":
            unaudited += shot.request_id not in requester_log
            continue
        record = requester_log.get(shot.request_id)
        assert record is not None, f"{shot.request_id} ({shot.code}) was not audited by 四川"
        assert (record["outcome"], record["reason"]) == ("failed", shot.reason), record
        tally.audit_checked += 1
        if shot.reason == "PROVIDER_UNAVAILABLE":
            record = owner_log.get(shot.request_id)
            assert record is not None, f"{shot.request_id} was not audited by 浙江"
            assert (record["outcome"], record["reason"]) == ("failed", shot.reason), record
            tally.audit_checked += 1
    slowest = max(s.elapsed for s in hung)
    line = tally.report(
        f"{len(hung)} queries against the hung data system, slowest ended after {slowest:.2f}s "
        f"(deadline {HANG_TIMEOUT}s); data system called {provider.calls}x, {provider.hung} hung, "
        f"each given up by the gateway within {max(provider.held):.2f}s; "
        f"health {sorted(statuses.items())} (1 = SERVING); {unaudited} cut off by the "
        "client's deadline left no record at 四川"
    )
    assert len(hung) >= 6
    assert {s.code for s in hung} <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, tally.refused(hung)
    # Given up at the deadline, not answered: the data system would have held each for an
    # hour, and every call it held was cancelled (waited for above: len(held) == hung).
    assert slowest < HANG_SECONDS, line
    assert max(provider.held) < HANG_SECONDS, line
    assert sum(s.reason == "PROVIDER_UNAVAILABLE" for s in hung) >= len(hung) // 2, line
    assert set(tally.refused()) <= {
        "UNAVAILABLE/PROVIDER_UNAVAILABLE",
        "DEADLINE_EXCEEDED/PEER_UNAVAILABLE",  # 四川's hop deadline passed first
        "DEADLINE_EXCEEDED/-",  # the client's own deadline passed first
    }, line
    # Once the data system answers again, the breaker may still be open for up to
    # BREAKER_OPEN_SECONDS: those queries fail fast with PROVIDER_UNAVAILABLE, then it closes.
    recovery = tally.marks["recovered"]
    refused_elsewhere = [
        s
        for s in tally.shots
        if not s.ok
        and s.phase_sent != "hang"
        and not (
            s.reason == "PROVIDER_UNAVAILABLE"
            and s.stream == "sc.amr->330000"
            and s.sent <= recovery + BREAKER_OPEN_SECONDS + 0.5
        )
    ]
    assert len(refused_elsewhere) <= 3, refused_elsewhere  # in flight when the hang ended
    assert all(s.ok for s in tally.where(stream="sc.hrss->500000")), "重庆 stopped answering"
    assert statuses == {"330000": SERVING, "510000": SERVING}
    recovered = tally.where(stream="sc.amr->330000", phase_sent="recovered")
    # Answers may come from the cache while the breaker is still open; once it has had its
    # trial call (at most BREAKER_OPEN_SECONDS after the data system answers again), every
    # query is answered.
    settled = [s for s in recovered if s.sent > recovery + BREAKER_OPEN_SECONDS + 0.5]
    assert settled, "no query was sent after the breaker's open period"
    assert all(s.ok for s in settled), tally.refused(settled)


async def test_a_hung_data_system_is_failed_fast_after_repeated_timeouts(
    federation: Federation, tmp_path: Path
) -> None:
    """After BREAKER_FAILURES (3) queries in a row timed out against the data system, the next
    ones are refused at once (a breaker), not after their deadline."""
    tally = Tally("hung data system, breaker")
    timeout = 0.5
    async with (
        asyncio.timeout(TEST_SECONDS),
        hanging_provider("330000") as (provider, server, port),
        running_gateways(
            federation, tmp_path, providers={"330000": server}, provider_ports={"330000": port}
        ) as cluster,
        cluster.exchange("sc.amr") as stub,
    ):
        provider.hang = True
        token = bearer(cluster.token("sc.amr"))
        make = query_maker("330000", *LICENCE, held_subjects("330000", LICENCE[0], 600))
        tally.enter("hang")
        for n in range(7):
            shot = Shot("sc.amr->330000", "", tally.phase, time.monotonic())
            query = make(n)
            shot.request_id = query.request_id
            tally.shots.append(shot)
            try:
                await stub.Query(query, metadata=token, timeout=timeout)
                shot.code = "OK"
            except grpc.aio.AioRpcError as exc:
                shot.code, shot.reason = exc.code().name, reason_of(exc)
            shot.done = time.monotonic()
        no_bad_codes(cluster, tally)
    elapsed = [round(s.elapsed, 2) for s in tally.shots]
    tally.report(f"seconds per query: {elapsed}")
    assert not any(s.ok for s in tally.shots)
    # Refused at once: the queries after the breaker opened never reached the data system.
    assert provider.calls == BREAKER_FAILURES, (provider.calls, elapsed)
    assert [s.reason for s in tally.shots[BREAKER_FAILURES:]] == ["PROVIDER_UNAVAILABLE"] * (
        7 - BREAKER_FAILURES
    ), tally.refused()


async def test_a_query_cancelled_after_the_data_system_was_asked_is_audited(
    federation: Federation, tmp_path: Path
) -> None:
    """A client cancels its query once 浙江's data system has been asked for the subject's
    record (it hangs): both gateways still record the attempt (failed)."""
    tally = Tally("query cancelled mid-fetch")
    async with (
        asyncio.timeout(TEST_SECONDS),
        hanging_provider("330000") as (provider, server, port),
        running_gateways(
            federation, tmp_path, providers={"330000": server}, provider_ports={"330000": port}
        ) as cluster,
        cluster.exchange("sc.amr") as stub,
    ):
        provider.hang = True
        query = query_maker("330000", *LICENCE, held_subjects("330000", LICENCE[0]))(0)
        shot = Shot("sc.amr->330000", query.request_id, "hang", time.monotonic())
        tally.shots.append(shot)
        call = stub.Query(query, metadata=bearer(cluster.token("sc.amr")), timeout=CALL_TIMEOUT)
        await wait_until(lambda: provider.hung >= 1, "浙江's data system to be asked", WAIT_SECONDS)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        shot.code, shot.reason, shot.done = "CANCELLED", "-", time.monotonic()
        await asyncio.sleep(0.5)  # anything the gateways would record is committed by now
        owner_log = {
            r["request_id"]: r
            for r in await records(cluster.gateways["330000"].audit)  # type: ignore[arg-type]
        }
        requester_log = {
            r["request_id"]: r
            for r in await records(cluster.gateways["510000"].audit)  # type: ignore[arg-type]
        }
        tally.audit_checked = len(owner_log) + len(requester_log)
        bad = {r: bad_server_codes(g) for r, g in cluster.gateways.items()}
    tally.report(
        f"data system asked {provider.hung}x; recorded by 浙江: "
        f"{query.request_id in owner_log}, by 四川: {query.request_id in requester_log}; "
        f"UNKNOWN/INTERNAL by gateway {bad}"
    )
    assert bad == dict.fromkeys(bad, 0)
    assert query.request_id in owner_log, "浙江 asked its data system and recorded nothing"
    assert query.request_id in requester_log, "四川 forwarded the query and recorded nothing"


# 4. A peer gateway killed mid-stream ----------------------------------------------------------
async def test_a_peer_gateway_killed_mid_stream(federation: Federation, tmp_path: Path) -> None:
    """重庆's gateway (500000, the owner 四川 asks) is stopped with no grace while queries to it
    are in flight and continuing: 四川's agencies get UNAVAILABLE (never UNKNOWN), each refusal
    audited; queries between the other regions go on; a new gateway on the same port (and the
    same audit log) answers again, and its log verifies across the restart."""
    tally = Tally("peer gateway killed")
    async with (
        asyncio.timeout(TEST_SECONDS),
        running_gateways(federation, tmp_path) as cluster,
    ):
        victim = "sc.hrss->500000"
        streams = [
            ("sc.hrss", "500000", SI, 0),
            ("sc.hrss", "500000", SI, 1),
            ("sc.hrss", "500000", SI, 2),
            ("sc.amr", "330000", LICENCE, 0),  # 四川 asks 浙江
            ("zj.amr", "510000", LICENCE, 0),  # 浙江 asks 四川
        ]
        # 3 a second a stream: the three to 重庆 stay under CY-SI-2026's 600 a minute, refused
        # calls included
        async with traffic(cluster, tally, streams, distinct=True, rate=3.0):
            tally.enter("up")
            await wait_until(
                lambda: every_stream(tally, "up", streams=names(streams), answered=True),
                "answers on every stream before the kill",
                WAIT_SECONDS,
            )
            await wait_until(
                lambda: any(not s.done for s in tally.where(stream=victim)),
                "a query to 重庆 in flight",
                WAIT_SECONDS,
            )
            in_flight = sum(1 for s in tally.where(stream=victim) if not s.done)
            tally.enter("down")
            before = cluster.gateways["500000"]
            assert before.audit is not None
            size_before = (await before.audit.store.head()).size
            await before.stop(0)
            await wait_until(
                lambda: every_stream(tally, "down", streams=[victim], answered=False),
                "a query to the stopped gateway to end",
                WAIT_SECONDS,
            )
            gateway = await restart(cluster, "500000")
            tally.enter("back")
            resumed = await wait_until(
                lambda: any(s.ok for s in tally.where(stream=victim, phase_sent="back")),
                "an answer from the restarted gateway",
                WAIT_SECONDS,
            )
            # The first answer is the breaker's half-open trial: calls sent while it was in
            # flight are refused at once (PEER_UNAVAILABLE); every one sent after it answered is
            # answered.
            first_ok = min(s.done for s in tally.where(stream=victim, phase_sent="back") if s.ok)
            await asyncio.sleep(1.0)
        no_bad_codes(cluster, tally)
        requester = cluster.gateways["510000"].audit
        assert requester is not None
        assert gateway.audit is not None
        tally.audit_checked = await check_audit_ids(
            requester, [s for s in tally.shots if s.stream.startswith("sc.")]
        )
        log = {r["request_id"]: r for r in await records(requester)}
        refused = [s for s in tally.shots if not s.ok]
        for shot in refused:
            assert (log[shot.request_id]["outcome"], log[shot.request_id]["reason"]) == (
                "failed",
                shot.reason,
            ), shot
        tally.audit_checked += len(refused)
        verified = await gateway.audit.verify()
        assert verified.intact, verified.problem
        size_after = (await gateway.audit.store.head()).size

    down = [s for s in tally.where(stream=victim) if s.phase_done == "down"]
    line = tally.report(
        f"{in_flight} in flight at the kill; {len(down)} ended while 重庆 was down, "
        f"{sum(s.ok for s in down)} answered; answers again {resumed:.1f}s after the restart; "
        f"重庆's log {size_before} records before, {size_after} after, verifies "
        f"({verified.records_checked} records, {verified.checkpoints_checked} checkpoints)"
    )
    assert in_flight >= 1
    assert down, line
    assert set(tally.refused()) == {"UNAVAILABLE/PEER_UNAVAILABLE"}, line
    assert all(s.ok for s in tally.shots if s.stream != victim), "other regions were affected"
    assert all(s.ok for s in tally.where(stream=victim) if s.sent > first_ok), line
    assert size_after > size_before


# 5. The registry source unreachable until the snapshot expires ---------------------------------
REGIONAL_AGENCY = {"330000": "zj.amr", "510000": "sc.amr", "500000": "cq.amr"}


async def test_registry_unreachable_until_the_snapshot_expires(
    federation: Federation, tmp_path: Path
) -> None:
    """A snapshot with a 4-second lifetime is published and taken by every gateway; then the
    registry source goes away (the published file is removed) and nothing newer comes. Until
    expiry queries are answered; after it every query is refused UNAVAILABLE/REGISTRY_STALE and
    every gateway's health turns NOT_SERVING (within its re-check period); a fresh publish is
    taken by itself and brings answers and SERVING back."""
    tally = Tally("registry expires")
    lifetime = 4
    async with (
        asyncio.timeout(TEST_SECONDS),
        running_gateways(federation, tmp_path) as cluster,
    ):
        gateways = cluster.gateways

        async def statuses() -> dict[str, int]:
            return {
                region: await health(cluster.ports[region], federation, agency, region)
                for region, agency in REGIONAL_AGENCY.items()
            }

        streams = [
            ("sc.hrss", "500000", SI, 0),
            ("sc.amr", "330000", LICENCE, 0),
            ("cq.amr", "510000", LICENCE, 0),
        ]
        async with traffic(cluster, tally, streams):
            tally.enter("fresh")
            federation.publish(lifetime_seconds=lifetime)
            await wait_until(
                lambda: all(g.store.status().version == 2 for g in gateways.values()),
                "every gateway to take the short-lived version 2",
                WAIT_SECONDS,
            )
            snapshot = gateways["510000"].store.snapshot
            assert snapshot is not None
            expires_at = snapshot.registry.expires_at
            # The source goes away: nothing newer can be fetched.
            federation.current.rename(tmp_path / "away.jws")
            tally.enter("unreachable")
            assert await statuses() == dict.fromkeys(gateways, SERVING)
            await asyncio.sleep((expires_at - datetime.now(UTC)).total_seconds() - 0.2)
            tally.enter("expiring")  # a query sent now may be decided either side of expiry
            await asyncio.sleep(0.3)
            tally.enter("stale")
            went_down = await wait_until(
                lambda: _all(statuses(), NOT_SERVING),
                "every gateway's health to turn NOT_SERVING",
                WAIT_SECONDS,
            )
            await wait_until(
                lambda: every_stream(tally, "stale", streams=names(streams), answered=False),
                "a query on every stream to end while the registry is stale",
                WAIT_SECONDS,
            )
            federation.publish()  # version 3, the usual lifetime
            tally.enter("publishing")
            came_back = await wait_until(
                lambda: _all(statuses(), SERVING), "SERVING after a fresh publish", WAIT_SECONDS
            )
            tally.enter("republished")
            await wait_until(
                lambda: (
                    {s.stream for s in tally.where(phase_sent="republished") if s.ok}
                    == {f"{a}->{p}" for a, p, _, _ in streams}
                ),
                "answers on every stream after the fresh publish",
                WAIT_SECONDS,
            )
            await asyncio.sleep(0.5)
        assert {g.store.status().version for g in gateways.values()} == {3}
        no_bad_codes(cluster, tally)
        for region, gateway in gateways.items():
            assert gateway.audit is not None
            agency = REGIONAL_AGENCY[region]
            tally.audit_checked += await check_audit_ids(
                gateway.audit, [s for s in tally.shots if s.stream.startswith(agency)]
            )
            tally.audit_checked += (await gateway.audit.verify()).records_checked

    live = [
        s
        for s in tally.shots
        if s.phase_sent == s.phase_done and s.phase_sent not in ("expiring", "stale", "publishing")
    ]
    stale = [s for s in tally.shots if s.phase_sent == s.phase_done == "stale"]
    line = tally.report(
        f"{len(stale)} queries while stale, {sum(s.ok for s in stale)} answered; health "
        f"NOT_SERVING {went_down:.1f}s after expiry, SERVING {came_back:.1f}s after the fresh "
        f"publish"
    )
    assert stale, line
    assert tally.refused(stale) == {"UNAVAILABLE/REGISTRY_STALE": len(stale)}, line
    assert set(tally.refused()) == {"UNAVAILABLE/REGISTRY_STALE"}, line
    assert all(s.ok for s in live), tally.refused(live)
    assert tally.where(phase_sent="unreachable")


async def _all(statuses: Any, expected: int) -> bool:
    return set((await statuses).values()) == {expected}


def gateway_health_period() -> float:
    import gateway.server

    return float(gateway.server.HEALTH_CHECK_SECONDS)


# 6. A gateway SIGKILLed under load ------------------------------------------------------------
def serve_command(fed: Federation, port: int, audit_db: Path, owner_port: int) -> list[str]:
    return [
        sys.executable, "-m", "gateway.cli", "gateway", "serve",
        "--pki", str(fed.pki), "--region", "510000", "--snapshot", str(fed.current),
        "--listen", f"127.0.0.1:{port}", "--audit-db", str(audit_db),
        "--peer", f"330000=localhost:{owner_port}",
    ]  # fmt: skip


async def wait_serving(
    fed: Federation, port: int, process: subprocess.Popen[bytes], stderr: Path
) -> float:
    started = time.monotonic()
    while True:
        assert process.poll() is None, f"the gateway exited: {stderr.read_text()}"
        try:
            if await health(port, fed, "sc.amr", "510000") == SERVING:
                return time.monotonic() - started
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            code = exc.code()  # UNAVAILABLE until it listens
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE), code
        assert time.monotonic() - started < WAIT_SECONDS, f"not serving: {stderr.read_text()}"
        await asyncio.sleep(0.1)


async def test_a_gateway_sigkilled_under_load(tmp_path: Path) -> None:
    """四川's gateway runs as `tongban gateway serve` (SQLite audit log); its agencies query 浙江
    (in-process gateway and data system) from eight streams; the process is SIGKILLed mid-load.
    Every audit id a client received names its request's record in the log, which verifies; a
    new process on the same log continues the same tree, and `tongban audit verify` says it is
    intact after a graceful stop."""
    tally = Tally("gateway SIGKILLed")
    fed = make_federation(tmp_path / "fed")
    fed.publish()
    port, owner_port = free_port(), free_port()
    audit_db = tmp_path / "audit-510000.db"
    command = serve_command(fed, port, audit_db, owner_port)
    cluster = Cluster(fed, {"510000": port, "330000": owner_port})
    processes: list[subprocess.Popen[bytes]] = []

    def launch(name: str) -> tuple[subprocess.Popen[bytes], Path]:
        stderr = tmp_path / f"{name}.err"
        with stderr.open("wb") as err:
            process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        processes.append(process)
        return process, stderr

    owner_config = dataclasses.replace(
        config_for_dev_pki(
            fed.pki,
            "330000",
            listen=f"127.0.0.1:{owner_port}",
            snapshot_file=fed.current,
            audit_db=tmp_path / "audit-330000.db",
            peers={"510000": f"localhost:{port}"},
            bind_queries=False,  # queried with made-up case ids
        ),
        grace_seconds=0.2,
    )
    owner_provider = grpc.aio.server()
    exchange_pb2_grpc.add_DataProviderServicer_to_server(
        DemoProviderService(DemoData("330000")), owner_provider
    )
    provider_port = owner_provider.add_insecure_port("127.0.0.1:0")
    owner_config = dataclasses.replace(
        owner_config,
        exchange=dataclasses.replace(owner_config.exchange, provider=f"127.0.0.1:{provider_port}"),  # type: ignore[type-var]
    )
    try:
        async with asyncio.timeout(TEST_SECONDS + 10):
            await owner_provider.start()
            async with running(owner_config):
                process, stderr = launch("first")
                start_up = await wait_serving(fed, port, process, stderr)
                streams = [("sc.amr", "330000", LICENCE, n) for n in range(8)]
                # back to back (calls in flight at the kill), stopped at the kill: 8 x 100 stay
                # under LICENCE-ZJ-2026's 1200 a minute
                async with traffic(
                    cluster, tally, streams, distinct=True, rate=None, limit=100
                ) as stop:
                    tally.enter("up")
                    await wait_until(
                        lambda: every_stream(tally, "up", streams=names(streams), answered=True),
                        "answers on every stream before the kill",
                        WAIT_SECONDS,
                    )
                    in_flight = sum(1 for s in tally.shots if not s.done)
                    process.send_signal(signal.SIGKILL)
                    stop.set()  # the calls in flight end; no new ones
                    tally.enter("killed")
                    assert await asyncio.to_thread(process.wait, 5) == -signal.SIGKILL
                    await wait_until(
                        lambda: all(s.done for s in tally.shots),
                        "the calls in flight to end",
                        WAIT_SECONDS,
                    )
                acked = [s for s in tally.shots if s.ok]
                killed_with = tally.refused()

                # The log as the kill left it.
                store = SqliteAuditStore(audit_db)
                await store.open()
                try:
                    log = AuditLog(
                        store,
                        origin="audit.tongban/510000",
                        key_name="audit.tongban/510000",  # C2SP: named after the log
                        public_key=audit_public_key(fed, "510000"),
                    )
                    tally.audit_checked = await check_audit_ids(log, acked)
                    after_kill = await log.verify()
                    size_at_kill = (await store.head()).size
                finally:
                    await store.close()
                assert after_kill.intact, after_kill.problem

                # A new process on the same log continues the same tree.
                process, stderr = launch("second")
                await wait_serving(fed, port, process, stderr)
                tally.enter("restarted")
                async with cluster.exchange("sc.hrss") as stub:
                    token = bearer(cluster.token("sc.hrss"))
                    make = query_maker("330000", *LICENCE, held_subjects("330000", LICENCE[0]))
                    for n in range(10):
                        await once(tally, "sc.hrss->330000", stub, make(n), token)
                process.send_signal(signal.SIGINT)
                assert await asyncio.to_thread(process.wait, 10) == 0, stderr.read_text()
                assert "Traceback" not in stderr.read_text(), stderr.read_text()
            verified = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "gateway.cli", "audit", "verify", "--sqlite", str(audit_db),
                 "--pki", str(fed.pki), "--region", "510000", "--json"],
                cwd=REPO, capture_output=True, text=True, timeout=30,
            )  # fmt: skip
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
        await owner_provider.stop(0)

    report = json.loads(verified.stdout)
    later = tally.where(phase_sent="restarted")
    indices = [int(s.response.audit_id.rpartition("#")[2]) for s in later if s.response]
    store = SqliteAuditStore(audit_db)
    await store.open()
    try:
        tally.audit_checked += await check_audit_ids(
            AuditLog(
                store,
                origin="audit.tongban/510000",
                key_name="audit.tongban/510000",
                public_key=audit_public_key(fed, "510000"),
            ),
            later,
        )
    finally:
        await store.close()
    line = tally.report(
        f"gateway up in {start_up:.1f}s; {in_flight} calls in flight at the kill "
        f"({', '.join(f'{k} {v}' for k, v in sorted(killed_with.items())) or 'none refused'}); "
        f"log at the kill: {size_at_kill} records for {len(acked)} answers, verifies; after a "
        f"restart and a graceful stop `tongban audit verify`: {report['records_checked']} "
        f"records, {report['checkpoints_checked']} checkpoints, intact={report['intact']}"
    )
    assert acked, line
    assert set(killed_with) <= {"UNAVAILABLE/-"}, line  # the connection went, no status
    assert sum(killed_with.values()) <= in_flight
    assert all(s.ok for s in later), tally.refused(later)
    assert min(indices) >= size_at_kill, "the restarted gateway did not continue the tree"
    assert report["intact"], report
    assert report["records_checked"] >= size_at_kill + len(later), report
    assert verified.returncode == 0


def audit_public_key(fed: Federation, region: str) -> Any:
    config = config_for_dev_pki(fed.pki, region, listen="127.0.0.1:0", snapshot_file=fed.current)
    assert config.audit is not None
    return load_private_key(config.audit.key).public_key()
