"""Issue 14, point 3: an error that crosses a region carries the reason and a plain sentence,
never the owner's internal detail (threat T13). The owner's PostgreSQL audit store is taken
away (a TCP proxy that refuses every connection, as a stopped server does); the requesting
agency's refusal names AUDIT_UNAVAILABLE and no host, port, DSN or driver text, while the
owner's own log keeps the detail for its operators."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fault_support import TcpProxy, running_gateways
from pg_support import PgRoles, pg_roles
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from query_support import CALL_TIMEOUT, bearer, request
from support import Federation, error_info

from gateway.config import GatewayConfig
from gateway.errors import PLAIN_MESSAGES

pytestmark = pytest.mark.integration

TEST_SECONDS = 120.0  # a hang guard for the whole test, never a bound it asserts
LICENCE = ("market.business_licence", "LICENCE-VERIFY")


@pytest.fixture(scope="module")
def roles() -> Iterator[PgRoles]:
    with pg_roles() as made:
        yield made


async def test_the_owners_audit_outage_reaches_the_requester_as_a_plain_reason(
    federation: Federation, tmp_path: Path, roles: PgRoles, caplog: pytest.LogCaptureFixture
) -> None:
    params = conninfo_to_dict(roles.app_dsn)
    proxy = TcpProxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    await proxy.start()
    schema = roles.fresh_schema()

    def configure(region: str, config: GatewayConfig) -> GatewayConfig:
        if region != "330000":  # the owner's audit log only; the requester keeps SQLite
            return config
        assert config.audit is not None
        via = {"host": "127.0.0.1", "port": str(proxy.port)}
        audit = dataclasses.replace(
            config.audit,
            store="postgres",
            dsn=make_conninfo(roles.app_dsn, **via),
            owner_dsn=make_conninfo(roles.owner_dsn, **via),
            schema=schema,
        )
        return dataclasses.replace(config, audit=audit)

    refusals: list[grpc.aio.AioRpcError] = []
    try:
        async with (
            asyncio.timeout(TEST_SECONDS),
            running_gateways(federation, tmp_path, configure=configure) as cluster,
        ):
            subject = cluster.subject("330000", LICENCE[0])
            token = cluster.token("sc.amr")
            async with cluster.exchange("sc.amr") as stub:
                await stub.Query(
                    request("330000", *LICENCE, subject),
                    metadata=bearer(token),
                    timeout=CALL_TIMEOUT,
                )  # answered while the store is up
                await proxy.cut()
                caplog.set_level(logging.INFO)
                for n in range(1, 4):  # subjects not asked before: no cached answer
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await stub.Query(
                            request("330000", *LICENCE, cluster.subject("330000", LICENCE[0], n=n)),
                            metadata=bearer(token),
                            timeout=CALL_TIMEOUT,
                        )
                    refusals.append(caught.value)
    finally:
        await proxy.close()

    internal = ("127.0.0.1", str(proxy.port), "psycopg", "connection", "dbname", schema)
    internal += (roles.app, roles.owner, "port", "host", "failed:")
    for refused in refusals:
        text = refused.details() or ""
        assert (refused.code(), error_info(refused).reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "AUDIT_UNAVAILABLE",
        ), text
        assert not [word for word in internal if word.lower() in text.lower()], text
        assert text == f"region 330000: {PLAIN_MESSAGES['AUDIT_UNAVAILABLE']}"
    # The detail is the owner's to read: its log names what failed, where.
    owner_lines = [r.getMessage() for r in caplog.records if r.name == "tongban.errors"]
    assert any(str(proxy.port) in line for line in owner_lines), owner_lines
