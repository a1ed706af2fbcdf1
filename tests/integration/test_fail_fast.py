"""Fail fast with a reason (issue 14, point 2): a frozen dependency (it keeps its connections
and answers nothing, as a process stopped with SIGSTOP) costs each call at most its bound, then
its circuit breaker opens and calls are refused (or fall back) at once, with a reason, long
before the caller's deadline; each recovers by itself when the dependency answers again.

| frozen | how | what must hold |
| --- | --- | --- |
| PostgreSQL audit store | a TCP proxy in front of it holds every byte | UNAVAILABLE/AUDIT_UNAVAILABLE, never DEADLINE_EXCEEDED; the breaker opens; no record claims an answer that was not released; answers resume |
| Redis | SIGSTOP of the test's own redis-server | queries still answered (memory replay window and quotas, no cache); while the breaker is open Redis is not called at all; it closes again after SIGCONT |
| a peer gateway | a TCP proxy in front of it holds every byte | UNAVAILABLE/PEER_UNAVAILABLE, its breaker opens, other regions answered; answers again after the thaw |
| a data system | a `DataProvider` that holds every call | UNAVAILABLE/PROVIDER_UNAVAILABLE within its bound, the breaker opens on timeouts and the data system is then not called; answers again after it returns |

Every call has a long deadline (`DEADLINE`): a refusal that arrives is not the deadline's.
Nothing here asserts a time; the guards (`asyncio.timeout`, `wait_until`) only stop a hang.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fault_support import (
    TcpProxy,
    held_subjects,
    query_maker,
    reason_of,
    records,
    running_gateways,
    wait_until,
)
from pg_support import PgRoles, pg_roles
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from query_support import bearer
from support import Federation, RedisServer

from gateway.config import GatewayConfig
from gateway.demo.data import DemoData
from gateway.demo.provider import DemoProviderService
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

pytestmark = pytest.mark.integration

TEST_SECONDS = 180.0  # a hang guard for a whole test
WAIT_SECONDS = 60.0  # a hang guard for what a test waits for; never a bound it asserts
DEADLINE = 30.0  # each query's deadline: far beyond any bound, so a refusal is not its expiry
LICENCE = ("market.business_licence", "LICENCE-VERIFY")
SI = ("si.participation", "SI-TRANSFER")


async def ask(
    stub: exchange_pb2_grpc.DataExchangeAsyncStub, query: Any, token: tuple[tuple[str, str], ...]
) -> tuple[str, str]:
    """One query with the long deadline: ("OK", "") or (status code name, reason)."""
    try:
        await stub.Query(query, metadata=token, timeout=DEADLINE)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, reason_of(exc)
    return "OK", ""


def open_longer(region: str, config: GatewayConfig) -> GatewayConfig:
    """Breakers that stay open 5 s: long enough for the checks made while one is open, on a
    loaded machine too."""
    assert config.exchange is not None
    return dataclasses.replace(
        config, exchange=dataclasses.replace(config.exchange, breaker_open_seconds=5.0)
    )


def unreleased_claims(stored: list[dict[str, Any]], refused: set[str]) -> list[str]:
    """Request ids of refused queries whose last record in the log says "allowed"."""
    last: dict[str, dict[str, Any]] = {}
    for record in stored:
        if record["rpc"] == "/tongban.v1.DataExchange/Query":
            last[record["request_id"]] = record
    return sorted(r for r in refused if r in last and last[r]["outcome"] == "allowed")


@pytest.fixture(scope="module")
def roles() -> Iterator[PgRoles]:
    with pg_roles() as made:
        yield made


async def test_a_frozen_postgres_audit_store_fails_fast_and_claims_no_unreleased_answer(
    federation: Federation, tmp_path: Path, roles: PgRoles
) -> None:
    """四川's (510000, the requester) audit log is in PostgreSQL behind a proxy that freezes:
    each query is refused UNAVAILABLE/AUDIT_UNAVAILABLE, none waits for its deadline; the audit
    store's breaker opens; records that became durable after their answer was refused are
    followed by a record saying it was not released; after the thaw answers resume."""
    schema = roles.fresh_schema()
    params = conninfo_to_dict(roles.app_dsn)
    proxy = TcpProxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    await proxy.start()

    def via_proxy(dsn: str) -> str:
        return make_conninfo(dsn, host="127.0.0.1", port=str(proxy.port))

    def configure(region: str, config: GatewayConfig) -> GatewayConfig:
        if region != "510000":
            return config
        assert config.audit is not None
        audit = dataclasses.replace(
            config.audit,
            store="postgres",
            dsn=via_proxy(roles.app_dsn),
            owner_dsn=via_proxy(roles.owner_dsn),
            schema=schema,
            append_timeout_seconds=1.0,
        )
        return open_longer(region, dataclasses.replace(config, audit=audit))

    try:
        async with (
            asyncio.timeout(TEST_SECONDS),
            running_gateways(federation, tmp_path, configure=configure) as cluster,
            cluster.exchange("sc.amr") as stub,
        ):
            requester = cluster.gateways["510000"]
            assert requester.audit is not None
            token = bearer(cluster.token("sc.amr"))
            make = query_maker("330000", *LICENCE, held_subjects("330000", LICENCE[0], 40))
            assert await ask(stub, make(0), token) == ("OK", "")
            proxy.freeze()
            outcomes: list[tuple[str, str]] = []
            refused: set[str] = set()
            for n in range(1, 7):
                query = make(n)
                outcome = await ask(stub, query, token)
                outcomes.append(outcome)
                if outcome[0] != "OK":
                    refused.add(query.request_id)
            assert outcomes == [("UNAVAILABLE", "AUDIT_UNAVAILABLE")] * 6, outcomes
            breaker = requester.audit.breaker
            assert breaker.opened >= 1
            assert breaker.timeouts >= 1
            # While it is open, the owner is not even asked: its answer could not be released.
            assert breaker.state == "open"
            unasked = make(50)
            assert await ask(stub, unasked, token) == ("UNAVAILABLE", "AUDIT_UNAVAILABLE")
            refused.add(unasked.request_id)
            owner = cluster.gateways["330000"]
            assert owner.audit is not None
            assert unasked.request_id not in {r["request_id"] for r in await records(owner.audit)}
            requester.observe()
            assert (
                requester.metrics.registry.get_sample_value(
                    "tongban_breaker_opened_total", {"dependency": "audit_store"}
                )
                or 0
            ) >= 1
            proxy.thaw()
            n = 100

            async def answered() -> bool:
                nonlocal n
                n += 1
                return (await ask(stub, make(n), token))[0] == "OK"

            await wait_until(answered, "an answer after the thaw", WAIT_SECONDS)

            async def settled() -> bool:
                # every late record has its follow-up (they are written as the late ones land)
                assert requester.audit is not None
                return not unreleased_claims(await records(requester.audit), refused)

            await wait_until(settled, "no record claiming an unreleased answer", WAIT_SECONDS)
            # The records held by the freeze did land late: each has its follow-up.
            stored = await records(requester.audit)
            late = {
                r["request_id"]
                for r in stored
                if r["request_id"] in refused and r["outcome"] == "allowed"
            }
            followed = {
                r["request_id"]
                for r in stored
                if r["request_id"] in late
                and (r["outcome"], r["reason"], r["fields"]) == ("failed", "AUDIT_UNAVAILABLE", [])
            }
            assert late, "the freeze held at least one allowed record that landed late"
            assert followed == late
            result = await requester.audit.verify()
            assert result.intact, result.problem
    finally:
        await proxy.close()


async def test_a_frozen_redis_is_not_waited_for_once_its_breaker_is_open(
    federation: Federation, tmp_path: Path, redis_server: RedisServer
) -> None:
    """The gateways' Redis is stopped (SIGSTOP): queries are still answered (replay window
    and quotas in the replica's memory, no cache). One breaker guards Redis for all its uses:
    once open, a query makes no Redis call at all (every use is bypassed, none waits its
    bound); after SIGCONT it closes by itself."""
    async with (
        asyncio.timeout(TEST_SECONDS),
        running_gateways(
            federation, tmp_path, redis_url=redis_server.url, configure=open_longer
        ) as cluster,
        cluster.exchange("sc.hrss") as stub,
    ):
        requester = cluster.gateways["510000"]
        breaker = requester.redis_breaker
        assert requester.query_path is not None
        assert requester.query_path.cache.breaker is breaker, "the cache shares Redis's breaker"
        token = bearer(cluster.token("sc.hrss"))
        make = query_maker("500000", *SI, held_subjects("500000", SI[0], 40))
        assert await ask(stub, make(0), token) == ("OK", "")
        redis_server.freeze()
        try:
            n = 0

            async def opened() -> bool:
                nonlocal n
                n += 1
                assert await ask(stub, make(n), token) == ("OK", "")
                return breaker.state == "open"

            await wait_until(opened, "the Redis breaker to open", WAIT_SECONDS)
            assert breaker.timeouts >= 1
            # While open: the next query is answered without calling Redis at all.
            errors, bypassed = breaker.errors, breaker.bypassed
            assert await ask(stub, make(n + 1), token) == ("OK", "")
            assert breaker.state == "open"
            assert breaker.errors == errors, "no Redis call was made (none could wait)"
            # replay window, quota and cache read are one Redis call per request (issue 20):
            # that one call is bypassed, the replay window and the quota kept in memory
            assert breaker.bypassed - bypassed >= 1, "the request's Redis call was bypassed"
            requester.observe()
            assert (
                requester.metrics.registry.get_sample_value(
                    "tongban_breaker_state", {"dependency": "redis"}
                )
                == 1
            )
        finally:
            redis_server.thaw()
        n = 100

        async def closed() -> bool:
            nonlocal n
            n += 1
            assert await ask(stub, make(n), token) == ("OK", "")
            return breaker.state == "closed"

        await wait_until(closed, "the Redis breaker to close after SIGCONT", WAIT_SECONDS)


async def test_a_frozen_peer_fails_fast_with_peer_unavailable_and_other_regions_answer(
    federation: Federation, tmp_path: Path
) -> None:
    """浙江's gateway (330000) is reached by 四川 through a proxy that freezes: queries to it
    are refused UNAVAILABLE/PEER_UNAVAILABLE (never DEADLINE_EXCEEDED), its breaker opens and
    then it is not called; 重庆 (500000) is answered all along; after the thaw 浙江 answers
    again by itself (half-open trial)."""
    proxy = TcpProxy("127.0.0.1", 0)  # its target is set once 330000's port is known

    def configure(region: str, config: GatewayConfig) -> GatewayConfig:
        config = open_longer(region, config)
        if region != "510000":
            return config
        assert config.exchange is not None
        peers = {**config.peers, "330000": f"localhost:{proxy.port}"}
        exchange = dataclasses.replace(config.exchange, peer_timeout_seconds=2.0)
        return dataclasses.replace(config, peers=peers, exchange=exchange)

    await proxy.start()
    try:
        async with (
            asyncio.timeout(TEST_SECONDS),
            running_gateways(federation, tmp_path, configure=configure) as cluster,
            cluster.exchange("sc.amr") as amr,
            cluster.exchange("sc.hrss") as hrss,
        ):
            proxy.target = ("127.0.0.1", cluster.ports["330000"])
            requester = cluster.gateways["510000"]
            assert requester.peers is not None
            licence = query_maker("330000", *LICENCE, held_subjects("330000", LICENCE[0], 40))
            si = query_maker("500000", *SI, held_subjects("500000", SI[0], 40))
            amr_token = bearer(cluster.token("sc.amr"))
            hrss_token = bearer(cluster.token("sc.hrss"))
            assert await ask(amr, licence(0), amr_token) == ("OK", "")
            proxy.freeze()
            breaker = requester.peers.breaker("330000")
            n = 0

            async def opened() -> bool:
                nonlocal n
                n += 1
                outcome = await ask(amr, licence(n), amr_token)
                assert outcome == ("UNAVAILABLE", "PEER_UNAVAILABLE"), outcome
                return breaker.state == "open"

            await wait_until(opened, "the breaker of 330000 to open", WAIT_SECONDS)
            calls = breaker.errors
            assert await ask(amr, licence(n + 1), amr_token) == (
                "UNAVAILABLE",
                "PEER_UNAVAILABLE",
            )
            assert breaker.errors == calls, "an open breaker does not call the peer"
            assert breaker.bypassed >= 1
            assert await ask(hrss, si(0), hrss_token) == ("OK", ""), "other regions unaffected"
            assert requester.peers.breaker("500000").state == "closed"
            requester.observe()
            assert (
                requester.metrics.registry.get_sample_value(
                    "tongban_breaker_state", {"dependency": "peer:330000"}
                )
                == 1
            )
            proxy.thaw()
            n = 100

            async def answered() -> bool:
                nonlocal n
                n += 1
                # (a repeated subject may be answered from 四川's own cache: wait for the peer)
                ok = (await ask(amr, licence(n), amr_token))[0] == "OK"
                return ok and breaker.state == "closed"

            await wait_until(answered, "330000 to answer after the thaw", WAIT_SECONDS)
    finally:
        await proxy.close()


class FrozenDataSystem(exchange_pb2_grpc.DataProviderServicer):
    """The demo data system, holding every call (unanswered, until its caller gives up) while
    `frozen` is clear."""

    def __init__(self, region: str) -> None:
        self.real = DemoProviderService(DemoData(region))
        self.running = asyncio.Event()
        self.running.set()
        self.calls = 0

    async def Fetch(
        self, request: exchange_pb2.ProviderFetchRequest, context: Any
    ) -> exchange_pb2.ProviderFetchResponse:
        self.calls += 1
        await self.running.wait()
        return await self.real.Fetch(request, context)


async def test_a_frozen_data_system_opens_its_breaker_on_timeouts(
    federation: Federation, tmp_path: Path
) -> None:
    """浙江's data system stops answering: each query is refused UNAVAILABLE/PROVIDER_UNAVAILABLE
    by its bound (never the caller's deadline, never blamed on the peer gateway); the breaker
    opens on the timeouts, after which the data system is not called; when it answers again
    the next trial closes the breaker."""
    data_system = FrozenDataSystem("330000")
    server = grpc.aio.server()
    exchange_pb2_grpc.add_DataProviderServicer_to_server(data_system, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with (
            asyncio.timeout(TEST_SECONDS),
            running_gateways(
                federation,
                tmp_path,
                providers={"330000": server},
                provider_ports={"330000": port},
                configure=open_longer,
            ) as cluster,
            cluster.exchange("sc.amr") as stub,
        ):
            owner = cluster.gateways["330000"]
            assert owner.query_path is not None
            assert owner.query_path.provider is not None
            breaker = owner.query_path.provider.breaker
            token = bearer(cluster.token("sc.amr"))
            make = query_maker("330000", *LICENCE, held_subjects("330000", LICENCE[0], 40))
            assert await ask(stub, make(0), token) == ("OK", "")
            data_system.running.clear()
            n = 0

            async def opened() -> bool:
                nonlocal n
                n += 1
                outcome = await ask(stub, make(n), token)
                assert outcome == ("UNAVAILABLE", "PROVIDER_UNAVAILABLE"), outcome
                return breaker.state == "open"

            await wait_until(opened, "the data system's breaker to open", WAIT_SECONDS)
            assert breaker.timeouts >= 1
            assert owner.config.exchange is not None
            # opened by the configured number of timed-out calls (the first answered one aside)
            assert data_system.calls - 1 == owner.config.exchange.breaker_failures
            calls = data_system.calls
            assert await ask(stub, make(n + 1), token) == ("UNAVAILABLE", "PROVIDER_UNAVAILABLE")
            assert data_system.calls == calls, "an open breaker does not call the data system"
            cluster.gateways["510000"].observe()
            assert cluster.gateways["510000"].peers is not None
            assert cluster.gateways["510000"].peers.breaker("330000").state == "closed", (
                "the peer gateway answered: its breaker stays closed"
            )
            data_system.running.set()
            n = 100

            async def answered() -> bool:
                nonlocal n
                n += 1
                ok = (await ask(stub, make(n), token))[0] == "OK"
                return ok and breaker.state == "closed"

            await wait_until(answered, "answers after the data system returns", WAIT_SECONDS)
    finally:
        await server.stop(0)
