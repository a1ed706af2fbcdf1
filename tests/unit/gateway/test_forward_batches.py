"""The requesting gateway's forwards, coalesced (`gateway.services._peer_calls`): the forwards
to one region of one event-loop iteration go as one Peer.ForwardBatch, a lone one as a plain
Peer.Forward; each waiting forward gets what a single Forward would have given it."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway.breaker import BreakerOpen
from gateway.errors import Refusal, rich_status, status_of
from gateway.services._peer_calls import (
    MAX_FORWARD_BATCH_ITEMS,
    MAX_GATHER_SECONDS,
    ForwardCoalescer,
    ForwardGathering,
)
from tongban.v1 import exchange_pb2


def rpc_error(code: grpc.StatusCode, reason: str = "", message: str = "no") -> grpc.aio.AioRpcError:
    """A peer's error status as the channel raises it (with its rich status when `reason`)."""
    trailing = grpc.aio.Metadata()
    if reason:
        status = rich_status(code, reason, message)
        trailing = grpc.aio.Metadata(*status.trailing_metadata)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=message)


def item_status(code: grpc.StatusCode, reason: str, message: str) -> status_pb2.Status:
    """What the owner puts in a ForwardBatchItem for a refusal (the same rich status)."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="tongban"))
    return status_pb2.Status(code=code.value[0], message=message, details=[detail])


def answer_for(forward: exchange_pb2.ForwardRequest) -> exchange_pb2.ForwardResponse:
    return exchange_pb2.ForwardResponse(audit_id=f"audit-{forward.query.request_id}")


class Peers:
    """A PeerPool (as `ForwardCoalescer` uses it) whose peers answer with `forward_with` and
    `batch_with`, recording every call: (region, method, request ids, timeout)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[str, ...], float]] = []
        self.forward_with: Callable[[exchange_pb2.ForwardRequest], Any] = answer_for
        self.batch_with: Callable[[exchange_pb2.ForwardBatchRequest], Any] = lambda request: (
            exchange_pb2.ForwardBatchResponse(
                results=[
                    exchange_pb2.ForwardBatchItem(response=answer_for(i)) for i in request.items
                ]
            )
        )
        self.refuse: BaseException | None = None  # raised by `call` itself (a breaker, say)

    def stub(self, region: str) -> Any:
        peers = self

        class Stub:
            async def Forward(self, request: Any, timeout: float) -> Any:
                peers.calls.append((region, "Forward", (request.query.request_id,), timeout))
                await asyncio.sleep(0)
                return _answer(peers.forward_with(request))

            async def ForwardBatch(self, request: Any, timeout: float) -> Any:
                ids = tuple(i.query.request_id for i in request.items)
                peers.calls.append((region, "ForwardBatch", ids, timeout))
                await asyncio.sleep(0)
                answer = peers.batch_with(request)
                return _answer(await answer if inspect.isawaitable(answer) else answer)

        return Stub()

    async def call(
        self, region: str, send: Callable[[Any], Awaitable[Any]], *, timeout_seconds: float
    ) -> Any:
        if self.refuse is not None:
            raise self.refuse
        return await send(self.stub(region))


