"""Peer.ForwardBatch between real gateways on loopback: the owner answers each item exactly as
a single Peer.Forward of it (status, answer, audit record), and a requesting gateway sends a
BatchQuery's items to one region as one ForwardBatch."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import grpc
import pytest
from query_support import CALL_TIMEOUT, Cluster, bearer, request, running_cluster
from support import Federation, credentials_as, sign_forward_message

from gateway.audit import AuditQuery, Outcome
from gateway.errors import status_error_info
from gateway.services._peer_calls import MAX_FORWARD_BATCH_ITEMS
from tongban.v1 import common_pb2, exchange_pb2, exchange_pb2_grpc

pytestmark = pytest.mark.integration

OWNER, REQUESTER = "330000", "510000"
REDIS = "redis://127.0.0.1:6379/0"


def forward(fed: Federation, query: exchange_pb2.QueryRequest) -> exchange_pb2.ForwardRequest:
    """What 510000's gateway sends 330000's for its agency sc.hrss, signed by its audit key."""
    message = exchange_pb2.ForwardRequest(
        query=query,
        caller=common_pb2.CallerIdentity(
            agency_id="sc.hrss",
            region=REQUESTER,
            operator="经办人 张三",
            certificate_thumbprint="A" * 43,
        ),
        requesting_region=REQUESTER,
    )
    signed: exchange_pb2.ForwardRequest = sign_forward_message(fed, message)
    return signed


def queries(cluster: Cluster) -> list[exchange_pb2.QueryRequest]:
    """An allowed query, one the owner refuses (a field the purpose does not allow) and one for
    a dataset the owner does not hold; new request ids each time."""
    subject = cluster.subject(OWNER, "si.participation")
    return [
        request(OWNER, "si.participation", "SI-TRANSFER", subject),
        request(OWNER, "si.participation", "SI-TRANSFER", subject, fields=("bank_account",)),
        request(OWNER, "no.such.dataset", "SI-TRANSFER", subject),
    ]


def outcome(result: exchange_pb2.ForwardResponse | grpc.aio.AioRpcError) -> tuple[Any, ...]:
    """What a requesting gateway learns: the answer's sealed bytes and decision, or the
    status's code, message and ErrorInfo."""
    if isinstance(result, grpc.aio.AioRpcError):
        info = status_error_info(_rich(result))
        assert info is not None
        return (result.code().value[0], result.details(), info.reason, dict(info.metadata))
    return (0, result.record.payload, tuple(result.fields), result.agreement_id)


def _rich(exc: grpc.aio.AioRpcError) -> Any:
    from google.rpc import status_pb2

    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError("no rich status")


def item_outcome(item: exchange_pb2.ForwardBatchItem) -> tuple[Any, ...]:
    if item.WhichOneof("outcome") == "response":
        return (
            0,
            item.response.record.payload,
            tuple(item.response.fields),
            item.response.agreement_id,
        )
    info = status_error_info(item.status)
    assert info is not None
    return (item.status.code, item.status.message, info.reason, dict(info.metadata))


async def forward_records(cluster: Cluster, request_ids: set[str]) -> dict[str, Any]:
    audit = cluster.gateways[OWNER].audit
    assert audit is not None
    return {
        record.request_id: record
        for _, record in await audit.store.query(AuditQuery(limit=1000))
        if record.request_id in request_ids
    }


def handled(gateway: Any, method: str) -> float:
    """Peer calls of `method` this gateway served with OK (its grpc_server_handled_total)."""
    value = gateway.metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_service": "tongban.v1.Peer",
            "grpc_method": method,
            "grpc_type": "unary",
            "grpc_code": "OK",
        },
    )
    return float(value or 0.0)


