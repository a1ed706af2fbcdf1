"""Resource exhaustion by huge or slow requests: the transport's message and metadata limits,
the request limits of gateway/policy.py and the batch limit, deadlines towards a peer that
hangs, and the metrics endpoint's connection cap. docs/threats.md T14."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from query_support import CALL_TIMEOUT, bearer, request, running_cluster
from support import Federation, error_info, eventually

from gateway.audit import Outcome
from gateway.metrics import MetricsServer
from gateway.metrics._http import MAX_CONNECTIONS
from gateway.policy import MAX_CASE_ID_CHARS, MAX_FIELDS, MAX_SUBJECT_ID_CHARS
from gateway.server import MAX_MESSAGE_BYTES
from gateway.services.exchange import MAX_BATCH_ITEMS
from gateway.tokens import MAX_TOKEN_BYTES
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

pytestmark = pytest.mark.integration

HANG_GUARD_SECONDS = 60.0  # a call or a wait that should end by itself: a hang guard, not a bound


def si(subject: str, **changes: Any) -> exchange_pb2.QueryRequest:
    return request("330000", "si.participation", "SI-TRANSFER", subject, **changes)


async def test_oversized_messages_and_metadata_are_refused_by_the_transport(
    federation: Federation, tmp_path: Path, kit: Any
) -> None:
    """A message over MAX_MESSAGE_BYTES and an authorization header over gRPC's 16 KiB hard
    metadata limit never reach a handler; the gateway answers the next query as usual."""
    async with running_cluster(federation, tmp_path) as cluster:
        subject = cluster.subject("330000", "si.participation")
        token = cluster.token("sc.hrss")
        async with cluster.exchange("sc.hrss") as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Query(
                    si("1" * (MAX_MESSAGE_BYTES + 1)), metadata=bearer(token), timeout=30
                )
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Query(si(subject), metadata=bearer("a" * 40_000), timeout=CALL_TIMEOUT)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            answer = await stub.Query(si(subject), metadata=bearer(token), timeout=CALL_TIMEOUT)
        assert answer.record.jws
        assert len(await kit.audited(cluster, "510000")) == 1  # only the good query


async def test_oversized_request_parts_are_refused_before_anything_leaves_the_region(
    federation: Federation, tmp_path: Path, kit: Any
) -> None:
    async with running_cluster(federation, tmp_path) as cluster:
        subject = cluster.subject("330000", "si.participation")
        token = cluster.token("sc.hrss")
        oversized = {
            "too many fields": si(subject, fields=tuple(f"f{n}" for n in range(MAX_FIELDS + 1))),
            "a subject id too long": si("1" * (MAX_SUBJECT_ID_CHARS + 1)),
            "a case id too long": si(subject, case_id="办" * (MAX_CASE_ID_CHARS + 1)),
        }
        async with cluster.exchange("sc.hrss") as stub:
            for name, query in oversized.items():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Query(query, metadata=bearer(token), timeout=CALL_TIMEOUT)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
                assert error_info(caught.value).reason == "REQUEST_TOO_LARGE", name
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.BatchQuery(
                    exchange_pb2.BatchQueryRequest(
                        items=[si(subject) for _ in range(MAX_BATCH_ITEMS + 1)]
                    ),
                    metadata=bearer(token),
                    timeout=CALL_TIMEOUT,
                )
            assert error_info(caught.value).reason == "REQUEST_TOO_LARGE"
            # Over MAX_TOKEN_BYTES but under the transport's hard limit: refused by one or
            # the other (gRPC rejects metadata between its soft and hard limits at random).
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Query(
                    si(subject),
                    metadata=bearer("a." * (MAX_TOKEN_BYTES // 2) + "a"),
                    timeout=CALL_TIMEOUT,
                )
            if caught.value.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert error_info(caught.value).reason == "TOKEN_INVALID"
        assert await kit.audited(cluster, "330000") == []


class HangingPeer(exchange_pb2_grpc.PeerServicer):
    """A provider gateway that never answers; it notes the deadline each call arrived with."""

    def __init__(self) -> None:
        self.remaining: list[float | None] = []

    async def Forward(self, request: exchange_pb2.ForwardRequest, context: Any) -> Any:
        self.remaining.append(context.time_remaining())
        await asyncio.sleep(3600)


async def test_a_peer_that_hangs_holds_a_query_no_longer_than_its_deadline(
    federation: Federation, tmp_path: Path, kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The requesting gateway forwards with the client's deadline; without one, with
    DEFAULT_DEADLINE_SECONDS (shortened here to 1 s); it then gives up on its own, answers
    DEADLINE_EXCEEDED with reason PEER_UNAVAILABLE and audits the failure."""
    monkeypatch.setattr("gateway.services.exchange.DEFAULT_DEADLINE_SECONDS", 1.0)
    chain, key = federation.tls_files("330000")
    peer = HangingPeer()
    fake = grpc.aio.server()
    exchange_pb2_grpc.add_PeerServicer_to_server(peer, fake)
    port = fake.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), chain.read_bytes())])
    )
    await fake.start()
    try:
        overrides = {"510000": {"330000": f"localhost:{port}"}}
        async with running_cluster(federation, tmp_path, peer_overrides=overrides) as cluster:
            async with cluster.exchange("sc.hrss") as stub:
                token = cluster.token("sc.hrss")
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Query(
                        si(cluster.subject("330000", "si.participation")),
                        metadata=bearer(token),
                        timeout=0.8,
                    )
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                # No deadline: the gateway's own ends it (the peer saw at most 1 s left, below),
                # with its reason; the timeout only guards the test against a hang.
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async with asyncio.timeout(HANG_GUARD_SECONDS):
                        await stub.Query(
                            si(cluster.subject("330000", "si.participation", n=1)),
                            metadata=bearer(token),
                        )
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert error_info(caught.value).reason == "PEER_UNAVAILABLE"
            with_deadline, without = peer.remaining
            assert with_deadline is not None
            assert 0 < with_deadline <= 0.8
            assert without is not None
            assert 0 < without <= 1.0
            failed = [
                r for r in await kit.audited(cluster, "510000") if r.outcome is Outcome.FAILED
            ]
            # The query without a deadline failed on the gateway's own bound. The one with the
            # client's 0.8 s ends when the client's deadline and the forwarded one (the same
            # instant) pass: recorded as the peer's failure, or as the client's cancellation
            # when the gateway sees that first (a loaded machine); never as anything else.
            reasons = [r.reason for r in failed]
            assert len(reasons) == 2, reasons
            assert "PEER_UNAVAILABLE" in reasons
            assert set(reasons) <= {"PEER_UNAVAILABLE", "REQUEST_CANCELLED"}, reasons
    finally:
        await fake.stop(0)