def _answer(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value


class Metrics:
    def __init__(self) -> None:
        self.calls: list[tuple[str, grpc.StatusCode]] = []

    def peer_call(self, region: str, code: grpc.StatusCode, seconds: float) -> None:
        self.calls.append((region, code))


def forward(request_id: str, region: str = "500000") -> exchange_pb2.ForwardRequest:
    return exchange_pb2.ForwardRequest(
        query=exchange_pb2.QueryRequest(provider_region=region, request_id=request_id),
        requesting_region="510000",
    )


def coalescer(peers: Peers, metrics: Metrics | None = None) -> ForwardCoalescer:
    return ForwardCoalescer(peers, metrics or Metrics())  # type: ignore[arg-type]


async def send(
    calls: ForwardCoalescer,
    *forwards: tuple[str, str],
    timeout_seconds: float = 5.0,
    ours: bool = True,
) -> list[exchange_pb2.ForwardResponse | BaseException]:
    """Each (region, request id) forwarded at once; what each got."""
    return list(
        await asyncio.gather(
            *(
                calls.forward(
                    region, forward(rid, region), timeout_seconds=timeout_seconds, ours=ours
                )
                for region, rid in forwards
            ),
            return_exceptions=True,
        )
    )


def described(outcome: Any) -> tuple[str, grpc.StatusCode, str] | str:
    """A Refusal as what its caller is sent (reason, code, message); an answer as its audit id."""
    if isinstance(outcome, Refusal):
        sent = status_of(outcome)
        return outcome.reason, outcome.code, sent.message
    assert isinstance(outcome, exchange_pb2.ForwardResponse), outcome
    return outcome.audit_id


async def test_concurrent_forwards_to_one_region_are_one_forward_batch() -> None:
    peers, metrics = Peers(), Metrics()
    calls = coalescer(peers, metrics)
    got = await send(calls, ("500000", "a"), ("500000", "b"), ("500000", "c"))
    assert [described(g) for g in got] == ["audit-a", "audit-b", "audit-c"]
    assert [c[:3] for c in peers.calls] == [("500000", "ForwardBatch", ("a", "b", "c"))]
    assert metrics.calls == [("500000", grpc.StatusCode.OK)]  # counted per call


async def test_a_lone_forward_and_forwards_to_other_regions_go_as_plain_forwards() -> None:
    peers = Peers()
    calls = coalescer(peers)
    got = await send(calls, ("500000", "a"), ("330000", "b"), ("500000", "c"))
    assert [described(g) for g in got] == ["audit-a", "audit-b", "audit-c"]
    assert sorted(c[:3] for c in peers.calls) == [
        ("330000", "Forward", ("b",)),
        ("500000", "ForwardBatch", ("a", "c")),
    ]
    peers.calls.clear()
    assert [described(g) for g in await send(calls, ("500000", "d"))] == ["audit-d"]
    assert [c[:3] for c in peers.calls] == [("500000", "Forward", ("d",))]


async def test_forwards_of_later_iterations_are_later_calls() -> None:
    peers = Peers()
    calls = coalescer(peers)

    async def later(rid: str) -> Any:
        await asyncio.sleep(0.01)
        return await calls.forward("500000", forward(rid), timeout_seconds=5.0, ours=True)

    first = asyncio.ensure_future(send(calls, ("500000", "a"), ("500000", "b")))
    await asyncio.gather(first, later("c"))
    assert [c[:3] for c in peers.calls] == [
        ("500000", "ForwardBatch", ("a", "b")),
        ("500000", "Forward", ("c",)),
    ]


async def test_a_batch_holds_at_most_max_forward_batch_items() -> None:
    peers = Peers()
    calls = coalescer(peers)
    ids = [f"r{i}" for i in range(MAX_FORWARD_BATCH_ITEMS + 2)]
    got = await send(calls, *(("500000", rid) for rid in ids))
    assert [described(g) for g in got] == [f"audit-{rid}" for rid in ids]
    assert [(c[1], len(c[2])) for c in peers.calls] == [
        ("ForwardBatch", MAX_FORWARD_BATCH_ITEMS),
        ("ForwardBatch", 2),
    ]


async def test_the_batch_call_has_the_latest_deadline_of_its_items() -> None:
    peers = Peers()
    calls = coalescer(peers)
    await asyncio.gather(
        calls.forward("500000", forward("a"), timeout_seconds=4.0, ours=True),
        calls.forward("500000", forward("b"), timeout_seconds=1.5, ours=True),
    )
    ((_, method, _, timeout),) = peers.calls
    assert method == "ForwardBatch"
    assert 3.9 < timeout <= 4.0


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, "FIELD_NOT_ALLOWED"),
        (grpc.StatusCode.NOT_FOUND, "UNKNOWN_DATASET"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED"),
        (grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, ""),
    ],
)
async def test_an_items_status_is_the_refusal_a_single_forward_gives(
    code: grpc.StatusCode, reason: str
) -> None:
    words = "the owner's own words"
    single_peers = Peers()
    single_peers.forward_with = lambda request: rpc_error(code, reason, words)
    (single,) = await send(coalescer(single_peers), ("500000", "a"))

    peers = Peers()
    refused = (
        exchange_pb2.ForwardBatchItem(status=item_status(code, reason, words))
        if reason
        else exchange_pb2.ForwardBatchItem(
            status=status_pb2.Status(code=code.value[0], message=words)
        )
    )
    peers.batch_with = lambda request: exchange_pb2.ForwardBatchResponse(
        results=[exchange_pb2.ForwardBatchItem(response=answer_for(request.items[0])), refused]
    )
    good, batched = await send(coalescer(peers), ("500000", "b"), ("500000", "a"))
    assert described(good) == "audit-b"
    assert isinstance(batched, Refusal)
    assert described(batched) == described(single)
    assert [c[1] for c in peers.calls] == ["ForwardBatch"]