async def test_each_item_is_answered_and_audited_as_its_single_forward(
    federation: Federation, tmp_path: Path
) -> None:
    async with running_cluster(federation, tmp_path) as cluster:
        credentials = credentials_as(federation, REQUESTER, OWNER)
        singles, batched = queries(cluster), queries(cluster)
        async with grpc.aio.secure_channel(
            f"localhost:{cluster.ports[OWNER]}", credentials
        ) as channel:
            peer = exchange_pb2_grpc.PeerStub(channel)
            alone: list[Any] = []
            for query in singles:
                try:
                    alone.append(
                        await peer.Forward(forward(federation, query), timeout=CALL_TIMEOUT)
                    )
                except grpc.aio.AioRpcError as exc:
                    alone.append(exc)
            answer = await peer.ForwardBatch(
                exchange_pb2.ForwardBatchRequest(items=[forward(federation, q) for q in batched]),
                timeout=CALL_TIMEOUT,
            )
        assert outcome(alone[0])[0] == 0
        assert all(outcome(a)[0] != 0 for a in alone[1:])  # refused: the batch must say so too
        assert [item_outcome(item) for item in answer.results] == [outcome(a) for a in alone]
        # Each item has the audit record its single Forward has: same rpc, outcome, reason,
        # and the signed request kept.
        single_ids = {q.request_id for q in singles}
        batch_ids = {q.request_id for q in batched}
        records = await forward_records(cluster, single_ids | batch_ids)

        def facts(query: exchange_pb2.QueryRequest) -> tuple[Any, ...]:
            r = records[query.request_id]
            return (r.rpc, r.outcome, r.reason, r.dataset, r.caller_agency, bool(r.request_sealed))

        assert [facts(q) for q in batched] == [facts(q) for q in singles]
        assert [records[q.request_id].outcome for q in batched] == [
            Outcome.ALLOWED,
            Outcome.DENIED,
            Outcome.DENIED,
        ]
        assert records[batched[0].request_id].rpc == "/tongban.v1.Peer/Forward"


async def test_a_batch_of_the_wrong_size_is_refused_whole(
    federation: Federation, tmp_path: Path
) -> None:
    async with running_cluster(federation, tmp_path) as cluster:
        query = queries(cluster)[0]
        async with grpc.aio.secure_channel(
            f"localhost:{cluster.ports[OWNER]}", credentials_as(federation, REQUESTER, OWNER)
        ) as channel:
            peer = exchange_pb2_grpc.PeerStub(channel)
            for count in (0, MAX_FORWARD_BATCH_ITEMS + 1):
                items = [forward(federation, query) for _ in range(count)]
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await peer.ForwardBatch(
                        exchange_pb2.ForwardBatchRequest(items=items), timeout=CALL_TIMEOUT
                    )
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                info = status_error_info(_rich(caught.value))
                assert info is not None
                assert info.reason == "REQUEST_TOO_LARGE"
        audit = cluster.gateways[OWNER].audit
        assert audit is not None
        records = [r for _, r in await audit.store.query(AuditQuery(limit=100))]
        assert [(r.rpc, r.reason) for r in records] == [
            ("/tongban.v1.Peer/ForwardBatch", "REQUEST_TOO_LARGE")
        ] * 2


async def test_a_batch_querys_items_to_one_region_travel_as_one_forward_batch(
    federation: Federation, tmp_path: Path
) -> None:
    async with running_cluster(federation, tmp_path, redis_url=REDIS) as cluster:
        items = [
            request(
                OWNER,
                "si.participation",
                "SI-TRANSFER",
                cluster.subject(OWNER, "si.participation", n=n),
            )
            for n in range(3)
        ]
        async with cluster.exchange("sc.hrss") as stub:
            answer = await stub.BatchQuery(
                exchange_pb2.BatchQueryRequest(
                    items=items, request_id=f"batch-{secrets.token_hex(6)}"
                ),
                metadata=bearer(cluster.token("sc.hrss")),
                timeout=CALL_TIMEOUT,
            )
        assert [item.status.code for item in answer.items] == [0, 0, 0]
        assert {item.response.record.sealer_region for item in answer.items} == {OWNER}
        owner = cluster.gateways[OWNER]
        assert (handled(owner, "ForwardBatch"), handled(owner, "Forward")) == (1.0, 0.0)


@pytest.mark.parametrize(
    ("caller", "claimed"),
    [
        ("sc.hrss", REQUESTER),  # an agency, not a gateway
        (REQUESTER, "500000"),  # a gateway forwarding as another region (signed by it)
    ],
)
async def test_a_batch_is_no_way_around_the_caller_check(
    federation: Federation, tmp_path: Path, caller: str, claimed: str
) -> None:
    async with running_cluster(federation, tmp_path) as cluster:

        def forged() -> exchange_pb2.ForwardRequest:
            message = forward(federation, queries(cluster)[0])
            message.requesting_region = claimed
            message.caller.region = claimed
            signed: exchange_pb2.ForwardRequest = sign_forward_message(federation, message)
            return signed

        async with grpc.aio.secure_channel(
            f"localhost:{cluster.ports[OWNER]}", credentials_as(federation, caller, OWNER)
        ) as channel:
            peer = exchange_pb2_grpc.PeerStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as single:
                await peer.Forward(forged(), timeout=CALL_TIMEOUT)
            answer = await peer.ForwardBatch(
                exchange_pb2.ForwardBatchRequest(items=[forged(), forged()]),
                timeout=CALL_TIMEOUT,
            )
        assert outcome(single.value)[2] == "NOT_AUTHORISED_ROLE"
        assert [item_outcome(item) for item in answer.results] == [outcome(single.value)] * 2
