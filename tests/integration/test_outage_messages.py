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
import psycopg
import pytest
import redis.exceptions
from fault_support import TcpProxy, running_gateways
from pg_support import PgRoles, pg_roles
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from query_support import CALL_TIMEOUT, bearer, request
from support import Federation, credentials_as, dev_config, error_info, running

from gateway.config import GatewayConfig
from gateway.errors import PLAIN_MESSAGES
from tongban.v1 import credentials_pb2, credentials_pb2_grpc

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


class _ForeignFailure:
    """An audit log whose append fails with a driver's exception nothing maps (a bug's way)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def __call__(self, *_args: object, **_kwargs: object) -> None:
        raise self.exc


@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.ConnectionError("Error 111 connecting to 10.9.8.7:6379. Refused."),
        psycopg.OperationalError('connection to server at "10.9.8.7", port 5432 failed'),
        OSError(28, "No space left on device", "/srv/tongban/audit-330000.db"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_an_unmapped_exception_reaches_no_client_as_its_text(
    federation: Federation, exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever escapes a handler (an exception no code maps: a bug) ends the call with
    INTERNAL / INTERNAL_ERROR and a fixed sentence, never gRPC's UNKNOWN "Unexpected <class>:
    <text>"; the traceback is in the gateway's log."""
    async with running(dev_config(federation)) as (gateway, port):
        assert gateway.audit is not None
        gateway.audit.append = _ForeignFailure(exc)  # type: ignore[method-assign]
        async with grpc.aio.secure_channel(
            f"localhost:{port}", credentials_as(federation, "zj.hrss", "330000")
        ) as channel:
            stub = credentials_pb2_grpc.CredentialsStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Seal(
                    credentials_pb2.SealRequest(payload=b'{"a":1}'), timeout=CALL_TIMEOUT
                )
    text = caught.value.details() or ""
    assert (caught.value.code(), error_info(caught.value).reason) == (
        grpc.StatusCode.INTERNAL,
        "INTERNAL_ERROR",
    ), text
    assert text == PLAIN_MESSAGES["INTERNAL_ERROR"]
    assert any(r.exc_info and r.exc_info[1] is exc for r in caplog.records)