@pytest.mark.parametrize(
    "failure",
    [
        rpc_error(grpc.StatusCode.UNAVAILABLE),
        rpc_error(grpc.StatusCode.UNAVAILABLE, "REGISTRY_STALE"),
        rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED),
        rpc_error(grpc.StatusCode.INTERNAL),
        TimeoutError(),
    ],
    ids=["unavailable", "registry-stale", "deadline", "internal", "timeout"],
)
@pytest.mark.parametrize("ours", [True, False])
async def test_a_failed_batch_call_fails_each_item_as_the_single_call(
    failure: BaseException, ours: bool
) -> None:
    single_peers, single_metrics = Peers(), Metrics()
    single_peers.forward_with = lambda request: failure
    (single,) = await send(coalescer(single_peers, single_metrics), ("500000", "a"), ours=ours)
    assert isinstance(single, Refusal)

    peers, metrics = Peers(), Metrics()
    peers.batch_with = lambda request: failure
    got = await send(coalescer(peers, metrics), ("500000", "a"), ("500000", "b"), ours=ours)
    assert [described(g) for g in got] == [described(single)] * 2
    assert got[0] is not got[1]  # each caller its own Refusal (each is audited on its own)
    assert metrics.calls == single_metrics.calls  # one call, counted once


async def test_an_open_breaker_fails_each_item_without_a_call() -> None:
    peers, metrics = Peers(), Metrics()
    peers.refuse = BreakerOpen("open")
    got = await send(coalescer(peers, metrics), ("500000", "a"), ("500000", "b"))
    assert {described(g)[0] for g in got} == {"PEER_UNAVAILABLE"}  # type: ignore[index]
    assert (peers.calls, metrics.calls) == ([], [])


@pytest.mark.parametrize("ours", [True, False])
async def test_an_item_ends_at_its_own_deadline_and_the_others_wait_on(ours: bool) -> None:
    """One item about to expire does not fail the batch: it is answered at its own deadline as
    its single call's deadline ends it, and the others get their answers when the call ends."""
    single_peers = Peers()
    single_peers.forward_with = lambda request: rpc_error(
        grpc.StatusCode.DEADLINE_EXCEEDED, message="Deadline Exceeded"
    )
    (expected,) = await send(coalescer(single_peers), ("500000", "a"), ours=ours)
    assert isinstance(expected, Refusal)

    peers = Peers()
    answered = peers.batch_with
    released = asyncio.Event()

    async def slow(request: Any) -> Any:
        await released.wait()
        return answered(request)

    peers.batch_with = slow
    calls = coalescer(peers)
    short = asyncio.ensure_future(
        calls.forward("500000", forward("a"), timeout_seconds=0.05, ours=ours)
    )
    long = asyncio.ensure_future(
        calls.forward("500000", forward("b"), timeout_seconds=5.0, ours=ours)
    )
    with pytest.raises(Refusal) as cut:
        await short
    assert described(cut.value) == described(expected)
    assert not long.done()  # still waiting on the batch call
    released.set()
    assert described(await long) == "audit-b"
    ((_, method, _, timeout),) = peers.calls
    assert (method, 4.9 < timeout <= 5.0) == ("ForwardBatch", True)


async def test_a_peer_without_forward_batch_gets_single_forwards() -> None:
    peers, metrics = Peers(), Metrics()
    older = peers.batch_with
    peers.batch_with = lambda request: (  # 500000's gateway is older than 330000's
        rpc_error(grpc.StatusCode.UNIMPLEMENTED)
        if request.items[0].query.provider_region == "500000"
        else older(request)
    )
    calls = coalescer(peers, metrics)
    got = await send(calls, ("500000", "a"), ("500000", "b"))
    assert [described(g) for g in got] == ["audit-a", "audit-b"]  # re-sent singly
    assert [c[:3] for c in peers.calls] == [
        ("500000", "ForwardBatch", ("a", "b")),
        ("500000", "Forward", ("a",)),
        ("500000", "Forward", ("b",)),
    ]
    peers.calls.clear()
    got = await send(calls, ("500000", "c"), ("500000", "d"), ("330000", "e"), ("330000", "f"))
    assert [described(g) for g in got] == ["audit-c", "audit-d", "audit-e", "audit-f"]
    assert sorted(c[:3] for c in peers.calls) == [  # remembered, for that region only
        ("330000", "ForwardBatch", ("e", "f")),
        ("500000", "Forward", ("c",)),
        ("500000", "Forward", ("d",)),
    ]