async def test_calls_beyond_the_concurrency_cap_are_refused_at_once(
    federation: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of slow calls cannot pile up without bound: past MAX_CONCURRENT_RPCS (4 here)
    in flight, gRPC refuses new calls at once with RESOURCE_EXHAUSTED, and once the slow ones
    end the gateway answers again."""
    monkeypatch.setattr("gateway.server.MAX_CONCURRENT_RPCS", 4)
    monkeypatch.setattr("gateway.services.exchange.DEFAULT_DEADLINE_SECONDS", 2.0)
    chain, key = federation.tls_files("330000")
    fake = grpc.aio.server()
    exchange_pb2_grpc.add_PeerServicer_to_server(HangingPeer(), fake)
    port = fake.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), chain.read_bytes())])
    )
    await fake.start()
    try:
        overrides = {"510000": {"330000": f"localhost:{port}"}}
        async with (
            running_cluster(federation, tmp_path, peer_overrides=overrides) as cluster,
            cluster.exchange("sc.hrss") as stub,
        ):
            token = cluster.token("sc.hrss")
            slow = [
                asyncio.ensure_future(
                    stub.Query(
                        si(cluster.subject("330000", "si.participation", n=n)),
                        metadata=bearer(token),
                        timeout=5,
                    )
                )
                for n in range(4)
            ]
            await asyncio.sleep(0.5)  # the four hold every slot, waiting on the peer
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Query(
                    si(cluster.subject("330000", "si.participation", n=5)),
                    metadata=bearer(token),
                    timeout=5,
                )
            # Refused, not queued: a queued call would have ended like the slow ones.
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            ended = await asyncio.gather(*slow, return_exceptions=True)
            assert all(isinstance(e, grpc.aio.AioRpcError) for e in ended)
            cq = exchange_pb2.QueryRequest(
                provider_region="500000",
                dataset="si.participation",
                purpose="SI-TRANSFER",
                subject_id=cluster.subject("500000", "si.participation"),
                case_id="CASE-2026-0001",
                request_id="req-after-the-flood",
            )
            answer = await stub.Query(cq, metadata=bearer(token), timeout=CALL_TIMEOUT)
            assert answer.record.sealer_region == "500000"
    finally:
        await fake.stop(0)


async def healthz(port: int) -> bytes:
    """The answer to GET /healthz; b"" when the connection is closed unanswered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=5)
    except ConnectionResetError:  # closed before our request was read
        return b""
    finally:
        writer.close()


async def test_the_metrics_endpoint_closes_connections_beyond_its_cap() -> None:
    """MAX_CONNECTIONS idle clients hold every slot: the next is closed unanswered, and once
    they go, the endpoint answers again."""
    server = MetricsServer(CollectorRegistry(), read_timeout_seconds=30)
    port = await server.start()
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS):
            idle.append(await asyncio.open_connection("127.0.0.1", port))
        await eventually(
            lambda: len(server._connections) == MAX_CONNECTIONS, "every idle client accepted"
        )
        assert await healthz(port) == b""
        for _, idle_writer in idle:
            idle_writer.close()
        idle.clear()

        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while not (answer := await healthz(port)):
            assert time.monotonic() < deadline, "the endpoint did not free its slots"
            await asyncio.sleep(0.05)
        assert answer.startswith(b"HTTP/1.1 200 OK")
    finally:
        for _, idle_writer in idle:
            idle_writer.close()
        await server.stop()