async def test_an_unimplemented_status_with_a_reason_is_a_refusal_not_an_older_peer() -> None:
    peers = Peers()
    peers.batch_with = lambda request: rpc_error(grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED")
    got = await send(coalescer(peers), ("500000", "a"), ("500000", "b"))
    assert {described(g)[0] for g in got} == {"PEER_UNAVAILABLE"}  # type: ignore[index]
    assert [c[1] for c in peers.calls] == ["ForwardBatch"]


async def test_an_answer_with_the_wrong_number_of_results_fails_every_item() -> None:
    peers = Peers()
    peers.batch_with = lambda request: exchange_pb2.ForwardBatchResponse(
        results=[exchange_pb2.ForwardBatchItem(response=answer_for(request.items[0]))]
    )
    got = await send(coalescer(peers), ("500000", "a"), ("500000", "b"))
    assert {described(g)[0] for g in got} == {"PEER_UNAVAILABLE"}  # type: ignore[index]


async def test_a_cancelled_caller_leaves_the_others_their_answers() -> None:
    peers = Peers()
    calls = coalescer(peers)
    gone = asyncio.ensure_future(
        calls.forward("500000", forward("a"), timeout_seconds=5, ours=True)
    )
    stays = asyncio.ensure_future(
        calls.forward("500000", forward("b"), timeout_seconds=5, ours=True)
    )
    await asyncio.sleep(0)  # both queued; the flush comes next
    gone.cancel()
    assert described(await stays) == "audit-b"
    assert gone.cancelled()


# -- a BatchQuery's forwards, gathered ------------------------------------------------------------
async def batch_query(
    calls: ForwardCoalescer, items: list[tuple[str, str, float | None]]
) -> list[Any]:
    """A BatchQuery's items as `DataExchangeService.BatchQuery` runs them: each (region, request
    id, seconds of work before its forward; None: it ends without one) in its own task."""
    gathering = ForwardGathering(len(items))

    async def one(region: str, rid: str, before: float | None) -> Any:
        with gathering.item():
            await asyncio.sleep(before if before is not None else 0.002)
            if before is None:
                return "answered here"
            return await calls.forward(region, forward(rid, region), timeout_seconds=5, ours=True)

    got = await asyncio.gather(*(one(*item) for item in items), return_exceptions=True)
    return [g if isinstance(g, str) else described(g) for g in got]


async def test_a_batch_querys_forwards_are_held_until_each_item_forwarded_or_ended() -> None:
    peers = Peers()
    calls = coalescer(peers)
    got = await batch_query(
        calls,
        [
            ("500000", "a", 0.0),
            ("330000", "b", 0.004),
            ("500000", "c", 0.008),
            ("500000", "-", None),  # refused, or answered from this gateway's cache
            ("330000", "d", 0.012),
        ],
    )
    assert got == ["audit-a", "audit-b", "audit-c", "answered here", "audit-d"]
    assert sorted(c[:3] for c in peers.calls) == [
        ("330000", "ForwardBatch", ("b", "d")),
        ("500000", "ForwardBatch", ("a", "c")),
    ]


async def test_an_item_slower_than_max_gather_seconds_forwards_on_its_own() -> None:
    peers = Peers()
    calls = coalescer(peers)
    late = MAX_GATHER_SECONDS + 0.05
    got = await batch_query(
        calls, [("500000", "a", 0.0), ("500000", "b", 0.001), ("500000", "c", late)]
    )
    assert got == ["audit-a", "audit-b", "audit-c"]
    assert [c[:3] for c in peers.calls] == [
        ("500000", "ForwardBatch", ("a", "b")),
        ("500000", "Forward", ("c",)),
    ]


async def test_a_forward_outside_a_batch_query_is_not_held_by_one() -> None:
    peers = Peers()
    calls = coalescer(peers)
    gathering = ForwardGathering(2)

    async def held() -> Any:
        with gathering.item():
            return await calls.forward("500000", forward("a"), timeout_seconds=5, ours=True)

    async def alone() -> Any:
        await asyncio.sleep(0.005)
        answer = await calls.forward("500000", forward("x"), timeout_seconds=5, ours=True)
        with gathering.item():  # the batch's second item ends: the held one goes now
            pass
        return answer

    got = await asyncio.gather(held(), alone())
    assert [described(g) for g in got] == ["audit-a", "audit-x"]
    assert [c[:3] for c in peers.calls] == [
        ("500000", "Forward", ("x",)),
        ("500000", "Forward", ("a",)),
    ]
